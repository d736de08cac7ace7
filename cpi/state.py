"""The CPI's durable state: one SQLite database in WAL mode, safe under many concurrent CPI processes.

The IaaS (libvirt, ...) stays the source of truth for what exists; this store keeps what the IaaS cannot hold:
the agent settings written to each VM's config drive, which disk is attached to which VM, director metadata on
disks and stemcell tags. Every write is one short ``BEGIN IMMEDIATE`` transaction. Long operations on one
resource (attach, delete, ...) serialise on a per-resource file lock (``lock``), always taken VM first, then disk.

Secrets at rest: the database holds agent settings (message-bus and blobstore credentials, ``env``), so the state
directory is created 0700, ``state.db`` (and SQLite's ``-wal``/``-shm`` files, which inherit its mode) 0600 and
``locks/`` 0700; existing files from older versions are tightened on open. A provider whose hypervisor must
traverse the state directory (libvirt's QEMU writes console logs below it) may widen the directory itself to
0711 (traverse, no listing); the files keep 0600.

Lock files: a resource's lock file is removed when the lock is released and the resource is unknown to the
database (deleted, or never existed: ``has_vm``/``delete_vm`` of unknown ids left one file each before). Removal
happens only while holding the lock, and every acquirer checks after ``flock`` that the path still names the inode
it locked (else it retries on the new file), so two processes can never hold "the same" lock on different inodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS stemcells (
    cid TEXT PRIMARY KEY,
    volume TEXT NOT NULL,
    format TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS vms (
    cid TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    stemcell_cid TEXT NOT NULL,
    settings TEXT NOT NULL,
    config_drive TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS disks (
    cid TEXT PRIMARY KEY,
    volume TEXT NOT NULL,
    size_mib INTEGER NOT NULL,
    serial TEXT NOT NULL UNIQUE,
    vm_cid TEXT,
    target TEXT,
    cloud_properties TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS snapshots (
    cid TEXT PRIMARY KEY,
    disk_cid TEXT NOT NULL,
    volume TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
"""


class StateStore:
    """Process-safe state. Construct one per CPI process; ``state_dir`` is created if missing."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        _private_dir(self.dir, parents=True, keep_traverse=True)
        _private_dir(self.dir / "locks", keep_traverse=False)
        self.path = self.dir / "state.db"
        _private_file(self.path)
        for suffix in ("-wal", "-shm"):  # SQLite gives these the database's mode; tighten older ones
            with contextlib.suppress(FileNotFoundError):
                _tighten(self.dir / f"state.db{suffix}")
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA synchronous = NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            # First use (or an older schema): journal mode and tables, once. Switching to WAL needs the database
            # to itself (SQLite answers "database is locked" without waiting), so concurrent first calls
            # serialise on a file lock and the losers find the work done.
            with flock_file(self._lock_path("state", "init")) as held:
                held.remove = True  # later processes find the schema in place and never take this lock
                if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._db.execute("PRAGMA journal_mode = WAL")
                    with self.transaction() as db:
                        db.executescript_safe(SCHEMA)
                        db.executescript_safe(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """A write transaction taken up front (BEGIN IMMEDIATE), committed on success, rolled back on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _Tx(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def lock(self, kind: str, cid: str) -> Iterator[None]:
        """An exclusive advisory lock on one resource, held across IaaS calls (released on process exit too).
        On release, the lock file is removed (still under the lock) when ``kind`` names a table (vm, disk,
        stemcell, snapshot) that does not hold ``cid``: unknown and deleted resources leave no file behind."""
        table = _KIND_TABLES.get(kind)
        with flock_file(self._lock_path(kind, cid)) as held:
            try:
                yield
            finally:
                if table is not None:
                    try:
                        held.remove = self.get(table, cid) is None
                    except sqlite3.Error:  # cannot tell: keep the file (removal is an optimisation)
                        held.remove = False

    def forget_lock(self, kind: str, cid: str) -> None:
        """Remove a deleted resource's lock file, safely: it is unlinked only while this process holds it."""
        with contextlib.suppress(FileNotFoundError), flock_file(self._lock_path(kind, cid), create=False) as held:
            held.remove = True

    def _lock_path(self, kind: str, cid: str) -> Path:
        return self.dir / "locks" / f"{kind}-{_safe_name(cid)}.lock"

    # -- reads --------------------------------------------------------------------------------------------------
    def get(self, table: str, cid: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT * FROM {_table(table)} WHERE cid = ?", (cid,)).fetchone()
        return _decode(row) if row else None

    def disks_of_vm(self, vm_cid: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM disks WHERE vm_cid = ? ORDER BY target", (vm_cid,)).fetchall()
        return [_decode(r) for r in rows]

    def all(self, table: str) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._db.execute(f"SELECT * FROM {_table(table)}").fetchall()]

    def close(self) -> None:
        self._db.close()


class _Tx:
    """The statements allowed inside a transaction; JSON columns are encoded here."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def executescript_safe(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def insert(self, table: str, **values: Any) -> None:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._db.execute(
            f"INSERT INTO {_table(table)} ({cols}) VALUES ({marks})", [_encode(v) for v in values.values()]
        )

    def update(self, table: str, cid: str, **values: Any) -> int:
        sets = ", ".join(f"{k} = ?" for k in values)
        cur = self._db.execute(
            f"UPDATE {_table(table)} SET {sets} WHERE cid = ?", [*(_encode(v) for v in values.values()), cid]
        )
        return cur.rowcount

    def delete(self, table: str, cid: str) -> int:
        return self._db.execute(f"DELETE FROM {_table(table)} WHERE cid = ?", (cid,)).rowcount

    def get(self, table: str, cid: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT * FROM {_table(table)} WHERE cid = ?", (cid,)).fetchone()
        return _decode(row) if row else None

    def detach_all_from(self, vm_cid: str) -> None:
        self._db.execute("UPDATE disks SET vm_cid = NULL, target = NULL WHERE vm_cid = ?", (vm_cid,))


_TABLES = frozenset({"stemcells", "vms", "disks", "snapshots"})
#: Lock kinds whose lock files are removed once the resource is not (or no longer) in its table.
_KIND_TABLES = {"vm": "vms", "disk": "disks", "stemcell": "stemcells", "snapshot": "snapshots"}
_JSON_COLUMNS = frozenset({"tags", "settings", "metadata", "cloud_properties"})


def _table(name: str) -> str:
    if name not in _TABLES:
        raise ValueError(f"unknown state table {name!r}")
    return name


def _encode(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS & out.keys():
        out[key] = json.loads(out[key])
    return out


class HeldLock:
    """A lock held by :func:`flock_file`; set ``remove`` to unlink the lock file (under the lock) on release."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.remove = False


#: Retries when the lock file was replaced between open and flock (each retry means another holder removed it).
_MAX_LOCK_RETRIES = 10000


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


def _private_dir(path: Path, *, parents: bool = False, keep_traverse: bool) -> None:
    """Create ``path`` 0700; an existing directory readable or writable by others is tightened to 0700, or to 0711
    with ``keep_traverse`` when others could traverse it (a provider's hypervisor may need that)."""
    path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o066 or (mode & 0o011 and not keep_traverse):
        path.chmod(0o711 if keep_traverse and mode & 0o011 else 0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing (before SQLite does, with the umask's 0644), else tighten it to 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _tighten(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _safe_name(cid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in cid)[:200]
