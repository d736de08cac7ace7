"""The CPI config file and the properties a provider receives.

Shape (JSON, which BOSH job templates render, or YAML; recognised by content: JSON is tried first and PyYAML is
imported only when that fails)::

    cloud:
      plugin: libvirt                       # provider name (key of cpi.providers.PROVIDERS)
      properties:                           # handed to the provider, after merging the request context over it
        state_dir: /var/lib/stemforge/cpi   # optional
        stemcell_formats: [...]             # optional: overrides the provider's formats in ``info``
        log_level: info                     # optional: debug, info, warning, error, critical
        agent: {mbus: "nats://...", ntp: [...], blobstore: {provider: ..., options: {...}}}
        libvirt: {...}                      # the provider's own section, validated by the provider

:func:`load` validates the provider-independent part with :data:`config_schema` (errors name the file and the
field); :func:`merge_context` deep-merges the request's ``context`` (minus ``director_uuid``, ``request_id``, ``vm``)
over ``cloud.properties`` the way real CPIs merge cpi-config properties over their job config, and
:func:`validate_properties` re-checks the result. :func:`config_ok` / :func:`properties_ok` are hand checks that
accept exactly what the schema accepts, so the ``info`` fast path never imports jsonschema (tests compare them).
"""

from __future__ import annotations

from cpi import fastjson
from cpi.errors import CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

#: Context keys that describe the request rather than configure the CPI; never merged into the properties.
CONTEXT_ONLY_KEYS = frozenset({"director_uuid", "request_id", "vm"})
MAX_CONFIG_BYTES = 10 * 1024 * 1024
LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")
_LOG_LEVEL_ENUM = [*LOG_LEVELS, *(level.upper() for level in LOG_LEVELS)]

PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {
        "state_dir": {"type": "string", "minLength": 1},
        "stemcell_formats": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "log_level": {"type": "string", "enum": _LOG_LEVEL_ENUM},
        # seconds one CPI call may take before the CPI answers CloudError and ends itself (a hung IaaS call)
        "call_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "agent": {
            "type": "object",
            "properties": {
                "mbus": {"type": "string", "minLength": 1},
                "ntp": {"type": "array", "items": {"type": "string", "minLength": 1}},
                "blobstore": {
                    "type": "object",
                    "required": ["provider"],
                    "properties": {"provider": {"type": "string", "minLength": 1}, "options": {"type": "object"}},
                },
            },
        },
    },
}


def config_schema(plugins: Iterable[str]) -> dict[str, Any]:
    """The schema of the whole file; ``plugins`` are the registered provider names."""
    known = sorted(plugins)
    return {
        "type": "object",
        "required": ["cloud"],
        "properties": {
            "cloud": {
                "type": "object",
                "required": ["plugin"],
                "additionalProperties": False,
                "properties": {
                    "plugin": {
                        "type": "string",
                        "enum": known,
                        "x-messages": {"enum": f"is not a known provider plugin (known: {', '.join(known)})"},
                    },
                    "properties": PROPERTIES_SCHEMA,
                },
            }
        },
    }


class CpiConfig:
    """A loaded, validated config: ``plugin`` and the file's ``cloud.properties`` (``{}`` when absent); ``syntax``
    is ``"json"`` or ``"yaml"``, how the file was parsed."""

    __slots__ = ("path", "plugin", "properties", "document", "syntax")

    def __init__(self, path: str, plugin: str, properties: dict[str, Any], document: dict[str, Any],
                 syntax: str = "json") -> None:
        self.path = path
        self.plugin = plugin
        self.properties = properties
        self.document = document
        self.syntax = syntax


# -- hand checks (equivalent to the schemas) -------------------------------------------------------------------------


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and len(value) > 0


