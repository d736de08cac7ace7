"""The ``cpi-test`` post-processor and the CPI client it drives.

Options are checked without a VM; the CPI client is exercised against real processes (the real CPI's ``info``
fast path, and small shell-script "CPIs" that misbehave on purpose: garbage, wrong envelopes, exit statuses, hangs);
the deployments use the real libvirt CPI with real VMs under TCG, each test with its own storage pool, state
directory and temporary directory, and check that no domain, volume, CPI state row or temporary file is left --
after a rejected plan, a cancellation and a Ctrl-C of ``stemforge build``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders.core import Artifact, BuildContext, BuildError, ConfigError
from builders.postprocessors.cpi_test import CpiTestFailed, CpiTestPostProcessor, console_dir_for
from builders.registry import validate_options
from cpi.wrapper import write_wrapper
from stemforge_base.cpi_client import DIRECTOR_ENV, CpiCallError, CpiClient, CpiProcessError, cpi_command
from stemforge_base.steps import Cancelled
from tests.harness.builds import make_ctx
from tests.harness.libvirt import LibvirtCpi, session_cpi_or_skip

TEMPLATE = Path(__file__).parents[1] / "templates" / "release-tested-plans.json"


def write_cpi_config(tmp_path: Path, **libvirt: Any) -> Path:
    config = {"cloud": {"plugin": "libvirt", "properties": {
        "state_dir": str(tmp_path / "state"),
        "libvirt": {"uri": "qemu:///system", "storage_pool": "sft-options", "pool_path": str(tmp_path / "pool"),
                    **libvirt}}}}
    path = tmp_path / "cpi.json"
    path.write_text(json.dumps(config))
    return path


def prepared(ctx: BuildContext, options: dict[str, Any]) -> CpiTestPostProcessor:
    config = validate_options(CpiTestPostProcessor, options, "post-processor 1.1 (cpi-test)")
    pp = CpiTestPostProcessor(config, ctx)
    pp.prepare()
    return pp


def target(config: Path, name: str = "small", **extra: Any) -> dict[str, Any]:
    return {"name": name, "cpi_config": str(config), "cloud_properties": {"ram": 128},
            "checks": [{"agent": "ready"}], **extra}


# -- options ------------------------------------------------------------------------------------------------------


def test_unknown_and_bad_options_are_errors_naming_the_field(tmp_path: Path) -> None:
    config = write_cpi_config(tmp_path)
    ctx = make_ctx(tmp_path)

    def error(options: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            prepared(ctx, options)
        return str(info.value)

    assert "unknown configuration key: 'paralel'" in error({"targets": [target(config)], "paralel": False})
    assert "unknown configuration key: 'targets[0].cloud_propertes'" in error(
        {"targets": [target(config, cloud_propertes={})]})
    assert "unknown configuration key: 'targets[0].checks[0].consol'" in error(
        {"targets": [target(config, checks=[{"consol": "login:"}])]})
    assert "unknown configuration key: 'stemcell.formats'" in error(
        {"targets": [target(config)], "stemcell": {"formats": ["x"]}})
    assert "'targets[0].checks[0].agent' must be one of: ready" in error(
        {"targets": [target(config, checks=[{"agent": "booted"}])]})
    assert "targets" in error({"targets": []})
    assert "missing required configuration key: 'targets[0].checks'" in error(
        {"targets": [{"name": "a", "cpi_config": str(config), "cloud_properties": {}}]})
    text = error({"targets": [
        target(config, checks=[{"console": "login:", "agent": "ready"}, {}]),
        target(config, checks=[{"console": "(unclosed"}, {"agent": "ready", "timeout": "3 minutes"}]),
        target(tmp_path / "missing.json", name="small"),
    ]})
    # every problem at once, each naming its field
    assert "targets[0].checks[0]: needs exactly one of 'console'" in text and "got console, agent" in text
    assert "targets[0].checks[1]: needs exactly one of" in text and "got neither" in text
    assert "targets[1].checks[0].console: not a valid regular expression" in text
    assert "targets[1].checks[1].timeout: invalid duration '3 minutes'" in text
    assert "targets[2].name: target name 'small' is used twice" in text
    assert "targets[2].cpi_config: config" in text and "missing.json: file not found" in text


def test_smoke_options_need_a_key_and_a_user_mode_network(tmp_path: Path) -> None:
    config = write_cpi_config(tmp_path)
    ctx = make_ctx(tmp_path)
    key = tmp_path / "id_ed25519"
    key.write_text("not used at prepare time\n")
    smoke = {"username": "root", "private_key_file": str(key), "commands": ["true"]}
    with pytest.raises(ConfigError, match=r"targets\[0\]\.smoke\[0\]\.private_key_file: .*nope does not exist"):
        prepared(ctx, {"targets": [target(config, smoke=[{**smoke, "private_key_file": str(tmp_path / "nope")}])]})
    bridged = {"b": {"type": "manual", "cloud_properties": {"type": "bridge", "bridge": "br0"}}}
    with pytest.raises(ConfigError, match=r"smoke\[0\]: smoke commands need a network on a user-mode NIC"):
        prepared(ctx, {"targets": [target(config, networks=bridged, smoke=[smoke])]})
    with pytest.raises(ConfigError, match=r"smoke\[0\]\.network: 'b' is not one of"):
        prepared(ctx, {"targets": [target(config, smoke=[{**smoke, "network": "b"}])]})
    pp = prepared(ctx, {"targets": [target(config, smoke=[{**smoke, "timeout": "90s", "connect_timeout": 120}])]})
    parsed = pp.targets[0].smoke[0]
    assert (parsed.network, parsed.timeout, parsed.connect_timeout, parsed.guest_port) == ("default", 90, 120, 22)
    networks, ports = pp._networks(pp.targets[0])
    forward = networks["default"]["cloud_properties"]["port_forwards"]
    assert forward == [{"host_port": ports[0], "guest_port": 22, "host_address": "127.0.0.1"}]
    assert networks["default"]["cloud_properties"]["restrict"] is True
    assert "port_forwards" not in pp.targets[0].networks["default"]["cloud_properties"], "config must not change"


def test_console_logs_are_found_where_the_cpi_config_puts_them(tmp_path: Path) -> None:
    assert console_dir_for(write_cpi_config(tmp_path)) == tmp_path / "state" / "consoles"
    assert console_dir_for(write_cpi_config(tmp_path, console_dir="/srv/consoles")) == Path("/srv/consoles")


def test_validate_names_an_unknown_cpi_test_key(tmp_path: Path) -> None:
    template = json.loads(TEMPLATE.read_text())
    template["post-processors"][0][0]["targets"][1]["cheks"] = []
    path = tmp_path / "t.json"
    path.write_text(json.dumps(template))
    config = write_cpi_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "stemforge.cli", "validate", "-var", "image=/dev/null",
                             "-var", f"cpi_config={config}", "-var", f"out={tmp_path}", str(path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "unknown configuration key: 'targets[1].cheks'" in result.stdout + result.stderr


# -- the CPI client ---------------------------------------------------------------------------------------------


def fake_cpi(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / f"cpi-{uuid.uuid4().hex[:6]}.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return [str(script)]


def test_client_requests_and_envelope_checks(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    ok = fake_cpi(tmp_path, f"cat > {seen}.req; env > {seen}.env\n"
                            """printf '{"result":"vm-1","error":null,"log":""}'\n""")
    client = CpiClient(ok, director_uuid="dir-1", context={"libvirt": {"region": "r1"}})
    assert client.call("has_vm", "vm-1").result == "vm-1"
    request = json.loads(Path(f"{seen}.req").read_text())
    assert request["method"] == "has_vm" and request["arguments"] == ["vm-1"] and request["api_version"] == 2
    assert request["context"]["director_uuid"] == "dir-1" and request["context"]["request_id"]
    assert request["context"]["libvirt"] == {"region": "r1"}
    env = dict(line.split("=", 1) for line in Path(f"{seen}.env").read_text().splitlines() if "=" in line)
    assert env["PATH"] == DIRECTOR_ENV["PATH"] and "HOME" not in env, "the director's stripped environment"

    def failure(body: str, **kw: Any) -> CpiCallError:
        with pytest.raises(CpiCallError) as info:
            CpiClient(fake_cpi(tmp_path, body), **kw).call("create_vm", "a")
        return info.value

    exc = failure('echo \'{"result":null,"error":{"type":"Bosh::Clouds::VMCreationFailed","message":"no room",'
                  '"ok_to_retry":false},"log":"x"}\'')
    assert str(exc) == "create_vm: Bosh::Clouds::VMCreationFailed: no room" and not isinstance(exc, CpiProcessError)
    assert isinstance(failure("echo not json"), CpiProcessError)
    assert "not JSON" in str(failure("echo not json"))
    assert "expected exactly result, error and log" in str(failure("echo '{\"result\":1}'"))
    assert "malformed error" in str(failure("echo '{\"result\":null,\"error\":\"bad\",\"log\":\"\"}'"))
    exited = failure("echo boom >&2; exit 3")
    assert "exited with status 3" in str(exited) and "boom" in str(exited)
    with pytest.raises(CpiProcessError, match="info: .*cannot run /nonexistent/bin/cpi"):
        CpiClient(["/nonexistent/bin/cpi"]).call("info")


def test_client_timeout_kills_the_whole_cpi_process_group(tmp_path: Path) -> None:
    marker = f"{uuid.uuid4().int % 10**6}.{os.getpid()}"
    hang = fake_cpi(tmp_path, f"sleep {marker} & sleep {marker}\n")
    started = time.monotonic()
    with pytest.raises(CpiProcessError, match=r"has_vm: .*no response within 1s"):
        CpiClient(hang, timeout=1).call("has_vm", "x")
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the CPI's children must be killed with it"
        time.sleep(0.1)


def test_client_retries_only_ok_to_retry_errors(tmp_path: Path) -> None:
    count = tmp_path / "count"
    retry = fake_cpi(tmp_path, f'echo x >> {count}\n'
                               'echo \'{"result":null,"error":{"type":"Bosh::Clouds::CloudError","message":"busy",'
                               '"ok_to_retry":true},"log":""}\'\n')
    with pytest.raises(CpiCallError, match="busy"):
        CpiClient(retry).delete_vm("vm-x", attempts=3)
    assert len(count.read_text().splitlines()) == 3
    count.unlink()
    with pytest.raises(CpiCallError):
        CpiClient(retry).call("create_vm", "a")
    assert len(count.read_text().splitlines()) == 1


def test_client_speaks_to_the_real_cpi(tmp_path: Path) -> None:
    client = CpiClient([str(write_wrapper(write_cpi_config(tmp_path), tmp_path / "job"))])
    assert Path(client.command[0]) == tmp_path / "job" / "bin" / "cpi"
    info = client.info()
    assert "libvirt-qcow2" in info["stemcell_formats"]
    with pytest.raises(CpiCallError) as exc:
        client.call("no_such_method")
    assert exc.value.error_type == "Bosh::Clouds::NotImplemented" and exc.value.method == "no_such_method"
    direct = CpiClient(cpi_command(write_cpi_config(tmp_path)))
    assert direct.command[0].endswith("stemforge-cpi") and direct.info() == info


# -- real deployments ---------------------------------------------------------------------------------------------


@pytest.fixture
def cpi() -> Iterator[LibvirtCpi]:
    with session_cpi_or_skip("cpt") as session:
        yield session


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "tmpdir"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def assert_nothing_left(cpi: LibvirtCpi, tmpdir: Path) -> None:
    assert cpi.our_domains() == []
    assert cpi.volumes() == []
    assert cpi.state_rows("vms") == [] and cpi.state_rows("stemcells") == []
    assert sorted(p.name for p in tmpdir.iterdir()) == []


@pytest.mark.libvirt
@pytest.mark.slow
def test_a_plan_the_cpi_rejects_fails_only_that_target(cpi: LibvirtCpi, test_stemcell: Path,
                                                         private_tmp: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    pp = prepared(ctx, {"targets": [
        {"name": "small", "cpi_config": str(cpi.config_path), "cloud_properties": {"ram": 128},
         "checks": [{"agent": "ready", "timeout": "4m"}]},
        {"name": "typo", "cpi_config": str(cpi.config_path), "cloud_properties": {"ram": 128, "cpus": 2},
         "checks": [{"agent": "ready"}]},
    ]})
    artifact = Artifact("stemforge.post-processor.stemcell", "img", "file", [test_stemcell], str(test_stemcell))
    with pytest.raises(CpiTestFailed) as info:
        pp.post_process(artifact)
    text = str(info.value)
    assert text.startswith("image unreleased: target 'typo' failed: create_vm: Bosh::Clouds::"), text
    assert "cpus" in text and "'small'" not in text
    ui = ctx.ui.text()
    assert "Using the stemcell" in ui, "a stemcell tarball is deployed as it is"
    assert "small [" in ui and "PASSED: agent ready after" in ui
    assert "typo" in ui and "FAILED: create_vm" in ui
    results = info.value.tests  # every target's result travels with the failure, not in a process-wide ledger
    assert results["small"]["passed"] is True and results["typo"]["passed"] is False
    assert "tests" not in artifact.state, "the input artifact is not changed"
    assert_nothing_left(cpi, private_tmp)


@pytest.mark.libvirt
@pytest.mark.slow
def test_cancel_while_waiting_deletes_every_vm_and_stemcell(cpi: LibvirtCpi, private_tmp: Path,
                                                            tmp_path: Path) -> None:
    from stemcells.testimage.build import build_test_image

    ctx = make_ctx(tmp_path)
    check = [{"console": "never-matches", "timeout": "10m"}]
    pp = prepared(ctx, {"targets": [
        {"name": "a", "cpi_config": str(cpi.config_path), "cloud_properties": {"ram": 128}, "checks": check},
        {"name": "b", "cpi_config": str(cpi.config_path), "cloud_properties": {"ram": 128}, "checks": check},
    ]})
    artifact = Artifact("packer.file", "img", "file", [build_test_image()], "File")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            pp.post_process(artifact)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 600
    # "<target> [  4.2s] waiting for ..." once per VM (a later "still waiting" line must not count as the other VM)
    while ctx.ui.text().count("s] waiting for console match") < 2:
        assert worker.is_alive() and time.monotonic() < deadline, ctx.ui.text()
        time.sleep(0.2)
    assert len(cpi.our_domains()) == 2
    cancelled_at = time.monotonic()
    ctx.cancel.set()
    worker.join(timeout=300)
    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 120
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled), outcome
    assert "every VM and stemcell it created was deleted" in str(outcome[0])
    assert_nothing_left(cpi, private_tmp)


@pytest.mark.libvirt
@pytest.mark.slow
def test_ctrl_c_of_stemforge_build_cleans_up_and_publishes_nothing(cpi: LibvirtCpi, tmp_path: Path) -> None:
    from stemcells.testimage.build import build_test_image

    out = cpi.root / "out"
    tmpdir = cpi.root / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stemforge.cli", "build", "-var", f"image={build_test_image()}",
         "-var", f"cpi_config={cpi.config_path}", "-var", f"out={out}", str(TEMPLATE)],
        cwd=cpi.root, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while sum("s] waiting for agent ready" in line for line in list(lines)) < 2:  # both VMs up
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-4000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground process group
        status = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        reader.join(timeout=30)
    text = "".join(lines)
    assert status == 1, text[-4000:]
    assert "Cleanly cancelled builds after being interrupted." in text
    assert "delete_vm" in text and "delete_stemcell" in text
    assert not (out / "site-a").exists() and not (out / "site-b").exists()
    assert not list(out.rglob("*.release.json"))
    assert_nothing_left(cpi, tmpdir)


@pytest.mark.libvirt
@pytest.mark.slow
def test_smoke_commands_run_over_ssh_through_a_loopback_forward(cpi: LibvirtCpi, private_tmp: Path,
                                                                tmp_path: Path) -> None:
    """The Debian test image (sshd, cloud-init from the CPI's config drive): the guest boots to a login prompt,
    smoke commands run as root over SSH through 127.0.0.1 -> guest port 22; the first failing command fails the
    target with its exit status, and everything is deleted."""
    from builders.builder_types.debian.testimage import build_test_debian_image, test_debian_image_key

    image = build_test_debian_image()
    key = test_debian_image_key()
    ctx = make_ctx(tmp_path)
    pp = prepared(ctx, {"targets": [{
        "name": "medium", "cpi_config": str(cpi.config_path), "cloud_properties": {"cpu": 1, "ram": 512},
        "checks": [{"console": "login:", "timeout": "6m"}],
        "smoke": [{"username": "root", "private_key_file": str(key), "timeout": "60s", "connect_timeout": "3m",
                   "commands": ["cat /etc/hostname", "test \"$(nproc)\" -eq 1 && grep MemTotal /proc/meminfo",
                                "echo 'sshd ok' >&2; exit 7", "echo never-run"]}],
    }]})
    with pytest.raises(BuildError) as info:
        pp.post_process(Artifact("packer.file", "img", "file", [image], "File"))
    assert str(info.value) == ("image unreleased: target 'medium' failed: smoke command \"echo 'sshd ok' >&2; "
                               "exit 7\" exited 7: sshd ok")
    ui = ctx.ui.text()
    assert "console match for 'login:': ok after" in ui
    vm_cid = next(word for word in ui.split() if word.startswith("vm-"))
    assert f"medium ssh: {vm_cid}" in ui, "cloud-init set the host name from the CPI's config drive"
    assert "medium ssh: MemTotal:" in ui and "never-run" not in ui
    secret = key.read_text().splitlines()[1]
    assert secret not in ui, "the private key never reaches the output"
    assert_nothing_left(cpi, private_tmp)
