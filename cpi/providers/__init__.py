"""Provider plugins, named by ``cloud.plugin`` in the CPI config.

The table below is all ``info`` needs: the plugin's stemcell formats are listed here so that answering ``info``
never imports a provider module (and with it libvirt, boto3, ...). ``load`` imports the provider lazily. This
module is on ``info``'s path: it imports nothing beyond the standard library's already-loaded modules.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cpi.provider import Provider


class ProviderSpec:
    """Where a provider lives and what it advertises without being imported."""

    __slots__ = ("module", "class_name", "stemcell_formats")

    def __init__(self, module: str, class_name: str, stemcell_formats: tuple[str, ...]) -> None:
        self.module = module
        self.class_name = class_name
        self.stemcell_formats = stemcell_formats

    def __repr__(self) -> str:
        return f"ProviderSpec({self.module!r}, {self.class_name!r}, {self.stemcell_formats!r})"


PROVIDERS: dict[str, ProviderSpec] = {
    "libvirt": ProviderSpec(
        module="cpi.providers.libvirt.provider",
        class_name="LibvirtProvider",
        stemcell_formats=("libvirt-qcow2", "libvirt-raw", "openstack-qcow2", "openstack-raw"),
    ),
    "baremetal": ProviderSpec(
        module="cpi.providers.baremetal.provider",
        class_name="BareMetalProvider",
        stemcell_formats=("libvirt-raw", "openstack-raw", "libvirt-qcow2", "openstack-qcow2", "general-raw"),
    ),
    "aws": ProviderSpec(
        module="cpi.providers.aws.provider",
        class_name="AWSProvider",
        stemcell_formats=("aws-raw", "aws-light"),
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
    """Import and return the provider class for ``plugin``."""
    import importlib

    spec = spec_for(plugin)
    module = importlib.import_module(spec.module)
    cls: type[Provider] = getattr(module, spec.class_name)
    return cls
