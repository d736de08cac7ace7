"""The bare-metal deploy ramdisk, for real: built from Debian packages, booted in plain QEMU (TCG) with
``-kernel/-initrd/-append``, talking to a provisioning API stub on 127.0.0.1 through slirp's host address
(``tests/harness/ramdisk_rig.py``), writing to sparse raw disk files that the test then reads.

* build: cached, the initramfs holds the scripts, the tools and every shared library they need;
* deploy of the test stemcell image: the disk equals the image over its size, a config-2 partition holds the ISO,
  stage events in order, heartbeats, QEMU ends by the ramdisk's reboot; then the deployed disk BOOTS and the test
  agent phones home with what it read from the config drive (the full bare-metal path minus the lab);
* gzip images; root-device hints choosing between two disks; clean mode wiping the first/last MiB of every disk;
* failures: wrong sha256 (stage checksum, disk wiped, no success), truncated download (short read, retried,
  failed), qcow2 served where raw was promised (refused before writing), malformed instructions.
The job token must never appear on the console.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpi import configdrive
from cpi.providers.baremetal.ramdisk import build as rdb
from stemcells.testimage import build as tib
from stemforge_base.hashing import sha256_file
from tests.harness import ramdisk_rig as rig
from tests.harness.ramdisk_rig import deploy_instructions, run_ramdisk

pytestmark = [
    pytest.mark.metal,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"),
]

MIB = 1024 * 1024
GIB = 1024 * MIB
MAC = "52:54:00:5f:aa:01"


@pytest.fixture(scope="module")
def ramdisk() -> rdb.RamdiskArtifacts:
    return rdb.ensure_ramdisk(progress=print)


@pytest.fixture(scope="module")
def test_image() -> Path:
    """The test stemcell's raw disk image (128 MiB MBR disk that boots with syslinux)."""
    return tib.build_test_image(fmt="raw", progress=print)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 MiB + 4 KiB raw disk image: MBR with one partition, random data (the odd size checks the last
    partial block)."""
    path = tmp_path_factory.mktemp("img") / "small.raw"
    size = 8 * MIB + 4096
    with open(path, "wb") as fh:
        fh.write(b"\0" * 512)
        fh.write(os.urandom(size - 512))
    script = b"label: dos\nunit: sectors\n\nstart=2048, size=12288, type=83\n"
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(path)], input=script, check=True)
    return path


def make_configdrive(path: Path, agent_id: str, stub: rig.ProvisioningStub | None = None) -> Path:
    settings = {
        "agent_id": agent_id,
        "vm": {"name": "vm-" + agent_id},
        "networks": {"prov": {"type": "dynamic", "mac": MAC, "default": ["dns", "gateway"]}},
        "disks": {"system": "/dev/vda", "persistent": {}},
        "env": {},
    }
    files = configdrive.files_for(settings, instance_uuid=agent_id, hostname=agent_id, network_data={"links": []})
    if stub is not None:
        meta = json.loads(files["openstack/latest/meta_data.json"])
        meta["meta"] = {"phone_home_url": stub.phone_home_url, "phone_home_token": stub.phone_home_token}
        files["openstack/latest/meta_data.json"] = json.dumps(meta, sort_keys=True).encode()
    return configdrive.write_iso(path, files)


def stages(stub: rig.ProvisioningStub) -> list[str]:
    return stub.stages()


def event(stub: rig.ProvisioningStub, name: str) -> dict[str, Any]:
    return next(e for e in stub.events if e.get("kind") == "stage" and e["stage"] == name)


def read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def same_prefix(disk: Path, image: Path, skip: tuple[int, int] | None = None) -> bool:
    """The disk holds the image byte for byte over the image's size (``skip``: a byte range not compared)."""
    with open(disk, "rb") as d, open(image, "rb") as i:
        pos = 0
        while True:
            a = i.read(MIB)
            if not a:
                return True
            b = d.read(len(a))
            if skip is not None and pos <= skip[0] < pos + len(a):
                lo, hi = skip[0] - pos, skip[1] - pos
                a, b = a[:lo] + a[hi:], b[:lo] + b[hi:]
            if b != a:
                return False
            pos += MIB


# ---------------------------------------------------------------- build


