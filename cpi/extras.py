"""Which pip extra of stemforge brings which optional dependency, and the message when one is missing.

The core install (``pip install stemforge``) is the CPI protocol and stemcells; each role's dependencies are an
extra in ``pyproject.toml``: ``libvirt``, ``aws``, ``metal``, ``build``, ``terraform``, ``ci`` (``all`` is every one
of them). The places that load providers and plugins (:func:`cpi.providers.load`, ``builders.registry``, the
``stemforge`` command line) turn a :class:`ModuleNotFoundError` for one of these modules into one message naming
the extra to install, instead of a traceback at the first import. Standard library only; imports nothing.
"""

from __future__ import annotations

#: Top-level module name -> the one extra that installs it.
EXTRA_OF_MODULE: dict[str, str] = {
    "libvirt": "libvirt",
    "libvirtmod": "libvirt",
    "boto3": "aws",
    "botocore": "aws",
    "s3transfer": "aws",
    "jmespath": "aws",
    "sushy": "metal",
    "pyghmi": "metal",
    "paramiko": "build",
    "hcl2": "build",
    "lark": "build",
    "cryptography": "build",
    "python_terraform": "terraform",
}
#: Modules several extras bring (tenacity: libvirt, aws, metal, build): the component's own extra is named.
SHARED_MODULES = frozenset({"tenacity", "requests", "urllib3", "certifi", "charset_normalizer", "idna", "bcrypt"})
#: Our own top-level packages: a missing one is a broken installation, not a missing extra.
FIRST_PARTY = frozenset({"cpi", "builders", "stemcells", "stemforge", "stemforge_base", "terraform", "ci"})


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message, name=module)
        self.extra = extra


def missing_module(exc: BaseException) -> str | None:
    """The top-level name of the third-party module ``exc`` says is missing, or None (not a ModuleNotFoundError,
    or one of our own modules is missing)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    return None if top in FIRST_PARTY else top


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (quoted for a shell)."""
    return f"pip install 'stemforge[{extra}]'"


def missing_extra(what: str, exc: ModuleNotFoundError, default_extra: str) -> MissingExtra:
    """The error for ``what`` (e.g. "the aws provider") failing to import because of ``exc``: names the extra of the
    missing module (``default_extra`` when the module is not in :data:`EXTRA_OF_MODULE` or shared)."""
    module = missing_module(exc) or str(exc.name)
    extra = default_extra if module in SHARED_MODULES else EXTRA_OF_MODULE.get(module, default_extra)
    return MissingExtra(f"{what} needs `{install_hint(extra)}` (Python module {module!r} is not installed)",
                        extra=extra, module=module)
