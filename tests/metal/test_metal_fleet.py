"""A fleet of real-world servers end to end (issue 15): one lab of a ``uefi2`` server (OVMF, two 8 GiB disks, an
inline RAID1+LVM layout) and a ``hints3`` server (SeaBIOS, three SCSI disks of 5/6/10 GiB, root-device hints on
the 6 GiB disk's serial), the bookworm ``metal`` test image as the stemcell, every call through a real ``bin/cpi``.
(``test_metal_e2e.py`` covers the ``default`` servers with the busybox test stemcell.)

The flow, in module order: both servers inspected -> a layout that cannot fit fails before any write -> on
``uefi2`` the file-based deploy (the ramdisk builds the GPT, the RAID1, the VG, streams the image's root partition
onto the root LV and installs GRUB on both ESPs), Debian boots, cloud-init reads the config drive and phones home ->
the first disk is pulled (the second disk's ESP boots the degraded array) -> put back, the member is re-added and
resyncs -> delete_vm leaves no partition table nor any signature where the partitions were -> on ``hints3`` a
whole-disk deploy lands on the hinted disk and the two others stay unwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpi import configdrive
from tests.harness.libvirt import LibvirtCpi
from tests.harness.metal import Lab, LabServer, metal_lab, metal_unavailable_reason, wait_until
from tests.metal.test_metal_e2e import STEMFORGE, create_vm, make_cpi, metal

pytestmark = [pytest.mark.metal, pytest.mark.slow]
MIB = 1 << 20
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LAYOUT_STAGES = ["disk-selected", "layout-built", "rootfs-written", "checksum-ok", "target-configured",
                 "bootloader-installed", "configdrive-written", "done"]  # fmt: skip


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab, its two servers enrolled from the lab's own inventory, inspected (``manage``) and available."""
    reason = metal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with metal_lab(2, plans="uefi2,hints3") as lab:
        try:
            names = [s.name for s in lab.servers]
            for verb in (
                ["enroll", str(lab.inventory_path)],
                ["manage", *names],
                ["provide", "--skip-cleaning", *names],
            ):
                proc = metal(lab, *verb)
                assert proc.returncode == 0, f"metal {verb[0]}: {proc.stdout}\n{proc.stderr}\n{lab.diagnostics()}"
            yield lab
        finally:
            keep = Path(f"/tmp/fleet-serve-{lab.id}.log")
            keep.write_text(lab.serve_log())
            print(f"\nmetal serve log kept in {keep}")


@pytest.fixture(scope="module")
def uefi2(fleet: Lab) -> LabServer:
    return fleet.servers[0]


@pytest.fixture(scope="module")
def hints3(fleet: Lab) -> LabServer:
    return fleet.servers[1]


@pytest.fixture(scope="module")
def cpi(fleet: Lab, tmp_path_factory: pytest.TempPathFactory) -> LibvirtCpi:
    """create_vm waits for the guest's phone-home (cloud-init's phone_home module, from the config drive)."""
    return make_cpi(fleet, tmp_path_factory.mktemp("fleet-cpi"), phone_home=True,
                    timeouts={"deploy": 2400, "phone_home": 900, "boot_to_disk": 900})  # fmt: skip


@pytest.fixture(scope="module")
def bookworm_image() -> Path:
    from builders.builder_types.debian.testimage import test_debian_image_raw

    return test_debian_image_raw(variant="metal")


@pytest.fixture(scope="module")
def bookworm(cpi: LibvirtCpi, bookworm_image: Path) -> str:
    cid: str = cpi.ok("create_stemcell", str(bookworm_image), {}, {"tags": {"suite": "fleet"}}, api_version=3)
    return cid


# -- helpers ----------------------------------------------------------------------------------------------------
def partitions(path: Path) -> list[dict[str, Any]]:
    """The partition table of a volume file (``sfdisk --json``, read-only); [] when there is none."""
    proc = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return list(json.loads(proc.stdout)["partitiontable"].get("partitions", []))


