"""The image repository's directory (``stemforge image-repo serve``, see ``builders.image_repo``): atomic
publishes and renames, recorded hashes, safe names, regular files only.

Layout of ``root``: images as plain files; ``.repo~incoming/`` holds uploads in progress (``<name>.<uuid>``);
``.repo~meta/<name>.json`` records each image's sha256 with the size, inode and mtime it was computed for, so a
file replaced behind the repository's back is re-hashed rather than trusted. Every refusal is a :class:`RepoError`
carrying the HTTP status the server answers with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import threading
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Final

from stemforge_base.hashing import sha256_file

CHUNK: Final = 1024 * 1024
INCOMING: Final = ".repo~incoming"
META: Final = ".repo~meta"
NAME_RE: Final = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


class RepoError(Exception):
    """A request the repository refuses; carries the HTTP status to answer with (and extra response headers)."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ImageStore:
    """The repository's directory: atomic writes, recorded hashes, safe names, regular files only (a symlink in
    the directory is never followed). Thread-safe."""

    def __init__(self, root: Path, *, max_size: int | None = None) -> None:
        self.root = root.resolve()
        self.max_size = max_size
        self.incoming = self.root / INCOMING
        self.meta = self.root / META
        for directory in (self.root, self.incoming, self.meta):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def clean_incoming(self) -> int:
        """Remove uploads a previous process left half-done; return how many."""
        count = 0
        for leftover in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                count += 1
        return count

    def path(self, name: str) -> Path:
        if not NAME_RE.match(name) or name in (".", ".."):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"invalid image name {name!r}")
        return self.root / name

    def _meta_path(self, name: str) -> Path:
        return self.meta / f"{name}.json"

    def _regular(self, name: str) -> os.stat_result | None:
        """``lstat`` of image ``name`` if it is a regular file in the root (not a symlink), else None."""
        try:
            st = self.path(name).lstat()
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def open(self, name: str) -> IO[bytes]:
        """Open image ``name`` for reading without following a symlink (``O_NOFOLLOW``) and without blocking on a
        FIFO; anything but a regular file is refused (404 for missing, 403 for a link or special file)."""
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RepoError(HTTPStatus.NOT_FOUND, f"{name} does not exist") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise RepoError(HTTPStatus.FORBIDDEN, f"{name} is not a regular file of the repository") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RepoError(HTTPStatus.FORBIDDEN, f"{name} is not a regular file of the repository")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def recorded_sha256(self, name: str) -> str | None:
        """The recorded sha256 of ``name`` if it still describes the file on disk, else None."""
        st = self._regular(name)
        if st is None:
            return None
        try:
            meta = json.loads(self._meta_path(name).read_text())
        except (OSError, ValueError):
            return None
        if (meta.get("size"), meta.get("ino"), meta.get("mtime_ns")) != (st.st_size, st.st_ino, st.st_mtime_ns):
            return None
        sha = meta.get("sha256")
        return sha if isinstance(sha, str) and HEX64.match(sha) else None

    def sha256(self, name: str) -> str:
        """The sha256 of ``name``, re-hashing the file (and recording it) when the record is missing or stale."""
        recorded = self.recorded_sha256(name)
        if recorded:
            return recorded
        with self.open(name) as fh:  # no link, no FIFO: only a regular file of the store is hashed
            sha = sha256_file(fh)
        self._record(name, self.path(name), sha)
        return sha

    def _record(self, name: str, path: Path, sha: str) -> None:
        st = path.lstat()
        tmp = self.meta / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"sha256": sha, "size": st.st_size, "ino": st.st_ino,
                                   "mtime_ns": st.st_mtime_ns}))
        os.replace(tmp, self._meta_path(name))

    def exists(self, name: str) -> bool:
        """Whether anything (a symlink included) holds ``name``."""
        return os.path.lexists(self.path(name))

    def new_incoming(self, name: str) -> Path:
        return self.incoming / f"{name}.{uuid.uuid4().hex}"

    def publish(self, name: str, tmp: Path, sha: str, *, overwrite: bool) -> bool:
        """Move the verified upload ``tmp`` into place as ``name``; return True if it replaced an image."""
        final = self.path(name)
        with self._lock:
            existed = self.exists(name)
            if existed and not overwrite:
                raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{name} already exists")
            os.replace(tmp, final)
            self._record(name, final, sha)
            fsync_dir(self.root)
        return existed

    def move(self, source: str, target: str, *, overwrite: bool) -> bool:
        """Rename image ``source`` to ``target`` (with its record); return True if ``target`` was replaced."""
        src = self.path(source)
        dst = self.path(target)
        with self._lock:
            if self._regular(source) is None:
                raise RepoError(HTTPStatus.NOT_FOUND, f"{source} does not exist")
            existed = self.exists(target)
            if existed and not overwrite:
                raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{target} already exists")
            os.replace(src, dst)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._meta_path(source), self._meta_path(target))
            fsync_dir(self.root)
        return existed

    def delete(self, name: str) -> None:
        """Remove image ``name`` (a symlink is removed itself, its target is untouched)."""
        path = self.path(name)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise RepoError(HTTPStatus.NOT_FOUND, f"{name} does not exist") from None
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(name).unlink()
            fsync_dir(self.root)

    def listing(self) -> dict[str, Any]:
        images = []
        with os.scandir(self.root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name in (INCOMING, META) or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                images.append({"name": entry.name, "size": st.st_size, "sha256": self.recorded_sha256(entry.name),
                               "mtime": int(st.st_mtime)})
        incoming = []
        for leftover in sorted(self.incoming.iterdir()):
            with contextlib.suppress(OSError):
                incoming.append({"name": leftover.name.rsplit(".", 1)[0], "bytes": leftover.lstat().st_size})
        return {"images": images, "incoming": incoming}


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; errors are ignored (not every file system can)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
