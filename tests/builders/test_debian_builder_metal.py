"""The bare-metal test image (``build_test_debian_image(variant="metal")``) end to end: built by the ``debian``
builder (GPT, ``firmware: hybrid``, extra packages on the cached bootstrap tree), its raw copy booted whole-disk
under QEMU TCG both with SeaBIOS and with OVMF (``-snapshot``-style ``snapshot=on``: the cached image is never
written; OVMF gets a copy of ``OVMF_VARS.fd``), each with a ConfigDrive (vfat, label ``config-2``) whose user data
reports from inside the booted system on the serial console: which firmware booted it, the ESP mounted at
/boot/efi, the root filesystem's UUID, the config drive's instance id and host name (cloud-init's ConfigDrive data
source), mdadm/lvm/efibootmgr/grub-install present. The NIC is QEMU's user-mode one with ``restrict=on`` and no
forwards (DHCP inside QEMU only, so ``systemd-networkd-wait-online`` does not hold the boot for 2 minutes): no
traffic leaves QEMU."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders.builder_types.debian import disk, grub

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
FIRMWARES = ("bios", "uefi")
#: Two TCG guests at once on a 2-core machine that other tests share: generous.
BOOT_TIMEOUT = 1200.0
FACTS = re.compile(r"SF-FACTS (.*?) SF-END")

#: Runs in cloud-init's final stage (ConfigDrive user data) and writes one line to the serial console.
USER_DATA = """#!/bin/sh
fw=bios; [ -d /sys/firmware/efi ] && fw=uefi
efivars=no; efibootmgr >/dev/null 2>&1 && efivars=yes
tools=ok
for t in mdadm lvm efibootmgr grub-install; do command -v "$t" >/dev/null || tools="missing-$t"; done
efigrub=no; [ -f /usr/lib/grub/x86_64-efi/kernel.img ] && efigrub=yes
echo "SF-FACTS fw=$fw efivars=$efivars esp=$(findmnt -no FSTYPE /boot/efi) root=$(findmnt -no UUID /) \
iid=$(cat /var/lib/cloud/data/instance-id) host=$(hostname) tools=$tools efigrub=$efigrub SF-END" > /dev/ttyS0
"""


@dataclass
class MetalImage:
    qcow2: Path
    raw: Path
    build_seconds: float


@pytest.fixture(scope="module")
def metal_image() -> MetalImage:
    from builders.builder_types.debian import build_test_debian_image, test_debian_image_raw

    started = time.monotonic()
    qcow2 = build_test_debian_image(variant="metal")
    raw = test_debian_image_raw(variant="metal")
    return MetalImage(qcow2, raw, time.monotonic() - started)


def _config_drive(path: Path, instance_id: str, hostname: str) -> None:
    """A ConfigDrive (OpenStack layout, vfat labelled config-2) with meta data and a user-data script."""
    subprocess.run(["mkfs.vfat", "-n", "config-2", "-C", str(path), "16384"], check=True, timeout=60,
                   capture_output=True)
    staging = path.parent / f"{path.stem}-staging" / "openstack" / "latest"
    staging.mkdir(parents=True)
    meta = {"uuid": instance_id, "hostname": hostname, "name": hostname, "availability_zone": "lab"}
    (staging / "meta_data.json").write_text(json.dumps(meta))
    (staging / "network_data.json").write_text(json.dumps({"links": [], "networks": [], "services": []}))
    (staging / "user_data").write_text(USER_DATA)
    subprocess.run(["mcopy", "-s", "-i", str(path), str(staging.parent), "::"], check=True, timeout=60)


def _qemu_argv(firmware: str, image: Path, drive: Path, serial: Path, work: Path) -> list[str]:
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "768", "-smp", "1", "-display", "none",
            "-monitor", "none", "-serial", f"file:{serial}",
            "-drive", f"file={image},if=virtio,format=raw,snapshot=on",
            "-drive", f"file={drive},if=virtio,format=raw,readonly=on",
            "-nic", "user,restrict=on,model=virtio-net-pci"]
    if firmware == "uefi":
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    return argv


@dataclass
class Guest:
    firmware: str
    serial: Path
    instance_id: str
    hostname: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def booted(metal_image: MetalImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Guest]]:
    """Both guests started at once (one vCPU each) from the cached raw image, never writing to it."""
    if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
        pytest.fail(f"OVMF is not installed ({OVMF_CODE}); scripts/setup.sh installs the ovmf package")
    guests: dict[str, Guest] = {}
    try:
        for firmware in FIRMWARES:
            work = tmp_path_factory.mktemp(f"metal-{firmware}")
            instance_id = str(uuid.uuid4())
            hostname = f"sf-metal-{firmware}"
            drive = work / "config-2.img"
            _config_drive(drive, instance_id, hostname)
            serial = work / "serial.log"
            argv = _qemu_argv(firmware, metal_image.raw, drive, serial, work)
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(work / "qemu.log", "wb"),  # noqa: SIM115
                                       stderr=subprocess.STDOUT)
            guests[firmware] = Guest(firmware, serial, instance_id, hostname, process)
        yield guests
    finally:
        for guest in guests.values():
            guest.process.terminate()
        for guest in guests.values():
            try:
                guest.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                guest.process.kill()
                guest.process.wait(timeout=30)


def _serial_text(guest: Guest) -> str:
    return guest.serial.read_bytes().decode("utf-8", "replace") if guest.serial.exists() else ""


def _wait_for_facts(guests: dict[str, Guest], timeout: float) -> dict[str, dict[str, str]]:
    """Each guest's facts line (key=value pairs) once it has printed it and its login prompt."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline and len(found) < len(guests):
        for name, guest in guests.items():
            if name in found:
                continue
            if guest.process.poll() is not None:
                raise AssertionError(f"{name}: QEMU exited with {guest.process.returncode}; serial tail:\n"
                                     + "\n".join(_serial_text(guest).splitlines()[-30:]))
            text = _serial_text(guest)
            match = FACTS.search(text)
            if match and re.search(r"\S+ login:", text):
                found[name] = dict(item.split("=", 1) for item in match.group(1).split() if "=" in item)
        time.sleep(2)
    missing = [name for name in guests if name not in found]
    if missing:
        tails = "\n".join(f"--- {name}:\n" + "\n".join(_serial_text(guests[name]).splitlines()[-25:])
                          for name in missing)
        raise AssertionError(f"no facts line and login prompt within {timeout:.0f}s from {missing}:\n{tails}")
    return found


