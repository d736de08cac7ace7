"""Laying the tree onto a disk without mounting anything: a sparse raw file, an msdos partition table (sfdisk),
one ext4 partition made and populated in place by ``mke2fs -d`` at the partition's byte offset, then conversion
to the output formats with ``qemu-img convert`` (byte progress parsed from ``-p``)."""

from __future__ import annotations

import re
import subprocess
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


@dataclass(frozen=True)
class DiskLayout:
    image: Path
    size_bytes: int
    partition_offset: int
    partition_bytes: int
    root_uuid: str


def tree_size_mib(tree: Path) -> int:
    """Apparent size of the tree (one filesystem), in MiB, rounded up."""
    out = subprocess.run(["du", "-sx", "--block-size=1M", str(tree)], capture_output=True, text=True,
                         timeout=600, check=False)
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError) as exc:
        raise BuildError(f"disk: cannot measure {tree}: {out.stderr.strip()}") from exc


def create_disk(image: Path, tree: Path, size_mib: int, root_uuid: str, label: str,
                cancel: threading.Event | None, on_line: Callable[[str], None]) -> DiskLayout:
    """Create ``image`` (sparse) with one bootable ext4 partition holding ``tree``."""
    needed = tree_size_mib(tree)
    # ext4 metadata (inode tables, journal) needs room on top of the data.
    minimum = int(needed * 1.25) + 96
    if size_mib < minimum:
        raise BuildError(f"disk: disk_size {size_mib}M is too small for the root tree ({needed} MiB of files); "
                         f"use at least {minimum}M")
    size = size_mib * MIB
    with open(image, "wb") as fh:
        fh.truncate(size)
    script = f"label: dos\nunit: sectors\n\nstart={FIRST_SECTOR}, type=83, bootable\n"
    proc.run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", str(image)], what="disk: sfdisk",
             cancel=cancel, timeout=120, input_data=script.encode(), on_line=None)
    offset = FIRST_SECTOR * SECTOR
    part_bytes = size - offset
    blocks = part_bytes // 4096
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", root_uuid,
              "-E", f"offset={offset},root_owner=0:0", "-d", str(tree), str(image), str(blocks)],
             what="disk: mke2fs", cancel=cancel, timeout=1800, on_line=on_line)
    return DiskLayout(image, size, offset, part_bytes, root_uuid)


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
