"""The deploy ramdisk's file-based deploy onto a storage layout (``ramdisk/layout.sh``) and its multi-disk cleaning,
for real: the ramdisk built from Debian packages, booted in plain QEMU (TCG) with two raw disk files, talking to the
provisioning stub of ``tests/harness/ramdisk_rig.py`` (its ``layout`` route and GETs of the image), deploying
the cached Debian bookworm test image (``builders.builder_types.debian.build_test_debian_image``: GRUB for BIOS,
cloud-init with the config-drive data source, no mdadm/lvm2).

* plain partitions over two disks (``/`` on the first, ``/var`` and swap on the second, BIOS): the image's root
  partition streamed and grown, /var's files moved into their own filesystem, fstab by UUID, GRUB installed; the
  deployed disks then BOOT in the rig and the OS comes up with the config drive's hostname (cloud-init read it);
* RAID1 + LVM with an image lacking mdadm and lvm2 (:func:`tests.harness.ramdisk_rig.tiny_root_image`: a 64 MiB
  ext4 root filesystem made on the host with update-initramfs, grub-install and GRUB's i386-pc directory but
  neither mdadm nor lvm; it streams in seconds where the Debian one takes minutes under TCG): the array and VG are
  built, the root filesystem streamed, checked and grown, then stage ``target`` fails naming mdadm and lvm2 (and
  nothing the image has); the same two disks are then CLEANED: arrays, VGs and every signature gone, read back on
  the host;
* RAID 10 over four disks (LVM: / ext4 and /srv xfs) and RAID 0 over two of them (xfs at /scratch) from the tiny
  image: both arrays, the VG and the xfs filesystems are made (read on the host: the md superblock of every
  member, libblkid finds both xfs superblocks), stage ``target`` fails naming mdadm and lvm2, then the four disks
  are cleaned and read back clean;
* RAID1 + LVM with the bare-metal variant of the image (``build_test_debian_image(variant="metal")``: mdadm, lvm2):
  the whole deploy, GRUB on both member disks, then the OS boots from the mirror;
* a malformed answer line is refused before anything is written (the tiny image: it is never fetched).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpi.providers.baremetal.instructions import render_layout_answer
from cpi.providers.baremetal.ramdisk import build as rdb
from tests.harness import ramdisk_rig as rig

pytestmark = [
    pytest.mark.metal,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"),
]

MIB = 1024 * 1024
GIB = 1024 * MIB
# s under TCG on a shared 2-core machine: the root filesystem's gzip streamed, inflated and hashed (~1.2 GiB at
# 20-30 MiB/s), grub-install in a chroot; the image's initramfs and grub.cfg are kept (an update-initramfs here
# would take ~20 min: layout.sh initramfs_current)
DEPLOY_TIMEOUT = 1200.0
#: ``rig.layout_deploy`` arguments of a deploy of the Debian image that then boots
WHOLE_DEPLOY: dict[str, Any] = {"timeout": DEPLOY_TIMEOUT, "memory_mib": 1024}
MD_MAGIC = bytes.fromhex("fc4e2ba9")  # md superblock magic 0xa92b4efc, little-endian


@pytest.fixture(scope="module")
def ramdisk() -> rdb.RamdiskArtifacts:
    return rdb.ensure_ramdisk(progress=print)


@pytest.fixture(scope="module")
def debian_raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default Debian test image (no mdadm, no lvm2) as metal serve would serve it (:func:`served_image`)."""
    from builders.builder_types.debian import build_test_debian_image

    return served_image(build_test_debian_image(), tmp_path_factory.mktemp("debian"))


@pytest.fixture(scope="module")
def metal_raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bare-metal variant of the test image (mdadm, lvm2, GRUB for BIOS and UEFI), served likewise."""
    import inspect

    from builders.builder_types.debian import build_test_debian_image

    if "variant" not in inspect.signature(build_test_debian_image).parameters:
        pytest.skip("build_test_debian_image(variant='metal') is not there yet")
    return served_image(build_test_debian_image(variant="metal"), tmp_path_factory.mktemp("metal"))


#: What the tiny image (:func:`tiny_root`) has of what ``lay_requirements`` (``ramdisk/layout.sh``) checks for a
#: BIOS layout: everything but mdadm and lvm
TINY_PROGRAMS = ("update-initramfs", "grub-install")
TINY_DIRS = ("usr/lib/grub/i386-pc",)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 64 MiB root filesystem without mdadm and lvm2 in a small GPT image, served like :func:`served_image`."""
    return rig.tiny_root_image(tmp_path_factory.mktemp("tiny"), programs=TINY_PROGRAMS, dirs=TINY_DIRS)


