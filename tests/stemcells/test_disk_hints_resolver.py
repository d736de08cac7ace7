"""The test agent's disk resolution (``stemcells/testimage/diskresolve.sh``), run as it is under busybox sh against
recorded ``/dev`` + ``/sys`` layouts in a temporary root: bosh-agent's virtio ID resolver (glob on the
transformed CID), its mapped resolver (``/dev/sdX`` fallbacks, bounded wait) and the udev by-id links the
agent creates. No guest: these are the guest's own shell functions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTIMAGE = Path(__file__).resolve().parents[2] / "stemcells" / "testimage"
LIB = TESTIMAGE / "diskresolve.sh"
JSON_AWK = TESTIMAGE / "json.awk"
BUSYBOX = shutil.which("busybox")

pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed (scripts/setup.sh installs it)")

OPENSTACK = json.loads((TESTIMAGE / "agent.json").read_text())
NO_TRANSFORM = {"Platform": {"Linux": {"DevicePathResolutionType": "virtio"}}}
IDENTITY: dict[str, object] = {"Platform": {"Linux": {}}}
SCSI = {"Platform": {"Linux": {"DevicePathResolutionType": "scsi"}}}


@dataclass
class Outcome:
    rc: int
    dev: str
    how: str
    timeout: str
    err: str
    seconds: float


def layout(root: Path, disks: dict[str, str | None], *, parts: dict[str, int] | None = None,
           links: dict[str, str] | None = None) -> None:
    """A recorded guest: /dev/<name> for each disk (regular files: the resolver only tests existence),
    /sys/block/<name>/serial when the disk has one, partitions, and extra by-id links (name -> target)."""
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name, serial in disks.items():
        (root / "dev" / name).write_text("")
        sysdir = root / "sys" / "block" / name
        sysdir.mkdir(parents=True, exist_ok=True)
        if serial is not None:
            (sysdir / "serial").write_text(serial + "\n")
        for n in range(1, (parts or {}).get(name, 0) + 1):
            (sysdir / f"{name}{n}").mkdir()
            (sysdir / f"{name}{n}" / "partition").write_text(f"{n}\n")
            (root / "dev" / f"{name}{n}").write_text("")
    byid = root / "dev" / "disk" / "by-id"
    byid.mkdir(parents=True, exist_ok=True)
    for name, target in (links or {}).items():
        (byid / name).symlink_to(target)


def resolve(root: Path, config: object, disk_id: str, path: str, *, id_wait_ms: int | None = None,
            mapped_wait_ms: int = 30000, before: str = "") -> Outcome:
    cfg = root / "agent.json"
    cfg.write_text(json.dumps(config))
    script = (f'{before}\n. "$LIB"\ndr_load_config "$CFG" "$AWK" || exit 9\n'
              'dr_resolve "$ID" "$HPATH"; rc=$?\n'
              'printf "%s\\n%s\\n%s\\n%s\\n%s\\n" "$rc" "$DR_DEV" "$DR_HOW" "$DR_TIMEOUT" "$DR_ERR"\n')
    env = {"PATH": "/usr/bin:/bin", "LIB": str(LIB), "CFG": str(cfg), "AWK": str(JSON_AWK), "ID": disk_id,
           "HPATH": path, "DR_ROOT": str(root), "DR_MAPPED_WAIT_MS": str(mapped_wait_ms)}
    if id_wait_ms is not None:
        env["DR_ID_WAIT_MS"] = str(id_wait_ms)
    t0 = time.monotonic()
    proc = subprocess.run([str(BUSYBOX), "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    rc, dev, how, timeout, err = (proc.stdout.split("\n") + [""] * 5)[:5]
    return Outcome(int(rc), dev, how, timeout, err, seconds)


NEW_CID = "virtio-k7q2m4x9c1d5f"  # the libvirt CPI's disk CIDs: the by-id link name of the disk
LEGACY_CID = "disk-3f1c2a9e-6b7d-4e21-9a0c-5d8e7f6a1b2c"
UUID_CID = "05c185c6-e8a3-4216-ab30-1f5cf7d17f0d"

# (test id, config, layout (disks, parts, links), disk ID, hint path, expected (rc, dev, how), minimum seconds)
TABLE = [
    # the fix: the CID is the by-id link name udev makes from the serial, so the ID glob finds the right disk
    # whatever the guest calls it (no ephemeral disk: the disk is vdb although the CPI's old hint said vdc)
    ("openstack-new-cid-by-id", OPENSTACK, ({"vda": "rroot", "vdb": NEW_CID[7:]}, None, None),
     NEW_CID, "/dev/vdc", (0, "/dev/vdb", "id"), 0.0),
    ("openstack-new-cid-order-swapped", OPENSTACK,
     ({"vda": "rroot", "vdb": "other13serial", "vdc": NEW_CID[7:]}, None, None),
     NEW_CID, "/dev/vdb", (0, "/dev/vdc", "id"), 0.0),
    # a CID from before the fix (disk-<uuid>): the pattern does not match, the exact glob finds nothing, the ID
    # resolver times out (500 ms) and the hint path decides - the bug when that path is stale
    ("openstack-legacy-cid-path", OPENSTACK, ({"vda": "rroot", "vdb": "p1234567890abcdef012", "vdc": "px"}, None, None),
     LEGACY_CID, "/dev/vdb", (0, "/dev/vdb", "mapped"), 0.5),
    ("openstack-legacy-cid-stale-path-is-wrong-disk", OPENSTACK,
     ({"vda": "rroot", "vdb": "p1234567890abcdef012", "vdc": "pffff"}, None, None),
     LEGACY_CID, "/dev/vdc", (0, "/dev/vdc", "mapped"), 0.5),
    # OpenStack's transform: a UUID CID globs /dev/disk/by-id/scsi-<32 hex> exactly (recorded from a VMware-backed
    # OpenStack, bosh-linux-stemcell-builder agent.md); no "*" in front when a pattern is configured
    ("openstack-uuid-cid-transformed", OPENSTACK,
     ({"sda": None, "sdb": None}, None, {"scsi-05c185c6e8a34216ab301f5cf7d17f0d": "../../sdb"}),
     UUID_CID, "/dev/sdc", (0, "/dev/sdb", "id"), 0.0),
    ("openstack-uuid-cid-no-star", OPENSTACK,
     ({"sda": None, "sdb": None}, None, {"scsi-305c185c6e8a34216ab301f5cf7d17f0d": "../../sdb"}),
     UUID_CID, "/dev/sdb", (0, "/dev/sdb", "mapped"), 0.5),
    # no transform configured: the glob is *<CID>, so virtio-<CID> matches
    ("no-transform-star-glob", NO_TRANSFORM, ({"vda": None, "vdc": "abcdefghij0123456789"}, None, None),
     "abcdefghij0123456789", "/dev/vdb", (0, "/dev/vdc", "id"), 0.0),
    ("no-transform-two-matches-fall-back", NO_TRANSFORM,
     ({"vda": None, "vdb": "abcdefghij0123456789", "vdc": None},
      None, {"scsi-0abcdefghij0123456789": "../../vdc"}),
     "abcdefghij0123456789", "/dev/vdb", (0, "/dev/vdb", "mapped"), 0.0),
    # IDs bosh-agent rejects at once (no wait): empty (ephemeral, system) and shorter than 20 characters
    ("ephemeral-no-id-sd-maps-to-vd", OPENSTACK, ({"vda": "r", "vdb": "e"}, None, None),
     "", "/dev/sdb", (0, "/dev/vdb", "mapped"), 0.0),
    ("sd-prefers-xvd-then-vd", OPENSTACK, ({"xvdb": None, "vdb": None, "sdb": None}, None, None),
     "", "/dev/sdb", (0, "/dev/xvdb", "mapped"), 0.0),
    ("sd-falls-back-to-sd", OPENSTACK, ({"sda": None, "sdb": None}, None, None),
     "", "/dev/sdb", (0, "/dev/sdb", "mapped"), 0.0),
    ("short-id-rejected", OPENSTACK, ({"vda": None, "vdb": "short"}, None, None),
     "virtio-short", "/dev/vdb", (0, "/dev/vdb", "mapped"), 0.0),
    # a non-/dev/sd path is used as it is, even a by-id link (bosh-agent would then partition <link>1: broken)
    ("by-id-path-returned-verbatim", OPENSTACK, ({"vda": None, "vdb": "ser1"}, None, {"virtio-ser1": "../../vdb"}),
     "", "/dev/disk/by-id/virtio-ser1", (0, "/dev/disk/by-id/virtio-ser1", "mapped"), 0.0),
    ("identity-resolver", IDENTITY, ({"vda": None}, None, None),
     NEW_CID, "/dev/sdq", (0, "/dev/sdq", "identity"), 0.0),
    ("identity-needs-a-path", IDENTITY, ({"vda": None}, None, None), NEW_CID, "", (1, "", ""), 0.0),
    ("scsi-not-imitated", SCSI, ({"vda": None}, None, None), NEW_CID, "/dev/vda", (1, "", ""), 0.0),
]


@pytest.mark.parametrize(("config", "disks", "disk_id", "path", "expected", "min_s"),
                         [pytest.param(*row[1:], id=row[0]) for row in TABLE])
def test_resolution_table(tmp_path: Path, config: object, disks: tuple, disk_id: str, path: str,
                          expected: tuple[int, str, str], min_s: float) -> None:
    devs, parts, links = disks
    layout(tmp_path, devs, parts=parts, links=links)
    out = resolve(tmp_path, config, disk_id, path, mapped_wait_ms=300)
    assert (out.rc, out.dev, out.how) == expected, out
    assert out.seconds >= min_s, f"the ID resolver's 500 ms wait was skipped: {out}"
    if min_s == 0.0 and expected[2] == "mapped" and disk_id:
        assert out.seconds < 0.5 + 2.0, out  # no timeout needed: glob error or early reject


def test_mapped_resolver_times_out_after_its_wait(tmp_path: Path) -> None:
    layout(tmp_path, {"vda": "r"})
    out = resolve(tmp_path, OPENSTACK, "", "/dev/sdc", mapped_wait_ms=700)
    assert (out.rc, out.timeout) == (1, "true") and "Timed out getting real device path for /dev/sdc" in out.err
    assert 0.7 <= out.seconds < 5, out


def test_id_resolver_times_out_then_mapped_times_out(tmp_path: Path) -> None:
    layout(tmp_path, {"vda": "r"})
    out = resolve(tmp_path, OPENSTACK, NEW_CID, "/dev/vdq", id_wait_ms=400, mapped_wait_ms=400)
    assert out.rc == 1 and out.err.startswith("Resolving mapped device path: Timed out"), out
    assert out.seconds >= 0.8, out


def test_mapped_resolver_waits_for_a_late_device(tmp_path: Path) -> None:
    """The device appears 0.6 s after the resolver starts (a hot-plug still settling): found within the wait."""
    layout(tmp_path, {"vda": "r"})
    late = tmp_path / "dev" / "vdb"
    out = resolve(tmp_path, OPENSTACK, "", "/dev/sdb", mapped_wait_ms=5000,
                  before=f'(sleep 0.6; : > "{late}") &')
    assert (out.rc, out.dev, out.how) == (0, "/dev/vdb", "mapped"), out
    assert 0.6 <= out.seconds < 5, out


def test_id_resolver_waits_for_a_late_link(tmp_path: Path) -> None:
    """The disk shows up 0.2 s in (within the 500 ms wait): udevd links it meanwhile and the next glob finds it."""
    layout(tmp_path, {"vda": "r", "vdb": None})
    serial = tmp_path / "sys" / "block" / "vdb" / "serial"
    out = resolve(tmp_path, OPENSTACK, NEW_CID, "", id_wait_ms=3000,
                  before=f'(sleep 0.2; echo {NEW_CID[7:]} > "{serial}") &')
    assert (out.rc, out.dev, out.how) == (0, "/dev/vdb", "id"), out


def test_udev_links_follow_60_persistent_storage(tmp_path: Path) -> None:
    layout(tmp_path, {"vda": "rootserial", "vdb": "ab c/d", "vdc": None, "vdd": ""}, parts={"vda": 2})
    byid = tmp_path / "dev" / "disk" / "by-id"
    (byid / "virtio-gone").symlink_to("../../vdz")
    env = {"PATH": "/usr/bin:/bin", "DR_ROOT": str(tmp_path)}
    subprocess.run([str(BUSYBOX), "sh", "-c", f'. "{LIB}"; dr_udev_links'], env=env, check=True, timeout=30)
    links = {p.name: os.readlink(p) for p in byid.iterdir()}
    assert links == {"virtio-rootserial": "../../vda", "virtio-rootserial-part1": "../../vda1",
                     "virtio-rootserial-part2": "../../vda2", "virtio-ab_c_d": "../../vdb"}


def test_transform_is_go_replace_all_string(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"Platform": {"Linux": {"DevicePathResolutionType": "virtio",
                                                      "DiskIDTransformPattern": "^vol-(.+)$",
                                                      "DiskIDTransformReplacement":
                                                          "nvme-Amazon_Elastic_Block_Store_vol${1}&$1"}}}))
    script = f'. "{LIB}"; dr_load_config "{cfg}" "{JSON_AWK}"; dr_transform vol-0a1b; dr_transform disk-0a1b'
    out = subprocess.run([str(BUSYBOX), "sh", "-c", script], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, check=True, timeout=30).stdout.split()
    assert out == ["nvme-Amazon_Elastic_Block_Store_vol0a1b&0a1b", "disk-0a1b"]


# ---------------------------------------------------------------- the libvirt CPI's side of the contract

def test_new_disk_cids_resolve_by_id_under_every_virtio_config(tmp_path: Path) -> None:
    """A CID from create_disk is the by-id link of its own serial: the ID resolver finds it with the stock OpenStack
    agent.json and without a transform pattern, even when the hint path names another disk."""
    from cpi.providers.libvirt.provider import new_disk_cid

    cid, serial = new_disk_cid()
    assert cid == f"virtio-{serial}" and len(cid) == 20 and len(serial) <= 20
    assert serial.isalnum() and serial == serial.lower()
    assert new_disk_cid() != (cid, serial)
    for config in (OPENSTACK, NO_TRANSFORM):
        root = tmp_path / ("os" if config is OPENSTACK else "plain")
        layout(root, {"vda": "rroot", "vdb": "someoneelse0", "vdc": serial})
        out = resolve(root, config, cid, "/dev/vdb")
        assert (out.rc, out.dev, out.how) == (0, "/dev/vdc", "id"), out


def test_virtio_boot_names_follow_pci_order() -> None:
    from cpi.providers.libvirt.domain_xml import virtio_boot_names, virtio_name

    assert [virtio_name(i) for i in (0, 1, 25, 26, 27, 701)] == ["vda", "vdb", "vdz", "vdaa", "vdab", "vdzz"]

    def disk(serial: str | None, bus: int | None, target: str = "vdx", kind: str = "disk", tbus: str = "virtio") -> str:
        address = f"<address type='pci' domain='0x0000' bus='{bus:#04x}' slot='0x00' function='0x0'/>" if bus else ""
        ser = f"<serial>{serial}</serial>" if serial else ""
        return f"<disk type='file' device='{kind}'><target dev='{target}' bus='{tbus}'/>{ser}{address}</disk>"

    xml = ("<domain><devices>" + disk("root", 3) + disk("cd", None, "sda", "cdrom", "sata") + disk("p3", 9)
           + disk("eph", 4) + disk(None, 6) + disk("p1", 7) + "</devices></domain>")
    # root (bus 3), ephemeral (4), a disk without serial (6) takes vdc, then p1 (7), p3 (9); the CD-ROM is no vd*
    assert virtio_boot_names(xml) == {"root": "/dev/vda", "eph": "/dev/vdb", "p1": "/dev/vdd", "p3": "/dev/vde"}


def test_with_persistent_paths() -> None:
    from cpi import agent_settings

    settings = {"disks": {"system": "/dev/vda", "persistent": {"a": {"id": "x", "path": "/dev/vdc"}, "b": "/dev/vdd"}}}
    out = agent_settings.with_persistent_paths(settings, {"a": "/dev/vdb", "b": "/dev/vdc", "gone": "/dev/vdq"})
    assert out["disks"]["persistent"] == {"a": {"id": "x", "path": "/dev/vdb"}, "b": "/dev/vdc"}
    assert settings["disks"]["persistent"]["a"]["path"] == "/dev/vdc", "the input is not modified"


class _FakeDomain:
    """What ``_guest_path`` asks of a libvirt domain: running or not, and (when not) its XML."""

    def __init__(self, active: bool, xml: str = "<domain><devices/></domain>") -> None:
        self.active, self.xml = active, xml

    def isActive(self) -> bool:  # noqa: N802 - libvirt's name
        return self.active

    def XMLDesc(self, _flags: int) -> str:  # noqa: N802 - libvirt's name
        return self.xml


@pytest.mark.parametrize(("ephemeral", "others", "expected"), [
    (None, {}, "/dev/vdb"),  # the issue: without an ephemeral disk the first hot-plugged disk is the guest's vdb
    ({"path": "/dev/vdb", "id": "e"}, {}, "/dev/vdc"),
    (None, {"a": {"id": "x", "path": "/dev/vdb"}, "c": {"id": "y", "path": "/dev/vdd"}}, "/dev/vdc"),  # the gap
    (None, {"a": "/dev/vdb", "c": {"id": "y", "path": "/dev/vdc"}}, "/dev/vdd"),
])
def test_hint_path_is_the_lowest_free_name_of_a_running_guest(tmp_path: Path, ephemeral: object,
                                                             others: dict[str, object], expected: str) -> None:
    from cpi.providers.libvirt.provider import LibvirtProvider
    from cpi.state import StateStore

    provider = LibvirtProvider.__new__(LibvirtProvider)  # no libvirt connection needed for this part
    provider.state = StateStore(tmp_path)
    settings = {"disks": {"system": "/dev/vda", "ephemeral": ephemeral, "persistent": dict(others)}}
    with provider.state.transaction() as tx:
        tx.insert("vms", cid="vm-1", agent_id="a", stemcell_cid="sc", settings=settings, config_drive="/x-1.iso")
    assert provider._guest_path("vm-1", _FakeDomain(True), "new", "serial") == expected
    if others:  # a disk already listed keeps its name (attach_disk repeated)
        cid, hint = next(iter(others.items()))
        assert provider._guest_path("vm-1", _FakeDomain(True), cid, "s") == (hint if isinstance(hint, str)
                                                                            else hint["path"])  # type: ignore[index]


def test_hint_path_of_a_stopped_guest_is_its_boot_name(tmp_path: Path) -> None:
    from cpi.providers.libvirt.provider import LibvirtProvider
    from cpi.state import StateStore

    provider = LibvirtProvider.__new__(LibvirtProvider)
    provider.state = StateStore(tmp_path)
    xml = ("<domain><devices>"
           "<disk device='disk'><target dev='vda' bus='virtio'/><serial>r</serial>"
           "<address type='pci' domain='0' bus='1' slot='0' function='0'/></disk>"
           "<disk device='disk'><target dev='vdc' bus='virtio'/><serial>new</serial>"
           "<address type='pci' domain='0' bus='5' slot='0' function='0'/></disk>"
           "</devices></domain>")
    assert provider._guest_path("vm-x", _FakeDomain(False, xml), "d", "new") == "/dev/vdb"
