"""The release pipeline's jobs run end to end through ``stemforge pipeline run`` (the CLI, a real process): unit,
build-candidate, integration (Terraform environment against moto, each provider's lifecycle, ``ensure:`` down),
acceptance (libvirt demo and a bare-metal deploy), e2e (AMI in three regions, light stemcell, VM) and the daily
cleanup. Each job is narrowed to a representative subset with its
PYTEST_ARGS vars so the suite stays bounded; none runs the whole test suite (the unit task leaves these out)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "ci" / "pipeline.yml"

pytestmark = [pytest.mark.slow]

#: Placeholders for the secrets the jobs name but a local run never sends anywhere.
NOT_USED = {
    "github_deploy_key": "unused-deploy-key",
    "release_bucket": "stemforge-releases",
    "terraform_state_bucket": "stemforge-tfstate",
    "aws_region": "us-east-1",
    "s3_endpoint": "http://127.0.0.1:9",
    "aws_access_key_id": "unused",
    "aws_secret_access_key": "unused",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's work dir and an inputs dir whose stemforge-src is this tree (any HEAD passes, as fly execute -i)."""
    root = tmp_path_factory.mktemp("pipeline-run")
    (root / "inputs").mkdir()
    (root / "inputs" / "stemforge-src").symlink_to(ROOT, target_is_directory=True)
    return root


def run(
    work: Path, job: str, variables: dict[str, str], *, timeout: float, inputs: Path | None = None
) -> tuple[int, str]:
    """``stemforge pipeline run ci/pipeline.yml JOB`` with the pipeline's vars file, ``variables`` and the inputs."""
    argv = [
        sys.executable,
        "-m",
        "stemforge.cli",
        "pipeline",
        "run",
        str(PIPELINE),
        job,
        "--work-dir",
        str(work / "work"),
        "--inputs",
        str(inputs or work / "inputs"),
        "--vars-file",
        str(ROOT / "ci" / "vars" / "pipeline.yml"),
    ]
    for key, value in {**NOT_USED, **variables}.items():
        argv += ["--var", f"{key}={value}"]
    child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)  # abort: running tasks end, ensure hooks (env down) still run
        try:
            out, _ = child.communicate(timeout=600)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        pytest.fail(f"{job} did not finish within {timeout:g}s; aborted:\n{out}")
    return child.returncode, out


def test_unit_job(work: Path) -> None:
    status, out = run(
        work,
        "unit",
        {"unit_lint": "false", "unit_pytest_args": "tests/cpi/test_cpi_config.py tests/ci/test_pipeline_validate.py"},
        timeout=600,
    )
    assert status == 0, out
    assert "get stemforge-src: from --inputs" in out
    assert "pytest -m 'not libvirt and not slow and not metal and not aws and not terraform'" in out
    assert " passed" in out and "task unit: succeeded" in out
    assert out.rstrip().endswith("succeeded")


@pytest.fixture(scope="module")
def candidate(work: Path) -> Path:
    """build-candidate once: sdist, wheel and the BOSH release tarball recorded as versions that passed it."""
    status, out = run(
        work,
        "build-candidate",
        {"s3_endpoint": "http://127.0.0.1:9", "aws_access_key_id": "unused", "aws_secret_access_key": "unused"},
        timeout=900,
    )
    assert status == 0, out
    release = work / "work" / "resources" / "stemforge-cpi-release" / "current"
    tarballs = list(release.glob("stemforge-cpi-*.tgz"))
    assert len(tarballs) == 1, out
    return release


def test_build_candidate_makes_versioned_artifacts(work: Path, candidate: Path) -> None:
    from ci.bosh_release import read_release

    resources = work / "work" / "resources"
    version = (resources / "version" / "current" / "version").read_text().strip()
    assert version.startswith("0.1.0-rc.")
    (tarball,) = candidate.glob("stemforge-cpi-*.tgz")
    assert tarball.name == f"stemforge-cpi-{version}.tgz"
    manifest, contents = read_release(tarball)
    assert manifest["version"] == version and manifest["jobs"][0]["name"] == "stemforge_cpi"
    python_version = version.replace("-rc.", "rc")
    assert list((resources / "stemforge-wheel" / "current").glob(f"stemforge-{python_version}-py3-none-any.whl"))
    assert list((resources / "stemforge-sdist" / "current").glob(f"stemforge-{python_version}.tar.gz"))
    passed = json.loads((resources / "stemforge-cpi-release" / "passed.json").read_text())
    assert passed == {candidate.resolve().name: ["build-candidate"]}


