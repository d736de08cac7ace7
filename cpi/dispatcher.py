"""The dispatcher: a validated request in, a call on the provider interfaces, a result (or error) out.

Like bosh-cpi-go's ``rpc`` layer it knows nothing of any cloud. It

* maps each method to a call on the interfaces of :mod:`cpi.provider`, detecting the optional capabilities with
  ``isinstance``: no ``Snapshots`` -> ``NotImplemented``; no ``DiskResizer``/``DiskUpdater`` -> ``NotSupported``
  (the director then falls back to create-new-disk + copy); ``current_vm_id`` -> ``NotImplemented``;
* shapes results by the request's ``api_version`` (absent -> 1): ``create_vm`` answers ``vm_cid`` (v1) or
  ``[vm_cid, networks]`` (v2+); ``attach_disk`` answers null (v1) or the provider's non-empty disk hint (v2+);
* answers ``info`` with ``{"api_version": 3, "stemcell_formats": [...]}`` from the config override or the
  registry's :class:`~cpi.providers.ProviderSpec`, without constructing (or importing) the provider;
* passes API v3 ``create_stemcell`` ``env.tags`` to the provider as ``tags`` (``{}`` when absent), ``null``
  ``disk_cids``/``env``/``cloud_properties`` as ``[]``/``{}``/``{}``, and metadata values as strings;
* checks what the provider returns (an empty CID or hint is a provider bug -> ``CloudError``);
* lets the provider's ``CpiError``s through (mapped to the nearest of the ten director types) and turns any other
  exception into ``CloudError`` naming the method, logging the traceback (redacted by the call's logger).

The provider is constructed lazily, once per dispatcher (one per process), as ``cls(properties, logger)``.
Arguments must have been validated against :mod:`cpi.schemas` before :meth:`Dispatcher.dispatch`.
"""

from __future__ import annotations

import time

from cpi import errors
from cpi import schemas as S  # noqa: N812 - the argument schemas of the method table
from cpi.errors import ALL_ERROR_TYPES, CloudError, CpiError, NotSupported
from cpi.schemas import CPI_API_VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping
    from typing import Any

    from cpi.provider import Provider
    from cpi.schemas import ArgumentSpecs
    from stemforge_base.redaction import Redactor

    Handler = Callable[["Dispatcher", "Request"], Any]


class Request:
    """A request whose envelope and arguments passed validation. ``api_version`` is 1 when absent."""

    __slots__ = ("method", "arguments", "context", "api_version", "api_version_given")

    def __init__(self, method: str, arguments: list[Any], context: dict[str, Any], api_version: int | None) -> None:
        self.method = method
        self.arguments = arguments
        self.context = context
        self.api_version_given = api_version is not None
        self.api_version = 1 if api_version is None else api_version

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any]) -> Request:
        return cls(envelope["method"], envelope["arguments"], envelope["context"], envelope.get("api_version"))

    @property
    def request_id(self) -> str | None:
        value = self.context.get("request_id")
        return value if isinstance(value, str) else None


