"""One SQLite store shared by many processes: a WAL database file, versioned schema, short write transactions and
per-resource file locks.

:class:`SqliteStore` is the plumbing under the CPI's state (``cpi/state.py``, ``state.db``) and the bare-metal
inventory (``cpi/providers/baremetal/store.py``, ``metal.db``); each of those owns its tables, its schema version
and its queries. Contracts:

* **Files.** The state directory and its ``locks/`` are created 0700 (``private_dirs``: an existing directory
  readable or writable by others is tightened, keeping 0711 on the state directory when others could traverse it,
  since a hypervisor may need to). The database file is created 0600 before SQLite opens it (SQLite gives its
  ``-wal``/``-shm`` files the database's mode); an older, wider file is tightened. The file is only ever created
  with ``O_EXCL``: opening and closing a descriptor of a database this process holds a connection to would drop
  that connection's POSIX locks (one of SQLite's documented ways to corrupt a database).
* **Schema.** ``schema`` is a script of ``;``-separated statements applied whole, in one transaction, whenever the
  file's ``PRAGMA user_version`` is below ``schema_version``, then ``user_version`` is set. A newer version adds its
  tables and indexes with ``CREATE ... IF NOT EXISTS``, so the same script migrates every older file. The first
  open switches the file to WAL, which needs the database to itself: concurrent first opens serialise on the
  ``locks/<init_lock>`` file lock (removed afterwards) and the losers find the work done.
* **Writes.** Every write is one ``BEGIN IMMEDIATE`` transaction (:meth:`SqliteStore.write`): committed on success,
  rolled back on any exception. ``busy_timeout`` is 60 s, ``synchronous = NORMAL``.
* **Locks.** :meth:`SqliteStore.lock` holds an exclusive ``flock`` on ``locks/<kind>-<name>.lock`` across long
  operations on one resource (IaaS or BMC calls); :func:`flock_file` is safe against a holder removing the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["HeldLock", "SqliteStore", "flock_file", "safe_name"]

#: Retries when the lock file was replaced between open and flock (each retry means another holder removed it).
_MAX_LOCK_RETRIES = 10000


class SqliteStore:
    """A process-safe SQLite database ``<state_dir>/<filename>`` in WAL mode with per-resource file locks.

    Construct one per process. ``private_dirs``: create the state directory and ``locks/`` 0700 and tighten
    existing ones (see the module docstring); otherwise they are created 0700 when missing and left alone when
    they exist. ``foreign_keys`` turns on SQLite's foreign key enforcement; ``threads`` lets other threads of the
    process use the connection (the caller serialises them)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        filename: str,
        schema: str,
        schema_version: int,
        *,
        init_lock: tuple[str, str],
        private_dirs: bool = True,
        foreign_keys: bool = False,
        threads: bool = False,
    ) -> None:
        self.dir = Path(state_dir)
        if private_dirs:
            _private_dir(self.dir, parents=True, keep_traverse=True)
            _private_dir(self.dir / "locks", keep_traverse=False)
        else:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.dir / "locks").mkdir(exist_ok=True, mode=0o700)
        self.path = self.dir / filename
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        for suffix in ("", "-wal", "-shm"):  # SQLite gives -wal/-shm the database's mode; tighten older ones
            with contextlib.suppress(FileNotFoundError):
                _tighten(self.dir / f"{filename}{suffix}")
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=not threads)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA synchronous = NORMAL")
        if foreign_keys:
            self._db.execute("PRAGMA foreign_keys = ON")
        if self._schema_version() < schema_version:
            with flock_file(self._lock_path(*init_lock)) as held:
                held.remove = True  # later processes find the schema in place and never take this lock
                if self._schema_version() < schema_version:
                    self._db.execute("PRAGMA journal_mode = WAL")
                    with self.write() as db:
                        for statement in schema.split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(f"PRAGMA user_version = {int(schema_version)}")

    def _schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction taken up front (BEGIN IMMEDIATE), committed on success, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _lock_path(self, kind: str, name: str) -> Path:
        return self.dir / "locks" / f"{kind}-{safe_name(name)}.lock"

    @contextlib.contextmanager
    def lock(self, kind: str, name: str) -> Iterator[None]:
        """An exclusive advisory lock on one resource (e.g. ``lock("node", "n1")``), held across IaaS or BMC calls
        and released on process exit too."""
        with flock_file(self._lock_path(kind, name)):
            yield

    @contextlib.contextmanager
    def try_lock(self, kind: str, name: str) -> Iterator[bool]:
        """Like :meth:`lock` but never waits: yields False (holding nothing) when another process holds it."""
        fd = os.open(self._lock_path(kind, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class HeldLock:
    """A lock held by :func:`flock_file`; set ``remove`` to unlink the lock file (under the lock) on release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.remove = False


@contextlib.contextmanager
def flock_file(path: Path, *, create: bool = True) -> Iterator[HeldLock]:
    """Hold an exclusive flock on ``path`` (created 0600 when missing) for the block; released on exit.

    After ``flock`` returns, the path must still name the locked inode: a holder that removed the file on release
    (``HeldLock.remove``) may have unlinked it while this process waited, in which case this process retries on the
    file that now exists. Removal only ever happens under the lock, so at any time at most one process holds the
    lock on the inode the path names. ``create=False``: FileNotFoundError when there is no lock file."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    for _ in range(_MAX_LOCK_RETRIES):
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is None or (current.st_ino, current.st_dev) != (locked.st_ino, locked.st_dev):
                if not create and current is None:
                    raise FileNotFoundError(path)
                continue  # unlinked (or replaced) by the previous holder: lock the file the path names now
            held = HeldLock(path)
            try:
                yield held
            finally:
                if held.remove:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            return
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    raise OSError(f"lock file {path} kept being replaced ({_MAX_LOCK_RETRIES} attempts)")


def safe_name(name: str) -> str:
    """``name`` as a file name part: characters other than letters, digits, ``-``, ``_`` and ``.`` become ``_``;
    at most 200 characters."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:200]


def _private_dir(path: Path, *, parents: bool = False, keep_traverse: bool) -> None:
    """Create ``path`` 0700; an existing directory readable or writable by others is tightened to 0700, or to 0711
    with ``keep_traverse`` when others could traverse it (a provider's hypervisor may need that)."""
    path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o066 or (mode & 0o011 and not keep_traverse):
        path.chmod(0o711 if keep_traverse and mode & 0o011 else 0o700)


def _tighten(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
