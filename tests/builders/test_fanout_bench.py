"""``benchmarks/bench_fanout.py`` runs end to end at its smallest size (no timing asserted: the script prints
ratios and PASS/MISS for people to read)."""

from __future__ import annotations

from pathlib import Path

from tests.harness.bench import run_benchmark


def test_bench_fanout_quick(tmp_path: Path) -> None:
    proc = run_benchmark("bench_fanout.py", "--quick", "--workdir", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=== bench_fanout summary" in proc.stdout
    assert "loopback" in proc.stdout and "site links" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the benchmark removed everything it made
