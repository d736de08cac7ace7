"""A server's plan disks as the provider sees them: the root disk the root-device hints select (Ironic's rules,
:mod:`.root_hints`, the rules ``metal serve`` applies to the disks the ramdisk finds) and the stable name the
installed OS gives it (``disks.system`` of the agent settings)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cpi.providers.baremetal import root_hints
from cpi.providers.baremetal.store import Node

#: What udev keeps of a character in a ``/dev/disk/by-id`` link name (``udev_replace_chars``: the rest becomes ``_``).
_UDEV_KEEP = re.compile(r"[^0-9A-Za-z#+\-.:=@_]")


def _udev(text: str) -> str:
    return _UDEV_KEEP.sub("_", text.strip())


def by_id_path(disk: Mapping[str, Any]) -> str | None:
    """The ``/dev/disk/by-id`` link udev (systemd's ``60-persistent-storage.rules``) makes in the installed OS for a
    plan disk (``name``, ``serial``, ``wwn``, ``model``, as enrolled or as the ramdisk reports them), or None when
    the fields do not determine one: ``virtio-<serial>`` for ``vd*``, ``nvme-<model>_<serial>`` for ``nvme*``,
    ``wwn-0x<wwn>`` for any disk with a WWN (``0x…`` or ``naa.…`` as sysfs shows it)."""
    name = str(disk.get("name") or "").removeprefix("/dev/")
    serial = str(disk.get("serial") or "").strip()
    model = str(disk.get("model") or "").strip()
    wwn = str(disk.get("wwn") or "").strip().lower()
    if name.startswith("vd") and serial:
        return f"/dev/disk/by-id/virtio-{_udev(serial)}"
    if name.startswith("nvme") and serial and model:
        return f"/dev/disk/by-id/nvme-{_udev(model)}_{_udev(serial)}"
    for prefix in ("0x", "naa."):
        if wwn.startswith(prefix) and len(wwn) > len(prefix):
            return f"/dev/disk/by-id/wwn-0x{_udev(wwn[len(prefix) :])}"
    return None


def system_disk_hint(root: Mapping[str, Any]) -> str:
    """``disks.system`` of the agent settings: the root disk's stable by-id path, else its enrolled kernel name.

    A stock bosh-agent finds its root disk from the ``/`` mount, not from this field; it is what operators and
    tools read, so it names the disk the way every boot of the server resolves the same (``/dev/sdX`` kernel names
    change with probe order on real servers; by-id names do not)."""
    return by_id_path(root) or str(root.get("name") or "")


def root_disk(node: Node) -> dict[str, Any]:
    """The plan disk the root-device hints select with Ironic's rules (``root_hints.py``, the rules ``metal serve``
    applies to the disks the ramdisk finds); a plan that does not describe a hinted field gets the default (the
    smallest disk of at least 4 GiB, else the smallest). The returned dict is one of ``node.plan["disks"]``."""
    disks: list[dict[str, Any]] = list(node.plan.get("disks", []))
    devices = [{**d, "size": int(float(d.get("size_gib", 0)) * root_hints.GIB)} for d in disks]
    for hints in (node.root_hints, None):
        try:
            chosen = root_hints.select_root_device(devices, hints)
        except (root_hints.NoRootDevice, root_hints.RootHintsError):
            continue
        return disks[next(i for i, d in enumerate(devices) if d is chosen)]
    return min(disks, key=lambda d: float(d.get("size_gib", 0))) if disks else {}