@pytest.mark.aws
@pytest.mark.terraform
@pytest.mark.libvirt
@pytest.mark.metal
@pytest.mark.timeout(2700)
def test_integration_job(work: Path, candidate: Path, moto_endpoint: str) -> None:
    status, out = run(
        work,
        "integration",
        {
            "aws_endpoint": moto_endpoint,
            "s3_endpoint": moto_endpoint,
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "integration_aws_pytest_args": "-k test_bad_disk_cloud_properties",
            "integration_libvirt_pytest_args": "-k test_calculate_vm_cloud_properties",
            "integration_metal_pytest_args": "-k test_render_instructions_rules",
        },
        timeout=2400,
    )
    assert status == 0, out
    assert "put environment: environment stemforge-integration up; metadata: " in out
    for provider in ("aws", "libvirt", "baremetal"):
        assert f"task lifecycle-{provider}: succeeded" in out, out
        assert f"{provider} info: " in out  # the candidate release's bin/cpi answered for the provider
    assert "has_vm of an unknown instance in the environment: false" in out
    assert "ensure: running hook" in out and "environment stemforge-integration destroyed" in out
    assert not (work / "work" / "resources" / "integration-env" / "envs" / "stemforge-integration").exists()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out
    assert out.rstrip().endswith("succeeded")
    passed = json.loads((work / "work" / "resources" / "stemforge-cpi-release" / "passed.json").read_text())
    assert passed[candidate.resolve().name] == ["build-candidate", "integration"]


@pytest.mark.libvirt
@pytest.mark.metal
@pytest.mark.timeout(2700)
def test_acceptance_job(work: Path, candidate: Path) -> None:
    # the candidate is given as an input (acceptance's passed: [integration] is exercised by the integration test)
    inputs = work / "acceptance-inputs"
    inputs.mkdir(exist_ok=True)
    for name, target in (("stemforge-src", ROOT), ("cpi-release", candidate)):
        if not (inputs / name).exists():
            (inputs / name).symlink_to(target, target_is_directory=True)
    status, out = run(
        work,
        "acceptance",
        {
            "acceptance_demo": "true",
            "acceptance_libvirt_tests": "",
            "acceptance_metal_pytest_args": "-k test_deploy_phone_home_reboot_delete_and_reuse",
        },
        timeout=2400,
        inputs=inputs,
    )
    assert status == 0, out
    assert "libvirt info: " in out and "baremetal info: " in out
    assert "done: everything created was deleted" in out  # the demo's VM came up, its agent reported, all deleted
    assert "task acceptance-libvirt: succeeded" in out and "task acceptance-baremetal: succeeded" in out
    assert "1 passed" in out
    assert out.rstrip().endswith("succeeded")


def test_a_missing_var_is_named(work: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemforge.cli",
            "pipeline",
            "run",
            str(PIPELINE),
            "integration",
            "--work-dir",
            str(work / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        "undefined vars: " in proc.stderr and "aws_endpoint" in proc.stderr and "aws_secret_access_key" in proc.stderr
    )
    assert "unit_pytest_args" not in proc.stderr  # only what this job uses


@pytest.mark.terraform
def test_cleanup_leftover_environments_job(work: Path) -> None:
    status, out = run(work, "cleanup-leftover-environments", {"aws_endpoint": "http://127.0.0.1:9"}, timeout=600)
    assert status == 0, out
    assert "get daily: time " in out
    for env in ("stemforge-integration", "stemforge-e2e"):
        assert f"environment {env} destroyed" in out
    assert out.rstrip().endswith("succeeded")


@pytest.mark.aws
@pytest.mark.terraform
@pytest.mark.timeout(2700)
def test_e2e_job(work: Path, candidate: Path, moto_endpoint: str) -> None:
    inputs = work / "e2e-inputs"
    inputs.mkdir(exist_ok=True)
    for name, target in (("stemforge-src", ROOT), ("cpi-release", candidate)):
        if not (inputs / name).exists():
            (inputs / name).symlink_to(target, target_is_directory=True)
    status, out = run(
        work,
        "e2e",
        {
            "aws_endpoint": moto_endpoint,
            "s3_endpoint": moto_endpoint,
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "e2e_regions": "us-west-2,eu-west-1",
            "e2e_load_balancers": "false",  # the ALB's minute-long wait is covered by test_terraform_env
        },
        timeout=2400,
        inputs=inputs,
    )
    assert status == 0, out
    assert "put environment: environment stemforge-e2e up" in out
    assert "aws info: " in out  # the candidate release answered for aws
    assert "to 2 region(s)" in out and "e2e VM: passed" in out
    assert "task e2e: succeeded" in out
    assert "environment stemforge-e2e destroyed" in out
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out
    assert out.rstrip().endswith("succeeded")
