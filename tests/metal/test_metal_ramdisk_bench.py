"""benchmarks/bench_metal_write.py runs end to end at its smallest size (no timing asserted: it prints ratios for
people to read; this keeps it working)."""

from __future__ import annotations

import shutil

import pytest

from tests.harness.bench import run_benchmark


@pytest.mark.metal
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_bench_metal_write_quick() -> None:
    proc = run_benchmark("bench_metal_write.py", "--quick", timeout=850)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== bench_metal_write summary" in out
    assert "disk-bound (4 MiB/s disk)" in out and "cpu-bound (TCG, unthrottled)" in out
    assert "PASS" in out or "MISS" in out
