"""The bare-metal deploy benchmark runs end to end at its smallest size (one server of a fresh lab). No timing is
asserted (see ``benchmarks/README.md``); this only keeps the script working. It lives under ``metal/`` so that it
is scheduled with the other lab modules (tests/conftest.py XDIST_GROUPS), not beside them."""

from __future__ import annotations

import pytest

from tests.harness.bench import run_benchmark


@pytest.mark.metal
@pytest.mark.slow
def test_bench_metal_deploy_smoke() -> None:
    from tests.harness.metal import metal_unavailable_reason

    reason = metal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    proc = run_benchmark("bench_metal_deploy.py", "--servers", "1", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=== bench_metal_deploy summary" in proc.stdout
