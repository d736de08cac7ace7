"""Inspect a disk image before anything uses it: the one judgement for stemcell root images and builder inputs.

``check_image`` runs ``qemu-img info --output=json`` on the file in a child process bounded in wall-clock time
(``timeout``), address space and CPU time (``prlimit``), without ``--force-share`` (an image another process
holds open for writing is refused, not read half-written), and refuses what a stemcell or source image must never
be, naming the reason:

* a format outside ``allowed_formats`` (qemu-img probes the format from the content, never from the name);
* a backing file (``qemu-img create -f qcow2 -b /etc/shadow -F raw`` would make every VM read a host file);
* an external data file (qcow2 ``data_file``: the guest's data lives in some other host path);
* encryption (qcow2 ``encrypt.*``, a LUKS container): nothing here has, or should have, its key;
* a virtual size over ``max_virtual_size`` (a corrupt header claiming 8 EiB, or an absurd disk);
* anything qemu-img cannot read (corrupt headers), or that takes longer or more memory than the bounds allow.

Every refusal is an ``ImageRejected`` (a ``StemcellError``) whose message reads ``<path>: <reason>``; ``reason``
is also an attribute so callers (the CPI, the builder) can wrap it in their own error types.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stemcells.errors import StemcellError
from stemcells.root_image import open_root_image
from stemforge_base.processes import spawn, stop_group

GiB: Final = 1024**3
TiB: Final = 1024**4
#: Formats a stemcell root image may have.
STEMCELL_FORMATS: Final = frozenset({"qcow2", "raw"})
#: Largest virtual size accepted unless the caller configures another limit.
DEFAULT_MAX_VIRTUAL_SIZE: Final = 2 * TiB
#: Bounds on the ``qemu-img info`` child: seconds of wall-clock time, bytes of address space, seconds of CPU.
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_MEMORY_LIMIT: Final = 1 * GiB
_CPU_SECONDS: Final = 30
#: qemu-img's JSON for one image is a few KiB; anything longer is cut before parsing.
_MAX_OUTPUT: Final = 1024 * 1024


class ImageRejected(StemcellError):
    """The image at ``path`` was refused; ``reason`` says why (without the path)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What ``check_image`` found in an accepted image."""

    path: Path
    format: str
    virtual_size: int
    actual_size: int | None


def check_image(
    path: Path,
    *,
    allowed_formats: Collection[str] = STEMCELL_FORMATS,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
) -> ImageInfo:
    """Inspect ``path`` with bounded ``qemu-img info`` and return its format and sizes, or raise ``ImageRejected``
    naming the reason (see the module docstring for what is refused)."""
    if not path.is_file():  # a FIFO or device would make qemu-img block or read a host disk
        raise ImageRejected(path, "is not a regular file")
    info = _qemu_img_info(path.resolve(), timeout, memory_limit)
    return judge(path, info, allowed_formats=allowed_formats, max_virtual_size=max_virtual_size)


def judge(
    path: Path,
    info: dict[str, Any],
    *,
    allowed_formats: Collection[str] = STEMCELL_FORMATS,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
) -> ImageInfo:
    """The verdict on ``qemu-img info --output=json`` output ``info`` for ``path`` (pure; see ``check_image``)."""
    fmt = info.get("format")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    data = data if isinstance(data, dict) else {}
    if info.get("encrypted") or data.get("encrypt") or fmt == "luks":
        encrypt = data.get("encrypt")
        kind = encrypt.get("format") if isinstance(encrypt, dict) else ("luks" if fmt == "luks" else None)
        raise ImageRejected(path, f"is encrypted{f' ({kind})' if kind else ''}; encrypted images are not accepted")
    if not isinstance(fmt, str) or fmt not in allowed_formats:
        allowed = ", ".join(sorted(allowed_formats))
        raise ImageRejected(path, f"unsupported image format {str(fmt)[:64]!r} (allowed: {allowed})")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageRejected(path, f"has a backing file ({_short(backing)}); images must be self-contained")
    if data.get("data-file"):
        raise ImageRejected(path, f"uses an external data file ({_short(data['data-file'])}); "
                                  "images must be self-contained")
    size = info.get("virtual-size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ImageRejected(path, f"qemu-img reports no usable virtual size ({_short(size)})")
    if size > max_virtual_size:
        raise ImageRejected(path, f"virtual size {size} bytes exceeds the limit of {max_virtual_size} bytes")
    actual = info.get("actual-size")
    return ImageInfo(path=path, format=fmt, virtual_size=size,
                     actual_size=actual if isinstance(actual, int) and not isinstance(actual, bool) else None)


def _qemu_img_info(path: Path, timeout: float, memory_limit: int) -> dict[str, Any]:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise StemcellError(f"{path}: cannot inspect the image: qemu-img not found (install qemu-utils)")
    cmd = [qemu_img, "info", "--output=json", str(path)]  # no -U/--force-share: a writer's lock makes this fail
    prlimit = shutil.which("prlimit")
    if prlimit is not None:
        cmd = [prlimit, f"--as={memory_limit}", f"--cpu={_CPU_SECONDS}", "--", *cmd]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env,
                              check=False, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ImageRejected(path, f"inspecting the image with qemu-img took longer than {timeout:g}s") from None
    except OSError as exc:
        raise StemcellError(f"{path}: cannot run qemu-img: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        message = proc.stderr[:2048].decode("utf-8", "replace").strip()
        message = message.removeprefix("qemu-img: ").replace(f"'{path}'", "the image")
        why = message or f"exit status {proc.returncode}"
        if proc.returncode < 0:
            why = f"qemu-img was killed by signal {-proc.returncode} (memory or CPU limit)"
        raise ImageRejected(path, f"not a readable disk image: {_short(why, 500)}")
    try:
        info = json.loads(proc.stdout[:_MAX_OUTPUT])
    except ValueError:
        raise ImageRejected(path, "qemu-img info printed no valid JSON") from None
    if not isinstance(info, dict):
        raise ImageRejected(path, "qemu-img info printed no JSON object")
    return info


def _short(value: object, limit: int = 200) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the director's image file, prepared where it can be killed ------------------------------------------------------


def prepare_root_image(
    image: Path, work_dir: Path, *, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
) -> ImageInfo:
    """The root disk image of the director's ``image`` file, extracted into ``work_dir`` when ``image`` is a gzipped
    tar (``stemcells.root_image.open_root_image``) or ``image`` itself when it is already a disk, then judged by
    ``check_image`` (formats qcow2/raw). Raises ``StemcellError``."""
    try:
        with open(image, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise StemcellError(f"{image}: cannot read stemcell image: {exc.strerror or exc}") from None
    root = image
    if magic == b"\x1f\x8b":
        root = open_root_image(image, work_dir)
    return check_image(root, max_virtual_size=max_virtual_size)


def prepare_root_image_isolated(
    image: Path,
    work_dir: Path,
    *,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
    timeout: float = 3600.0,
    on_start: Callable[[subprocess.Popen[bytes]], object] | None = None,
) -> ImageInfo:
    """``prepare_root_image`` in a child process (``python -m stemcells.image_check``, its own session) that is
    killed, with everything it started, when ``timeout`` passes or the caller is interrupted: a CPU-bound step in
    C code (decompression, a regex over a hostile header) can never hold the caller past its deadline.
    ``on_start(proc)`` sees the child first (to register a kill with the caller's own deadline). Same results and
    errors as ``prepare_root_image``."""
    # -I: the child imports only the installed package, never a "stemcells" in the working directory
    cmd = [sys.executable, "-I", "-m", "stemcells.image_check", str(image), str(work_dir), str(max_virtual_size)]
    proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if on_start is not None:
            on_start(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StemcellError(f"{image}: preparing the root image took longer than {timeout:g}s") from None
    finally:
        stop_group(proc, first=signal.SIGKILL, kill_wait=10)
    try:
        answer = json.loads(out[:_MAX_OUTPUT])
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        why = err[-1000:].decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise StemcellError(f"{image}: preparing the root image failed: {why}")
    if "error" in answer:
        reason = answer.get("reason")
        if isinstance(reason, str):
            raise ImageRejected(Path(str(answer.get("path", image))), reason)
        raise StemcellError(str(answer["error"]))
    return ImageInfo(path=Path(answer["path"]), format=str(answer["format"]),
                     virtual_size=int(answer["virtual_size"]), actual_size=answer.get("actual_size"))


def _child_main(argv: list[str]) -> int:
    """``python -m stemcells.image_check IMAGE WORK_DIR MAX_VIRTUAL_SIZE``: one JSON object on stdout."""
    image, work_dir, limit = Path(argv[0]), Path(argv[1]), int(argv[2])
    try:
        info = prepare_root_image(image, work_dir, max_virtual_size=limit)
    except ImageRejected as exc:
        answer: dict[str, Any] = {"error": exc.message[:4096], "reason": exc.reason[:4096], "path": str(exc.path)}
    except StemcellError as exc:
        answer = {"error": exc.message[:4096]}
    else:
        answer = {"path": str(info.path), "format": info.format, "virtual_size": info.virtual_size,
                  "actual_size": info.actual_size}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
