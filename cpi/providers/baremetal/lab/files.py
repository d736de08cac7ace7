"""What a lab hands to its users: the inventory (``stemforge metal enroll`` file) and a CPI config.

``inventory.yml`` follows :mod:`cpi.providers.baremetal.inventory`'s schema (and is checked with its parser before it
is published): per server its name (= libvirt domain), the Redfish BMC (emulator address, system id = domain UUID,
user and generated password), the NIC MACs and the hardware plan (x86_64, vCPUs, memory, the disks as
``/dev/vda``... with their serials, labels ``lab: <id>``). What the server's lab plan (:mod:`.plans`) adds:
``plan.boot_mode``, for ``uefi2`` an inline ``layout`` (RAID1 + LVM), for ``hints3`` ``root_hints`` naming the 6 GiB
disk's serial. ``default`` servers have no hints: the provider's default (the smallest disk of at least 4 GiB) is
the 4 GiB first disk.

``cpi.json`` is a CPI config for plugin ``baremetal`` whose ``state_dir`` is the one ``metal serve`` uses and whose
``provisioning_url`` is the bridge address the servers reach; readiness is the provider's default (``boot_check:
auto``, no phone-home), so any stemcell whose OS reads the config drive deploys. The agent's mbus/blobstore point
at loopback. Both files are written atomically with mode 0600 (they hold credentials).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import yaml

from cpi.providers.baremetal.inventory import parse_inventory
from cpi.providers.baremetal.lab import plans as lab_plans
from cpi.providers.baremetal.lab.record import LabRecord, write_private

GIB = 1024**3


def inventory(rec: LabRecord) -> dict[str, Any]:
    nodes = []
    for server in rec.servers:
        bmc = rec.bmc or {}
        extra = lab_plans.inventory_fields(server.get("plan", "default"), [d["serial"] for d in server["disks"]])
        node: dict[str, Any] = {
            "name": server["name"],
            "bmc": {
                "driver": "redfish",
                "address": bmc.get("address", ""),
                "system_id": server["uuid"],
                "username": bmc.get("username", ""),
                "password": bmc.get("password", ""),
                "verify_tls": False,
            },
            "macs": list(server["macs"]),
            "plan": {
                "arch": "x86_64",
                "cpus": rec.vcpus,
                "memory_mib": rec.memory_mib,
                "disks": [_plan_disk(d) for d in server["disks"]],
                "labels": {"lab": rec.id},
                **extra["plan_extra"],
            },
        }
        for key in ("root_hints", "layout"):
            if key in extra:
                node[key] = extra[key]
        nodes.append(node)
    return {"nodes": nodes}


def _plan_disk(disk: dict[str, Any]) -> dict[str, Any]:
    """A disk of the node's plan. SCSI disks have no ``name``: the kernel scans virtio-scsi targets asynchronously,
    so ``sda``.. follow no fixed order (root-device hints exist for this)."""
    out: dict[str, Any] = {"size_gib": disk["size_bytes"] // GIB, "serial": disk["serial"]}
    if disk.get("bus", "virtio") == "virtio":
        out["name"] = f"/dev/{disk['target']}"
    return out


def cpi_config(rec: LabRecord) -> dict[str, Any]:
    mbus_password = secrets.token_urlsafe(12)
    return {
        "cloud": {
            "plugin": "baremetal",
            "properties": {
                "baremetal": {
                    "state_dir": rec.state_dir,
                    "provisioning_url": rec.provisioning_url,
                    # the provider's defaults: create_vm ends when the server booted its disk (BMC on, its OS's
                    # DHCP request seen by `metal serve`); no agent of ours needed (phone_home stays off)
                    "timeouts": {"power": 120, "deploy": 900, "boot_to_disk": 300, "clean": 600},
                },
                "agent": {
                    "mbus": f"nats://nats:{mbus_password}@127.0.0.1:4222",
                    "ntp": ["127.0.0.1"],
                    "blobstore": {
                        "provider": "local",
                        "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"},
                    },
                },
            },
        }
    }


def write_inventory(rec: LabRecord, path: Path) -> None:
    text = yaml.safe_dump(inventory(rec), sort_keys=False)
    parse_inventory(text, str(path))  # the lab's own file must enrol: fail here, not in the user's hands
    write_private(path, text)


def write_cpi_config(rec: LabRecord, path: Path) -> None:
    write_private(path, json.dumps(cpi_config(rec), indent=2) + "\n")
