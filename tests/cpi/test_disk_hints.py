"""Persistent disk hints against a guest whose agent resolves disks exactly as the stock bosh-agent does with the
OpenStack stemcell's agent.json (the test image; stemcells/testimage/diskresolve.sh): real libvirt guests (TCG),
one without and one with an ephemeral disk, three persistent disks each, attached 1-2-3, the middle one detached
and re-attached, a reboot; on the guest without an ephemeral disk then the first detached (a gap the guest closes
at its next boot) and another reboot.

Every disk gets a marker at creation (an ext4 filesystem whose ``stemforge-marker`` file holds its CID, written
into the volume before the guest ever sees it); the agent reports, for each CID it mounts, the mounted
filesystem's marker and the device's serial, so "the right device" is checked from inside the guest. One disk per
VM has a CID from before the fix (``disk-<uuid>``, a hashed serial): bosh-agent cannot find it by ID and uses the
hint's path, so the path must be right too, including after the gap closes at a reboot."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cpi.providers.libvirt.provider import disk_serial
from stemcells.testimage.agent_events import read_events, wait_for
from tests.harness.libvirt import USER_NET, LibvirtCpi

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

AGENT_TIMEOUT = 240


@dataclass
class Guest:
    vm_cid: str
    console: Path
    ephemeral: bool
    disks: list[tuple[str, str]] = field(default_factory=list)  # (cid, serial) in creation order


def _marked_disk(cpi: LibvirtCpi, size_mib: int, *, legacy: bool) -> tuple[str, str]:
    """A raw persistent disk holding an ext4 filesystem whose ``stemforge-marker`` is the disk's CID. ``legacy``:
    re-keyed in the CPI's state to a pre-fix CID (``disk-<uuid>``) and serial, as a disk created by an older
    version of the CPI would be."""
    cid = cpi.ok("create_disk", size_mib, {"format": "raw"}, None)
    row = next(r for r in cpi.state_rows("disks") if r["cid"] == cid)
    serial = row["serial"]
    if legacy:
        old_cid = f"disk-{uuid.uuid4()}"
        serial = disk_serial(old_cid)
        db = sqlite3.connect(cpi.state_dir / "state.db")
        try:
            with db:
                db.execute("UPDATE disks SET cid = ?, serial = ? WHERE cid = ?", (old_cid, serial, cid))
        finally:
            db.close()
        cid = old_cid
    else:
        assert cid == f"virtio-{serial}" and len(cid) == 20, "a new disk's CID is its by-id link name"
    with tempfile.TemporaryDirectory() as content:
        (Path(content) / "stemforge-marker").write_text(cid + "\n")
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", content, str(cpi.pool_path / row["volume"])],
                       check=True, capture_output=True)
    return cid, serial


def _mounted(guest: Guest, cid: str, after: int, what: str) -> tuple[dict[str, Any], int]:
    return wait_for(guest.console, lambda e: e.get("event") == "disk" and e.get("cid") == cid, AGENT_TIMEOUT,
                    after=after, what=f"{what} ({cid})")


def _right_device(guest: Guest, event: dict[str, Any]) -> None:
    serial = dict(guest.disks)[event["cid"]]
    assert event["serial"] == serial and event["marker"] == event["cid"], (
        f"{event['cid']} was mounted on the wrong device: {event}")


@pytest.fixture(scope="module")
def guests(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> Iterator[dict[str, Guest]]:
    """Two guests booting side by side (one without, one with an ephemeral disk), three marked disks each."""
    cpi = libvirt_cpi
    made: dict[str, Guest] = {}
    try:
        for name, ephemeral in (("no-ephemeral", 0), ("ephemeral", 64)):
            vm_cid, _ = cpi.ok("create_vm", f"agent-hints-{name}", stemcell_cid,
                               {"cpu": 1, "ram": 192, "ephemeral_disk_size": ephemeral},
                               {"n": {"type": "dynamic", **USER_NET}}, [], {})
            made[name] = Guest(vm_cid, cpi.console(vm_cid), bool(ephemeral))
        for name, guest in made.items():
            for n in range(3):
                guest.disks.append(_marked_disk(cpi, 24 + n, legacy=(n == (1 if name == "no-ephemeral" else 0))))
        yield made
    finally:
        conn = cpi.libvirt()
        try:
            for guest in made.values():  # CPU the guest used: the test's cost on an idle machine, whatever the load
                with contextlib.suppress(Exception):
                    used = conn.lookupByName(guest.vm_cid).getCPUStats(True)[0]["cpu_time"] / 1e9
                    print(f"\n[{guest.vm_cid} ephemeral={guest.ephemeral}] guest CPU time {used:.1f}s")
        finally:
            conn.close()
        for guest in made.values():
            cpi.call("delete_vm", guest.vm_cid)
            for cid, _ in guest.disks:
                cpi.call("delete_disk", cid)


def test_hints_resolve_to_the_right_disk(libvirt_cpi: LibvirtCpi, guests: dict[str, Guest]) -> None:
    """The whole flow on both guests at once (each guest is one single-threaded TCG process)."""
    with ThreadPoolExecutor(max_workers=len(guests)) as pool:
        for future in [pool.submit(_flow, libvirt_cpi, guest, gap=not guest.ephemeral) for guest in guests.values()]:
            future.result()


def _flow(cpi: LibvirtCpi, guest: Guest, *, gap: bool) -> None:
    """Attach 1-2-3, detach and re-attach 2, reboot; with ``gap``: detach 1 and reboot again."""
    (d1, _), (d2, _), (d3, _) = guest.disks
    t0 = time.monotonic()

    def step(what: str) -> None:
        print(f"[{guest.vm_cid} ephemeral={guest.ephemeral}] {time.monotonic() - t0:6.1f}s {what}")

    ready, at = wait_for(guest.console, lambda e: e.get("event") == "ready", AGENT_TIMEOUT, what="agent ready")
    assert ready["device_path_resolution"] == "virtio", "the image must carry the stock OpenStack agent.json"
    events = read_events(guest.console)
    if guest.ephemeral:
        eph = next(e for e in events if e.get("event") == "disk" and e.get("kind") == "ephemeral")
        assert (eph["device"], eph["resolved_by"], eph["mounted"]) == ("/dev/vdb", "mapped", "/var/vcap/data")
    else:  # ephemeral: null - as bosh-agent, nothing to resolve (no "pending" ephemeral disk)
        assert not [e for e in events if e.get("kind") == "ephemeral"], events

    # attach 1-2-3 (each attach rewrites the config drive; the agent re-reads it, as mount_disk does)
    hints = {}
    for cid in (d1, d2, d3):
        hints[cid] = cpi.ok("attach_disk", guest.vm_cid, cid)
        event, at = _mounted(guest, cid, at + 1, "attached disk mounted")
        _right_device(guest, event)
        legacy = cid.startswith("disk-")
        assert event["resolved_by"] == ("mapped" if legacy else "id"), event
    step("three disks attached and mounted")
    first = "/dev/vdc" if guest.ephemeral else "/dev/vdb"
    assert [hints[c]["path"] for c in (d1, d2, d3)] == [first, *(f"/dev/vd{chr(ord(first[-1]) + i)}" for i in (1, 2))]

    # the middle one leaves and comes back
    cpi.ok("detach_disk", guest.vm_cid, d2)
    wait_for(guest.console, lambda e: e.get("event") == "disk-removed" and e.get("cid") == d2, AGENT_TIMEOUT,
             after=at + 1, what="disk 2 removed")
    assert cpi.ok("attach_disk", guest.vm_cid, d2)["path"] == hints[d2]["path"]
    event, at = _mounted(guest, d2, at + 1, "re-attached disk mounted")
    _right_device(guest, event)
    step("disk 2 detached and re-attached")

    # reboot: every disk found again, on its own device
    cpi.ok("reboot_vm", guest.vm_cid)
    before = at
    _, at = wait_for(guest.console, lambda e: e.get("event") == "ready" and e.get("boot") == 2, AGENT_TIMEOUT,
                     after=at + 1, what="ready after the reboot")
    boot2 = {e["cid"]: e for e in read_events(guest.console)[before + 1:at] if e.get("event") == "disk"
             and e.get("kind") == "persistent"}
    for cid in (d1, d2, d3):
        _right_device(guest, boot2[cid])
        assert boot2[cid]["marker_existed"] is True
    step("rebooted")
    if not gap:
        return

    # the first one leaves: a gap at the front, which the guest closes at its next boot (disk 2 and 3 get new
    # names): reboot_vm rewrites the hints before the reset, so even the legacy disk's path stays right
    cpi.ok("detach_disk", guest.vm_cid, d1)
    wait_for(guest.console, lambda e: e.get("event") == "disk-removed" and e.get("cid") == d1, AGENT_TIMEOUT,
             after=at + 1, what="disk 1 removed")
    cpi.ok("reboot_vm", guest.vm_cid)
    before = at
    _, at = wait_for(guest.console, lambda e: e.get("event") == "ready" and e.get("boot") == 3, AGENT_TIMEOUT,
                     after=at + 1, what="ready after the second reboot")
    boot3 = [e for e in read_events(guest.console)[before + 1:at]
             if e.get("event") in ("disk", "disk-pending", "error")]
    boot3_disks = {e["cid"]: e for e in boot3 if e.get("event") == "disk" and e.get("kind") == "persistent"}
    assert set(boot3_disks) >= {d2, d3}, boot3
    for cid in (d2, d3):
        _right_device(guest, boot3_disks[cid])
    step("disk 1 detached, rebooted")
    vm = next(r for r in cpi.state_rows("vms") if r["cid"] == guest.vm_cid)
    assert d1 not in vm["settings"], "the detached disk must leave the settings"
