"""Laying the tree onto a disk without mounting anything: a sparse raw file, a partition table written by
``sfdisk`` (msdos: one ext4 partition; GPT: ``bios_grub``, EFI system partition, ext4 root, see
:func:`gpt_roles`), the ext4 root made and populated in place by ``mke2fs -d`` at the partition's byte offset, the
ESP made by ``mkfs.fat --offset`` and filled with mtools (``mcopy -i disk@@offset``), then conversion to the output
formats with ``qemu-img convert`` (byte progress parsed from ``-p``)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builders.core import BuildError

from . import proc

#: First partition at 1 MiB (sector 2048): room for GRUB's core.img in the post-MBR gap.
FIRST_SECTOR = 2048
SECTOR = 512
MIB = 1024 * 1024


#: GPT partition type GUIDs (the UEFI specification; bios_grub is GRUB's "Hah!IdontNeedEFI").
GPT_TYPES = {
    "bios_grub": "21686148-6449-6E6F-744E-656564454649",
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "root": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}
#: Sizes of the GPT boot partitions: bios_grub holds core.img (tens of KiB); the ESP is FAT32 (>= 65525
#: clusters of 512 bytes needs > 32 MiB).
BIOS_GRUB_MIB = 1
ESP_MIB = 64


@dataclass(frozen=True)
class Partition:
    """One partition of the laid-out disk: its role (``bios_grub``, ``esp``, ``root``), 1-based number and extent."""

    role: str
    number: int
    start_sector: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.start_sector * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class DiskLayout:
    image: Path
    size_bytes: int
    partition_offset: int
    partition_bytes: int
    root_uuid: str
    table: str = "msdos"
    partitions: tuple[Partition, ...] = ()

    def part(self, role: str) -> Partition | None:
        """The partition with ``role``, if the layout has one."""
        return next((p for p in self.partitions if p.role == role), None)


def gpt_roles(firmware: str | None) -> tuple[str, ...]:
    """The GPT partitions, in disk order, for a firmware (``None``: no bootloader): ``bios_grub`` for BIOS, ``esp``
    for UEFI, both for ``hybrid``; the root is always last."""
    roles: list[str] = []
    if firmware in ("bios", "hybrid"):
        roles.append("bios_grub")
    if firmware in ("uefi", "hybrid"):
        roles.append("esp")
    return (*roles, "root")


def _sfdisk_script(table: str, roles: tuple[str, ...]) -> str:
    if table == "msdos":
        return f"label: dos\nunit: sectors\n\nstart={FIRST_SECTOR}, type=83, bootable\n"
    sizes = {"bios_grub": BIOS_GRUB_MIB * MIB // SECTOR, "esp": ESP_MIB * MIB // SECTOR}
    lines = ["label: gpt", "unit: sectors", f"first-lba: {FIRST_SECTOR}", ""]
    for index, role in enumerate(roles):
        start = f"start={FIRST_SECTOR}, " if index == 0 else ""
        size = f"size={sizes[role]}, " if role in sizes else ""
        lines.append(f'{start}{size}type={GPT_TYPES[role]}, name="{role}"')
    return "\n".join(lines) + "\n"


def read_partitions(image: Path, roles: tuple[str, ...]) -> tuple[Partition, ...]:
    """The partitions sfdisk wrote (``sfdisk --json``), given their roles in order."""
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, timeout=60, check=False)
    try:
        table = json.loads(out.stdout)["partitiontable"]
        entries = table["partitions"]
        sector = int(table.get("sectorsize", SECTOR))
    except (ValueError, KeyError) as exc:
        raise BuildError(f"disk: cannot read the partition table back: {out.stderr.strip()}") from exc
    if len(entries) != len(roles) or sector != SECTOR:
        raise BuildError(f"disk: sfdisk made {len(entries)} partitions of {sector}-byte sectors, expected "
                         f"{len(roles)} of {SECTOR}")
    return tuple(Partition(role, i + 1, int(e["start"]), int(e["size"]))
                 for i, (role, e) in enumerate(zip(roles, entries, strict=True)))


def tree_size_mib(tree: Path) -> int:
    """Apparent size of the tree (one filesystem), in MiB, rounded up."""
    out = subprocess.run(["du", "-sx", "--block-size=1M", str(tree)], capture_output=True, text=True,
                         timeout=600, check=False)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError) as exc:
        raise BuildError(f"disk: cannot measure {tree}: {out.stderr.strip()}") from exc


def create_disk(image: Path, tree: Path, size_mib: int, root_uuid: str, label: str,
                cancel: threading.Event | None, on_line: Callable[[str], None], *, table: str = "msdos",
                roles: tuple[str, ...] = ("root",)) -> DiskLayout:
    """Create ``image`` (sparse) with the partitions ``roles`` (msdos: only ``root``, bootable; gpt: see
    :func:`gpt_roles`), the ext4 root holding ``tree``. The ESP is left unformatted (:func:`make_esp`)."""
    if table == "msdos" and roles != ("root",):
        raise BuildError(f"disk: an msdos disk has only the root partition, not {', '.join(roles)}")
    needed = tree_size_mib(tree)
    # ext4 metadata (inode tables, journal) needs room on top of the data; GPT's boot partitions and tables too.
    boot = sum({"bios_grub": BIOS_GRUB_MIB, "esp": ESP_MIB}.get(r, 0) for r in roles) + (1 if table == "gpt" else 0)
    minimum = int(needed * 1.25) + 96 + boot
    if size_mib < minimum:
        raise BuildError(f"disk: disk_size {size_mib}M is too small for the root tree ({needed} MiB of files) "
                         f"and the boot partitions; use at least {minimum}M")
    size = size_mib * MIB
    with open(image, "wb") as fh:
        fh.truncate(size)
    proc.run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", str(image)], what="disk: sfdisk",
             cancel=cancel, timeout=120, input_data=_sfdisk_script(table, roles).encode(), on_line=None)
    if table == "msdos":
        partitions: tuple[Partition, ...] = (Partition("root", 1, FIRST_SECTOR, (size - FIRST_SECTOR * SECTOR)
                                                       // SECTOR),)
    else:
        partitions = read_partitions(image, roles)
    root = partitions[-1]
    blocks = root.size_bytes // 4096
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", root_uuid,
              "-E", f"offset={root.offset},root_owner=0:0", "-d", str(tree), str(image), str(blocks)],
             what="disk: mke2fs", cancel=cancel, timeout=1800, on_line=on_line)
    return DiskLayout(image, size, root.offset, root.size_bytes, root_uuid, table, partitions)


def make_esp(image: Path, part: Partition, volume_id: str, files: dict[str, Path | str],
             cancel: threading.Event | None) -> None:
    """Format ``part`` of ``image`` as FAT32 (label ``EFI``, serial ``volume_id``, 8 hex digits: the filesystem
    UUID ``XXXX-XXXX`` fstab names) and copy ``files`` into it (ESP path -> host file, or text), with mtools at
    the partition's byte offset: nothing is mounted."""
    proc.run(["mkfs.fat", "-F", "32", "-s", "1", "-S", str(SECTOR), "-n", "EFI", "-i", volume_id,
              f"--offset={part.start_sector}", str(image), str(part.size_bytes // 1024)],
             what="disk: mkfs.fat (ESP)", cancel=cancel, timeout=120, on_line=None)
    target = f"{image}@@{part.offset}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    made: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="stemforge-esp-") as tmp:
        for index, (dest, source) in enumerate(sorted(files.items())):
            parts = dest.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    proc.run(["mmd", "-i", target, f"::/{folder}"], what="disk: mmd (ESP)", cancel=cancel,
                             timeout=60, on_line=None, env=env)
                    made.add(folder)
            if isinstance(source, str):
                text_file = Path(tmp) / f"file{index}"
                text_file.write_text(source)
                source = text_file
            proc.run(["mcopy", "-o", "-i", target, str(source), f"::/{dest}"], what="disk: mcopy (ESP)",
                     cancel=cancel, timeout=120, on_line=None, env=env)


_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def convert(source: Path, dest: Path, fmt: str, *, compress: bool, cancel: threading.Event | None,
            progress: Callable[[int, int], None], timeout: float = 3600) -> None:
    """``qemu-img convert`` ``source`` (raw) to ``dest`` in ``fmt``; reports (bytes done, total virtual bytes)."""
    total = source.stat().st_size
    argv = ["qemu-img", "convert", "-p", "-W", "-f", "raw", "-O", fmt]
    if fmt == "qcow2":
        argv += ["-o", "cluster_size=65536"]
        if compress:
            argv.append("-c")
    argv += [str(source), str(dest)]

    def on_line(line: str) -> None:
        for match in _PERCENT.finditer(line.encode()):
            progress(int(total * float(match.group(1)) / 100), total)

    progress(0, total)
    proc.run(argv, what=f"convert: qemu-img to {fmt}", cancel=cancel, timeout=timeout, on_line=on_line)
    progress(total, total)
