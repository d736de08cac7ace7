"""``stemforge doctor`` on this real machine: exit status, ``--json``, ``--quick`` and the fixes it prints.

Nothing is mocked: the command runs as a subprocess against the machine's libvirt, QEMU and files; helpers that
look for binaries take their search path as a parameter, so a missing binary is shown with an empty directory
rather than by patching globals. Terraform mirrors are exercised with real directory trees under ``tmp_path``
and a temporary home, never the user's own configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import checks as builders_checks
from cpi import checks as cpi_checks
from stemcells import checks as stemcells_checks
from stemforge import doctor
from stemforge_base.checks import AREA_TITLES, BARE_METAL, IMAGES, LIBVIRT_CPI, Check, Context, Options, check_binary
from terraform import checks as terraform_checks
from terraform import discovery

EXPECTED_CHECKS = {
    "libvirt", "virtlogd", "default network", "qemu-system-x86_64", "qemu-img", "/dev/kvm", "accelerator",
    "storage", "python: libvirt-python", "python: pycdlib", "python: jsonschema", "python: PyYAML",
    "python: tenacity", "dnsmasq", "ipxe", "sushy-tools", "ip netns", "debootstrap", "mke2fs", "mtools",
    "syslinux", "busybox-static", "test image tools", "terraform", "terraform aws provider",
    "stemforge env provider", "moto", "boto3", "vde_switch",
}


def run_doctor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``stemforge doctor ARGS`` as a separate process, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", "stemforge.cli", "doctor", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.libvirt
def test_doctor_passes_on_this_machine() -> None:
    """After scripts/setup.sh the libvirt CPI has everything: exit 0, libvirt answering, a summary line."""
    proc = run_doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("✔ libvirt — ") and "answers on qemu:///system" in line for line in lines), proc.stdout
    assert any(line.startswith(("✔ accelerator — KVM works", "✘ accelerator — TCG (software emulation) — KVM "
                                "unusable: ")) for line in lines), proc.stdout
    for heading in ("CPI/libvirt", "bare metal (warnings only)", "images (warnings only)",
                    "AWS/Terraform (warnings only)"):
        assert heading in lines
    assert "The libvirt CPI has everything it needs" in lines[-1]
    # every failure carries its fix on the next line, unless the detail explains there is none
    for i, line in enumerate(lines):
        if line.startswith("✘ "):
            assert lines[i + 1].startswith("    fix: "), line


def test_json_lists_every_named_check() -> None:
    proc = run_doctor("--json", "--quick")
    assert proc.returncode in (0, 1), proc.stderr
    checks = json.loads(proc.stdout)
    assert isinstance(checks, list)
    assert {c["name"] for c in checks} == EXPECTED_CHECKS
    for c in checks:
        assert set(c) == {"name", "ok", "detail", "fix", "required_for", "optional"}
        assert isinstance(c["ok"], bool) and c["detail"]
        assert c["required_for"] in AREA_TITLES
        if not c["ok"] and c["name"] != "accelerator":
            assert c["fix"], c
    statuses = {c["name"]: c for c in checks}
    assert "--quick" in statuses["accelerator"]["detail"] or not statuses["accelerator"]["ok"]
    assert proc.returncode == doctor.exit_status(Check(**c) for c in checks)


def test_quick_finishes_in_a_few_seconds() -> None:
    started = time.monotonic()
    proc = run_doctor("--quick", timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode in (0, 1), proc.stderr
    assert elapsed < 8, f"doctor --quick took {elapsed:.1f}s"
    assert "boot probe skipped (--quick)" in proc.stdout or "KVM unusable" in proc.stdout


def test_config_file_sets_uri_and_pool_path(tmp_path: Path) -> None:
    pool = tmp_path / "pool-not-created"
    config = tmp_path / "cpi.json"
    config.write_text(json.dumps({"cloud": {"plugin": "libvirt", "properties": {
        "libvirt": {"uri": "qemu:///system", "pool_path": str(pool)}}}}))
    proc = run_doctor("--json", "--quick", "--config", str(config))
    storage = next(c for c in json.loads(proc.stdout) if c["name"] == "storage")
    assert f"for {pool} (not created yet; measured at {tmp_path})" in storage["detail"]


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "cpi.json"
    config.write_text(json.dumps({"cloud": {"plugin": "libvirt", "properties": {"libvirt": {"urii": "x"}}}}))
    proc = run_doctor("--quick", "--config", str(config))
    assert proc.returncode == 2
    assert "urii" in proc.stderr


# -- helpers, with the search path as a parameter -----------------------------------------------------------------


def test_missing_binary_reports_the_fix(tmp_path: Path) -> None:
    check = check_binary("dnsmasq", package="dnsmasq-base", required_for=BARE_METAL, path=str(tmp_path))
    assert not check.ok
    assert check.detail == f"dnsmasq not found in {tmp_path}"
    assert check.fix is not None and check.fix.endswith("apt-get install -y --no-install-recommends dnsmasq-base")
    assert not check.blocking  # bare metal gaps are warnings


def test_present_binary_reports_its_version(tmp_path: Path) -> None:
    real = shutil.which("qemu-img")
    if real is None:
        pytest.skip("qemu-img is not installed")
    (tmp_path / "qemu-img").symlink_to(real)
    check = check_binary("qemu-img", package="qemu-utils", required_for=LIBVIRT_CPI, path=str(tmp_path))
    assert check.ok and check.fix is None
    assert check.detail.startswith("qemu-img version ") and check.detail.endswith(f"at {tmp_path}/qemu-img")


def test_missing_busybox_and_missing_libvirt_binary_block(tmp_path: Path) -> None:
    busybox = stemcells_checks.check_busybox_static(str(tmp_path))
    assert not busybox.ok and busybox.fix is not None and busybox.fix.endswith(" busybox-static")
    assert busybox.required_for == IMAGES and not busybox.blocking
    qemu = check_binary("qemu-img", package="qemu-utils", required_for=LIBVIRT_CPI, path=str(tmp_path))
    assert qemu.blocking
    assert doctor.exit_status([qemu]) == 1
    assert doctor.exit_status([busybox]) == 0


def test_checks_with_an_empty_search_path(tmp_path: Path) -> None:
    """The whole report with no binaries reachable: every binary check fails with an apt-get fix, and the
    libvirt CPI is reported as not ready."""
    options = Options(path=str(tmp_path), quick=True, home=tmp_path, env={}, cwd=tmp_path)
    checks = doctor.collect(options, (cpi_checks.check_qemu, cpi_checks.check_dnsmasq, cpi_checks.check_netns,
                                      builders_checks.check_debootstrap, stemcells_checks.check_image_tools))
    by_name = {c.name: c for c in checks}
    for name in ("qemu-system-x86_64", "qemu-img", "dnsmasq", "debootstrap", "mke2fs", "mtools"):
        assert not by_name[name].ok
        assert "apt-get install" in (by_name[name].fix or ""), by_name[name]
    assert by_name["ip netns"].fix is not None and by_name["ip netns"].fix.endswith("iproute2")
    assert doctor.exit_status(checks) == 1
    assert "NOT ready: fix qemu-system-x86_64, qemu-img" in doctor.summary(checks)


def test_terraform_not_found_without_candidates(tmp_path: Path) -> None:
    assert discovery.find_terraform(str(tmp_path), tmp_path, candidates=()) == (None, False)
    real = shutil.which("terraform") or next(
        (p for p in ("/usr/local/bin/terraform", "/usr/bin/terraform") if os.path.isfile(p)), None)
    if real is None:
        pytest.skip("terraform is not installed")
    bindir = tmp_path / "opt" / "hashicorp" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "terraform").symlink_to(real)
    found, on_path = discovery.find_terraform(str(tmp_path / "empty"), tmp_path, candidates=(f"{tmp_path}/opt/*/bin",))
    assert found == str(bindir / "terraform") and not on_path


def test_elf_static_detection() -> None:
    assert stemcells_checks.elf_is_static(os.path.realpath(sys.executable)) is False  # CPython links libc dynamically
    assert stemcells_checks.elf_is_static(__file__) is None


def test_a_check_that_raises_is_reported() -> None:
    def check_broken(ctx: Context) -> list[Check]:
        raise RuntimeError("boom")

    [check] = doctor.collect(Options(quick=True), (check_broken,))
    assert not check.ok and check.name == "broken" and "RuntimeError: boom" in check.detail


# -- Terraform provider mirrors ---------------------------------------------------------------------------------


def make_mirror(root: Path, version: str = "5.100.0", platform: str | None = None) -> Path:
    """An unpacked filesystem-mirror entry for hashicorp/aws (an empty stand-in for the provider binary)."""
    target = root / discovery.AWS_PROVIDER / version / (platform or discovery.terraform_platform())
    target.mkdir(parents=True)
    (target / f"terraform-provider-aws_v{version}_x5").write_bytes(b"")
    return root


def test_provider_versions_reads_both_layouts(tmp_path: Path) -> None:
    make_mirror(tmp_path, "5.1.0")
    make_mirror(tmp_path, "5.10.0", "darwin_arm64")
    packed = tmp_path / discovery.AWS_PROVIDER / "terraform-provider-aws_5.2.0_linux_arm64.zip"
    packed.write_bytes(b"PK")
    assert discovery.provider_versions(tmp_path) == {
        "5.1.0": [discovery.terraform_platform()], "5.2.0": ["linux_arm64"], "5.10.0": ["darwin_arm64"]}


def test_implied_mirror_in_home_is_found(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_mirror(home / ".terraform.d" / "plugins")
    ctx = Context(Options(home=home, env={}, cwd=tmp_path))
    [check] = terraform_checks.check_aws_provider(ctx, candidate_globs=())
    assert check.ok, check
    assert check.detail.startswith(f"{home}/.terraform.d/plugins: 5.100.0")


def test_xdg_data_dirs_are_searched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_mirror(data / "terraform" / "plugins", "6.0.0")
    dirs = discovery.implied_mirror_dirs(tmp_path, {"XDG_DATA_DIRS": f"{data}:/nonexistent"}, tmp_path)
    assert data / "terraform/plugins" in dirs and tmp_path / ".local/share/terraform/plugins" in dirs
    ctx = Context(Options(home=tmp_path, env={"XDG_DATA_DIRS": str(data)}, cwd=tmp_path))
    [check] = terraform_checks.check_aws_provider(ctx, candidate_globs=())
    assert check.ok and "6.0.0" in check.detail


def test_explicit_provider_installation_replaces_the_implied_mirrors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_mirror(home / ".terraform.d" / "plugins")
    rc = tmp_path / "cli.tfrc"
    rc.write_text('# comment\nprovider_installation {\n  direct {}\n}\n')
    ctx = Context(Options(home=home, env={"TF_CLI_CONFIG_FILE": str(rc)}, cwd=tmp_path))
    [check] = terraform_checks.check_aws_provider(ctx, candidate_globs=())
    assert not check.ok
    assert "ignored: provider_installation is explicit" in check.detail


def test_unconfigured_mirror_fix_is_exact(tmp_path: Path) -> None:
    """A mirror outside Terraform's search path is named in the fix; running that fix makes the check pass."""
    home = tmp_path / "home"
    home.mkdir()
    mirror = make_mirror(tmp_path / "opt" / "tf-plugins")
    rc = tmp_path / "terraformrc"
    env = {"TF_CLI_CONFIG_FILE": str(rc), "TF_PLUGIN_CACHE_DIR": str(tmp_path / "cache")}
    ctx = Context(Options(home=home, env=env, cwd=tmp_path))
    [check] = terraform_checks.check_aws_provider(ctx, candidate_globs=(f"{tmp_path}/opt/*",))
    assert not check.ok
    assert f"unconfigured mirror {mirror}: 5.100.0" in check.detail
    assert f"TF_CLI_CONFIG_FILE names {rc}, which does not exist" in check.detail
    assert check.fix is not None and str(rc) in check.fix
    subprocess.run(["sh", "-c", check.fix], check=True, timeout=10)
    config = discovery.read_terraform_cli_config(home, env)
    assert config.explicit and config.mirrors == (mirror,) and config.disable_checkpoint
    [again] = terraform_checks.check_aws_provider(Context(Options(home=home, env=env, cwd=tmp_path)),
                                        candidate_globs=(f"{tmp_path}/opt/*",))
    assert again.ok, again
    assert again.detail.startswith(f"{mirror}: 5.100.0")


def test_unconfigured_mirror_fix_satisfies_terraform(tmp_path: Path) -> None:
    """The CLI config the fix writes is one Terraform itself accepts: ``terraform providers`` reads it without
    network (checkpoint disabled) and reports no CLI-config problem."""
    terraform, _ = discovery.find_terraform()
    if terraform is None:
        pytest.skip("terraform is not installed")
    mirror = make_mirror(tmp_path / "opt" / "tf-plugins")
    rc = tmp_path / "terraformrc"
    env = {"TF_CLI_CONFIG_FILE": str(rc)}
    [check] = terraform_checks.check_aws_provider(Context(Options(home=tmp_path, env=env, cwd=tmp_path)),
                                        candidate_globs=(f"{mirror.parent}/*",))
    assert check.fix is not None
    subprocess.run(["sh", "-c", check.fix], check=True, timeout=10)
    proc = subprocess.run([terraform, "version"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env=discovery.terraform_env({**os.environ, **env}), check=False)
    assert proc.returncode == 0
    assert "CLI configuration" not in proc.stderr, proc.stderr
