"""The benchmark scripts run end to end at their smallest sizes. No timing is asserted: the scripts print ratios
for people to read (see ``benchmarks/README.md``); these tests only keep them working."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.bench import run_benchmark
from tests.harness.libvirt import libvirt_unavailable_reason


def test_bench_info_smoke() -> None:
    proc = run_benchmark("bench_info.py", "--runs", "3", "--warmup", "0", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== bench_info summary" in out
    for label in ("floor: python", "info via bin/cpi", "arg error via bin/cpi", "info via stemforge-cpi"):
        assert label in out, out
    assert "PASS" in out or "MISS" in out
    # has_vm of an unknown CID needs libvirt: measured, or skipped with the reason
    assert "has_vm unknown via bin/cpi" in out


@pytest.mark.libvirt
def test_bench_create_vm_smoke() -> None:
    reason = libvirt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    proc = run_benchmark("bench_create_vm.py", "--vms", "2", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "=== bench_create_vm summary" in out
    assert "2 VMs use " in out and "x one stemcell image" in out
    assert "root overlays backed by the stemcell volume: 2/2" in out
    assert "left after cleanup: domains [], volumes []; session pool dir removed: True" in out


@pytest.mark.aws
def test_bench_aws_cpi_smoke() -> None:
    proc = run_benchmark("bench_aws_cpi.py", "--quick", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "=== bench_aws_cpi summary" in proc.stdout
    assert "PASS" in proc.stdout or "MISS" in proc.stdout


def test_bench_build_convert_smoke() -> None:
    # the debian timings are minutes of debootstrap: their code path is measured by test_debian_builder's builds
    proc = run_benchmark("bench_build.py", "--skip-debian", "--rounds", "2", "--convert-mib", "16", timeout=300)
    out = proc.stdout
    assert "=== bench_build summary" in out, out + proc.stderr
    assert "convert step vs bare qemu-img convert" in out and "throughput ratio of best runs" in out, out
    assert ("PASS" in out or "MISS" in out) and not list(Path("/tmp").glob("stemforge-measure-convert-*"))
