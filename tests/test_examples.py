"""The documented example configs load and validate."""

from __future__ import annotations

from pathlib import Path

import yaml

from cpi import config
from cpi.providers import PROVIDERS
from cpi.providers.libvirt.config import LibvirtConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_cpi_libvirt_example_is_valid() -> None:
    path = EXAMPLES / "cpi-libvirt.yml"
    config.load(str(path), PROVIDERS)
    data = yaml.safe_load(path.read_text())
    libvirt = LibvirtConfig.from_properties(data["cloud"]["properties"]["libvirt"])
    assert libvirt.accelerator == "auto" and libvirt.storage_pool == "stemforge"
