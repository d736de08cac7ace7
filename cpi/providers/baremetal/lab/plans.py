"""The lab's hardware plans: what kind of server each lab server is (firmware, disk bus, disks) and what the lab's
inventory says about it (``plan.boot_mode``, an inline storage ``layout`` or ``root_hints``).

``stemforge metal lab up --plans bios1,uefi2,hints3`` cycles the named plans over the servers:

* ``bios1``: SeaBIOS, one virtio disk of 8 GiB (whole-disk deploys).
* ``uefi2``: OVMF with a per-domain NVRAM (Debian's ``ovmf``: ``OVMF_CODE.fd`` read-only, ``OVMF_VARS.fd`` copied
  into the lab directory), two virtio disks of 8 GiB; the inventory gives an inline layout: RAID1 over both disks,
  an ESP on each (the one of the first disk mounted at ``/boot/efi``), ``md0`` -> ``vg0`` -> ``root`` ext4 ``fill``
  and 256 MiB swap, the config drive on the first disk (OVHcloud's and Ironic's software-RAID layouts).
* ``hints3``: SeaBIOS, three SCSI disks (virtio-scsi) of 6, 5 and 10 GiB with distinct serials, vendors and models
  (SCSI INQUIRY data, which the ramdisk reads from ``/sys/block/sdX/device/{vendor,model}``; virtio-blk has neither);
  the inventory's ``root_hints`` name the 6 GiB disk's serial (Ironic's root-device hints; the default rule would
  take the 5 GiB disk). The 6 GiB disk is first in the disk boot order: SeaBIOS boots only its first hard disk
  (sushy-tools' ``Hdd`` override orders the disks as the domain lists them), and the kernel names the SCSI disks
  in no fixed order, so the hints, not ``sda``, find it.

Without ``--plans`` every server is ``default``: what the lab had before plans existed (SeaBIOS, a 4 GiB and a 1 GiB
virtio disk, no hints: the provider's default root device, the smallest disk of at least 4 GiB, is the first).
Every disk of every plan has a boot order after the NICs (see :mod:`.domain`), so a server still boots when a disk
is removed (``metal lab disk detach``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

OVMF_CODE: Final = "/usr/share/OVMF/OVMF_CODE.fd"
OVMF_VARS: Final = "/usr/share/OVMF/OVMF_VARS.fd"
GIB: Final = 1024**3
UEFI2_SWAP_MIB: Final = 256
UEFI2_ESP_MIB: Final = 256


@dataclass(frozen=True)
class DiskPlan:
    size_gib: int
    vendor: str = ""  # SCSI INQUIRY vendor (at most 8 characters); SCSI disks only
    model: str = ""  # SCSI INQUIRY product (at most 16 characters); SCSI disks only


@dataclass(frozen=True)
class ServerPlan:
    """One kind of lab server. ``firmware``: ``bios`` (SeaBIOS) or ``uefi`` (OVMF); ``bus``: ``virtio`` (disks
    ``vda``, ``vdb``, ...) or ``scsi`` (virtio-scsi, disks ``sda``, ...)."""

    name: str
    firmware: str
    bus: str
    disks: tuple[DiskPlan, ...]

    def target(self, index: int) -> str:
        """The libvirt target (and the kernel name the guest gives the disk while all disks are present)."""
        prefix = "vd" if self.bus == "virtio" else "sd"
        return prefix + "abcdefghijklmnopqrstuvwxyz"[index]


PLANS: Final[Mapping[str, ServerPlan]] = {
    "default": ServerPlan("default", "bios", "virtio", (DiskPlan(4), DiskPlan(1))),
    "bios1": ServerPlan("bios1", "bios", "virtio", (DiskPlan(8),)),
    "uefi2": ServerPlan("uefi2", "uefi", "virtio", (DiskPlan(8), DiskPlan(8))),
    "hints3": ServerPlan(
        "hints3",
        "bios",
        "scsi",
        (DiskPlan(6, "SFLAB", "SF-ROOT-6G"), DiskPlan(5, "SFLAB", "SF-SMALL-5G"), DiskPlan(10, "SFLABX", "SF-BIG-10G")),
    ),
}
#: the hints3 disk the inventory's root_hints name (the 6 GiB one): the first in the firmware's disk boot order,
#: since SeaBIOS tries only its first hard disk (a BIOS server's boot disk is set in its setup, as on real hardware);
#: not the disk the default rule (the smallest disk of at least 4 GiB: the 5 GiB one) would pick
HINTS3_ROOT_INDEX: Final = 0


def parse_plans(value: str | Sequence[str] | None) -> list[str]:
    """``"bios1,uefi2"`` (or a list) -> the plan names, checked; None or empty -> ``["default"]``. Raises ValueError
    naming the unknown plan and the known ones."""
    if value is None:
        return ["default"]
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n).strip() for n in value]
    names = [n for n in names if n]
    if not names:
        return ["default"]
    for n in names:
        if n not in PLANS:
            raise ValueError(f"unknown plan {n!r} (known: {', '.join(sorted(PLANS))})")
    return names


def plan_for(names: Sequence[str], server_index: int) -> ServerPlan:
    """Plans are cycled over the servers."""
    return PLANS[names[server_index % len(names)]]


def uefi2_layout(serials: Sequence[str]) -> dict[str, Any]:
    """The ``uefi2`` server's layout (a :mod:`cpi.providers.baremetal.layout` document): RAID1 over both disks,
    ESP on each, LVM on the array, config drive on the first disk."""
    first, second = serials
    return {
        "boot_mode": "uefi",
        "disks": [
            {
                "id": "d0",
                "hints": {"serial": first},
                "partitions": [
                    {"id": "esp0", "size": UEFI2_ESP_MIB, "filesystem": "vfat", "mount": "/boot/efi", "esp": True},
                    {"id": "r0", "size": "fill"},
                ],
            },
            {
                "id": "d1",
                "hints": {"serial": second},
                "partitions": [
                    {"id": "esp1", "size": UEFI2_ESP_MIB, "filesystem": "vfat", "esp": True},
                    {"id": "r1", "size": "fill"},
                ],
            },
        ],
        "raid": [{"id": "md0", "level": 1, "devices": ["r0", "r1"]}],
        "lvm": [
            {
                "id": "vg0",
                "devices": ["md0"],
                "lvs": [
                    {"id": "swap", "size": UEFI2_SWAP_MIB, "filesystem": "swap"},
                    {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"},
                ],
            }
        ],
        "configdrive": {"disk": "d0"},
    }


def inventory_fields(plan_name: str, serials: Sequence[str]) -> dict[str, Any]:
    """What the lab's inventory adds for a server of this plan: ``plan_extra`` (merged into the node's ``plan``) and
    the node's own ``layout`` / ``root_hints``. The ``default`` plan adds nothing (the inventory of before)."""
    plan = PLANS[plan_name]
    out: dict[str, Any] = {"plan_extra": {}}
    if plan_name == "default":
        return out
    out["plan_extra"]["boot_mode"] = plan.firmware
    if plan_name == "uefi2":
        out["layout"] = uefi2_layout(serials)
    elif plan_name == "hints3":
        out["root_hints"] = {"serial": serials[HINTS3_ROOT_INDEX]}
    return out
