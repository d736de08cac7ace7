"""The lab's long-running processes (VDE switch, Redfish emulator, ``metal serve``): start detached, record, stop.

A process is recorded as ``{"pid", "starttime"}`` (field 22 of ``/proc/<pid>/stat``, clock ticks since boot), so a
later ``lab down`` (possibly from another process, after a crash) only ever signals the very process the lab
started, never a recycled pid. Processes are started in their own session so the lab outlives the ``lab up``
command and a Ctrl-C in its terminal. Children of the current process are reaped when stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Popen objects of the processes started by this Python process, so stopping them also reaps them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def starttime(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no such (live) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is gone for every purpose but its parent's
        return None
    return int(fields[19])


def identity(pid: int) -> dict[str, int]:
    """What ``alive``/``stop`` need to recognise this process later."""
    start = starttime(pid)
    if start is None:
        raise RuntimeError(f"process {pid} exited right after it was started")
    return {"pid": pid, "starttime": start}


def alive(record: Mapping[str, Any] | None) -> bool:
    if not record or not record.get("pid"):
        return False
    return starttime(int(record["pid"])) == record.get("starttime")


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached (new session, stdin from /dev/null, stdout+stderr appended to ``log_path``)."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc


def stop(record: Mapping[str, Any] | None, *, grace: float = 5.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after ``grace`` s; True when it was running. Idempotent."""
    if not alive(record):
        _reap(record)
        return False
    assert record is not None
    pid = int(record["pid"])
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(record, block=False)
        if not alive(record):
            return True
        time.sleep(0.05)
    if alive(record):
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while alive(record) and time.monotonic() < deadline:
        _reap(record, block=False)
        time.sleep(0.05)
    _reap(record)
    return True


def stop_pids(pids: Sequence[int], *, grace: float = 5.0) -> list[int]:
    """Stop a set of processes (e.g. everything left in a namespace) the same way; returns those that ran."""
    records = [{"pid": p, "starttime": starttime(p)} for p in pids]
    records = [r for r in records if r["starttime"] is not None]
    for r in records:
        _signal(int(r["pid"] or 0), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(r) for r in records) and time.monotonic() < deadline:
        for r in records:
            _reap(r, block=False)
        time.sleep(0.05)
    for r in records:
        if alive(r):
            _signal(int(r["pid"] or 0), signal.SIGKILL)
    for r in records:
        _reap(r)
    return [int(r["pid"] or 0) for r in records]


def wait_pidfile(path: Path, timeout: float) -> int:
    """The pid a daemon wrote to ``path`` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(path.read_text().strip())
            if starttime(pid) is not None:
                return pid
        time.sleep(0.05)
    raise RuntimeError(f"no live pid in {path} after {timeout:g}s")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(record: Mapping[str, Any] | None, block: bool = True) -> None:
    if not record or not record.get("pid"):
        return
    proc = _children.get(int(record["pid"]))
    if proc is None:
        return
    if block:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    else:
        proc.poll()
    if proc.returncode is not None:
        _children.pop(proc.pid, None)
