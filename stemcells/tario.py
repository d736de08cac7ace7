"""Streaming primitives of stemcell tarballs: deterministic tar members, sha1-hashing file objects, disk image format
sniffing and human-readable sizes.

Used by :mod:`stemcells.tarball` (writing, reading and verifying) and ``stemforge stemcell`` (:mod:`stemcells.cli`).
Members written with :func:`add_bytes`/:func:`add_file` are owned by root, mode 0644 and stamped with the caller's
``mtime``, so equal inputs give byte-identical archives. :class:`HashingWriter`/:class:`HashingReader` hash (sha1)
what passes through them, in the stream, so a many-GiB image is read once and never held in memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tarfile
from pathlib import Path
from typing import IO, Final, Literal

__all__ = [
    "QCOW2_MAGIC",
    "HashingReader",
    "HashingWriter",
    "ImageFormat",
    "add_bytes",
    "add_file",
    "human_size",
    "sniff_image",
    "tar_member",
]

QCOW2_MAGIC: Final = b"QFI\xfb"
ImageFormat = Literal["qcow2", "raw"]
#: Bytes read at a time.
CHUNK: Final = 1024 * 1024


def tar_member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    """A regular-file tar header: ``name``, ``size`` bytes, mode 0644, owner root (0:0), ``mtime``."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def add_bytes(tar: tarfile.TarFile, name: str, content: bytes, mtime: int) -> None:
    """Add ``content`` as the member ``name`` (see :func:`tar_member`)."""
    tar.addfile(tar_member(name, len(content), mtime), io.BytesIO(content))


def add_file(tar: tarfile.TarFile, name: str, path: Path, mtime: int) -> None:
    """Add the file at ``path`` as the member ``name`` (see :func:`tar_member`), streamed."""
    with open(path, "rb") as source:
        tar.addfile(tar_member(name, os.fstat(source.fileno()).st_size, mtime), source)


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB are shown exactly."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def sniff_image(head: bytes) -> tuple[ImageFormat, int | None]:
    """A disk image's format from its first bytes (``qcow2`` by its magic, else ``raw``) and, for qcow2 when
    ``head`` holds its header's first 32 bytes, the virtual size in bytes (else None)."""
    if head.startswith(QCOW2_MAGIC) and len(head) >= 32:
        return "qcow2", struct.unpack(">Q", head[24:32])[0]
    if head.startswith(QCOW2_MAGIC):
        return "qcow2", None
    return "raw", None


class HashingWriter:
    """A write-only file object that hashes (sha1) everything written through it to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._digest = hashlib.sha1()

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return self._target.write(data)

    def flush(self) -> None:
        self._target.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class HashingReader:
    """A read-only file object that hashes (sha1) and counts (``size``) everything read through it from
    ``source``."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._digest = hashlib.sha1()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) everything left."""
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
