"""The ``debian`` builder end to end: a real build from the Debian mirror (bootstrap cached under the default cache
dir, so only the first run on a machine is cold), provisioned through the chroot communicator with the
``hostname``, ``ssh-inject``, ``firstboot`` provisioners, booted under QEMU TCG (user-mode net, ``restrict=on``,
loopback host-forward only) with a ConfigDrive: login prompt with the host name on the serial console, SSH with
the injected key, the provisioned file, the first-boot script run once, cloud-init on the ConfigDrive datasource.
A rebuild hits the bootstrap cache."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builders.builder_types.debian import chroot as chroot_mod
from builders.builder_types.debian.bootstrap import BootstrapCache
from builders.builder_types.debian.config import default_cache_dir
from builders.builder_types.debian.run import BuildResult, ProvisionerHook, load_provisioner, make_context, run_build
from builders.builder_types.debian.steps import WORK_DIR_NAME
from builders.communicators.ssh import free_loopback_port
from builders.core import Communicator, Provisioner
from stemforge_base.hashing import sha256_file

HOSTNAME = "sf-e2e"
MARKER = "/etc/stemforge-provisioned"
FIRSTBOOT_MARKER = "/var/lib/stemforge-firstboot-ran"
INSTANCE_ID = str(uuid.UUID(int=0x5F))

OPTIONS = {
    "suite": "bookworm",
    "variant": "minbase",
    "include_sshd": True,
    "include_cloud_init": True,
    "datasource": "ConfigDrive",
    "disk_size": "2G",
    "format": ["qcow2", "raw"],
}


@dataclass
class Built:
    result: BuildResult
    out: Path
    key: Path


def _keypair(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    return key


def _provisioners(key: Path) -> list[tuple[str, dict[str, object]]]:
    return [
        ("hostname", {"hostname": HOSTNAME}),
        ("ssh-inject", {"user": "root", "public_key_file": str(key.with_suffix(".pub"))}),
        ("firstboot", {"inline": [f"date > {FIRSTBOOT_MARKER}", f"echo once >> {FIRSTBOOT_MARKER}.count"]}),
    ]


class _UploadThenProvision(ProvisionerHook):
    """The plugin provisioners, then an upload and a command straight through the communicator."""

    def __init__(self, provisioners: list[Provisioner], source: Path) -> None:
        super().__init__(provisioners)
        self.source = source

    def run(self, communicator: Communicator) -> None:
        super().run(communicator)
        communicator.upload(self.source, MARKER)
        res = communicator.run(f"cat {MARKER}", capture=True, timeout=30)
        assert res.exit_status == 0 and "provisioned" in res.stdout


def _run(out: Path, key: Path, files: Path, stream: io.StringIO | None = None) -> BuildResult:
    ctx = make_context("e2e")
    hook = _UploadThenProvision([load_provisioner(t, o, ctx) for t, o in _provisioners(key)], files / "probe.txt")
    return run_build({**OPTIONS, "output_directory": str(out)}, "e2e", hook=hook, stream=stream)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    base = tmp_path_factory.mktemp("debian-e2e")
    files = base / "files"
    files.mkdir()
    (files / "probe.txt").write_text("provisioned by the e2e test\n")
    key = _keypair(base)
    out = base / "output-e2e"
    result = _run(out, key, files)
    print(f"\nbuild: {result.seconds:.1f}s (bootstrap cached: {result.state['bootstrap_cached']}) "
          f"steps: { {k: round(v, 1) for k, v in result.step_seconds.items()} }")
    yield Built(result, out, key)


def test_artifact_files_checksums_and_nothing_left(built: Built) -> None:
    art = built.result.artifact
    assert [f.name for f in art.files] == ["e2e.qcow2", "e2e.raw"]
    assert art.state["formats"] == ["qcow2", "raw"]
    for entry in art.state["files"]:
        path = Path(entry["path"])
        assert path.stat().st_size == entry["size"]
        assert sha256_file(path) == entry["sha256"]
    assert sorted(p.name for p in built.out.iterdir()) == ["e2e.qcow2", "e2e.raw"]
    assert not (built.out / WORK_DIR_NAME).exists()
    assert chroot_mod.mounts_under(built.out) == []
    raw = built.out / "e2e.raw"
    assert raw.stat().st_size == 2048 * 1024 * 1024
    assert raw.stat().st_blocks * 512 < raw.stat().st_size  # sparse
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(built.out / "e2e.qcow2")],
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == raw.stat().st_size
    table = subprocess.run(["sfdisk", "--dump", str(raw)], capture_output=True, text=True, check=True,
                           timeout=60).stdout
    assert "label: dos" in table and "start=        2048" in table and "bootable" in table


def test_rebuild_hits_the_bootstrap_cache(built: Built, tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "probe.txt").write_text("provisioned by the e2e test\n")
    first = built.result
    log = io.StringIO()
    warm = _run(tmp_path / "output-again", built.key, files, stream=log)
    assert warm.state["bootstrap_cached"] is True
    assert warm.state["bootstrap_key"] == first.state["bootstrap_key"]
    boot_step = warm.step_seconds["bootstrap"]
    cold = BootstrapCache(default_cache_dir()).meta(warm.state["bootstrap_key"]).get("seconds")
    print(f"\nfirst build {first.seconds:.1f}s (bootstrap cached: {first.state['bootstrap_cached']}, "
          f"bootstrap step {first.step_seconds['bootstrap']:.1f}s); rebuild {warm.seconds:.1f}s "
          f"(bootstrap step {boot_step:.1f}s); the cold bootstrap of this cache entry took {cold}s")
    assert "skipping debootstrap" in log.getvalue()
    assert "debootstrap --variant" not in log.getvalue() and "I: Retrieving" not in log.getvalue()
    assert boot_step < 60
    os.sync()


def _config_drive(path: Path, public_key: str) -> None:
    """A vfat ConfigDrive (label CONFIG-2) with metadata but no host name (the image's own name stays). Its key
    is not the injected one: cloud-init (disable_root) wraps metadata keys for root in a 'login as debian'
    command, which must not touch the key ssh-inject put there."""
    meta = {"uuid": INSTANCE_ID, "public_keys": {"probe": public_key}, "availability_zone": "test"}
    subprocess.run(["mkfs.vfat", "-C", "-n", "CONFIG-2", str(path), "4096"], check=True, timeout=60,
                   capture_output=True)
    staging = path.parent / "cd"
    (staging / "openstack" / "latest").mkdir(parents=True)
    (staging / "openstack" / "latest" / "meta_data.json").write_text(json.dumps(meta))
    (staging / "openstack" / "latest" / "network_data.json").write_text(json.dumps({"links": [], "networks": []}))
    subprocess.run(["mcopy", "-s", "-i", str(path), str(staging / "openstack"), "::"], check=True, timeout=60)


@pytest.fixture(scope="module")
def booted(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    work = tmp_path_factory.mktemp("debian-boot")
    overlay = work / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(built.out / "e2e.qcow2"), str(overlay)], check=True, timeout=60)
    drive = work / "config-2.img"
    _config_drive(drive, _keypair(work).with_suffix(".pub").read_text().strip())
    port = free_loopback_port()
    serial = work / "serial.log"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "2", "-nographic",
         "-drive", f"file={overlay},if=virtio,format=qcow2",
         "-drive", f"file={drive},if=virtio,format=raw,readonly=on",
         "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
         "-device", "virtio-net-pci,netdev=n0"],
        stdin=subprocess.DEVNULL, stdout=open(serial, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )
    try:
        yield serial, port
    finally:
        qemu.terminate()
        try:
            qemu.wait(timeout=30)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait(timeout=30)


def _wait_for(serial: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = serial.read_bytes().decode("utf-8", "replace")
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"no {pattern!r} on the serial console within {timeout:.0f}s; last lines:\n"
                         + "\n".join(text.splitlines()[-30:]))


def test_boots_to_login_prompt_with_hostname(booted: tuple[Path, int]) -> None:
    serial, _ = booted
    started = time.monotonic()
    text = _wait_for(serial, rf"{HOSTNAME} login:", 420)
    print(f"\nlogin prompt after {time.monotonic() - started:.0f}s of waiting")
    assert "GRUB" in text or "Linux version" in text


def _ssh(port: int, key: Path, timeout: float = 240) -> Any:
    import paramiko

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=port, username="root", key_filename=str(key), timeout=10,
                           banner_timeout=30, auth_timeout=30, allow_agent=False, look_for_keys=False)
            return client
        except Exception as exc:  # noqa: BLE001 - sshd still starting
            last = exc
            client.close()
            time.sleep(3)
    raise AssertionError(f"no SSH on 127.0.0.1:{port} within {timeout:.0f}s: {last}")


def _exec(client: Any, command: str, timeout: float = 60) -> str:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out: str = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return out


def test_ssh_with_injected_key_sees_provisioning(built: Built, booted: tuple[Path, int]) -> None:
    serial, port = booted
    _wait_for(serial, rf"{HOSTNAME} login:", 420)
    client = _ssh(port, built.key)
    try:
        assert _exec(client, f"cat {MARKER}") == "provisioned by the e2e test\n"
        assert _exec(client, "hostname").strip() == HOSTNAME
        assert _exec(client, "stat -c %a /root/.ssh /root/.ssh/authorized_keys").split() == ["700", "600"]
        # first boot script: ran exactly once, unit disabled, script retired
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _exec(client, f"cat {FIRSTBOOT_MARKER}.count 2>/dev/null || true").strip():
                break
            time.sleep(2)
        assert _exec(client, f"cat {FIRSTBOOT_MARKER}.count") == "once\n"
        enabled = _exec(client, "systemctl is-enabled 'stemforge-firstboot-*' 2>&1 || true")
        assert "enabled" not in enabled.replace("disabled", ""), enabled
        assert _exec(client, "ls /usr/local/lib/stemforge/firstboot/").strip().endswith(".sh.done")
        # cloud-init used the ConfigDrive datasource (our instance id), and is done
        _exec(client, "timeout 200 cloud-init status --wait >/dev/null 2>&1 || true", timeout=240)
        assert _exec(client, "cat /var/lib/cloud/data/instance-id").strip() == INSTANCE_ID
        assert "ConfigDrive" in _exec(client, "cat /run/cloud-init/ds-identify.log 2>/dev/null; "
                                      "cat /var/lib/cloud/instance/datasource")
        # sshd host keys were generated on this boot (the image had none)
        assert _exec(client, "ls /etc/ssh/ | grep -c '^ssh_host_.*_key$'").strip() != "0"
        # root filesystem is the UUID in fstab
        uuid_ = built.result.state["root_uuid"]
        assert _exec(client, "findmnt -no UUID /").strip() == uuid_
        assert "ttyS0" in _exec(client, "cat /proc/cmdline")
    finally:
        client.close()
