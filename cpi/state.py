"""The CPI's durable state: one SQLite database in WAL mode, safe under many concurrent CPI processes.

The database, transactions, schema versioning and file locks are :class:`stemforge_base.sqlite_store.SqliteStore`
(shared with the bare-metal inventory); this module owns the CPI's tables and their queries.

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
import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from stemforge_base.sqlite_store import SqliteStore, flock_file

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


class StateStore(SqliteStore):
    """Process-safe state. Construct one per CPI process; ``state_dir`` is created if missing (0700, see above)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        super().__init__(state_dir, "state.db", SCHEMA, SCHEMA_VERSION, init_lock=("state", "init"))

    # -- transactions -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """A write transaction taken up front (BEGIN IMMEDIATE), committed on success, rolled back on error."""
        with self.write() as db:
            yield _Tx(db)

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

    # -- reads --------------------------------------------------------------------------------------------------
    def get(self, table: str, cid: str) -> dict[str, Any] | None:
        row = self._db.execute(f"SELECT * FROM {_table(table)} WHERE cid = ?", (cid,)).fetchone()
        return _decode(row) if row else None

    def disks_of_vm(self, vm_cid: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM disks WHERE vm_cid = ? ORDER BY target", (vm_cid,)).fetchall()
        return [_decode(r) for r in rows]

    def all(self, table: str) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._db.execute(f"SELECT * FROM {_table(table)}").fetchall()]


class _Tx:
    """The statements allowed inside a transaction; JSON columns are encoded here."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

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