def test_build_is_cached_and_complete(ramdisk: rdb.RamdiskArtifacts, tmp_path: Path) -> None:
    lines: list[str] = []
    t = time.monotonic()
    again = rdb.ensure_ramdisk(progress=lines.append)
    assert again == ramdisk and time.monotonic() - t < 5, lines
    assert any("cached" in line for line in lines)
    assert ramdisk.directory.name == ramdisk.key
    manifest = json.loads((ramdisk.directory / "manifest.json").read_text())
    assert manifest["files"]["initrd.img"]["sha256"] == sha256_file(ramdisk.initrd)
    assert manifest["kernel_release"] == tib.kernel_version()
    root = tmp_path / "initramfs"
    root.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=gzip.decompress(ramdisk.initrd.read_bytes()), cwd=root, check=True)
    for rel in ("init", "sf/lib.sh", "sf/deploy.sh", "sf/clean.sh", "sf/udhcpc.sh", "bin/busybox", "etc/modules.load"):
        assert (root / rel).is_file(), rel
    for tool in ("sfdisk", "wipefs", "partx", "sfwrite"):
        binary = root / "usr/sbin" / tool
        assert binary.is_file(), tool
        for soname in rdb.elf_needed(binary.read_bytes()):
            assert (root / "lib/x86_64-linux-gnu" / soname).is_file(), (tool, soname)
    assert (root / "lib64/ld-linux-x86-64.so.2").is_file()
    mods = (root / "etc/modules.load").read_text().split()
    assert any(m.endswith("/virtio_blk.ko") for m in mods) and any(m.endswith("/virtio_net.ko") for m in mods)
    # the tools really run on the shipped libraries (chroot needs root; the CI runs as root)
    if os.geteuid() == 0:
        out = subprocess.run(["chroot", str(root), "/usr/sbin/sfdisk", "--version"], capture_output=True, check=True)
        assert b"util-linux" in out.stdout


def test_elf_needed_reads_dt_needed() -> None:
    needed = rdb.elf_needed(Path("/usr/bin/tee").read_bytes() if Path("/usr/bin/tee").exists() else b"")
    assert "libc.so.6" in needed
    assert rdb.elf_needed(b"#!/bin/sh\n") == []


def test_instructions_render_like_metal_serve() -> None:
    text = rig.render_instructions({"mode": "deploy", "root_hints": "model=it's"})
    assert text == "SF_MODE='deploy'\nSF_ROOT_HINTS='model=it'\\''s'\n"


