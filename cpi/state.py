"""The CPI's durable state: one SQLite database in WAL mode, safe under many concurrent CPI processes.

The IaaS (libvirt, ...) stays the source of truth for what exists; this store keeps what the IaaS cannot hold:
the agent settings written to each VM's config drive, which disk is attached to which VM, director metadata on
disks and stemcell tags. Every write is one short ``BEGIN IMMEDIATE`` transaction. Long operations on one
resource (attach, delete, ...) serialise on a per-resource file lock (``lock``), always taken VM first, then disk.
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
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "locks").mkdir(exist_ok=True)
        self.path = self.dir / "state.db"
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 60000")
        self._db.execute("PRAGMA synchronous = NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            # First use (or an older schema): journal mode and tables, once. Switching to WAL needs the database
            # to itself (SQLite answers "database is locked" without waiting), so concurrent first calls
            # serialise on a file lock and the losers find the work done.
            with self.lock("state", "init"):
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
        """An exclusive advisory lock on one resource, held across IaaS calls (released on process exit too)."""
        with flock_file(self.dir / "locks" / f"{kind}-{_safe_name(cid)}.lock"):
            yield

    def forget_lock(self, kind: str, cid: str) -> None:
        """Remove a deleted resource's lock file (harmless if another process still holds it)."""
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "locks" / f"{kind}-{_safe_name(cid)}.lock").unlink()

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


@contextlib.contextmanager
def flock_file(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600 when missing) for the block; released on exit."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _safe_name(cid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in cid)[:200]
