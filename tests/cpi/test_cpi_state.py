"""The CPI's state store (on stemforge_base.sqlite_store) under concurrent first use: 32 processes opening a fresh
state directory at once; a second store in one process keeps the first one's SQLite locks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from cpi.providers.baremetal.store import SCHEMA_VERSION as METAL_SCHEMA_VERSION
from cpi.providers.baremetal.store import MetalStore
from cpi.state import SCHEMA_VERSION as STATE_SCHEMA_VERSION
from cpi.state import StateStore


def test_32_processes_initialise_a_fresh_state_dir_at_once(tmp_path: Path) -> None:
    code = f"from cpi.state import StateStore; StateStore({str(tmp_path)!r}); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(32)]
    outcomes = [p.communicate(timeout=120) for p in procs]
    failures = [err.decode(errors="replace")[-500:] for out, err in outcomes if out.strip() != b"ok"]
    assert failures == []


def _posix_locks_on(path: Path) -> int:
    inode = os.stat(path).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if f":{inode} " in line and "POSIX" in line)


def test_opening_another_store_keeps_this_process_sqlite_locks(tmp_path: Path) -> None:
    """The one SQLite store (stemforge_base.sqlite_store) creates the database file only with O_EXCL: opening and
    closing a raw descriptor of a database this process holds would drop its POSIX locks (SQLite's "how to
    corrupt" list), which a second StateStore in one process did before (it re-opened state.db to tighten it)."""
    first = StateStore(tmp_path)
    first._db.execute("BEGIN IMMEDIATE")  # a write lock on state.db held by `first`
    try:
        held = _posix_locks_on(tmp_path / "state.db")
        assert held >= 1
        StateStore(tmp_path).close()
        assert _posix_locks_on(tmp_path / "state.db") == held
    finally:
        first._db.execute("ROLLBACK")
        first.close()


def test_schema_versions_apply_once_and_leave_no_init_lock(tmp_path: Path) -> None:
    """Both stores run on SqliteStore: the schema script applies under the init lock, which is removed; a store
    reopened at its version does not apply it again."""
    StateStore(tmp_path / "cpi").close()
    MetalStore(tmp_path / "metal").close()
    for name, version in (("cpi/state.db", STATE_SCHEMA_VERSION), ("metal/metal.db", METAL_SCHEMA_VERSION)):
        db = sqlite3.connect(tmp_path / name)
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
    assert list((tmp_path / "cpi" / "locks").iterdir()) == []
    assert list((tmp_path / "metal" / "locks").iterdir()) == []
