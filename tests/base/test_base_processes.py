"""stemforge_base.processes: children lead their own group; stopping the group ends every member, boundedly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stemforge_base.processes import group_alive, signal_group, spawn, stop_group, wait_group

# A parent that starts a grandchild in its own process group, writes the grandchild's pid, and sleeps.
_FAMILY = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "open(sys.argv[1], 'w').write(str(child.pid))\n"
    "{trap}"
    "time.sleep(60)\n"
)


def _start(tmp_path: Path, trap: str = "") -> tuple[subprocess.Popen[bytes], int]:
    pidfile = tmp_path / "grandchild.pid"
    proc = spawn([sys.executable, "-c", _FAMILY.format(trap=trap), str(pidfile)])
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the child never wrote its grandchild's pid"
        time.sleep(0.02)
    return proc, int(pidfile.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as fh:  # a zombie (the reaper is not us) counts as gone
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_spawn_starts_a_new_process_group(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert os.getpgid(grandchild) == proc.pid
        assert group_alive(proc.pid)
    finally:
        stop_group(proc)


def test_stop_group_ends_the_grandchild_too(tmp_path: Path) -> None:
    proc, grandchild = _start(tmp_path)
    started = time.monotonic()
    stop_group(proc, grace=10)
    assert time.monotonic() - started < 5, "SIGTERM ends both at once: no wait for the grace"
    assert proc.returncode == -signal.SIGTERM
    assert _gone(grandchild) and not group_alive(proc.pid)


def test_stop_group_kills_what_ignores_the_first_signal(tmp_path: Path) -> None:
    trap = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    proc, grandchild = _start(tmp_path, trap)
    started = time.monotonic()
    stop_group(proc, first=signal.SIGINT, grace=0.5, kill_wait=5)
    assert 0.5 <= time.monotonic() - started < 5
    assert proc.returncode == -signal.SIGKILL, "the leader ignored SIGINT and was killed after the grace"
    assert _gone(grandchild)


def test_stop_group_is_harmless_when_done(tmp_path: Path) -> None:
    proc = spawn([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    stop_group(proc)
    stop_group(proc, first=signal.SIGKILL)
    assert proc.returncode == 0


def test_wait_group_is_bounded(tmp_path: Path) -> None:
    proc, _grandchild = _start(tmp_path)
    try:
        started = time.monotonic()
        assert wait_group(proc, 0.3) is False
        assert time.monotonic() - started < 3
    finally:
        stop_group(proc, first=signal.SIGKILL)
    assert wait_group(proc, 5) is True


def test_signal_group_ends_what_an_exited_leader_left(tmp_path: Path) -> None:
    """The leader exits normally but leaves a background child in its group: signal_group ends that child, and it
    is harmless once the group is empty."""
    pidfile = tmp_path / "orphan.pid"
    proc = spawn([sys.executable, "-c",
                  "import subprocess, sys\n"
                  "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                  "open(sys.argv[1], 'w').write(str(child.pid))\n", str(pidfile)])
    assert proc.wait(timeout=30) == 0
    orphan = int(pidfile.read_text())
    assert group_alive(proc.pid) and not _gone(orphan)
    signal_group(proc)
    assert wait_group(proc, 10) and _gone(orphan)
    signal_group(proc)  # nothing left: no error
