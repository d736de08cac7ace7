"""Failure and interruption leave nothing behind: a failpoint after each step of a real ``debian`` build
(``STEMFORGE_FAILPOINTS=after:<step>``), and a cancellation while a provisioner's command runs in the chroot,
must leave no mount, loop device, process, output directory, work tree or cache temporary. Uses the same
bootstrap cache as the end-to-end test (warm after the first run on a machine)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from builders.builder_types.debian import chroot as chroot_mod
from builders.builder_types.debian.config import default_cache_dir
from builders.builder_types.debian.run import ProvisionerHook, load_provisioner, make_context, run_build
from builders.builder_types.debian.steps import build_steps
from builders.core import Communicator
from stemforge_base.steps import Cancelled, FailpointError

OPTIONS = {
    "suite": "bookworm",
    "variant": "minbase",
    "include_sshd": True,
    "include_cloud_init": True,
    "datasource": "ConfigDrive",
    "disk_size": "2G",
    "format": "qcow2",
}

STEP_NAMES = [s.name for s in build_steps(None, None, None)]  # type: ignore[arg-type]


def _loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout


def _cache_temporaries() -> list[Path]:
    root = default_cache_dir() / "bootstrap"
    return sorted(root.glob(".*.tmp")) if root.exists() else []


def _assert_nothing_left(base: Path, loops_before: str, pid: int | None = None) -> None:
    assert not (base / "out").exists(), sorted(p.name for p in (base / "out").rglob("*"))[:20]
    assert list(Path("/dev/shm").glob(f"stemforge-debian-{pid or os.getpid()}-*")) == []
    assert chroot_mod.mounts_under(base) == []
    assert chroot_mod.processes_in(base) == []
    assert _loops() == loops_before
    assert _cache_temporaries() == []


def test_step_names() -> None:
    assert STEP_NAMES == ["output_directory", "bootstrap", "prepare_chroot", "install", "provision", "finalise",
                          "unmount_chroot", "disk", "convert", "artifact"]


@pytest.mark.parametrize("step", STEP_NAMES)
def test_failpoint_after_each_step_leaves_nothing(step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loops = _loops()
    monkeypatch.setenv("STEMFORGE_FAILPOINTS", f"after:{step}")
    started = time.monotonic()
    with pytest.raises(FailpointError, match=f"after:{step}"):
        run_build({**OPTIONS, "output_directory": str(tmp_path / "out")}, "fp",
                  [("hostname", {"hostname": "failpoint"})])
    print(f"\nafter:{step}: failed and cleaned up in {time.monotonic() - started:.1f}s")
    _assert_nothing_left(tmp_path, loops)


class _SlowProvisioner(ProvisionerHook):
    """Starts a long command in the chroot (plus a daemon that escapes its process group)."""

    def __init__(self, started: threading.Event) -> None:
        super().__init__([])
        self.started = started

    def run(self, communicator: Communicator) -> None:
        communicator.run("setsid sleep 300 </dev/null >/dev/null 2>&1 &", timeout=30)
        self.started.set()
        communicator.run("sleep 300", timeout=600)


def test_cancel_during_provisioning_leaves_nothing(tmp_path: Path) -> None:
    loops = _loops()
    cancel = threading.Event()
    started = threading.Event()

    def interrupt() -> None:
        if started.wait(timeout=600):
            time.sleep(2)
        cancel.set()

    helper = threading.Thread(target=interrupt, daemon=True)
    helper.start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        run_build({**OPTIONS, "output_directory": str(tmp_path / "out")}, "cancel", cancel=cancel,
                  hook=_SlowProvisioner(started))
    helper.join(timeout=10)
    assert started.is_set()
    print(f"\ncancelled during provisioning; cleaned up in {time.monotonic() - t0:.1f}s total")
    _assert_nothing_left(tmp_path, loops)
    leftover = subprocess.run(["pgrep", "-f", "^sleep 300$"], capture_output=True, text=True, timeout=30).stdout
    assert leftover.strip() == ""


def test_failed_provisioner_reports_and_cleans(tmp_path: Path) -> None:
    ctx = make_context("badprov")
    hook = ProvisionerHook([load_provisioner("ssh-inject", {"user": "nobody-here",
                                                            "public_key": "ssh-ed25519 AAAAC3Nza x"}, ctx)])
    with pytest.raises(Exception, match="there is no user 'nobody-here'"):
        run_build({**OPTIONS, "output_directory": str(tmp_path / "out")}, "badprov", hook=hook)
    _assert_nothing_left(tmp_path, _loops())


DRIVER = r"""
import signal, sys, threading
from pathlib import Path
from builders.builder_types.debian.run import ProvisionerHook, run_build
from stemforge_base.steps import Cancelled

cancel = threading.Event()
signal.signal(signal.SIGINT, lambda *_: cancel.set())  # what the runner does with Ctrl-C

class Hook(ProvisionerHook):
    def run(self, communicator):
        Path(sys.argv[2]).write_text("provisioning")
        communicator.run("sleep 300", timeout=600)

try:
    run_build(dict(OPTIONS, output_directory=sys.argv[1]), "sigint", cancel=cancel, hook=Hook([]))
except Cancelled:
    print("Cleanly cancelled builds after being interrupted.")
    sys.exit(1)
sys.exit(0)
"""


def test_sigint_during_provisioning_cleans_up(tmp_path: Path) -> None:
    import signal
    import sys

    loops = _loops()
    marker = tmp_path / "started"
    driver = f"OPTIONS = {OPTIONS!r}\n{DRIVER}"
    child = subprocess.Popen([sys.executable, "-c", driver, str(tmp_path / "out"), str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.5)
        assert marker.exists(), "the build never reached provisioning"
        time.sleep(1)
        os.kill(child.pid, signal.SIGINT)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == 1, out[-2000:]
    assert "Cleanly cancelled builds after being interrupted." in out
    _assert_nothing_left(tmp_path, loops, child.pid)


class _Trigger:
    """A UI stream that sets ``event`` once a line containing ``needle`` is written."""

    def __init__(self, needle: str, event: threading.Event) -> None:
        self.needle = needle
        self.event = event
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.text.append(text)
        if self.needle in text:
            self.event.set()
        return len(text)

    def flush(self) -> None:
        pass


def test_cancel_inside_debootstraps_second_stage_leaves_nothing(tmp_path: Path) -> None:
    """A cold bootstrap (own empty cache) cancelled while debootstrap's second stage runs dpkg in the tree (with
    /proc and /sys mounted by debootstrap itself): no process, mount, work tree or cache entry survives."""
    loops = _loops()
    cancel = threading.Event()
    stream = _Trigger("I: Installing core packages", cancel)
    with pytest.raises(Cancelled):
        options = {k: v for k, v in OPTIONS.items() if k != "datasource"}
        run_build({**options, "kernel": "none", "include_cloud_init": False, "include_sshd": False,
                   "cache_dir": str(tmp_path / "cache"), "output_directory": str(tmp_path / "out")},
                  "coldcancel", stream=stream, cancel=cancel)  # type: ignore[arg-type]
    assert cancel.is_set(), "".join(stream.text)[-2000:]
    _assert_nothing_left(tmp_path, loops)
    assert [p.name for p in (tmp_path / "cache" / "bootstrap").iterdir() if not p.name.endswith(".lock")] == []
