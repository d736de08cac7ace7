"""``benchmarks/bench_ami_fanout.py`` runs end to end at its smallest size (``--quick``: 4 regions vs 1, 2 rounds,
its own ``moto_server`` process on 127.0.0.1). No timing is asserted: the script prints the ratio for people to
read; this only keeps it working."""

from __future__ import annotations

import pytest

from tests.harness.bench import run_benchmark

pytestmark = pytest.mark.aws

def test_bench_ami_fanout_quick() -> None:
    proc = run_benchmark("bench_ami_fanout.py", "--quick", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== bench_ami_fanout summary (4 regions vs 1" in out
    assert "whole amazon-ebs build" in out and ("PASS" in out or "MISS" in out)
    assert "loopback" in out and "api latency 100 ms" in out and "fan-out steps" in out
