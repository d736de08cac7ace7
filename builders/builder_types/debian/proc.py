"""Running host commands for the builder: streamed output, a timeout, cancellation, and no orphans.

Every child runs in its own session (terminal Ctrl-C reaches only stemforge, which then cancels), so on timeout
or cancellation the whole process group is terminated (SIGTERM, then SIGKILL after a grace period) and reaped
before the error is raised.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from builders.core import BuildError
from stemforge_base.processes import signal_group, spawn, stop_group
from stemforge_base.steps import Cancelled

#: A tail of output kept for error messages.
_TAIL_LINES = 40


@dataclass
class ProcResult:
    returncode: int
    stdout: str
    stderr: str


def _pump(stream: IO[bytes], sink: list[str], on_line: Callable[[str], None] | None, keep_all: bool) -> None:
    """Read ``stream`` to EOF, splitting lines on ``\\n`` and ``\\r`` (progress meters rewrite one line)."""
    pending = b""
    fd = stream.fileno()

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if not line:
            return
        sink.append(line)
        if not keep_all and len(sink) > _TAIL_LINES:
            del sink[0]
        if on_line is not None:
            on_line(line)

    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += chunk
        parts = re.split(rb"[\r\n]", pending)
        pending = parts.pop()
        for part in parts:
            emit(part)
    emit(pending)
    stream.close()


def run(
    argv: Sequence[str],
    *,
    what: str,
    cancel: threading.Event | None = None,
    timeout: float | None = 3600.0,
    env: Mapping[str, str] | None = None,
    input_data: bytes | None = None,
    on_line: Callable[[str], None] | None = None,
    on_err_line: Callable[[str], None] | None = None,
    capture: bool = False,
    check: bool = True,
    cwd: str | None = None,
) -> ProcResult:
    """Run ``argv``; lines go to ``on_line``/``on_err_line`` as they come. ``capture`` keeps all output (else
    a tail for error messages). Raises BuildError (``what`` names the work) on a non-zero exit when ``check``,
    on timeout, or when the command cannot start; ``Cancelled`` when ``cancel`` is set while it runs."""
    try:
        proc = spawn(
            argv,
            stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, on_line, capture), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, on_err_line or on_line, capture), daemon=True),
    ]
    for t in pumps:
        t.start()
    if input_data is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(input_data)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancel is not None and cancel.is_set():
                stop_group(proc)
                raise Cancelled(f"{what}: cancelled")
            if deadline is not None and time.monotonic() > deadline:
                stop_group(proc)
                raise BuildError(f"{what}: timed out after {timeout:.0f}s")
    except BaseException:
        if proc.poll() is None:
            stop_group(proc)
        raise
    finally:
        for t in pumps:
            t.join(timeout=10)
    signal_group(proc)  # nothing it left in its group outlives it
    result = ProcResult(proc.returncode, "\n".join(out), "\n".join(err))
    if check and proc.returncode != 0:
        tail = "\n".join((err or out)[-15:])
        raise BuildError(f"{what}: {argv[0]} exited with status {proc.returncode}\n{tail}".rstrip())
    return result