def _root_uuid(raw: Path) -> str:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], check=True, capture_output=True, text=True,
                                      timeout=60).stdout)["partitiontable"]
    root = table["partitions"][-1]
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(int(root["start"]) * 512),
                          str(raw)], check=True, capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.timeout(1800)  # builds the image when the cache is empty (minutes cold)
def test_metal_image_layout(metal_image: MetalImage) -> None:
    """GPT: bios_grub, ESP (FAT32 with BOOTX64.EFI and the grub.cfg that finds the root), ext4 root last; GRUB's
    boot.img in the protective MBR; the raw copy is the qcow2's content."""
    print(f"\nmetal image ready in {metal_image.build_seconds:.1f}s")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(metal_image.raw)], check=True, capture_output=True,
                                      text=True, timeout=60).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    types = [p["type"].upper() for p in table["partitions"]]
    assert types == [disk.GPT_TYPES["bios_grub"], disk.GPT_TYPES["esp"], disk.GPT_TYPES["root"]]
    esp = table["partitions"][1]
    offset = int(esp["start"]) * 512
    probe = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(offset), str(metal_image.raw)],
                           check=True, capture_output=True, text=True, timeout=60).stdout
    assert "TYPE=vfat" in probe and "VERSION=FAT32" in probe
    listing = subprocess.run(["mdir", "-b", "-i", f"{metal_image.raw}@@{offset}", "::/EFI/BOOT"], check=True,
                             capture_output=True, text=True, timeout=60).stdout
    assert "BOOTX64.EFI" in listing.upper() and "GRUB.CFG" in listing.upper()
    stub = subprocess.run(["mtype", "-i", f"{metal_image.raw}@@{offset}", f"::/{grub.EFI_CONFIG}"], check=True,
                          capture_output=True, text=True, timeout=60).stdout
    root_uuid = _root_uuid(metal_image.raw)
    assert f"search.fs_uuid {root_uuid} root" in stub
    root_probe = subprocess.run(["blkid", "-p", "-o", "export", "-O",
                                 str(int(table["partitions"][2]["start"]) * 512), str(metal_image.raw)],
                                check=True, capture_output=True, text=True, timeout=60).stdout
    assert "TYPE=ext4" in root_probe
    with open(metal_image.raw, "rb") as fh:
        mbr = fh.read(512)
    assert mbr[510:512] == b"\x55\xaa" and mbr[0x1C2] == 0xEE  # protective MBR kept under GRUB's boot.img
    assert int.from_bytes(mbr[grub.KERNEL_SECTOR:grub.KERNEL_SECTOR + 8], "little") == int(
        table["partitions"][0]["start"])
    subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", str(metal_image.qcow2),
                    str(metal_image.raw)], check=True, timeout=600)


@pytest.mark.timeout(BOOT_TIMEOUT + 600)  # a cold image build comes first when the cache is empty
def test_metal_image_boots_whole_disk_on_bios_and_uefi(metal_image: MetalImage, booted: dict[str, Guest]) -> None:
    started = time.monotonic()
    facts = _wait_for_facts(booted, BOOT_TIMEOUT)
    print(f"\nboth guests reported after {time.monotonic() - started:.0f}s of waiting: {facts}")
    root_uuid = _root_uuid(metal_image.raw)
    for firmware, guest in booted.items():
        got = facts[firmware]
        assert got["fw"] == firmware, (firmware, got)
        assert got["efivars"] == ("yes" if firmware == "uefi" else "no"), (firmware, got)
        assert got["esp"] == "vfat", (firmware, got)
        assert got["root"] == root_uuid, (firmware, got)
        assert got["iid"] == guest.instance_id, (firmware, got)
        assert got["host"] == guest.hostname, (firmware, got)
        assert got["tools"] == "ok" and got["efigrub"] == "yes", (firmware, got)
    uefi_text = _serial_text(booted["uefi"])
    assert "efi: EFI v" in uefi_text
    assert "efi: EFI v" not in _serial_text(booted["bios"])
