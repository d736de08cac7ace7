"""Provider plugins, named by ``cloud.plugin`` in the CPI config.

The table below is all ``info`` needs: the plugin's stemcell formats are listed here so that answering ``info``
never imports a provider module (and with it libvirt, boto3, ...). ``load`` imports the provider lazily.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpi.provider import Provider


@dataclass(frozen=True)
class ProviderSpec:
    """Where a provider lives and what it advertises without being imported."""

    module: str
    class_name: str
    stemcell_formats: tuple[str, ...]


PROVIDERS: dict[str, ProviderSpec] = {
    "libvirt": ProviderSpec(
        module="cpi.providers.libvirt.provider",
        class_name="LibvirtProvider",
        stemcell_formats=("libvirt-qcow2", "libvirt-raw", "openstack-qcow2", "openstack-raw"),
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
    spec = spec_for(plugin)
    module: Any = importlib.import_module(spec.module)
    cls: type[Provider] = getattr(module, spec.class_name)
    return cls