# ---------------------------------------------------------------- deploy


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deploy_test_stemcell_then_it_boots_and_phones_home(
    ramdisk: rdb.RamdiskArtifacts, test_image: Path, tmp_path: Path
) -> None:
    root = rig.sparse_disk(tmp_path / "root.raw", 4 * GIB)
    extra = rig.sparse_disk(tmp_path / "extra.raw", 1 * GIB)
    with rig.ProvisioningStub(images={"root.img": test_image}) as stub:
        iso = make_configdrive(tmp_path / "cd.iso", "agent-metal-1", stub)
        stub.configdrive = iso
        stub.instructions = deploy_instructions(stub, test_image)
        # the 1 GiB disk comes first: the default hint must skip it (smallest disk >= 4 GiB)
        disks = [rig.Disk(extra, "sf-extra-0001"), rig.Disk(root, "sf-root-0001")]
        result = run_ramdisk(tmp_path, "deploy", stub, ramdisk, disks)
        assert result["ok"] is True, result
        assert stages(stub) == [
            "booted",
            "disk-selected",
            "image-written",
            "checksum-ok",
            "configdrive-written",
            "done",
        ]
        assert event(stub, "booted")["data"]["mac"] == MAC
        sel = event(stub, "disk-selected")["data"]
        assert sel["serial"] == "sf-root-0001" and sel["size"] == 4 * GIB
        written = event(stub, "image-written")["data"]
        assert written["bytes"] == test_image.stat().st_size and written["sha256"] == sha256_file(test_image)
        print(f"image write in the ramdisk: {written['mib_per_s']} MiB/s, {written['zeroed'] // MIB} MiB zeroed")
        assert written["zeroed"] >= 64 * MIB  # the image is mostly empty: its zero blocks went out as BLKZEROOUT
        assert any(e["kind"] == "heartbeat" for e in stub.events)

        # the disk, read back on the host: the image byte for byte, but for the MBR's new third partition entry
        assert same_prefix(root, test_image, skip=(446 + 2 * 16, 446 + 3 * 16))
        assert not same_prefix(root, test_image)
        table = json.loads(subprocess.run(["sfdisk", "--json", str(root)], capture_output=True, check=True).stdout)
        parts = table["partitiontable"]["partitions"]
        assert table["partitiontable"]["label"] == "dos" and len(parts) == 3
        cd = parts[2]
        assert cd["start"] % 2048 == 0 and cd["start"] + cd["size"] == 4 * GIB // 512
        assert (4 * GIB // 512 - cd["start"]) * 512 <= 64 * MIB
        iso_bytes = iso.read_bytes()
        assert read_at(root, cd["start"] * 512, len(iso_bytes)) == iso_bytes
        assert read_at(root, cd["start"] * 512 + 32769, 5) == b"CD001"
        cdev = event(stub, "configdrive-written")["data"]
        assert cdev["partition"] == "/dev/vdb3" and cdev["number"] == 3 and cdev["iso_bytes"] == len(iso_bytes)
        assert read_at(extra, 0, MIB) == bytes(MIB)  # the other disk was not touched

        # the deployed disk boots (BIOS -> syslinux -> the test image) and the agent phones home
        t0 = time.monotonic()
        with rig.boot(tmp_path, "firstboot", [rig.Disk(root, "sf-root-0001")], mac=MAC) as vm:
            home = stub.wait(lambda s: s.phone_homes, rig.BOOT_TIMEOUT, vm, "the booted OS's phone-home")[0]
            stub.wait(lambda s: '"event":"phone-home","ok":true' in vm.console(), 30, vm, "the phone-home serial event")
            console = vm.console()
        print(f"deployed disk booted and phoned home after {time.monotonic() - t0:.1f}s")
    assert home["agent_id"] == "agent-metal-1" and home["hostname"] == "agent-metal-1"
    assert MAC in home["macs"]
    assert home["configdrive_sha256"] == hashlib.sha256(iso_bytes).hexdigest()
    net = home["networks"][0]
    assert net["name"] == "prov" and net["configured"] is True and net["dhcp"] is True and net["mac"] == MAC
    assert stub.phone_home_token not in console


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deploy_gzip_image_and_root_hints_pick_the_named_disk(
    ramdisk: rdb.RamdiskArtifacts, small_image: Path, tmp_path: Path
) -> None:
    gz = tmp_path / "small.raw.gz"
    with open(small_image, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    a = rig.sparse_disk(tmp_path / "a.raw", 4 * GIB)
    b = rig.sparse_disk(tmp_path / "b.raw", 5 * GIB)
    with open(a, "r+b") as fh:
        fh.write(b"KEEP-ME" * 100)
    with rig.ProvisioningStub(images={"small.raw.gz": gz}) as stub:
        stub.configdrive = make_configdrive(tmp_path / "cd.iso", "agent-gz")
        stub.instructions = deploy_instructions(
            stub, gz, image_size=small_image.stat().st_size, image_format="gzip",
            root_hints={"serial": "<or> nope <or> SF-B", "size": ">= 5", "rotational": True},
        )  # fmt: skip
        result = run_ramdisk(tmp_path, "gzip-hints", stub, ramdisk, [rig.Disk(a, "sf-a"), rig.Disk(b, "sf-b")])
    assert result["ok"] is True, result
    selected = event(stub, "disk-selected")["data"]
    assert selected["serial"] == "sf-b"
    # the ramdisk reported every disk with Ironic's device fields; metal serve's rules chose (root_hints.py)
    (report,) = stub.disk_reports
    seen = {d["name"]: d for d in report["disks"]}
    assert sorted(seen) == ["vda", "vdb"] and seen["vda"]["serial"] == "sf-a" and seen["vdb"]["size"] == 5 * GIB
    assert seen["vdb"]["by_path"].startswith("/dev/disk/by-path/pci-0000:00:") and seen["vdb"]["rotational"] is True
    assert seen["vda"]["by_path"] != seen["vdb"]["by_path"] and seen["vdb"]["vendor"] == "0x1af4"  # virtio's
    assert same_prefix(b, small_image, skip=(446 + 16, 446 + 32))  # but for the new config-drive entry
    assert read_at(a, 0, 7) == b"KEEP-ME"  # the smaller disk was not chosen and not touched


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deploy_gpt_image_relocates_the_backup_header(ramdisk: rdb.RamdiskArtifacts, tmp_path: Path) -> None:
    image = tmp_path / "gpt.raw"
    with open(image, "wb") as fh:
        fh.write(os.urandom(16 * MIB))
    script = b"label: gpt\nunit: sectors\n\nstart=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)], input=script, check=True)
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with rig.ProvisioningStub(images={"gpt.raw": image}) as stub:
        iso = make_configdrive(tmp_path / "cd.iso", "agent-gpt")
        stub.configdrive = iso
        stub.instructions = deploy_instructions(stub, image)
        result = run_ramdisk(tmp_path, "gpt", stub, ramdisk, [rig.Disk(disk, "sf-gpt")])
    assert result["ok"] is True, result
    assert event(stub, "configdrive-written")["data"]["table"] == "gpt"
    verify = subprocess.run(["sfdisk", "--verify", str(disk)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # both GPT copies valid, backup at the disk's end
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, check=True).stdout)
    pt = table["partitiontable"]
    assert pt["label"] == "gpt" and pt["lastlba"] == 4 * GIB // 512 - 34
    cd = pt["partitions"][1]
    assert cd["name"] == "config-2" and cd["start"] + cd["size"] - 1 == pt["lastlba"]
    assert read_at(disk, cd["start"] * 512, iso.stat().st_size) == iso.read_bytes()
    # the image's partition data is intact (the GPT headers themselves were rewritten)
    assert read_at(disk, 2048 * 512, 20480 * 512) == read_at(image, 2048 * 512, 20480 * 512)


# ---------------------------------------------------------------- failures


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wrong_checksum_fails_at_checksum_and_wipes(
    ramdisk: rdb.RamdiskArtifacts, small_image: Path, tmp_path: Path
) -> None:
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with rig.ProvisioningStub(images={"small.raw": small_image}) as stub:
        stub.configdrive = make_configdrive(tmp_path / "cd.iso", "agent-x")
        stub.instructions = deploy_instructions(stub, small_image, image_sha256="0" * 64)
        result = run_ramdisk(tmp_path, "badsum", stub, ramdisk, [rig.Disk(disk)])
    assert result["ok"] is False and result["stage"] == "checksum"
    assert sha256_file(small_image) in result["message"] and "0" * 64 in result["message"]
    assert "checksum-ok" not in stages(stub) and "done" not in stages(stub)
    assert read_at(disk, 0, MIB) == bytes(MIB)  # the unverified image cannot boot


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_truncated_download_is_a_failure(ramdisk: rdb.RamdiskArtifacts, small_image: Path, tmp_path: Path) -> None:
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with rig.ProvisioningStub(images={"small.raw": small_image}, truncate_images_at=3 * MIB + 100) as stub:
        stub.configdrive = make_configdrive(tmp_path / "cd.iso", "agent-x")
        stub.instructions = deploy_instructions(stub, small_image)
        result = run_ramdisk(tmp_path, "truncated", stub, ramdisk, [rig.Disk(disk)])
        gets = [r for r in stub.requests if r.startswith("GET /images/")]
    assert result["ok"] is False and result["stage"] == "image", result
    assert "closed prematurely" in result["message"] or "short read" in result["message"]
    assert len(gets) == 3  # transient: retried, bounded
    assert "image-written" not in stages(stub)
    assert read_at(disk, 0, MIB) == bytes(MIB)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_qcow2_where_raw_was_promised_is_refused_before_writing(ramdisk: rdb.RamdiskArtifacts, tmp_path: Path) -> None:
    qcow = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M"], check=True)
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with rig.ProvisioningStub(images={"img.qcow2": qcow}) as stub:
        stub.configdrive = make_configdrive(tmp_path / "cd.iso", "agent-x")
        stub.instructions = deploy_instructions(stub, qcow)
        result = run_ramdisk(tmp_path, "qcow2", stub, ramdisk, [rig.Disk(disk)])
    assert result["ok"] is False and result["stage"] == "image"
    assert "qcow2" in result["message"] and "nothing written" in result["message"]
    assert read_at(disk, 0, 4) != b"QFI\xfb"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_malformed_instructions_are_rejected(ramdisk: rdb.RamdiskArtifacts, tmp_path: Path) -> None:
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with rig.ProvisioningStub() as stub:
        stub.instructions_text = "SF_MODE='deploy'\nreboot -f\n"
        result = run_ramdisk(tmp_path, "badinstr", stub, ramdisk, [rig.Disk(disk)])
    assert result["ok"] is False and result["stage"] == "instructions"
    assert "malformed instruction line" in result["message"] and "reboot -f" in result["message"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hints_matching_no_disk_fail_disk_select_naming_hints_and_disks(
    ramdisk: rdb.RamdiskArtifacts, small_image: Path, tmp_path: Path
) -> None:
    disk = rig.sparse_disk(tmp_path / "d.raw", 4 * GIB)
    with open(disk, "r+b") as fh:
        fh.write(b"KEEP-ME" * 100)
    with rig.ProvisioningStub(images={"small.raw": small_image}) as stub:
        stub.configdrive = make_configdrive(tmp_path / "cd.iso", "agent-nomatch")
        stub.instructions = deploy_instructions(stub, small_image, root_hints={"serial": "s== nope", "size": ">= 8"})
        result = run_ramdisk(tmp_path, "nomatch", stub, ramdisk, [rig.Disk(disk, "sf-only")])
    assert result["ok"] is False and result["stage"] == "disk-select", result
    assert "no disk matches the root device hints size=>=8 serial=s== nope" in result["message"]
    assert "disks seen: vda (4.0 GiB, serial sf-only" in result["message"]
    assert read_at(disk, 0, 7) == b"KEEP-ME"  # nothing written


# ---------------------------------------------------------------- clean


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_clean_wipes_first_and_last_mib_of_every_disk(
    ramdisk: rdb.RamdiskArtifacts, test_image: Path, tmp_path: Path
) -> None:
    a = rig.sparse_disk(tmp_path / "a.raw", 4 * GIB)
    b = rig.sparse_disk(tmp_path / "b.raw", 1 * GIB)
    for disk, size in ((a, 4 * GIB), (b, GIB)):
        with open(disk, "r+b") as fh:
            for off in (0, size // 2, size - MIB):
                fh.seek(off)
                fh.write(b"\xa5" * MIB)
    with open(test_image, "rb") as src, open(a, "r+b") as dst:  # a real partitioned OS disk on a
        shutil.copyfileobj(src, dst)
    with rig.ProvisioningStub() as stub:
        stub.instructions = {"mode": "clean", "heartbeat_s": 2}
        # b on SATA (AHCI): its serial comes from SCSI VPD page 0x80
        result = run_ramdisk(tmp_path, "clean", stub, ramdisk, [rig.Disk(a, "sf-a"), rig.Disk(b, "sf-b", bus="sata")])
    assert result["ok"] is True
    wiped = {
        e["data"]["serial"]: e["data"] for e in stub.events if e.get("kind") == "stage" and e["stage"] == "disk-wiped"
    }
    assert wiped["sf-a"]["size"] == 4 * GIB and wiped["sf-b"]["size"] == GIB
    assert stages(stub) == ["booted", "disk-wiped", "disk-wiped", "done"]
    for disk, size in ((a, 4 * GIB), (b, GIB)):
        assert read_at(disk, 0, MIB) == bytes(MIB)
        assert read_at(disk, size - MIB, MIB) == bytes(MIB)
    assert read_at(b, GIB // 2, 16) == b"\xa5" * 16  # metadata erase only: the middle is untouched
    # the OS disk's partitions lost their filesystem signatures too
    table = subprocess.run(["sfdisk", "--json", str(a)], capture_output=True, check=False)
    assert table.returncode != 0 or not json.loads(table.stdout).get("partitiontable", {}).get("partitions")
    boot_part_start = 1 * MIB
    root_part_start = 25 * MIB
    assert read_at(a, boot_part_start + 0x36, 5) != b"FAT16"
    assert read_at(a, root_part_start + 1024 + 0x38, 2) != b"\x53\xef"


@pytest.fixture(autouse=True)
def _print_duration() -> Iterator[None]:
    t = time.monotonic()
    yield
    print(f"[test took {time.monotonic() - t:.1f}s]")
