"""``benchmarks/bench_ami_fanout.py`` runs end to end at its smallest size (``--quick``: 4 regions vs 1, 2 rounds,
its own ``moto_server`` process on 127.0.0.1). No timing is asserted: the script prints the ratio for people to
read; this only keeps it working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.aws

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ami_fanout.py"


def test_bench_ami_fanout_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== bench_ami_fanout summary (4 regions vs 1" in out
    assert "whole amazon-ebs build" in out and ("PASS" in out or "MISS" in out)
    assert "loopback" in out and "api latency 100 ms" in out and "fan-out steps" in out