def properties_ok(props: object) -> bool:
    """True exactly when ``props`` is valid under :data:`PROPERTIES_SCHEMA`."""
    if props is None:
        return True
    if not isinstance(props, dict):
        return False
    if "state_dir" in props and not _nonempty_str(props["state_dir"]):
        return False
    if "stemcell_formats" in props:
        formats = props["stemcell_formats"]
        if not isinstance(formats, list) or not formats or not all(_nonempty_str(f) for f in formats):
            return False
    if "log_level" in props and not (isinstance(props["log_level"], str) and props["log_level"] in _LOG_LEVEL_ENUM):
        return False
    if "call_timeout" in props:
        timeout = props["call_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            return False
    if "agent" in props:
        agent = props["agent"]
        if not isinstance(agent, dict):
            return False
        if "mbus" in agent and not _nonempty_str(agent["mbus"]):
            return False
        if "ntp" in agent:
            ntp = agent["ntp"]
            if not isinstance(ntp, list) or not all(_nonempty_str(server) for server in ntp):
                return False
        if "blobstore" in agent:
            blobstore = agent["blobstore"]
            if not isinstance(blobstore, dict) or not _nonempty_str(blobstore.get("provider")):
                return False
            if "options" in blobstore and not isinstance(blobstore["options"], dict):
                return False
    return True


def config_ok(document: object, plugins: Iterable[str]) -> bool:
    """True exactly when ``document`` is valid under ``config_schema(plugins)``."""
    if not isinstance(document, dict):
        return False
    cloud = document.get("cloud")
    if not isinstance(cloud, dict) or not set(cloud) <= {"plugin", "properties"}:
        return False
    plugin = cloud.get("plugin")
    if not isinstance(plugin, str) or plugin not in set(plugins):
        return False
    return properties_ok(cloud.get("properties"))


# -- loading ---------------------------------------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {fastjson.dumps_compact(key[:64])}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_strict(text: str) -> Any:
    """``json.loads`` that rejects duplicate keys and NaN/Infinity (ValueError, including JSONDecodeError)."""
    return fastjson.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def read_document(path: str) -> dict[str, Any]:
    """Read and parse the config file at ``path`` (JSON first, then YAML). CpiError names the file and the problem;
    parse errors give line and column only, never the offending text (it may hold a password)."""
    return _read_document(path)[0]


def _read_document(path: str) -> tuple[dict[str, Any], str]:
    """:func:`read_document` and the syntax it parsed: ``"json"`` or ``"yaml"``."""
    where = f"config {path}"
    syntax = "json"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise CpiError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise CpiError(f"{where}: is a directory, not a file") from None
    except OSError as exc:
        raise CpiError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise CpiError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes")
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (utf-8-sig without importing its codec)
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CpiError(f"{where}: not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise CpiError(f"{where}: the file is empty")
    try:
        document = parse_json_strict(text)
    except RecursionError:
        raise CpiError(f"{where}: nested too deeply") from None
    except fastjson.DecodeError as exc:
        if text.lstrip().startswith(("{", "[")):
            raise CpiError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        document = _parse_yaml(text, where)
        syntax = "yaml"
    except ValueError as exc:  # duplicate key, NaN, too many digits
        raise CpiError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CpiError(f"{where}: expected a mapping at the top level, got {_type_name(document)}")
    return document, syntax


def _parse_yaml(text: str, where: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except RecursionError:
        raise CpiError(f"{where}: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise CpiError(f"{where}: neither valid JSON nor valid YAML: {exc.problem or 'syntax error'}{at}") from None
    except yaml.YAMLError as exc:
        raise CpiError(f"{where}: neither valid JSON nor valid YAML: {type(exc).__name__}") from None


def _type_name(value: object) -> str:
    from cpi.schemas import json_type

    return json_type(value)


def _schema_error(prefix: str, schema: dict[str, Any], instance: object, root: list[str | int]) -> CpiError:
    from cpi.schemas import first_error, format_error

    found = first_error(schema, instance)
    if found is None:  # hand check and schema disagree: report rather than pass
        return CpiError(f"{prefix}: invalid")
    path, message = found
    return CpiError(format_error(prefix, [*root, *path], message))


def load(path: str, plugins: Iterable[str], *, inspect: Callable[[Any], None] | None = None) -> CpiConfig:
    """Read and validate the config at ``path``; ``plugins`` are the registered provider names. ``inspect`` sees
    the parsed document before validation (the CPI registers its secrets). Raises CpiError."""
    plugins = tuple(plugins)
    document, syntax = _read_document(path)
    if inspect is not None:
        inspect(document)
    if not config_ok(document, plugins):
        raise _schema_error(f"config {path}", config_schema(plugins), document, [])
    cloud = document["cloud"]
    properties = cloud.get("properties") or {}
    return CpiConfig(path, cloud["plugin"], properties, document, syntax)


def merge_context(properties: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """``properties`` with the request context (minus director_uuid, request_id, vm) deep-merged over it: nested
    objects merge key by key, anything else from the context replaces the file's value. Inputs are not modified."""
    overrides = {key: value for key, value in context.items() if key not in CONTEXT_ONLY_KEYS}
    return deep_merge(properties, overrides)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``override`` merged over ``base`` recursively (dicts merge; other values replace)."""
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def validate_properties(properties: dict[str, Any], config: CpiConfig) -> None:
    """Re-check ``cloud.properties`` after the context merge; CpiError names the field."""
    if not properties_ok(properties):
        raise _schema_error(
            f"config {config.path} merged with the request context",
            PROPERTIES_SCHEMA,
            properties,
            ["cloud", "properties"],
        )