class Dispatcher:
    """Runs validated requests against one provider (see the module docstring).

    ``plugin``: registry name; ``properties``: merged ``cloud.properties`` given to the provider;
    ``logger_factory``: returns the call's logger (called only when a provider is needed or something is logged);
    ``redactor``: scrubs exception messages; ``provider_class``: overrides the registry (tests).
    """

    def __init__(
        self,
        plugin: str,
        properties: dict[str, Any],
        *,
        logger_factory: Callable[[], logging.Logger],
        redactor: Redactor,
        provider_class: type[Provider] | None = None,
    ) -> None:
        self.plugin = plugin
        self.properties = properties
        self.redactor = redactor
        self._logger_factory = logger_factory
        self._provider_class = provider_class
        self._provider: Provider | None = None

    # -- plumbing ----------------------------------------------------------------------------------------------------

    @property
    def log(self) -> logging.Logger:
        return self._logger_factory()

    def stemcell_formats(self) -> list[str]:
        """The config override ``stemcell_formats`` or the registry's formats for the plugin (no provider import)."""
        override = self.properties.get("stemcell_formats")
        if override:
            return list(override)
        from cpi.providers import spec_for

        return list(spec_for(self.plugin).stemcell_formats)

    def provider(self) -> Provider:
        """The provider instance, constructed on first use as ``cls(properties, logger)``."""
        if self._provider is None:
            cls = self._provider_class
            if cls is None:
                from cpi.providers import load

                try:
                    cls = load(self.plugin)
                except Exception as exc:
                    raise CloudError(f"cannot load provider plugin {self.plugin!r}: {_describe(exc)}") from exc
            logger = self.log.getChild(self.plugin) if self.plugin else self.log
            try:
                self._provider = cls(self.properties, logger)
            except CpiError:
                raise
            except Exception as exc:
                raise CloudError(f"provider {self.plugin!r} failed to initialise: {_describe(exc)}") from exc
        return self._provider

    def capability(self, interface: type, method: str, missing: type[CpiError]) -> Any:
        """The provider if it implements ``interface``, else raise ``missing`` naming the method."""
        provider = self.provider()
        if not isinstance(provider, interface):
            raise missing(f"{method} is not supported by provider {self.plugin!r}")
        return provider

    # -- entry point -------------------------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Any:
        """Run ``request`` and return its result; raises only CpiError (of one of the ten director types)."""
        method = METHODS.get(request.method)
        if method is None:
            raise errors.NotImplemented(f"unknown method {_short(request.method)}")
        started = time.monotonic()
        log = self.log
        log.info("%s: api_version %d, provider %s", request.method, request.api_version, self.plugin)
        if log.isEnabledFor(10):
            log.debug("%s arguments: %s", request.method, self._loggable_arguments(request))
        try:
            result = method.handler(self, request)
        except CpiError as exc:
            error = _known_type(exc)
            log.error("%s failed: %s: %s", request.method, error.bosh_type, error.message)
            raise error from exc
        except Exception as exc:
            log.error("%s failed with an unexpected %s", request.method, type(exc).__name__, exc_info=True)
            raise CloudError(f"{request.method} failed: {_describe(exc)}") from exc
        log.info("%s: done in %.3fs", request.method, time.monotonic() - started)
        return result

    def _loggable_arguments(self, request: Request) -> object:
        arguments: list[object] = list(request.arguments)
        if request.method == "create_vm" and len(arguments) >= 6:
            arguments[5] = "<redacted env>"
        return self.redactor.redact(arguments)


# -- result checks -----------------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _known_type(exc: CpiError) -> CpiError:
    """``exc`` itself when its type is one of the ten director types, else the same message and retry hint under
    the nearest director type in its class hierarchy (the director reports others as "Unknown CPI error")."""
    if type(exc) in ALL_ERROR_TYPES:
        return exc
    for base in type(exc).__mro__:
        if base in ALL_ERROR_TYPES:
            message = exc.message if isinstance(exc.message, str) and exc.message else str(exc) or type(exc).__name__
            return base(message, ok_to_retry=bool(exc.ok_to_retry))
    return CloudError(str(exc))


