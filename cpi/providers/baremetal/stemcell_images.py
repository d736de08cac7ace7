"""create_stemcell's image work: the disk image inside the director's ``image`` file, judged by
``stemcells.image_check``, copied or converted to a sparse raw file (what ``metal serve`` streams to the ramdisk),
and its root partition found for file-based deploys (:func:`root_partition`).

The root partition: the largest ext4 partition of the raw disk's MBR (primary and logical, following the EBR
chain) or GPT (a protective MBR of type 0xEE), 512-byte sectors. ext4 is told by the superblock at 1024 bytes into
the partition (magic 0xEF53 at byte 56) with an ext4-only incompatible feature (extents 0x40, 64bit 0x80 or
flex_bg 0x200), as ``blkid`` (util-linux ``libblkid/src/superblocks/ext.c``) tells ext4 from ext2/3. Its byte
offset, size and sha256 go into the stemcell record; a layout deploy streams exactly those bytes (``Range``)
onto the layout's ``/`` and checks the sha256 (``instructions.py``: ``SF_ROOTFS_*``). GPT layout per the UEFI
specification (header at LBA 1: ``EFI PART``, entries' LBA at byte 72, count at 80, size at 84; an entry's first
and last LBA at bytes 32 and 40).

What ``metal serve`` streams (:func:`streams`): the raw disk gzipped (level 1; the ramdisk's ``sfwrite`` inflates it
and hashes the gzip bytes), so a 2 GiB image that is mostly zeros crosses the provisioning network as a few hundred
MiB; and, for file-based deploys, the root partition copied out, checked (``e2fsck -fy``), shrunk to its minimum
(``resize2fs -M``), its free blocks punched out (``e2fsck -E discard``) and gzipped: the ramdisk streams that and
grows it to the layout's ``/`` (Ironic's file-based image deploys stream a whole partition image instead).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Final

from cpi.errors import CloudError
from stemcells.errors import StemcellError
from stemcells.image_check import ImageRejected, prepare_root_image

QCOW2_MAGIC = b"QFI\xfb"
SECTOR: Final = 512
EXT_MAGIC: Final = 0xEF53
EXT4_INCOMPAT: Final = 0x40 | 0x80 | 0x200  # extents, 64bit, flex_bg
MBR_EXTENDED: Final = (0x05, 0x0F, 0x85)
MAX_PARTITIONS: Final = 256
GZIP_LEVEL: Final = 1  # inflating costs the same at any level; level 1 compresses ~3x faster than 6 here
CHUNK: Final = 1 << 20


def root_image(image: Path, work: Path) -> Path:
    """The disk image inside the director's ``image`` file (a gzipped tar), or the file itself, judged by
    ``stemcells.image_check`` (qcow2/raw, no backing or data file, not encrypted, bounded virtual size)."""
    try:
        return prepare_root_image(image, work).path
    except ImageRejected as exc:
        raise CloudError(f"create_stemcell: root image {exc.path.name} of {image} refused: {exc.reason}") from None
    except StemcellError as exc:
        raise CloudError(f"create_stemcell: {exc.message}") from None


def to_raw(source: Path, target: Path) -> None:
    """Copy (raw) or convert (qcow2, sniffed by magic, never by name) to a sparse raw file."""
    with open(source, "rb") as fh:
        magic = fh.read(4)
    if magic != QCOW2_MAGIC:
        proc = subprocess.run(
            ["cp", "--sparse=always", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    else:
        qemu_img = shutil.which("qemu-img") or "/usr/bin/qemu-img"
        proc = subprocess.run(
            [qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if proc.returncode != 0:
        raise CloudError(f"create_stemcell: converting the image to raw failed: {proc.stderr.strip()[:500]}")


def partitions(image: Path) -> list[tuple[int, int]]:
    """The partitions of a raw disk image as (byte offset, byte size), in table order; [] without a table."""
    size = image.stat().st_size
    with open(image, "rb") as fh:
        mbr = _read(fh, 0, SECTOR)
        if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
            return []
        entries = [struct.unpack_from("<B3xBxxxII", mbr, 446 + 16 * i)[1:] for i in range(4)]
        if any(kind == 0xEE for kind, _, _ in entries):
            found = _gpt(fh)
        else:
            found = []
            for kind, start, count in entries:
                if kind in MBR_EXTENDED:
                    found += _logical(fh, start)
                elif kind and count:
                    found.append((start * SECTOR, count * SECTOR))
    return [(off, length) for off, length in found if length > 0 and off + length <= size]


def _read(fh: BinaryIO, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


def _gpt(fh: BinaryIO) -> list[tuple[int, int]]:
    header = _read(fh, SECTOR, 92)
    if header[:8] != b"EFI PART":
        return []
    lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 56 or count > 4096:
        return []
    table = _read(fh, lba * SECTOR, count * entry_size)
    out = []
    for i in range(min(count, len(table) // entry_size)):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last >= first:
            out.append((first * SECTOR, (last - first + 1) * SECTOR))
    return out[:MAX_PARTITIONS]


def _logical(fh: BinaryIO, extended: int) -> list[tuple[int, int]]:
    """Logical partitions: each EBR's first entry is relative to that EBR, its second links the next EBR
    (relative to the extended partition's start); bounded."""
    out: list[tuple[int, int]] = []
    ebr = extended
    for _ in range(MAX_PARTITIONS):
        sector = _read(fh, ebr * SECTOR, SECTOR)
        if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
            break
        kind, start, count = struct.unpack_from("<B3xBxxxII", sector, 446)[1:]
        if kind and count:
            out.append(((ebr + start) * SECTOR, count * SECTOR))
        next_kind, next_start, _ = struct.unpack_from("<B3xBxxxII", sector, 462)[1:]
        if next_kind not in MBR_EXTENDED or not next_start:
            break
        ebr = extended + next_start
    return out


def is_ext4(image: Path, offset: int) -> bool:
    """The partition at ``offset`` holds ext4 (superblock magic and an ext4-only incompatible feature)."""
    with open(image, "rb") as fh:
        superblock = _read(fh, offset + 1024, 100)
    if len(superblock) < 100:
        return False
    magic = struct.unpack_from("<H", superblock, 56)[0]
    incompat = struct.unpack_from("<I", superblock, 96)[0]
    return magic == EXT_MAGIC and bool(incompat & EXT4_INCOMPAT)


def root_partition(image: Path) -> dict[str, Any] | None:
    """``{"offset", "size", "sha256", "fstype": "ext4", "index"}`` of the largest ext4 partition of the raw
    ``image`` (``index``: 1-based in table order), or None when it has none (the image can still be deployed
    whole-disk)."""
    ext4 = [(length, -i, off) for i, (off, length) in enumerate(partitions(image)) if is_ext4(image, off)]
    if not ext4:
        return None
    length, neg_index, offset = max(ext4)
    digest = hashlib.sha256()
    with open(image, "rb") as fh:
        fh.seek(offset)
        left = length
        while left:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                raise CloudError(f"create_stemcell: the image ends inside its root partition at byte {offset}")
            digest.update(chunk)
            left -= len(chunk)
    return {"offset": offset, "size": length, "sha256": digest.hexdigest(), "fstype": "ext4", "index": 1 - neg_index}


def describe(rootfs: dict[str, Any] | None) -> str:
    """``root partition 2 (ext4) at byte 1048576, 3072 MiB`` or that there is none."""
    if not rootfs:
        return "no ext4 root partition (whole-disk deploys only)"
    return (
        f"root partition {rootfs['index']} ({rootfs['fstype']}) at byte {rootfs['offset']}, {rootfs['size'] >> 20} MiB"
    )


def gzip_file(source: Path, target: Path) -> dict[str, Any]:
    """Write ``source`` gzipped to ``target``; ``{"path": <target's name>, "format": "gzip", "sha256": <of the gzip
    bytes>, "bytes": <gzip size>}``."""
    digest = hashlib.sha256()
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    written = 0
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(CHUNK):
            data = packer.compress(chunk)
            digest.update(data)
            out.write(data)
            written += len(data)
        tail = packer.flush()
        digest.update(tail)
        out.write(tail)
        written += len(tail)
    return {"path": target.name, "format": "gzip", "sha256": digest.hexdigest(), "bytes": written}


def _e2fs(argv: list[str], what: str, ok: int = 0) -> str:
    """Run an e2fsprogs tool; exit status above ``ok`` is a CloudError naming ``what`` (e2fsck: 1 = fixed)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode > ok:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise CloudError(f"create_stemcell: {what} of the image's root partition failed ({proc.returncode}): {tail}")
    return proc.stdout


def shrunk_rootfs(image: Path, rootfs: dict[str, Any], target: Path) -> int | None:
    """Copy the root partition of the raw ``image`` to ``target`` (sparse), check it, shrink it to its minimum and
    punch out its free blocks; returns its new size in bytes, or None when e2fsprogs is missing (then the
    partition is streamed as it is, a Range of the raw image). Raises CloudError when the filesystem is broken."""
    tools = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in
             ("e2fsck", "resize2fs", "dumpe2fs")}  # fmt: skip
    if not all(tools.values()):
        return None
    offset, left = int(rootfs["offset"]), int(rootfs["size"])
    with open(image, "rb") as src, open(target, "wb") as out:
        src.seek(offset)
        while left > 0:
            chunk = src.read(min(left, CHUNK))
            left -= len(chunk)
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
        out.truncate()
    e2fsck, resize2fs, dumpe2fs = str(tools["e2fsck"]), str(tools["resize2fs"]), str(tools["dumpe2fs"])
    _e2fs([e2fsck, "-fy", str(target)], "e2fsck -fy", ok=1)
    _e2fs([resize2fs, "-M", str(target)], "resize2fs -M")
    _e2fs([e2fsck, "-fy", "-E", "discard", str(target)], "e2fsck -E discard", ok=1)
    header = _e2fs([dumpe2fs, "-h", str(target)], "dumpe2fs -h")
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    size = int(fields["Block count"]) * int(fields["Block size"])
    with open(target, "r+b") as fh:
        fh.truncate(size)
    return size


def streams(raw: Path, rootfs: dict[str, Any] | None, images_dir: Path, cid: str) -> dict[str, Any]:
    """What ``metal serve`` streams for stemcell ``cid``, made beside its raw image in ``images_dir`` (the two in
    parallel: zlib and e2fsprogs release the GIL): ``{"disk": gzip_file(...), "rootfs": gzip_file(...) + "size":
    <inflated bytes>}``; ``rootfs`` is absent without a root partition or e2fsprogs. Files already made are
    removed when one fails."""
    disk_gz, rootfs_gz, rootfs_img = stream_paths(images_dir, cid)

    def rootfs_stream() -> dict[str, Any] | None:
        if rootfs is None:
            return None
        try:
            size = shrunk_rootfs(raw, rootfs, rootfs_img)
            return None if size is None else {**gzip_file(rootfs_img, rootfs_gz), "size": size}
        finally:
            rootfs_img.unlink(missing_ok=True)

    try:
        with ThreadPoolExecutor(2, thread_name_prefix="stemcell-stream") as pool:
            disk = pool.submit(gzip_file, raw, disk_gz)
            root = pool.submit(rootfs_stream)
            out: dict[str, Any] = {"disk": disk.result()}
            made = root.result()
    except BaseException:
        for path in stream_paths(images_dir, cid):
            path.unlink(missing_ok=True)
        raise
    if made is not None:
        out["rootfs"] = made
    return out


def stream_paths(images_dir: Path, cid: str) -> list[Path]:
    """Every file :func:`streams` may leave for ``cid``: the disk's gzip, the root filesystem's gzip and its
    temporary shrunk copy (what delete_stemcell removes)."""
    return [images_dir / f"{cid}.raw.gz", images_dir / f"{cid}.rootfs.gz", images_dir / f".{cid}.rootfs.img"]


def describe_streams(streams: dict[str, Any]) -> str:
    """``disk 296 MiB gzip, root filesystem 1248 MiB in 289 MiB gzip`` (what create_stemcell logs)."""
    parts = [f"disk {streams['disk']['bytes'] >> 20} MiB gzip"]
    if "rootfs" in streams:
        root = streams["rootfs"]
        parts.append(f"root filesystem {root['size'] >> 20} MiB in {root['bytes'] >> 20} MiB gzip")
    return ", ".join(parts)
