"""The CPI's state store under concurrent first use: 32 processes opening a fresh state directory at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_32_processes_initialise_a_fresh_state_dir_at_once(tmp_path: Path) -> None:
    code = f"from cpi.state import StateStore; StateStore({str(tmp_path)!r}); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(32)]
    outcomes = [p.communicate(timeout=120) for p in procs]
    failures = [err.decode(errors="replace")[-500:] for out, err in outcomes if out.strip() != b"ok"]
    assert failures == []
