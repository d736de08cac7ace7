"""Build, test on every hardware plan, then release -- end to end through ``stemforge build`` (a real subprocess):
the ``file`` builder imports the stemforge test image, ``cpi-test`` deploys it through the real libvirt CPI
(``bin/cpi`` subprocesses, real VMs under TCG) on the plans "small" and "large", ``fanout`` publishes it to two
local sites and ``release`` marks the copies released (``tests/templates/release-tested-plans.json``).

Each test has its own storage pool and CPI state directory (``tests/harness/libvirt.py``) and its own TMPDIR, and
checks afterwards that no domain, volume, CPI state row or temporary file is left."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.libvirt import LibvirtCpi, session_cpi_or_skip

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

TEMPLATE = Path(__file__).parents[1] / "templates" / "release-tested-plans.json"
#: Generous: create_vm takes a minute or more while libvirt re-probes QEMU (see the report in the commit log).
BUILD_TIMEOUT = 900


@pytest.fixture
def cpi() -> Iterator[LibvirtCpi]:
    with session_cpi_or_skip("rel") as session:
        yield session


def build(cpi: LibvirtCpi, image: Path, out: Path, tmpdir: Path, *extra: str,
          template: Path = TEMPLATE) -> subprocess.CompletedProcess[str]:
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "build", "-var", f"image={image}",
         "-var", f"cpi_config={cpi.config_path}", "-var", f"out={out}", *extra, str(template)],
        cwd=out.parent, env=env, text=True, capture_output=True, timeout=BUILD_TIMEOUT, check=False)


def assert_nothing_left(cpi: LibvirtCpi, tmpdir: Path) -> None:
    assert cpi.our_domains() == [], "every test VM must be deleted"
    assert cpi.volumes() == [], "no stemcell, root, ephemeral or config-drive volume may stay in the pool"
    assert cpi.state_rows("vms") == [] and cpi.state_rows("stemcells") == []
    assert sorted(p.name for p in tmpdir.iterdir()) == [], "temporary stemcells and wrappers must be removed"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_tested_on_every_plan_then_published_and_released(cpi: LibvirtCpi, test_image: Path) -> None:
    """...and a second chain of the same build, ``[fanout, release]`` without ``cpi-test``, publishes the same bytes
    but may not release them: test results travel only in the chain's artifact state."""
    out = cpi.root / "out"
    tmpdir = cpi.root / "tmp"
    template = json.loads(TEMPLATE.read_text())
    template["post-processors"][0][1]["keep_input_artifact"] = True  # the tested file stays for the second chain
    template["post-processors"].append([
        {"type": "fanout", "image_name": "busybox-{{user `version`}}.qcow2",
         "destinations": [{"type": "local", "name": "site-c", "path": "{{user `out`}}/site-c"}]},
        {"type": "release"}])
    two_chains = cpi.root / "two-chains.json"
    two_chains.write_text(json.dumps(template))
    result = build(cpi, test_image, out, tmpdir, template=two_chains)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-6000:]
    assert ("1 error(s) occurred:\n\n* Post-processor failed: release: refusing to release an untested image"
            in text), text[-6000:]
    assert (out / "site-c" / "busybox-0.1.0.qcow2").is_file() and not list((out / "site-c").glob("*.release.json"))
    # per-target progress with elapsed time, both plans deployed with their own cloud_properties
    assert "small [" in text and "large [" in text
    assert "create_vm cpu=1, ram=128" in text and "create_vm cpu=2, ephemeral_disk_size=64, ram=256" in text
    assert "Every target passed: small, large" in text
    sha = sha256_of(test_image)
    for site in ("site-a", "site-b"):
        copy = out / site / "busybox-0.1.0.qcow2"
        assert sha256_of(copy) == sha
        marker = json.loads((out / site / "busybox-0.1.0.qcow2.release.json").read_text())
        assert marker["released"] is True and marker["sha256"] == sha and marker["id"] == str(copy)
        assert marker["build_name"] == "busybox"
        assert {name: r["passed"] for name, r in marker["tested_targets"].items()} == {"small": True, "large": True}
        assert "agent ready" in marker["tested_targets"]["small"]["detail"]
        assert "ephemeral" in marker["tested_targets"]["large"]["detail"]
    manifest = json.loads((out / "release-busybox.json").read_text())
    assert [d["name"] for d in manifest["destinations"]] == ["site-a", "site-b"]
    assert manifest["sha256"] == sha
    # the agent on each plan saw its hardware (console logs kept by console_log_directory)
    large = (out / "consoles" / "large.log").read_text(errors="replace")
    assert '"kind":"ephemeral"' in large and '"size_mib":64' in large
    assert '"event":"ready"' in (out / "consoles" / "small.log").read_text(errors="replace")
    assert_nothing_left(cpi, tmpdir)


def test_a_failing_plan_keeps_the_image_unreleased_and_unpublished(cpi: LibvirtCpi, test_image: Path) -> None:
    out = cpi.root / "out"
    tmpdir = cpi.root / "tmp"
    result = build(cpi, test_image, out, tmpdir, "-var", "large_console=never-matches-anything",
                   "-var", "large_timeout=5s")
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-6000:]
    assert ("image unreleased: target 'large' failed: no console match for 'never-matches-anything' within 5s"
            in text), text[-4000:]
    assert "target 'small' failed" not in text
    assert "Running post-processor: fanout" not in text and "Running post-processor: release" not in text
    for site in ("site-a", "site-b"):
        assert not (out / site).exists(), f"nothing may be published to {site}"
    assert not list(out.rglob("*.release.json")) and not (out / "release-busybox.json").exists()
    assert_nothing_left(cpi, tmpdir)
