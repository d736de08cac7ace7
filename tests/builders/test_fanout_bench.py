"""``benchmarks/bench_fanout.py`` runs end to end at its smallest size (no timing asserted: the script prints
ratios and PASS/MISS for people to read)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fanout.py"


def test_bench_fanout_quick(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=== bench_fanout summary" in proc.stdout
    assert "loopback" in proc.stdout and "site links" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the benchmark removed everything it made