def _cid(value: object, method: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CloudError(f"{method}: provider returned {_kind(value)} instead of a {what} (a provider bug)")
    return value


def _kind(value: object) -> str:
    from cpi.schemas import json_type

    if isinstance(value, str) and not value.strip():
        return "an empty string"
    return f"a value of type {json_type(value)}"


def _bool(value: object, method: str) -> bool:
    if not isinstance(value, bool):
        raise CloudError(f"{method}: provider returned {_kind(value)} instead of a boolean (a provider bug)")
    return value


def _metadata(value: Mapping[str, Any] | None) -> dict[str, str]:
    """Director metadata as strings: booleans as true/false, numbers by their JSON spelling, null as ""."""
    out: dict[str, str] = {}
    for key, item in (value or {}).items():
        if isinstance(item, str):
            out[key] = item
        elif isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif item is None:
            out[key] = ""
        else:
            out[key] = str(item)
    return out


# -- handlers ----------------------------------------------------------------------------------------------------------


def _info(d: Dispatcher, r: Request) -> Any:
    return {"api_version": CPI_API_VERSION, "stemcell_formats": d.stemcell_formats()}


def _current_vm_id(d: Dispatcher, r: Request) -> Any:
    raise errors.NotImplemented("current_vm_id is deprecated and not implemented")


def _create_stemcell(d: Dispatcher, r: Request) -> Any:
    image_path, cloud_properties = r.arguments[0], r.arguments[1] or {}
    env = (r.arguments[2] if len(r.arguments) > 2 else None) or {}
    tags = _metadata(env.get("tags"))
    cid = d.provider().create_stemcell(image_path, cloud_properties, tags)
    return _cid(cid, r.method, "stemcell CID")


def _delete_stemcell(d: Dispatcher, r: Request) -> Any:
    d.provider().delete_stemcell(r.arguments[0])
    return None


def _create_vm(d: Dispatcher, r: Request) -> Any:
    from cpi.provider import VmRequest  # lazy: cpi.provider stays off the info path

    agent_id, stemcell_cid, cloud_properties, networks, disk_cids, env = r.arguments
    result = d.provider().create_vm(
        VmRequest(agent_id, stemcell_cid, cloud_properties or {}, networks, disk_cids or [], env or {})
    )
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise CloudError(f"create_vm: provider returned {_kind(result)} instead of (vm_cid, networks) (a provider bug)")
    vm_cid = _cid(result[0], r.method, "VM CID")
    if r.api_version < 2:
        return vm_cid
    configured = result[1]
    if not isinstance(configured, dict):
        raise CloudError(
            f"create_vm: provider returned VM {vm_cid} with networks of type {type(configured).__name__} "
            "instead of an object (a provider bug)"
        )
    return [vm_cid, configured]


def _delete_vm(d: Dispatcher, r: Request) -> Any:
    d.provider().delete_vm(r.arguments[0])
    return None


def _has_vm(d: Dispatcher, r: Request) -> Any:
    return _bool(d.provider().has_vm(r.arguments[0]), r.method)


def _reboot_vm(d: Dispatcher, r: Request) -> Any:
    d.provider().reboot_vm(r.arguments[0])
    return None


def _set_vm_metadata(d: Dispatcher, r: Request) -> Any:
    d.provider().set_vm_metadata(r.arguments[0], _metadata(r.arguments[1]))
    return None


def _calculate_vm_cloud_properties(d: Dispatcher, r: Request) -> Any:
    result = d.provider().calculate_vm_cloud_properties(r.arguments[0])
    if not isinstance(result, dict):
        raise CloudError(f"{r.method}: provider returned {_kind(result)} instead of an object (a provider bug)")
    return result


def _get_disks(d: Dispatcher, r: Request) -> Any:
    result = d.provider().get_disks(r.arguments[0])
    if not isinstance(result, list | tuple):
        raise CloudError(f"{r.method}: provider returned {_kind(result)} instead of a list (a provider bug)")
    return [_cid(cid, r.method, "disk CID") for cid in result]


def _create_disk(d: Dispatcher, r: Request) -> Any:
    size, cloud_properties, vm_locality = r.arguments
    return _cid(d.provider().create_disk(size, cloud_properties or {}, vm_locality), r.method, "disk CID")


def _delete_disk(d: Dispatcher, r: Request) -> Any:
    d.provider().delete_disk(r.arguments[0])
    return None


def _resize_disk(d: Dispatcher, r: Request) -> Any:
    from cpi.provider import DiskResizer  # lazy: cpi.provider stays off the info path

    d.capability(DiskResizer, r.method, NotSupported).resize_disk(r.arguments[0], r.arguments[1])
    return None


def _update_disk(d: Dispatcher, r: Request) -> Any:
    from cpi.provider import DiskUpdater  # lazy: cpi.provider stays off the info path

    disk_cid, new_size, cloud_properties = r.arguments
    result = d.capability(DiskUpdater, r.method, NotSupported).update_disk(disk_cid, new_size, cloud_properties or {})
    return None if result is None else _cid(result, r.method, "disk CID or null")


def _has_disk(d: Dispatcher, r: Request) -> Any:
    return _bool(d.provider().has_disk(r.arguments[0]), r.method)


def _attach_disk(d: Dispatcher, r: Request) -> Any:
    vm_cid, disk_cid = r.arguments
    hint = d.provider().attach_disk(vm_cid, disk_cid)
    if r.api_version < 2:
        return None
    if isinstance(hint, str) and hint.strip():
        return hint
    if isinstance(hint, dict) and hint:
        return hint
    raise CloudError(
        f"attach_disk: provider attached disk {disk_cid} to VM {vm_cid} but returned {_kind(hint)} as the disk hint "
        "(the director needs a non-empty hint; a provider bug)"
    )


def _detach_disk(d: Dispatcher, r: Request) -> Any:
    d.provider().detach_disk(r.arguments[0], r.arguments[1])
    return None


def _set_disk_metadata(d: Dispatcher, r: Request) -> Any:
    d.provider().set_disk_metadata(r.arguments[0], _metadata(r.arguments[1]))
    return None


def _snapshot_disk(d: Dispatcher, r: Request) -> Any:
    from cpi.provider import Snapshots  # lazy: cpi.provider stays off the info path

    snapshots = d.capability(Snapshots, r.method, errors.NotImplemented)
    return _cid(snapshots.snapshot_disk(r.arguments[0], r.arguments[1]), r.method, "snapshot CID")


def _delete_snapshot(d: Dispatcher, r: Request) -> Any:
    from cpi.provider import Snapshots  # lazy: cpi.provider stays off the info path

    d.capability(Snapshots, r.method, errors.NotImplemented).delete_snapshot(r.arguments[0])
    return None


class Method:
    """One CPI method: its handler, its positional arguments as (name, schema) in wire order, how many of them
    must be given (``least``; the trailing ones may be omitted; default all) and whether it needs the provider.
    ``local`` methods (``info``) are answered from the config alone: ``cpi.main`` gives them no watchdog and no
    result check, and they never construct (or import) the provider."""

    __slots__ = ("handler", "arguments", "least", "local")

    def __init__(self, handler: Handler, arguments: ArgumentSpecs = (), *, least: int | None = None,
                 local: bool = False) -> None:
        self.handler = handler
        self.arguments = arguments
        self.least = least
        self.local = local


#: The one method table: name -> handler and argument schemas (bosh-cpi-go's ``apiv1`` method list).
METHODS: dict[str, Method] = {
    "info": Method(_info, local=True),
    "current_vm_id": Method(_current_vm_id),
    "create_stemcell": Method(
        _create_stemcell,
        (("image_path", S.LOCAL_PATH), ("cloud_properties", S.OBJECT_OR_NULL), ("env", S.STEMCELL_ENV)),
        least=2,  # env is API v3 only
    ),
    "delete_stemcell": Method(_delete_stemcell, (("stemcell_cid", S.CID),)),
    "create_vm": Method(
        _create_vm,
        (
            ("agent_id", S.CID),
            ("stemcell_cid", S.CID),
            ("cloud_properties", S.OBJECT_OR_NULL),
            ("networks", S.NETWORKS),
            ("disk_cids", S.DISK_CIDS),
            ("env", S.OBJECT_OR_NULL),
        ),
    ),
    "delete_vm": Method(_delete_vm, (("vm_cid", S.CID),)),
    "has_vm": Method(_has_vm, (("vm_cid", S.CID),)),
    "reboot_vm": Method(_reboot_vm, (("vm_cid", S.CID),)),
    "set_vm_metadata": Method(_set_vm_metadata, (("vm_cid", S.CID), ("metadata", S.METADATA))),
    "calculate_vm_cloud_properties": Method(_calculate_vm_cloud_properties, (("vm_resources", S.VM_RESOURCES),)),
    "get_disks": Method(_get_disks, (("vm_cid", S.CID),)),
    "create_disk": Method(
        _create_disk, (("size", S.SIZE_MIB), ("cloud_properties", S.OBJECT_OR_NULL), ("vm_cid", S.CID_OR_NULL))
    ),
    "delete_disk": Method(_delete_disk, (("disk_cid", S.CID),)),
    "resize_disk": Method(_resize_disk, (("disk_cid", S.CID), ("new_size", S.SIZE_MIB))),
    "update_disk": Method(
        _update_disk, (("disk_cid", S.CID), ("new_size", S.SIZE_MIB), ("cloud_properties", S.OBJECT_OR_NULL))
    ),
    "has_disk": Method(_has_disk, (("disk_cid", S.CID),)),
    "attach_disk": Method(_attach_disk, (("vm_cid", S.CID), ("disk_cid", S.CID))),
    "detach_disk": Method(_detach_disk, (("vm_cid", S.CID), ("disk_cid", S.CID))),
    "set_disk_metadata": Method(_set_disk_metadata, (("disk_cid", S.CID), ("metadata", S.METADATA))),
    "snapshot_disk": Method(_snapshot_disk, (("disk_cid", S.CID), ("metadata", S.SNAPSHOT_METADATA))),
    "delete_snapshot": Method(_delete_snapshot, (("snapshot_cid", S.CID),)),
}