def signature(path: Path, offset: int = 0) -> dict[str, str]:
    """What ``blkid -p`` (low-level superblock probing) finds at ``offset`` of a volume file; {} for nothing."""
    argv = ["blkid", "-p", "-o", "export", *(["-O", str(offset)] if offset else []), str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def region_sha(path: Path, offset: int, length: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(length)).hexdigest()


def untouched_state(server: LabServer) -> dict[str, tuple[int, int, str, str]]:
    """Per disk: mtime, allocated blocks and the first and last MiB's digests (what any write would change)."""
    out = {}
    for d in server.disks:
        st = d.path.stat()
        out[d.serial] = (st.st_mtime_ns, st.st_blocks, region_sha(d.path, 0, MIB),
                         region_sha(d.path, d.size_bytes - MIB, MIB))  # fmt: skip
    return out


def data_regions(path: Path) -> tuple[str, bool]:
    """A digest of a sparse volume file's allocated regions (offsets and bytes, found with SEEK_DATA/SEEK_HOLE) and
    whether all of them are zeros: what the guest wrote to the disk, read without reading its holes."""
    digest, zeros = hashlib.sha256(), True
    with open(path, "rb") as fh:
        fd, size, offset = fh.fileno(), os.fstat(fh.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            fh.seek(start)
            digest.update(f"{start}-{end}:".encode())
            while fh.tell() < end:
                chunk = fh.read(min(MIB, end - fh.tell()))
                digest.update(chunk)
                zeros = zeros and not chunk.strip(b"\0")
            offset = end
    return digest.hexdigest(), zeros


def stages(lab: Lab, node: str, after: int = 0) -> list[str]:
    return [e.data.get("stage") for e in lab.store().events(node, after_id=after, kinds=["stage"])]


def guest_ssh(lab: Lab, ip: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``command`` on the deployed OS as root with the test image's key, from inside the lab's namespace."""
    from builders.builder_types.debian.testimage import test_debian_image_key

    argv = ["ip", "netns", "exec", lab.namespace, "ssh", "-i", str(test_debian_image_key()), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR", f"root@{ip}", command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def os_up(lab: Lab, server: LabServer, after: int, timeout: float = 900) -> tuple[str, str]:
    """Wait until the OS booted since event ``after`` answers SSH on the address it leased; (ip, /proc/mdstat)."""
    store = lab.store()
    seen: dict[str, str] = {}

    def probe() -> bool:
        leases = store.events(server.name, after_id=after, kinds=["dhcp"])
        if not leases:
            return False
        ip = str(leases[-1].data["ip"])
        proc = guest_ssh(lab, ip, "cat /proc/mdstat", timeout=30)
        if proc.returncode == 0:
            seen.update(ip=ip, mdstat=proc.stdout)
        return proc.returncode == 0

    wait_until(probe, timeout, lambda: f"{server.name}: the OS never answered SSH\n{lab.diagnostics(server.name)}",
               interval=5)  # fmt: skip
    return seen["ip"], seen["mdstat"]


def power_off(lab: Lab, server: LabServer) -> None:
    lab.power_off(server)
    wait_until(lambda: lab.power_state(server) == "Off", 120, lambda: f"{server.name} did not power off")


def lab_disk(lab: Lab, verb: str, server: LabServer, index: int) -> None:
    proc = subprocess.run([*STEMFORGE, "metal", "lab", "disk", verb, "--name", lab.id, server.name, str(index)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# -- the flow ---------------------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_a_layout_that_cannot_fit_fails_naming_it_before_any_write(
    fleet: Lab, cpi: LibvirtCpi, bookworm: str, uefi2: LabServer
) -> None:
    before = untouched_state(uefi2)
    first = uefi2.disks[0].serial
    layout = {"boot_mode": "uefi", "disks": [{"id": "d0", "hints": {"serial": first}, "partitions": [
        {"id": "esp0", "size": 256, "filesystem": "vfat", "mount": "/boot/efi", "esp": True},
        {"id": "root", "size": 20000, "filesystem": "ext4", "mount": "/"}]}]}  # fmt: skip
    res = create_vm(cpi, "agent-fleet-nofit", bookworm, {"node": uefi2.name, "layout": layout})
    error = res.error
    assert error["type"] == "Bosh::Clouds::VMCreationFailed", error
    assert "layout (cloud_properties)" in error["message"] and "do not fit" in error["message"], error
    assert "disks/0" in error["message"] and uefi2.name in error["message"], error
    store = fleet.store()
    node = store.get_node(uefi2.name)
    assert node.provision_state == "available" and node.claimed_by is None and store.job(uefi2.name) is None
    assert fleet.power_state(uefi2) == "Off"
    assert untouched_state(uefi2) == before


@pytest.mark.timeout(5400)
def test_raid1_lvm_deploy_boots_degraded_resyncs_and_delete_leaves_no_signature(
    fleet: Lab, cpi: LibvirtCpi, bookworm: str, uefi2: LabServer
) -> None:
    store = fleet.store()
    after = store.last_event_id(uefi2.name)
    started = time.monotonic()
    res = create_vm(cpi, "agent-fleet-raid", bookworm, {"node": uefi2.name})
    vm, _ = res.result
    deploy_s = time.monotonic() - started
    assert "phoned home" in res.response["log"], res.response["log"]
    assert [s for s in stages(fleet, uefi2.name, after) if s in LAYOUT_STAGES] == LAYOUT_STAGES
    # cloud-init read the config drive: its phone-home carries the drive's instance id
    iso = fleet.state_dir / "configdrives" / f"{uefi2.name}.iso"
    meta = json.loads(configdrive.read_iso_file(iso, "openstack/latest/meta_data.json"))
    home = store.events(uefi2.name, after_id=after, kinds=["phone-home"])
    assert home and home[-1].data.get("instance_id") == meta["uuid"], [e.data for e in home]
    # both disks: GPT with an ESP then a RAID member; the first also the config drive at its end
    offsets: dict[str, list[int]] = {}
    for disk in uefi2.disks:
        parts = partitions(disk.path)
        assert parts and parts[0]["type"] == ESP_TYPE, (disk.serial, parts)
        offsets[disk.serial] = [p["start"] * SECTOR for p in parts]
        assert signature(disk.path, offsets[disk.serial][0]).get("TYPE") == "vfat"
        assert signature(disk.path, offsets[disk.serial][1]).get("TYPE") == "linux_raid_member"
    assert len(offsets[uefi2.disks[0].serial]) == 3 and len(offsets[uefi2.disks[1].serial]) == 2
    ip, mdstat = os_up(fleet, uefi2, after)
    assert re.search(r"md\S* : active raid1", mdstat), mdstat
    seen = {"mdstat": mdstat}

    def in_sync() -> bool:
        proc = guest_ssh(fleet, ip, "cat /proc/mdstat", timeout=30)
        seen["mdstat"] = proc.stdout
        return proc.returncode == 0 and "[2/2] [UU]" in proc.stdout and not re.search("resync|recovery", proc.stdout)

    # the initial resync (not waited for by the deploy) runs in the booted OS; a mirror is redundant once it ends
    synced = time.monotonic()
    wait_until(in_sync, 1800, lambda: f"the initial resync did not end:\n{seen['mdstat']}", interval=10)
    print(f"\ninitial resync after first boot: {time.monotonic() - synced:.0f}s")
    # it waited for the first boot to finish: the ramdisk's one-shot unit then lifted md's speed cap and removed
    # itself and the cap's sysctl.d file (layout.sh lay_resync_after_boot)
    proc = guest_ssh(fleet, ip, "cat /proc/sys/dev/raid/speed_limit_max; ls /etc/sysctl.d /etc/systemd/system "
                                "/etc/systemd/system/multi-user.target.wants", timeout=30)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.split()[0] == "200000", proc.stdout
    assert "stemforge-first-boot" not in proc.stdout, proc.stdout

    # the first disk fails: the second disk's ESP boots the degraded array. The OS's writes are flushed first
    # (the power is cut, not shut down: files cloud-init just wrote, like the SSH host keys, would be empty)
    assert guest_ssh(fleet, ip, "sync").returncode == 0
    power_off(fleet, uefi2)
    lab_disk(fleet, "detach", uefi2, 0)
    after = store.last_event_id(uefi2.name)
    # a one-time boot from disk, as the CPI's boot_to_disk sets it: the lab's NIC-first order would make OVMF try
    # PXE, PXE over IPv6 and HTTP boot (IPv4, IPv6) first, minutes of DHCP timeouts before the disk under TCG
    fleet.power_on(uefi2, boot="Hdd")
    ip, mdstat = os_up(fleet, uefi2, after)
    assert "[2/1]" in mdstat, mdstat
    # the disk is put back: mdadm re-adds it (POLICY action=re-add, internal bitmap) and the array resyncs
    assert guest_ssh(fleet, ip, "sync").returncode == 0
    power_off(fleet, uefi2)
    lab_disk(fleet, "attach", uefi2, 0)
    after = store.last_event_id(uefi2.name)
    fleet.power_on(uefi2, boot="Hdd")
    ip, seen["mdstat"] = os_up(fleet, uefi2, after)
    wait_until(in_sync, 900, lambda: f"the array did not resync:\n{seen['mdstat']}", interval=10)

    # delete_vm: no partition table on any disk, no signature where the partitions were
    res = cpi.call("delete_vm", vm)
    assert res.response["error"] is None, res.response["error"]
    assert store.get_node(uefi2.name).provision_state == "available"
    for disk in uefi2.disks:
        assert partitions(disk.path) == [] and signature(disk.path) == {}, disk.serial
        for offset in offsets[disk.serial]:
            assert signature(disk.path, offset) == {}, f"{disk.serial}: a signature at {offset} survived cleaning"
    print(f"\nfile-based RAID1+LVM deploy to phone-home: {deploy_s:.0f}s")


@pytest.mark.timeout(2400)
def test_whole_disk_deploy_lands_on_the_hinted_disk_and_no_other(
    fleet: Lab, cpi: LibvirtCpi, bookworm: str, bookworm_image: Path, hints3: LabServer
) -> None:
    inventory = yaml.safe_load(fleet.inventory_path.read_text())
    hinted = next(n for n in inventory["nodes"] if n["name"] == hints3.name)["root_hints"]["serial"]
    root = next(d for d in hints3.disks if d.serial == hinted)
    assert root.size_bytes == 6 << 30
    others = [d for d in hints3.disks if d is not root]
    before = {d.serial: data_regions(d.path) for d in others}
    store = fleet.store()
    after = store.last_event_id(hints3.name)
    res = create_vm(cpi, "agent-fleet-hints", bookworm, {"node": hints3.name})
    vm, _ = res.result
    assert "phoned home" in res.response["log"], res.response["log"]
    selected = [e.data for e in store.events(hints3.name, after_id=after, kinds=["stage"])
                if e.data.get("stage") == "disk-selected"]  # fmt: skip
    assert selected and hinted in json.dumps(selected[-1]), selected
    with open(bookworm_image, "rb") as image, open(root.path, "rb") as disk:
        assert disk.read(446) == image.read(446)  # GRUB's boot code
        assert disk.read(66 + 8)[-8:] == b"EFI PART"  # the image's GPT header follows
    for d in others:  # untouched: what is allocated is as before, and all zeros
        assert data_regions(d.path) == before[d.serial] and before[d.serial][1], d.serial
        assert partitions(d.path) == [] and signature(d.path) == {}
    res = cpi.call("delete_vm", vm)
    assert res.response["error"] is None, res.response["error"]
    assert store.get_node(hints3.name).provision_state == "available"
