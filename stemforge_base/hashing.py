"""File digests: the one chunked, sparse-aware, cancellable file hash.

Contract of :func:`file_digest`:

* The hex digest (``sha256`` unless ``algorithm`` names another :mod:`hashlib` algorithm) of the file's whole byte
  stream. Holes of a sparse file are hashed as the zeros they read as, without reading them (``SEEK_DATA`` /
  ``SEEK_HOLE``; a file system without them reports the whole file as data): a 40 GiB sparse disk image with 1 GiB
  written costs 1 GiB of reads. Memory stays at one chunk.
* ``check()``, when given, is called before every chunk: it raises to stop (the caller's ``Cancelled``).
* ``progress(done, total)``, when given, is called after every chunk and hole with the bytes hashed so far and the
  file's size; the last call has ``done == total``. Callers' UIs rate-limit it themselves.
* ``OSError`` from opening or reading propagates.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from typing import IO, Final

#: Bytes read (and zeros hashed) at a time.
CHUNK: Final = 4 * 1024 * 1024


def file_digest(source: str | os.PathLike[str] | IO[bytes], algorithm: str = "sha256", *,
                progress: Callable[[int, int], None] | None = None,
                check: Callable[[], None] | None = None) -> str:
    """The hex digest of the file at ``source``, or of the whole file an open binary file object reads (the caller
    opened it its own way, e.g. without following links; it is read from its start and not closed); see the
    module docstring."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as fh:
            return _fd_digest(fh.fileno(), algorithm, progress, check)
    return _fd_digest(source.fileno(), algorithm, progress, check)


def sha256_file(source: str | os.PathLike[str] | IO[bytes], *, progress: Callable[[int, int], None] | None = None,
                check: Callable[[], None] | None = None) -> str:
    """:func:`file_digest` with sha256, the digest stemcells, images and artifacts are recorded with."""
    return file_digest(source, "sha256", progress=progress, check=check)


def _fd_digest(fd: int, algorithm: str, progress: Callable[[int, int], None] | None,
               check: Callable[[], None] | None) -> str:
    digest = hashlib.new(algorithm)
    size = os.fstat(fd).st_size
    zeros = bytes(CHUNK)
    pos = 0
    while pos < size:
        if check is not None:
            check()
        data_at = _seek(fd, pos, os.SEEK_DATA, size, pos)
        if data_at > pos:  # a hole: hash the zeros it reads as, without reading them
            count = min(CHUNK, data_at - pos)
            digest.update(zeros[:count])
            pos += count
        else:
            hole_at = _seek(fd, pos, os.SEEK_HOLE, size, size)
            os.lseek(fd, pos, os.SEEK_SET)  # lseek(SEEK_DATA/SEEK_HOLE) moved the offset
            chunk = os.read(fd, min(CHUNK, hole_at - pos))
            if not chunk:  # the file shrank while it was read: what was read is hashed
                break
            digest.update(chunk)
            pos += len(chunk)
        if progress is not None:
            progress(pos, size)
    return digest.hexdigest()


def _seek(fd: int, pos: int, whence: int, size: int, unknown: int) -> int:
    """``lseek(fd, pos, whence)`` for SEEK_DATA/SEEK_HOLE: ``size`` when nothing follows (ENXIO: the rest is a
    hole), ``unknown`` when the file system cannot say (then everything is read as data)."""
    try:
        return os.lseek(fd, pos, whence)
    except OSError as exc:
        return size if exc.errno == errno.ENXIO else unknown
