"""Provider plugins, named by ``cloud.plugin`` in the CPI config.

The table below is all ``info`` needs: the plugin's stemcell formats are listed here so that answering ``info``
never imports a provider module (and with it libvirt, boto3, ...). ``load`` imports the provider lazily; each
provider's third-party dependencies are the pip extra named in its spec (``pip install 'stemforge[aws]'``), and a
missing one makes ``load`` raise :class:`cpi.extras.MissingExtra` naming that extra. This module is on ``info``'s
path: it imports nothing beyond the standard library's already-loaded modules.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cpi.provider import Provider


class ProviderSpec:
    """Where a provider lives and what it advertises without being imported."""

    __slots__ = ("module", "class_name", "stemcell_formats", "extra", "requires")

    def __init__(self, module: str, class_name: str, stemcell_formats: tuple[str, ...], extra: str = "all",
                 requires: tuple[str, ...] = ()) -> None:
        self.module = module
        self.class_name = class_name
        self.stemcell_formats = stemcell_formats
        self.extra = extra  # the pip extra that installs the provider's dependencies
        # their top-level modules, checked by ``load`` (providers import them lazily, at first use)
        self.requires = requires

    def __repr__(self) -> str:
        return f"ProviderSpec({self.module!r}, {self.class_name!r}, {self.stemcell_formats!r}, {self.extra!r})"


PROVIDERS: dict[str, ProviderSpec] = {
    "libvirt": ProviderSpec(
        module="cpi.providers.libvirt.provider",
        class_name="LibvirtProvider",
        stemcell_formats=("libvirt-qcow2", "libvirt-raw", "openstack-qcow2", "openstack-raw"),
        extra="libvirt",
        requires=("libvirt", "tenacity"),
    ),
    "baremetal": ProviderSpec(
        module="cpi.providers.baremetal.provider",
        class_name="BareMetalProvider",
        stemcell_formats=("libvirt-raw", "openstack-raw", "libvirt-qcow2", "openstack-qcow2", "general-raw"),
        extra="metal",
        requires=("sushy", "pyghmi", "requests", "tenacity"),
    ),
    "aws": ProviderSpec(
        module="cpi.providers.aws.provider",
        class_name="AWSProvider",
        stemcell_formats=("aws-raw", "aws-light"),
        extra="aws",
        requires=("boto3", "botocore", "tenacity"),
    ),
}


def spec_for(plugin: str) -> ProviderSpec:
    """The spec of a registered plugin; KeyError names the known ones."""
    try:
        return PROVIDERS[plugin]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise KeyError(f"unknown provider plugin {plugin!r} (known: {known})") from None


def load(plugin: str) -> type[Provider]:
    """Import and return the provider class for ``plugin``. A third-party module the provider needs that is not
    installed raises :class:`cpi.extras.MissingExtra` ("the aws provider needs `pip install 'stemforge[aws]'`
    ..."); KeyError for an unknown plugin."""
    import importlib
    import importlib.util

    spec = spec_for(plugin)
    try:
        for name in spec.requires:  # find_spec only locates the module; the provider imports it when it needs it
            if importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        from cpi.extras import missing_extra, missing_module

        if missing_module(exc) is None:  # one of our own modules: a broken installation, not a missing extra
            raise
        raise missing_extra(f"the {plugin} provider", exc, spec.extra) from exc
    cls: type[Provider] = getattr(module, spec.class_name)
    return cls
