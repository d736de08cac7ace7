"""The libvirt provider's configuration (``cloud.properties.libvirt``) and cloud_properties schemas.

Importing this module must stay cheap (no libvirt): the dispatcher validates against these schemas before the
provider is loaded. Every schema rejects unknown keys so that a typo is an error naming the key, not a silent
default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpi.validation import validate

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "uri": {"type": "string", "minLength": 1},
        "storage_pool": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
        "pool_path": {"type": "string", "pattern": "^/"},
        "create_pool": {"type": "boolean"},
        "accelerator": {"enum": ["auto", "kvm", "tcg"]},
        "kvm_probe_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "kvm_probe_kernel": {"type": "string", "pattern": "^/"},
        "machine_type": {"type": "string", "minLength": 1},
        "default_network": {"$ref": "#/$defs/network"},
        "console_dir": {"type": "string", "pattern": "^/"},
        "start_confirm_seconds": {"type": "number", "minimum": 0, "maximum": 300},
        "detach_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
        "region": {"type": "string", "minLength": 1},
        "spare_pcie_ports": {"type": "integer", "minimum": 1, "maximum": 28},
        "max_stemcell_virtual_gib": {"type": "integer", "minimum": 1, "maximum": 65536},
    },
    "$defs": {
        "network": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["user", "network", "bridge"]},
                "network": {"type": "string", "minLength": 1},
                "bridge": {"type": "string", "minLength": 1},
                "model": {"enum": ["virtio", "e1000", "e1000e", "rtl8139"]},
                # user-mode only: cut the guest off from everything but its port forwards (QEMU restrict=on)
                "restrict": {"type": "boolean"},
                # user-mode only: host ports on loopback forwarded into the guest (e.g. ssh for smoke tests)
                "port_forwards": {
                    "type": "array",
                    "maxItems": 16,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["host_port", "guest_port"],
                        "properties": {
                            "host_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "guest_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "host_address": {"type": "string", "pattern": "^(127\\.[0-9.]+|::1)$"},
                        },
                    },
                },
            },
        }
    },
}

VM_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "cpu": {"type": "integer", "minimum": 1, "maximum": 256},
        "ram": {"type": "integer", "minimum": 32, "maximum": 4194304},
        "ephemeral_disk_size": {"type": "integer", "minimum": 0, "maximum": 67108864},
        "root_disk_size": {"type": "integer", "minimum": 1, "maximum": 67108864},
        "machine_type": {"type": "string", "minLength": 1},
    },
}

NETWORK_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {**CONFIG_SCHEMA["$defs"]["network"]}

DISK_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"format": {"enum": ["qcow2", "raw"]}},
}

LIGHT_STEMCELL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["image_id"],
    "properties": {
        "image_id": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string", "minLength": 1}},
            ]
        }
    },
}


@dataclass(frozen=True)
class LibvirtConfig:
    """Validated provider settings with their defaults filled in."""

    uri: str = "qemu:///system"
    storage_pool: str = "stemforge"
    pool_path: Path = Path("/var/lib/stemforge/pool")
    create_pool: bool = True
    accelerator: str = "auto"
    kvm_probe_timeout: float = 15.0
    kvm_probe_kernel: str | None = None
    machine_type: str = "q35"
    default_network: Mapping[str, Any] = field(default_factory=lambda: {"type": "user"})
    console_dir: Path | None = None
    start_confirm_seconds: float = 1.0
    detach_timeout: float = 60.0
    region: str | None = None
    spare_pcie_ports: int = 8
    #: Largest virtual size of a stemcell root image create_stemcell accepts (stemcells.image_check).
    max_stemcell_virtual_gib: int = 2048

    @classmethod
    def from_properties(cls, section: Mapping[str, Any] | None) -> LibvirtConfig:
        """Build from the ``libvirt`` section; raises ``cpi.errors.CpiError`` naming the offending field."""
        data = dict(section or {})
        validate("libvirt config", CONFIG_SCHEMA, data)
        for key in ("pool_path", "console_dir"):
            if key in data:
                data[key] = Path(data[key])
        return cls(**data)

