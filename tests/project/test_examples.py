"""The documented example configs load and validate."""

from __future__ import annotations

from pathlib import Path

import yaml

from cpi import config
from cpi.providers import PROVIDERS
from cpi.providers.libvirt.config import LibvirtConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_cpi_libvirt_example_is_valid() -> None:
    path = EXAMPLES / "cpi-libvirt.yml"
    config.load(str(path), PROVIDERS)
    data = yaml.safe_load(path.read_text())
    libvirt = LibvirtConfig.from_properties(data["cloud"]["properties"]["libvirt"])
    assert libvirt.accelerator == "auto" and libvirt.storage_pool == "stemforge"


def test_cpi_aws_example_is_valid() -> None:
    """examples/cpi-aws.yml loads, its `aws` section validates, and every AWS config key (set or commented out) is
    documented in it: a user starting from the example sees each field."""
    from cpi.providers.aws.config import CONFIG_SCHEMA, AwsConfig

    path = EXAMPLES / "cpi-aws.yml"
    loaded = config.load(str(path), PROVIDERS)
    assert loaded.plugin == "aws"
    aws = AwsConfig.from_properties(yaml.safe_load(path.read_text())["cloud"]["properties"]["aws"])
    assert aws.region == "us-east-1" and aws.credentials_source == "static"
    text = path.read_text()
    undocumented = [key for key in CONFIG_SCHEMA["properties"] if f"{key}:" not in text]
    assert undocumented == []


def test_cpi_baremetal_example_is_valid(tmp_path: Path) -> None:
    """examples/cpi-baremetal.yml loads, its `baremetal` section validates against the provider's schema (with the
    readiness defaults spelled out), and every config key, nested ones included, is documented in it."""
    from cpi.providers.baremetal.config import CONFIG_SCHEMA, MetalConfig

    path = EXAMPLES / "cpi-baremetal.yml"
    loaded = config.load(str(path), PROVIDERS)
    assert loaded.plugin == "baremetal"
    section = yaml.safe_load(path.read_text())["cloud"]["properties"]["baremetal"]
    metal = MetalConfig.from_properties(section)
    defaults = MetalConfig.from_properties({"state_dir": str(tmp_path)})
    assert (metal.boot_check, metal.phone_home) == (defaults.boot_check, defaults.phone_home) == ("auto", False)
    assert metal.timeouts == defaults.timeouts and metal.bmc == defaults.bmc  # the example shows the defaults
    assert metal.provisioning_url == "http://10.1.2.1:8080"
    text = path.read_text()
    keys = list(CONFIG_SCHEMA["properties"])
    for nested in ("timeouts", "bmc"):
        keys += list(CONFIG_SCHEMA["properties"][nested]["properties"])
    assert [key for key in keys if f"{key}:" not in text] == []
