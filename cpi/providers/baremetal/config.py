"""The bare-metal provider's configuration (``cloud.properties.baremetal``) and cloud_properties schemas.

Importing this module stays cheap (no sushy, no pyghmi). Every schema rejects unknown keys so a typo is an error
naming the key. All waits are bounded: each timeout has a maximum.

Shape::

    baremetal:
      state_dir: /var/lib/stemforge/metal          # metal.db, images/, configdrives/ (default: properties.state_dir
                                                   #   + "/metal", else $STEMFORGE_METAL_STATE_DIR, else that path)
      provisioning_url: http://10.1.2.1:8080       # the base URL the servers reach (``metal serve``)
      timeouts: {power: 120, deploy: 900, boot_to_disk: 300, phone_home: 600, clean: 600}   # seconds
      boot_check: auto                             # how create_vm knows the server booted its deployed disk
                                                   #   without the guest's help: auto | dhcp | power (see below)
      phone_home: false                            # opt-in: also wait for the booted OS's phone-home
      heartbeat_s: 5                               # the ramdisk's heartbeat interval
      bmc: {attempts: 5, backoff_s: 0.5, backoff_max_s: 8, max_elapsed_s: 60, min_interval_s: 0.2,
            connect_timeout_s: 5, read_timeout_s: 20}

Readiness: a BOSH director waits for its agent itself (over the message bus), so create_vm returns once the server
runs its deployed disk, judged without any cooperation from the guest. Always: the ramdisk's final callback (image
and config drive written, digest checked) and the BMC reporting the server powered on after the boot-to-disk
reboot (within ``timeouts.power``). Then ``boot_check``:

* ``dhcp``: a DHCP request from one of the server's NICs that ``metal serve``'s dnsmasq answers after that reboot
  (within ``timeouts.boot_to_disk``): the OS on the disk is up and configuring its network.
* ``power``: nothing more (for a server whose OS never asks ``metal serve`` for an address).
* ``auto`` (default): ``dhcp`` when one of the VM's ``dynamic`` networks is on a NIC that ``metal serve`` gave a
  lease to during this deploy (the OS will ask the same DHCP server again), ``power`` otherwise (manual networks
  only, or dynamic networks on NICs served by another DHCP server).

``phone_home: true`` adds a wait (``timeouts.phone_home``) for the booted OS's POST to the phone-home URL under
``meta`` in the config drive's ``meta_data.json``; only an agent that knows that URL (the project's test agent)
sends one, so a stock stemcell must leave it off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpi.validation import validate

DEFAULT_STATE_DIR = "/var/lib/stemforge/metal"
STATE_DIR_ENV = "STEMFORGE_METAL_STATE_DIR"
#: The store event kind of a DHCP lease dnsmasq acknowledged to an enrolled server: recorded by
#: ``serve/dhcp_seen.py``, read by the provider's ``boot_check`` (``dhcp``/``auto``).
DHCP_EVENT = "dhcp"


def default_state_dir() -> Path:
    """``$STEMFORGE_METAL_STATE_DIR`` or ``/var/lib/stemforge/metal``."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 86400}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "state_dir": {"type": "string", "pattern": "^/"},
        "provisioning_url": {"type": "string", "pattern": "^https?://[^/\\s]+(/[^\\s]*)?$"},
        "timeouts": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _SECONDS for k in ("power", "deploy", "phone_home", "clean", "boot_to_disk")},
        },
        "phone_home": {"type": "boolean"},
        "boot_check": {"enum": ["auto", "dhcp", "power"]},
        "heartbeat_s": {"type": "number", "minimum": 1, "maximum": 300},
        "bmc": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 20},
                "backoff_s": {"type": "number", "minimum": 0, "maximum": 60},
                "backoff_max_s": {"type": "number", "minimum": 0, "maximum": 300},
                "max_elapsed_s": _SECONDS,
                "min_interval_s": {"type": "number", "minimum": 0, "maximum": 60},
                "connect_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                "read_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
            },
        },
    },
}

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}

VM_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # an explicit server, or the smallest free server matching the plan/labels
        "node": {"type": "string", "minLength": 1},
        "nodes": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "arch": {"type": "string", "minLength": 1},
        "cpu": {"type": "integer", "minimum": 1},
        "ram": {"type": "integer", "minimum": 1},
        "ephemeral_disk_size": {"type": "integer", "minimum": 0},
        "labels": _LABELS,
        # the libvirt provider's knobs: accepted so one manifest can target both, with a meaning here
        "root_disk_size": {"type": "integer", "minimum": 1},
        # storage (placement.py): a storage plan of the inventory by name, or a layout.py document inline
        "plan": {"type": "string", "minLength": 1},
        "layout": {"type": "object"},
    },
}

DISK_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"serial": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1}},
}


@dataclass(frozen=True)
class Timeouts:
    power: float = 120.0
    deploy: float = 900.0
    phone_home: float = 600.0
    clean: float = 600.0
    boot_to_disk: float = 300.0


@dataclass(frozen=True)
class BmcPolicy:
    """How BMC calls are retried and paced (Ironic: retry with backoff, never mark broken on one timeout)."""

    attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_elapsed_s: float = 60.0
    min_interval_s: float = 0.2
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0


@dataclass(frozen=True)
class MetalConfig:
    state_dir: Path = field(default_factory=default_state_dir)
    provisioning_url: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    phone_home: bool = False
    boot_check: str = "auto"
    heartbeat_s: float = 5.0
    bmc: BmcPolicy = field(default_factory=BmcPolicy)

    @classmethod
    def from_properties(cls, section: Mapping[str, Any] | None, fallback_state_dir: str | None = None) -> MetalConfig:
        """Build from the ``baremetal`` section; raises ``cpi.errors.CpiError`` naming the offending field."""
        data = dict(section or {})
        validate("baremetal config", CONFIG_SCHEMA, data)
        state_dir = Path(data["state_dir"]) if "state_dir" in data else None
        if state_dir is None:
            state_dir = Path(fallback_state_dir) / "metal" if fallback_state_dir else default_state_dir()
        return cls(
            state_dir=state_dir,
            provisioning_url=str(data.get("provisioning_url", "")).rstrip("/"),
            timeouts=Timeouts(**data.get("timeouts", {})),
            phone_home=bool(data.get("phone_home", False)),
            boot_check=str(data.get("boot_check", "auto")),
            heartbeat_s=float(data.get("heartbeat_s", 5.0)),
            bmc=BmcPolicy(**data.get("bmc", {})),
        )
