"""A directory per site (``{"type": "local", "name": "site-a", "path": "/srv/images"}``): a mounted share, a
libvirt storage pool directory, a staging area a site syncs from.

Staging writes ``.stemforge-staging-<id>-<name>`` in the same directory (holes of a sparse source stay holes),
fsyncs it, drops it from the page cache and re-reads it from the device to compare its sha256 with the source.
Commit hard-links the staged file to its final name (atomic, never clobbers) and unlinks the staging name, so a
reader sees either no image or the whole verified one. The copy's id is its absolute path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.destinations import (
    BACKUP_MARK,
    CHUNK,
    STAGING_MARK,
    Committed,
    CopyCheck,
    Destination,
    DestinationError,
    SourceImage,
    Staged,
    TransferIO,
    hash_stream,
)
from builders.image_store import fsync_dir
from builders.registry import closed_object

_ZERO: Final = bytes(CHUNK)
#: errno values worth another attempt (a flaky network filesystem); a full disk or a permission error is not.
_TRANSIENT_ERRNOS: Final = frozenset({errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR})


class LocalDestination(Destination):
    """Publish into a local directory (created with its parents when missing)."""

    type_name: ClassVar[str] = "local"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "path": {"type": "string", "minLength": 1},
            #: Re-read the copy from the device (page cache dropped) rather than from memory. Default true.
            "verify_from_device": {"type": "boolean"},
            #: Keep holes of a sparse source as holes. Default true.
            "sparse": {"type": "boolean"},
        }, required=["path"])

    @property
    def root(self) -> Path:
        return Path(os.path.abspath(str(self.config["path"])))

    def describe(self) -> str:
        return f"local {self.root}"

    def image_id(self, image_name: str) -> str:
        return str(self.root / image_name)

    # -- phase 0 ------------------------------------------------------------------------------------------
    def preflight(self, source: SourceImage, image_name: str, replace: bool) -> None:
        root = self.root
        existing = root
        while not existing.exists():
            if existing.parent == existing:
                break
            existing = existing.parent
        if not existing.is_dir():
            raise DestinationError(f"{existing} is not a directory, so {root} cannot be used")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DestinationError(f"{existing} is not writable")
        final = root / image_name
        if os.path.lexists(final) and not replace:
            raise DestinationError(f"{final} already exists (use -force to replace it)")
        free = shutil.disk_usage(existing).free
        if free < source.size:
            raise DestinationError(f"not enough space in {existing}: {free} bytes free, the image needs "
                                   f"{source.size}")

    # -- phase 1 ------------------------------------------------------------------------------------------
    def stage(self, source: SourceImage, image_name: str, io: TransferIO) -> Staged:
        created = self._make_dirs()
        tmp = self.root / f"{STAGING_MARK}{uuid.uuid4().hex[:12]}-{image_name}"
        staged = Staged(image_name, {"tmp": str(tmp), "created_dirs": [str(d) for d in created]})
        try:
            io.phase("copy")
            staged.bytes_written = self._copy(source, tmp, io)
            io.phase("verify")
            staged.verified = self._verify(tmp, source.sha256, io, what="staged copy")
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def _make_dirs(self) -> list[Path]:
        missing: list[Path] = []
        path = self.root
        while not path.exists():
            missing.append(path)
            path = path.parent
        created: list[Path] = []
        try:
            for directory in reversed(missing):
                try:
                    directory.mkdir(mode=0o755)
                except FileExistsError:
                    # Another destination of the same fan-out (a sibling under the same new parent) made it
                    # first: it is theirs to remove, not ours.
                    if not directory.is_dir():
                        raise
                    continue
                created.append(directory)
        except OSError as exc:
            raise _error(f"cannot create {self.root}", exc) from exc
        return created[::-1]  # deepest first: the order to remove them in

    def _copy(self, source: SourceImage, tmp: Path, io: TransferIO) -> int:
        sparse = bool(self.config.get("sparse", True))
        written = 0
        try:
            fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _error(f"cannot create {tmp}", exc) from exc
        try:
            with open(source.path, "rb", buffering=0) as src, open(fd_out, "wb", buffering=0, closefd=False) as out:
                fd_in = src.fileno()
                for start, end in _data_segments(fd_in, source.size) if sparse else [(0, source.size)]:
                    src.seek(start)
                    out.seek(start)
                    position = start
                    while position < end:
                        io.check()
                        data = src.read(min(CHUNK, end - position))
                        if not data:
                            raise DestinationError(f"{source.path} shrank while it was being copied")
                        if sparse and len(data) == CHUNK and data == _ZERO:
                            out.seek(len(data), os.SEEK_CUR)
                        else:
                            _write_all(out, data)
                            written += len(data)
                        position += len(data)
                        io.progress(position)
                os.ftruncate(fd_out, source.size)
                os.fsync(fd_out)
            io.progress(source.size)
        except OSError as exc:
            raise _error(f"cannot write {tmp}", exc) from exc
        finally:
            os.close(fd_out)
        return written

    def _verify(self, path: Path, expected: str, io: TransferIO, *, what: str) -> bool:
        digest, _size = self._rehash(path, io)
        if digest != expected:
            raise DestinationError(f"{what} {path} has sha256 {digest}, the source has {expected}", transient=True)
        return True

    def _rehash(self, path: Path, io: TransferIO) -> tuple[str, int]:
        try:
            with open(path, "rb", buffering=0) as fh:
                if self.config.get("verify_from_device", True):
                    with contextlib.suppress(OSError, AttributeError):
                        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                return hash_stream(fh, io)
        except OSError as exc:
            raise _error(f"cannot read back {path}", exc) from exc

    def discard(self, staged: Staged) -> None:
        tmp = staged.handle.get("tmp")
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._remove_created_dirs(staged.handle.get("created_dirs", []))

    def _remove_created_dirs(self, dirs: list[str]) -> None:
        for directory in dirs:  # deepest first
            try:
                os.rmdir(directory)
            except OSError:
                break  # not empty (someone else's files) or already gone: leave it and its parents

    # -- phase 2 ------------------------------------------------------------------------------------------
    def commit(self, staged: Staged, replace: bool) -> Committed:
        tmp = Path(staged.handle["tmp"])
        final = self.root / staged.image_name
        backup: Path | None = None
        try:
            if replace and os.path.lexists(final):
                backup = self.root / f"{BACKUP_MARK}{uuid.uuid4().hex[:12]}-{staged.image_name}"
                os.rename(final, backup)
            try:
                os.link(tmp, final)  # atomic and refuses to clobber
            except FileExistsError:
                raise DestinationError(f"{final} appeared while the image was being published; not replacing it") \
                    from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(final):
                    raise DestinationError(f"{final} appeared while the image was being published") from None
                os.rename(tmp, final)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fsync_dir(self.root)
        except BaseException as exc:
            if backup is not None and not os.path.lexists(final):
                with contextlib.suppress(OSError):
                    os.rename(backup, final)
            if isinstance(exc, OSError):
                raise _error(f"cannot publish {final}", exc) from exc
            raise
        inode = os.stat(final).st_ino
        staged.handle["inode"] = inode
        return Committed(staged.image_name, str(final), str(backup) if backup else None, staged.bytes_written,
                         {"created_dirs": staged.handle.get("created_dirs", [])})

    def rollback(self, committed: Committed) -> None:
        final = self.root / committed.image_name
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            if committed.backup and os.path.lexists(committed.backup):
                os.rename(committed.backup, final)
            fsync_dir(self.root)
        except OSError as exc:
            raise _error(f"cannot roll back {final}", exc) from exc
        self._remove_created_dirs(committed.handle.get("created_dirs", []))

    def finalize(self, committed: Committed) -> None:
        if committed.backup:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(committed.backup)

    # -- proof --------------------------------------------------------------------------------------------
    def check(self, image_name: str, expected_sha256: str | None, io: TransferIO) -> CopyCheck:
        path = self.root / image_name
        if not path.is_file():
            return CopyCheck(self.name, str(path), False, None, None, False, "missing")
        try:
            digest, size = self._rehash(path, io)
        except DestinationError as exc:
            return CopyCheck(self.name, str(path), True, None, None, False, str(exc))
        ok = expected_sha256 is None or digest == expected_sha256
        return CopyCheck(self.name, str(path), True, size, digest, ok, "sha256 matches" if ok else "sha256 differs")

    def list_images(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of ``fd`` holding data (SEEK_DATA/SEEK_HOLE); the whole file when the
    filesystem cannot tell."""
    segments: list[tuple[int, int]] = []
    position = 0
    try:
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end))
            position = end
    except (OSError, AttributeError):
        return [(0, size)]
    return segments


def _write_all(out: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        count = out.write(view)
        view = view[count:]


def _error(what: str, exc: OSError) -> DestinationError:
    reason = exc.strerror or str(exc)
    return DestinationError(f"{what}: {reason}", transient=exc.errno in _TRANSIENT_ERRNOS)


PLUGIN = LocalDestination
