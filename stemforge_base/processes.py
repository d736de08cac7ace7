"""Child processes that never outlive their caller: spawn in a new session, stop the whole process group, wait
boundedly.

Contract:

* :func:`spawn` starts ``argv`` with :class:`subprocess.Popen` in a new session (``start_new_session``): the child
  leads its own process group, so a Ctrl-C at the terminal reaches only stemforge (which then decides what to stop,
  and how), and everything the child starts can be signalled at once through the group id (= the child's pid).
* :func:`stop_group` ends that group: ``first`` (SIGTERM by default; SIGINT for Terraform, which then saves its
  state; SIGKILL to skip the polite step) to every member, up to ``grace`` seconds for the group to empty (the
  leader is reaped as soon as it exits: a zombie still counts as a member), then SIGKILL to whatever is left and
  up to ``kill_wait`` seconds more. Harmless when the group is already gone; never waits unboundedly.
* :func:`group_alive` says whether any process of a group is left; :func:`wait_group` waits (bounded) until none
  is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Final

#: How often the waits look at the group.
POLL_INTERVAL: Final = 0.05


def spawn(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, start_new_session=True, **popen)``: the child leads a new process group."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen)


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member left (one we may not signal counts)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until no process of ``proc``'s group is left, reaping ``proc`` as soon as it
    exits; True when the group is gone."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        proc.poll()
        if not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def signal_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s process group, if any member is left: after the leader exited, what it left
    behind (background children) must not outlive it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[Any], *, first: int = signal.SIGTERM, grace: float = 5.0,
               kill_wait: float = 5.0) -> None:
    """End ``proc``'s process group (``proc`` was started by :func:`spawn`): ``first`` to the group, ``grace``
    seconds for it to empty, then SIGKILL and ``kill_wait`` seconds more; ``proc`` is reaped when it exited."""
    if first != signal.SIGKILL:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, first)
        if wait_group(proc, grace):
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    wait_group(proc, kill_wait)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=POLL_INTERVAL)
