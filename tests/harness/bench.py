"""The benchmark scripts (``benchmarks/``) run as their smoke tests run them: quick sizes, output captured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_benchmark(script: str, *args: str, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/SCRIPT ARGS``; a non-zero exit is returned, not raised (the caller shows the output)."""
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
