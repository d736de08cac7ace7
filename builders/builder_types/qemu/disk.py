"""``qemu-img`` operations with cancellation, bounded time and byte progress.

Every child process is killed (and reaped) when the caller is cancelled, interrupted (KeyboardInterrupt) or times
out; a convert writes to a temporary name that the caller removes on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from builders.core import BuildError
from stemforge_base.processes import spawn, stop_group
from stemforge_base.steps import Cancelled

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def qemu_img() -> str:
    found = shutil.which("qemu-img")
    if not found:
        raise BuildError("qemu-img not found (install qemu-utils)")
    return found


def image_info(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """``qemu-img info`` as a dict (``format``, ``virtual-size``, ``backing-filename``...)."""
    try:
        out = subprocess.run([qemu_img(), "info", "-U", "--output=json", str(path)], capture_output=True,
                             timeout=timeout, check=True, text=True)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"qemu-img info {path} failed: {exc.stderr.strip()}") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"qemu-img info {path} timed out after {timeout:g}s") from None
    info: dict[str, Any] = json.loads(out.stdout)
    return info


#: Formats a ``disk_image`` source may have: what ``qemu-img convert`` reads and QEMU boots here. Anything else
#: (qed, luks, dmg, parallels...) is refused by ``check_source_image``.
SOURCE_FORMATS = frozenset({"qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc"})


def check_source_image(path: Path) -> None:
    """Refuse a ``disk_image`` source that ``stemcells.image_check`` refuses (bounded ``qemu-img info``): a backing
    file (the build would read a host file), an external data file, encryption, a format outside
    ``SOURCE_FORMATS`` or an absurd virtual size. Raises ``BuildError`` naming the image and the reason."""
    from stemcells.errors import StemcellError
    from stemcells.image_check import ImageRejected, check_image

    try:
        check_image(path, allowed_formats=SOURCE_FORMATS)
    except ImageRejected as exc:
        raise BuildError(f"disk_image source {path} refused: {exc.reason}") from None
    except StemcellError as exc:
        raise BuildError(f"disk_image source {path}: {exc.message}") from None


def virtual_size(path: Path, fmt: str | None = None) -> int:
    """The disk's virtual size: read from the qcow2 header or the raw file's size without spawning a process
    (``qemu-img info`` costs tens of milliseconds); other formats ask ``qemu-img info``."""
    if fmt in ("qcow2", "raw"):
        with open(path, "rb") as fh:
            head = fh.read(32)
        if head[:4] == b"QFI\xfb" and len(head) == 32:
            return int.from_bytes(head[24:32], "big")
        if fmt == "raw":
            return path.stat().st_size
    return int(image_info(path).get("virtual-size", 0))


def run_tool(cmd: Sequence[str], *, cancel: threading.Event | None, timeout: float,
             on_output: Callable[[bytes], None] | None = None, what: str = "") -> str:
    """Run ``cmd``; stdout chunks go to ``on_output``; returns stderr text. Raises BuildError (non-zero exit,
    timeout) or Cancelled; the child never outlives the call."""

    what = what or os.path.basename(cmd[0])
    proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err_chunks: list[bytes] = []
    assert proc.stdout is not None and proc.stderr is not None

    def pump(stream: Any, sink: Callable[[bytes], None]) -> None:
        with contextlib.suppress(ValueError, OSError):
            while chunk := stream.read1(65536):
                sink(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, on_output or (lambda _c: None)), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_chunks.append), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{what}: cancelled")
            if time.monotonic() > deadline:
                raise BuildError(f"{what} timed out after {timeout:g}s")
            threads[0].join(timeout=0.1)  # stdout reaches EOF when the tool exits: no polling latency
            if not threads[0].is_alive():
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:  # closed its stdout but still running
                    continue
        for t in threads:
            t.join(timeout=10)
        stderr = b"".join(err_chunks).decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            raise BuildError(f"{what} failed (exit status {proc.returncode}): {stderr}")
        return stderr
    finally:
        if proc.poll() is None:
            stop_group(proc, first=signal.SIGKILL)
        for t in threads:
            t.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def convert(source: Path, target: Path, fmt: str, *, compress: bool = False, extra: Sequence[str] = (),
            cancel: threading.Event | None = None, progress: Callable[[int, int | None], None] | None = None,
            timeout: float = 6 * 3600, source_format: str | None = None) -> None:
    """``qemu-img convert [-c] [extra] -O fmt source target`` with ``-p`` parsed into bytes of the virtual size.
    Writes exactly ``target`` (the caller picks a temporary name and renames)."""
    total = virtual_size(source, source_format) if progress else 0
    cmd = [qemu_img(), "convert", "-p"]
    if source_format:
        cmd += ["-f", source_format]
    if compress:
        cmd.append("-c")
    cmd += [*extra, "-O", fmt, str(source), str(target)]
    pending = b""

    def on_output(chunk: bytes) -> None:
        nonlocal pending
        pending = (pending + chunk)[-256:]
        found = _PROGRESS.findall(pending)
        if found and progress is not None:
            progress(int(total * float(found[-1]) / 100), total or None)

    run_tool(cmd, cancel=cancel, timeout=timeout, on_output=on_output, what="qemu-img convert")
    if progress is not None:
        progress(total, total or None)


_pending_frees: list[threading.Thread] = []
_pending_lock = threading.Lock()


def replace_freeing_later(source: Path, target: Path) -> None:
    """``os.replace(source, target)`` without waiting for the kernel to free the replaced ``target``'s blocks
    and page cache (about 0.2-0.5 s per GiB here): the old file is held open across the rename, so the rename
    only drops its name, and the last close, which does the freeing, runs on a background thread. The old
    name is gone when this returns; nothing can leak (the process's exit closes the descriptor at the latest).
    :func:`wait_for_frees` joins the pending closes."""
    try:
        fd: int | None = os.open(target, os.O_RDONLY)
    except FileNotFoundError:
        fd = None
    os.replace(source, target)
    if fd is None:
        return
    thread = threading.Thread(target=os.close, args=(fd,), name="stemforge-free-replaced", daemon=True)
    with _pending_lock:
        _pending_frees[:] = [t for t in _pending_frees if t.is_alive()]
        _pending_frees.append(thread)
    thread.start()


def wait_for_frees(timeout: float = 60.0) -> None:
    """Wait (bounded) until every file replaced by :func:`replace_freeing_later` has been freed."""
    deadline = time.monotonic() + timeout
    with _pending_lock:
        pending = list(_pending_frees)
        _pending_frees.clear()
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))
