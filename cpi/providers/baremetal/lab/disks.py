"""``stemforge metal lab disk detach|attach``: pull a disk out of a powered-off lab server and put it back (a failed
and replaced RAID member, as the degraded-array tests need).

The disk's volume file stays where it is (its data untouched); only the domain's definition changes: the lab
re-defines the domain from ``lab.json`` with the disk's ``attached`` flag flipped (the same document ``up`` made, so
the NICs boot first and every remaining disk keeps a boot order after them; a boot override sushy-tools had set is
reset to that). Refused while the server runs (a real server's disk is swapped with the power off; QEMU would keep
the file open), for an index the server does not have, or for a disk already in the asked state.
"""

from __future__ import annotations

import os
import re
from typing import Any

from cpi.providers.baremetal.lab import domain as lab_domain
from cpi.providers.baremetal.lab import virt
from cpi.providers.baremetal.lab.record import LabError, LabRecord, load
from cpi.providers.baremetal.lab.steps import domain_spec


def find_server(rec: LabRecord, server: str) -> dict[str, Any]:
    """A server of the lab by domain name, ``s<n>`` or ``<n>``; LabError naming the known ones otherwise."""
    for s in rec.servers:
        if server == s["name"] or re.fullmatch(r"s?\d+", server) and s["name"].endswith(f"-s{server.lstrip('s')}"):
            return s
    names = ", ".join(s["name"] for s in rec.servers)
    raise LabError(f"server: lab {rec.id} has no server {server!r} (its servers: {names})")


def set_attached(
    lab_id: str | None,
    server: str,
    index: int,
    attached: bool,
    *,
    lab_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Detach (``attached=False``) or attach disk ``index`` of ``server``; returns the disk's record entry."""
    import libvirt

    rec = load(lab_id, lab_dir)
    entry = find_server(rec, server)
    disks = entry["disks"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(disks):
        raise LabError(f"index: {entry['name']} has disks 0 to {len(disks) - 1}, got {index!r}")
    disk = disks[index]
    if bool(disk.get("attached", True)) == attached:
        raise LabError(f"index: disk {index} of {entry['name']} is already {'attached' if attached else 'detached'}")
    with virt.connect() as conn:
        try:
            dom = conn.lookupByName(entry["name"])
        except libvirt.libvirtError:
            raise LabError(f"server: domain {entry['name']} does not exist (is lab {rec.id} up?)") from None
        if dom.isActive():
            raise LabError(f"server: {entry['name']} is running; power it off first (a disk is swapped powered off)")
        disk["attached"] = attached
        try:
            conn.defineXML(lab_domain.domain(domain_spec(rec, entry)))
        except libvirt.libvirtError as exc:
            disk["attached"] = not attached
            raise LabError(f"server: redefining {entry['name']} failed: {exc}") from None
    rec.save()
    return dict(disk)