def served_image(qcow: Path, work: Path) -> dict[str, Any]:
    """``qcow``'s root filesystem as metal serve streams it to a layout deploy (``rootfs_format: gzip``): made
    by the code create_stemcell runs (stemcell_images: the largest ext4 partition of the raw disk, copied out,
    checked, shrunk to its minimum, its free blocks punched out, gzipped); ``size`` is the inflated size, ``sha256``
    that of the gzip bytes, as the ramdisk's stream checks them."""
    from cpi.providers.baremetal import stemcell_images

    full = work / "full.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow), str(full)], check=True, timeout=600)
    rootfs = stemcell_images.root_partition(full)
    assert rootfs is not None, f"{qcow} has no ext4 partition"
    shrunk = work / "root.ext4"
    size = stemcell_images.shrunk_rootfs(full, rootfs, shrunk)
    assert size is not None, "e2fsprogs is missing on the host"
    full.unlink()
    stream = stemcell_images.gzip_file(shrunk, work / "root.ext4.gz")
    shrunk.unlink()
    return {"path": work / stream["path"], "offset": 0, "size": size, "sha256": stream["sha256"], "format": "gzip"}


#: Plain partitions over two disks, BIOS: / on the first, /var (the image's files moved into it) and swap on the
#: second; a bios_grub partition on each (GRUB goes only where / is).
PLAIN_BIOS: dict[str, Any] = {
    "boot_mode": "bios",
    "disks": [
        {"id": "d0", "hints": {"serial": "sf-lay-0"}, "partitions": [
            {"id": "grub0", "size": 1, "bios_grub": True},
            {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"},
        ]},
        {"id": "d1", "hints": {"serial": "sf-lay-1"}, "partitions": [
            {"id": "grub1", "size": 1, "bios_grub": True},
            {"id": "var", "size": 1024, "filesystem": "ext4", "mount": "/var"},
            {"id": "swap0", "size": 256, "filesystem": "swap"},
        ]},
    ],
    "configdrive": {"disk": "d0"},
}  # fmt: skip

#: RAID1 over both disks, LVM on the array (root fill + swap), BIOS: GRUB on both disks.
RAID1_LVM_BIOS: dict[str, Any] = {
    "boot_mode": "bios",
    "disks": [
        {"id": "d0", "hints": {"serial": "sf-raid-0"}, "partitions": [
            {"id": "grub0", "size": 1, "bios_grub": True}, {"id": "r0", "size": "fill"}]},
        {"id": "d1", "hints": {"serial": "sf-raid-1"}, "partitions": [
            {"id": "grub1", "size": 1, "bios_grub": True}, {"id": "r1", "size": "fill"}]},
    ],
    "raid": [{"id": "md0", "level": 1, "devices": ["r0", "r1"]}],
    "lvm": [{"id": "vg0", "devices": ["md0"], "lvs": [
        {"id": "swap", "size": 256, "filesystem": "swap"},
        {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"}]}],
    "configdrive": {"disk": "d0"},
}  # fmt: skip

#: RAID 10 over four disks holding LVM (root ext4 fill + /srv xfs), RAID 0 over a second partition of the first two
#: disks holding xfs directly (/scratch), BIOS: a bios_grub partition on every disk (/ lives on all four).
RAID10_RAID0_XFS_BIOS: dict[str, Any] = {
    "boot_mode": "bios",
    "disks": [
        {"id": f"d{i}", "hints": {"serial": f"sf-r10-{i}"}, "partitions": [
            {"id": f"grub{i}", "size": 1, "bios_grub": True},
            *([{"id": f"s{i}", "size": 200}] if i < 2 else []),
            {"id": f"r{i}", "size": "fill"}]}
        for i in range(4)
    ],
    "raid": [
        {"id": "md0", "level": 10, "devices": ["r0", "r1", "r2", "r3"]},
        {"id": "md1", "level": 0, "devices": ["s0", "s1"], "filesystem": "xfs", "mount": "/scratch"},
    ],
    "lvm": [{"id": "vg0", "devices": ["md0"], "lvs": [
        {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"},
        {"id": "srv", "size": 320, "filesystem": "xfs", "mount": "/srv"}]}],
    "configdrive": {"disk": "d0"},
}  # fmt: skip


def stages(stub: rig.ProvisioningStub) -> list[str]:
    return stub.stages()


def event(stub: rig.ProvisioningStub, name: str) -> dict[str, Any]:
    return next(e for e in stub.events if e.get("kind") == "stage" and e["stage"] == name)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def gpt(path: Path) -> dict[str, Any]:
    out = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, check=True).stdout
    return dict(json.loads(out)["partitiontable"])


def blkid_at(path: Path, offset: int, size: int) -> str:
    """The signature libblkid finds at ``offset`` (``size`` bytes) of ``path``, '' when none."""
    out = subprocess.run(
        ["blkid", "-p", "-o", "udev", "-O", str(offset), "-S", str(size), str(path)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return " ".join(line for line in out.splitlines() if line.startswith(("ID_FS_TYPE=", "ID_PART_TABLE_TYPE=")))


def clean_and_read_back(
    tmp_path: Path, ramdisk: rdb.RamdiskArtifacts, disks: list[rig.Disk], before: list[list[dict[str, Any]]]
) -> str:
    """Run a clean job on ``disks`` (the ramdisk's ``clean.sh``) and read every disk back on the host: each disk
    reported ``disk-wiped`` and verified, no partition table, no signature anywhere libblkid looks on the disk, the
    first and last MiB zeros, and in every region a partition had before (``before``: each disk's ``sfdisk --json``
    partitions) no signature, no md superblock (v1.2, 4 KiB in) and no LVM label. Returns stage ``done``'s
    ``torn_down`` (the arrays, VGs and LVs taken apart)."""
    with rig.ProvisioningStub() as stub:
        stub.instructions = {"mode": "clean", "heartbeat_s": 5}
        result = rig.run_ramdisk(tmp_path, "clean", stub, ramdisk, disks, timeout=900, memory_mib=512)
    assert result["ok"] is True, result
    wiped = {e["data"]["serial"]: e["data"] for e in stub.events if (e["kind"], e["stage"]) == ("stage", "disk-wiped")}
    assert sorted(wiped) == sorted(d.serial for d in disks) and all(w["verified"] for w in wiped.values()), wiped
    for d, parts in zip((d.path for d in disks), before, strict=True):
        size = d.stat().st_size
        table = subprocess.run(["sfdisk", "--json", str(d)], capture_output=True, check=False)
        assert table.returncode != 0 or not json.loads(table.stdout)["partitiontable"].get("partitions")
        assert blkid_at(d, 0, size) == ""
        assert read_at(d, 0, MIB) == bytes(MIB) and read_at(d, size - MIB, MIB) == bytes(MIB)
        for p in parts:
            start, length = p["start"] * 512, p["size"] * 512
            assert blkid_at(d, start, length) == "", (d, p)
            assert read_at(d, start + 4096, 4) != MD_MAGIC, (d, p)
            assert b"LABELONE" not in read_at(d, start, 4 * MIB), (d, p)
    return str(event(stub, "done")["data"]["torn_down"])


#: md's version-1 superblock (``struct mdp_superblock_1``, Linux ``include/uapi/linux/raid/md_p.h``): metadata
#: 1.2 puts it 4 KiB into the member; little-endian fields at these byte offsets.
MD_SB_OFFSET = 4096
MD_LEVELS = {0: "raid0", 1: "raid1", 4: "raid4", 5: "raid5", 6: "raid6", 10: "raid10"}


def md_examine(path: Path, part: dict[str, Any]) -> dict[str, str]:
    """What ``mdadm --examine`` shows of the member partition ``part`` (``sfdisk --json``'s entry) of the disk
    file ``path``, read from its 1.2 superblock on the host (no mdadm there, nothing assembled): ``Raid Level``,
    ``Raid Devices``, ``Layout`` (RAID 10: ``near=N``), ``Name``, ``Array UUID``, ``Device Role``, ``Data Offset``."""
    sb = read_at(path, int(part["start"]) * 512 + MD_SB_OFFSET, 1024)
    magic, major = struct.unpack_from("<II", sb, 0)
    assert (magic, major) == (0xA92B4EFC, 1), f"{path} {part}: no md 1.x superblock at 4 KiB"
    level, layout = struct.unpack_from("<iI", sb, 72)
    raid_disks = struct.unpack_from("<I", sb, 92)[0]
    data_offset = struct.unpack_from("<Q", sb, 128)[0]
    dev_number = struct.unpack_from("<I", sb, 160)[0]
    role = struct.unpack_from("<H", sb, 256 + 2 * dev_number)[0]
    out = {
        "Raid Level": MD_LEVELS.get(level, str(level)),
        "Raid Devices": str(raid_disks),
        "Name": sb[32:64].rstrip(b"\0").decode(),
        "Array UUID": sb[16:32].hex(),
        "Device Role": f"Active device {role}" if role < 0xFFFE else "spare/faulty",
        "Data Offset": f"{data_offset} sectors",
    }
    if level == 10:
        out["Layout"] = f"near={layout & 0xFF}" if layout >> 8 == 1 else f"far/offset layout {layout:#x}"
    return out


def md_data_start(part: dict[str, Any], examined: dict[str, str]) -> int:
    """The byte offset in its disk file of the data area of the md member ``part`` (its ``Data Offset``)."""
    sectors = examined["Data Offset"].split()[0]
    return int(part["start"]) * 512 + int(sectors) * 512


def xfs_superblock_near(path: Path, start: int, span: int) -> int:
    """The offset in ``path`` of the first xfs superblock (magic ``XFSB``, sector aligned) in ``span`` bytes from
    ``start`` that libblkid also reads as xfs, or -1."""
    data = read_at(path, start, span)
    at = data.find(b"XFSB")
    while at >= 0:
        if at % 512 == 0 and "ID_FS_TYPE=xfs" in blkid_at(path, start + at, 64 * MIB):
            return start + at
        at = data.find(b"XFSB", at + 1)
    return -1


@pytest.fixture(autouse=True)
def _print_duration() -> Iterator[None]:
    t = time.monotonic()
    yield
    print(f"[test took {time.monotonic() - t:.1f}s]")


# ---------------------------------------------------------------- plain partitions: deploy, then the OS boots


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_layout_deploy_on_two_disks_then_the_os_boots(
    ramdisk: rdb.RamdiskArtifacts, debian_raw: dict[str, Any], tmp_path: Path
) -> None:
    disks = rig.sparse_disks(tmp_path, ("sf-lay-0", 4 * GIB), ("sf-lay-1", 3 * GIB))
    d0, d1 = (d.path for d in disks)
    with rig.layout_deploy(tmp_path, "layout", ramdisk, debian_raw, PLAIN_BIOS, disks, hostname="sf-layout-1",
                           **WHOLE_DEPLOY) as deployed:  # fmt: skip
        stub, result, iso = deployed.stub, deployed.result, deployed.configdrive
        assert result["ok"] is True, result
        assert stages(stub) == [
            "booted", "disk-selected", "layout-built", "rootfs-written", "checksum-ok", "target-configured",
            "bootloader-installed", "configdrive-written", "done",
        ]  # fmt: skip
        gets = [r for r in stub.requests if r.startswith("GET /images/")]
        assert len(gets) == 1  # one GET of the root filesystem's gzip, not the whole image
        roles = {d["name"]: d["roles"] for d in event(stub, "disk-selected")["data"]["disks"]}
        assert roles == {"vda": ["grub0:bios_grub", "root:linux", "configdrive"], "vdb": [
            "grub1:bios_grub", "var:linux", "swap0:swap"]}  # fmt: skip
        written = event(stub, "rootfs-written")["data"]
        assert written["bytes"] == debian_raw["size"] and written["sha256"] == debian_raw["sha256"]
        assert written["device"] == "/dev/vda2"
        fstab = event(stub, "target-configured")["data"]["fstab"]
        assert " / ext4 " in fstab and " /var ext4 " in fstab and " swap " in fstab and "UUID=" in fstab
        assert event(stub, "bootloader-installed")["data"]["disks"] == "vda"
        print(f"layout deploy: {deployed.seconds:.1f}s, root stream {written['mib_per_s']} MiB/s")

        # the disks read back on the host: GPT, the config drive last on d0, swap and /var on d1
        t0_ = gpt(d0)
        parts0 = t0_["partitions"]
        assert t0_["label"] == "gpt" and [p["name"] for p in parts0] == ["grub0", "root", "config-2"]
        assert parts0[0]["type"] == "21686148-6449-6E6F-744E-656564454649"
        assert parts0[2]["start"] + parts0[2]["size"] - 1 == t0_["lastlba"]
        assert read_at(d0, parts0[2]["start"] * 512, iso.stat().st_size) == iso.read_bytes()
        assert read_at(d0, 0x1FE, 2) == b"\x55\xaa" and read_at(d0, 0, 440) != bytes(440)  # GRUB's boot.img
        parts1 = gpt(d1)["partitions"]
        assert [p["name"] for p in parts1] == ["grub1", "var", "swap0"]
        assert "ext4" in blkid_at(d1, parts1[1]["start"] * 512, parts1[1]["size"] * 512)
        assert "swap" in blkid_at(d1, parts1[2]["start"] * 512, parts1[2]["size"] * 512)
        verify = subprocess.run(["sfdisk", "--verify", str(d0)], capture_output=True, text=True, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # the deployed disks boot (SeaBIOS -> GRUB on d0 -> the Debian kernel; /var from d1) and cloud-init read
        # the config drive: the host name is the config drive's
        console = deployed.boot_os("firstboot", 600)
    assert stub.token not in console
    assert "DataSourceConfigDrive" in console or "sf-layout-1" in console


# ---------------------------------------------------------------- RAID1 + LVM without mdadm, then clean


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_raid_layout_needs_mdadm_in_the_image_then_clean_takes_every_disk_apart(
    ramdisk: rdb.RamdiskArtifacts, tiny_root: dict[str, Any], tmp_path: Path
) -> None:
    disks = rig.sparse_disks(tmp_path, ("sf-raid-0", 4 * GIB), ("sf-raid-1", 4 * GIB))
    d0, d1 = (d.path for d in disks)
    with rig.layout_deploy(tmp_path, "raid", ramdisk, tiny_root, RAID1_LVM_BIOS, disks, hostname="sf-raid",
                           timeout=1200, memory_mib=1024) as deployed:  # fmt: skip
        stub, result = deployed.stub, deployed.result
    print(f"RAID1+LVM layout deploy up to stage target: {deployed.seconds:.1f}s")
    assert result["ok"] is False and result["stage"] == "target", result
    assert "mdadm" in result["message"] and "lvm2" in result["message"], result
    assert not any(p in result["message"] for p in (*TINY_PROGRAMS, *TINY_DIRS)), result  # what the image has
    assert stages(stub)[-3:] == ["layout-built", "rootfs-written", "checksum-ok"]
    written = event(stub, "rootfs-written")["data"]
    assert written["bytes"] == tiny_root["size"] and written["sha256"] == tiny_root["sha256"], written
    built = event(stub, "layout-built")["data"]
    assert built["arrays"] == 1 and built["volume_groups"] == 1 and built["root"] == "/dev/vg0/root"
    # what the failed deploy left: an md RAID1 over both disks' second partitions holding LVM, no boot code
    before = [gpt(d)["partitions"] for d in (d0, d1)]
    for d, parts in zip((d0, d1), before, strict=True):
        assert parts[1]["type"] == "A19D880F-05FC-4D3B-A006-743F0F84911E"
        assert read_at(d, parts[1]["start"] * 512 + 4096, 4) == MD_MAGIC
        assert read_at(d, 0, 440) == bytes(440)

    torn = clean_and_read_back(tmp_path, ramdisk, disks, before)
    assert "vg:vg0" in torn and "md:" in torn and "lv:/dev/vg0/root" in torn, torn


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_raid10_raid0_xfs_layout_needs_mdadm_in_the_image_then_clean_takes_every_disk_apart(
    ramdisk: rdb.RamdiskArtifacts, tiny_root: dict[str, Any], tmp_path: Path
) -> None:
    """RAID 10 over four disks (LVM on it: / ext4 and /srv xfs) and RAID 0 over two of them (xfs at /scratch),
    BIOS, from the tiny image lacking mdadm and lvm2: the ramdisk builds the GPTs, both arrays (mdadm --create
    level 10 and 0), the VG and LVs, streams and grows /, makes the other filesystems (lay_mkfs: mkfs.xfs on md1
    and on vg0/srv), mounts them all on the target (lay_mount: the xfs module), then fails at stage ``target`` in
    lay_requirements naming mdadm and lvm2. Read on the host after the guest is gone: the md superblocks (what
    ``mdadm --examine`` shows, read by :func:`md_examine`: raid10 on the four ``r`` partitions, raid0 on the two
    ``s`` partitions, each its own array), and BOTH xfs filesystems by libblkid: /scratch at the data offset of
    md1's first member (RAID 0's first chunk), /srv in the first MiBs of the data areas of md0's members (the
    sized LV comes first in the VG, right after the PV's metadata area). Then the clean job takes the four disks
    apart and they read back clean (:func:`clean_and_read_back`). (It found that RAID 0 was created with
    ``--bitmap=internal``, which mdadm refuses.)"""
    disks = rig.sparse_disks(tmp_path, *((f"sf-r10-{i}", GIB) for i in range(4)))
    paths = [d.path for d in disks]
    with rig.layout_deploy(tmp_path, "raid10", ramdisk, tiny_root, RAID10_RAID0_XFS_BIOS, disks, hostname="sf-r10",
                           timeout=1500, memory_mib=1024) as deployed:  # fmt: skip
        stub, result = deployed.stub, deployed.result
    print(f"RAID10+RAID0+LVM+xfs layout deploy up to stage target: {deployed.seconds:.1f}s")
    assert result["ok"] is False and result["stage"] == "target", result
    assert "the image lacks what this layout needs" in result["message"], result  # lay_requirements: after mkfs
    assert "mdadm" in result["message"] and "lvm2" in result["message"], result
    assert not any(p in result["message"] for p in (*TINY_PROGRAMS, *TINY_DIRS)), result
    assert stages(stub)[-3:] == ["layout-built", "rootfs-written", "checksum-ok"]
    roles = {d["name"]: d["roles"] for d in event(stub, "disk-selected")["data"]["disks"]}
    assert roles == {
        "vda": ["grub0:bios_grub", "s0:raid", "r0:raid", "configdrive"],
        "vdb": ["grub1:bios_grub", "s1:raid", "r1:raid"],
        "vdc": ["grub2:bios_grub", "r2:raid"],
        "vdd": ["grub3:bios_grub", "r3:raid"],
    }, roles  # fmt: skip
    built = event(stub, "layout-built")["data"]
    assert built["arrays"] == 2 and built["volume_groups"] == 1 and built["root"] == "/dev/vg0/root", built
    assert "srv /dev/vg0/srv" in built["devices"] and "md1 " in built["devices"], built
    written = event(stub, "rootfs-written")["data"]
    assert written["bytes"] == tiny_root["size"] and written["sha256"] == tiny_root["sha256"], written
    console = (tmp_path / "console-raid10.log").read_text(errors="replace")
    assert "RAID 10 on" in console and "RAID 0 on" in console and "filesystems made" in console

    before = [gpt(d)["partitions"] for d in paths]
    arrays: dict[str, set[str]] = {}
    md0_data: list[int] = []  # where each md0 member's data area starts in its disk file
    for i, (d, parts) in enumerate(zip(paths, before, strict=True)):
        members = {p["name"]: p for p in parts}
        raid = [n for n in members if n[0] in "rs"]
        assert sorted(raid) == ([f"r{i}", f"s{i}"] if i < 2 else [f"r{i}"]), parts
        assert all(members[n]["type"] == "A19D880F-05FC-4D3B-A006-743F0F84911E" for n in raid), parts  # Linux RAID
        assert read_at(d, 0, 440) == bytes(440)  # no boot code: the deploy stopped before GRUB
        r = md_examine(d, members[f"r{i}"])
        assert r["Raid Level"] == "raid10" and r["Raid Devices"] == "4" and r["Layout"] == "near=2", r
        assert r["Name"].endswith("md0") and r["Device Role"] == f"Active device {i}", r
        arrays.setdefault("md0", set()).add(r["Array UUID"])
        md0_data.append(md_data_start(members[f"r{i}"], r))
        if i < 2:
            s_ = md_examine(d, members[f"s{i}"])
            assert s_["Raid Level"] == "raid0" and s_["Raid Devices"] == "2", s_
            assert s_["Name"].endswith("md1") and s_["Device Role"] == f"Active device {i}", s_
            arrays.setdefault("md1", set()).add(s_["Array UUID"])
            if i == 0:  # md1's first chunk is at the start of its device 0's data area: the xfs superblock
                at = md_data_start(members["s0"], s_)
                assert "ID_FS_TYPE=xfs" in blkid_at(d, at, members["s0"]["size"] * 512), (d, at)
    assert all(len(uuids) == 1 for uuids in arrays.values()) and arrays["md0"] != arrays["md1"], arrays
    # /srv: vg0's first LV, a few MiB into md0 (PV label + metadata area); RAID 10 near=2 puts each chunk on a
    # pair of members (0+1, 2+3, ...): look in the first 16 MiB of each member's data area
    srv = [xfs_superblock_near(d, at, 16 * MIB) for d, at in zip(paths, md0_data, strict=True)]
    assert any(at >= 0 for at in srv), srv

    torn = clean_and_read_back(tmp_path, ramdisk, disks, before)
    assert "vg:vg0" in torn and "lv:/dev/vg0/root" in torn and "lv:/dev/vg0/srv" in torn, torn
    assert torn.count("md:") == 2, torn


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_raid1_lvm_deploy_of_the_metal_image_boots(
    ramdisk: rdb.RamdiskArtifacts, metal_raw: dict[str, Any], tmp_path: Path
) -> None:
    disks = rig.sparse_disks(tmp_path, ("sf-raid-0", 4 * GIB), ("sf-raid-1", 4 * GIB))
    d0, d1 = (d.path for d in disks)
    with rig.layout_deploy(tmp_path, "raid-metal", ramdisk, metal_raw, RAID1_LVM_BIOS, disks, hostname="sf-raid-metal",
                           **WHOLE_DEPLOY) as deployed:  # fmt: skip
        stub, result = deployed.stub, deployed.result
        print(f"RAID1+LVM layout deploy: {deployed.seconds:.1f}s")
        assert result["ok"] is True, result
        assert stages(stub)[-6:] == [
            "rootfs-written", "checksum-ok", "target-configured", "bootloader-installed", "configdrive-written", "done",
        ]  # fmt: skip
        assert event(stub, "target-configured")["data"]["mdadm_conf"] is True
        assert event(stub, "bootloader-installed")["data"]["disks"] == "vda vdb"  # GRUB on every member disk
        for d in (d0, d1):
            parts = gpt(d)["partitions"]
            assert read_at(d, parts[1]["start"] * 512 + 4096, 4) == MD_MAGIC
            assert read_at(d, 0, 440) != bytes(440)
        # the array came up from the OS's own initramfs (mdadm.conf, LVM): the OS boots from the mirror
        deployed.boot_os("raid-firstboot", 900)


# ---------------------------------------------------------------- bad answers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_malformed_layout_answer_is_refused_before_any_write(
    ramdisk: rdb.RamdiskArtifacts, tiny_root: dict[str, Any], tmp_path: Path
) -> None:
    disks = rig.sparse_disks(tmp_path, ("sf-bad-0", 4 * GIB))
    d0 = disks[0].path
    with open(d0, "r+b") as fh:
        fh.write(b"KEEP-ME" * 100)
    seen = [{"name": f"vd{c}", "size": 4 * GIB, "serial": f"sf-lay-{i}"} for i, c in enumerate("ab")]
    good = render_layout_answer("node-1", {"layout": PLAIN_BIOS}, {"disks": seen})
    line = "lay_part 'd0' '2' 'root' 'fill' 'linux'"
    assert line in good.splitlines()  # the renderer's answer, one line made to carry a command
    bad = good.replace(line, line + "; reboot -f")
    with rig.layout_deploy(
        tmp_path, "badlayout", ramdisk, tiny_root, PLAIN_BIOS, disks, hostname="sf-bad", layout_answer=bad
    ) as deployed:
        stub, result = deployed.stub, deployed.result
        gets = [r for r in stub.requests if r.startswith("GET /images/")]
    assert result["ok"] is False and result["stage"] == "layout", result
    assert "malformed layout answer line" in result["message"] and "reboot -f" in result["message"]
    assert stages(stub) == ["booted"] and gets == []
    assert read_at(d0, 0, 7) == b"KEEP-ME"
