"""The local communicator: commands run on this host through ``/bin/sh -c``; files are copied with the same rules
as the SSH communicator. ``shell-local`` runs its scripts through it, and tests use it as a real ``Communicator``
"rooted" in a directory.

Contract (see ``builders.core.Communicator``):

* :meth:`LocalCommunicator.run` starts the command in its own session (so a terminal's Ctrl-C reaches stemforge,
  not the child, and the build decides), passes ``env`` on top of this process's environment, streams stdout lines
  to ``ui.message`` and stderr lines to ``ui.error`` (unless ``capture``), and returns the exit status (never raises
  for a non-zero one). ``timeout`` (or ``default_timeout``) bounds it: on expiry, or when the run is cancelled, the
  whole process group gets SIGTERM, then SIGKILL for members still there after ``kill_grace`` seconds, and
  BuildError / ``Cancelled`` is raised, so no child outlives the call. Background processes a command leaves
  behind are terminated when it exits (a build must not leave processes on the host).
* With ``root``, relative remote paths resolve under ``root`` and commands run with ``root`` as working directory;
  absolute paths are used as they are (commands see the real filesystem, so tests pass absolute paths inside
  their temporary directory).
* :meth:`upload` / :meth:`download` follow Packer's trailing-slash rule for directories: ``src/`` copies the
  directory's contents into the destination, ``src`` copies the directory itself into it. A file whose destination
  ends in ``/`` or is an existing directory lands inside it under its own name. Parent directories of a file
  destination must exist (as on a remote machine); modes are kept; copies over 4 MiB report progress.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from builders.core import BuildContext, BuildError, CommandResult, Communicator, Ui
from stemforge_base.processes import signal_group, spawn, stop_group
from stemforge_base.steps import Cancelled

_CHUNK = 1024 * 1024
#: Output kept for ``CommandResult`` (the tail beyond this is dropped).
_KEEP_BYTES = 1024 * 1024


class _NullUi:
    def say(self, message: str) -> None: ...
    def message(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def progress(self, label: str, done: int, total: int | None) -> None: ...


class LocalCommunicator(Communicator):
    """Runs commands and copies files on this host (see the module docstring for the contract)."""

    def __init__(
        self,
        ctx: BuildContext | None = None,
        *,
        root: Path | None = None,
        ui: Ui | None = None,
        cancel: threading.Event | None = None,
        default_timeout: float = 6 * 3600.0,
        kill_grace: float = 5.0,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self.ui: Ui = ui if ui is not None else (ctx.ui if ctx is not None else _NullUi())
        self.cancel = cancel if cancel is not None else (ctx.cancel if ctx is not None else threading.Event())
        self.default_timeout = default_timeout
        self.kill_grace = kill_grace

    # ------------------------------------------------------------------------------------------------ commands
    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        limit = self.default_timeout if timeout is None else timeout
        if self.cancel.is_set():
            raise Cancelled("cancelled before running a local command")
        full_env = dict(os.environ)
        full_env.update({str(k): str(v) for k, v in (env or {}).items()})
        try:
            proc = spawn(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=str(self.root) if self.root is not None else None,
            )
        except OSError as exc:
            raise BuildError(f"could not start /bin/sh: {exc}") from None
        out_buf: list[bytes] = []
        err_buf: list[bytes] = []
        readers = [
            threading.Thread(target=self._pump, args=(proc.stdout, out_buf, None if capture else self.ui.message),
                             daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, err_buf, None if capture else self.ui.error),
                             daemon=True),
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + max(0.0, limit)
        reason = ""
        try:
            while True:
                try:
                    proc.wait(timeout=0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if self.cancel.is_set():
                    reason = "cancelled"
                    break
                if time.monotonic() >= deadline:
                    reason = "timeout"
                    break
        finally:
            if proc.poll() is None or reason:
                stop_group(proc, grace=self.kill_grace)
            else:  # background processes the command left behind do not outlive it
                signal_group(proc, signal.SIGTERM)
            for reader in readers:
                reader.join(timeout=self.kill_grace + 5)
        if reason == "cancelled":
            raise Cancelled("local command interrupted: the build was cancelled")
        if reason == "timeout":
            raise BuildError(f"command timed out after {limit:g}s: {command}")
        returncode = proc.returncode if proc.returncode is not None else -1
        if returncode < 0:  # killed by a signal: report like a shell does
            returncode = 128 - returncode
        return CommandResult(returncode, b"".join(out_buf).decode("utf-8", "replace"),
                             b"".join(err_buf).decode("utf-8", "replace"))

    def _pump(self, pipe: object, keep: list[bytes], emit: object) -> None:
        kept = 0
        assert pipe is not None
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            if kept < _KEEP_BYTES:
                keep.append(raw)
                kept += len(raw)
            if callable(emit):
                emit(raw.decode("utf-8", "replace").rstrip("\r\n"))
        with contextlib.suppress(OSError):
            pipe.close()  # type: ignore[attr-defined]

    # --------------------------------------------------------------------------------------------------- files
    def _path(self, remote: str) -> Path:
        path = Path(remote)
        if self.root is not None and not path.is_absolute():
            return self.root / path
        return path

    def upload(self, source: Path | str, destination: str) -> None:
        """Copy a local file or directory to ``destination`` (Packer's trailing-slash rules, see module doc)."""
        source_str = str(source)
        src = Path(source)
        if not src.exists():
            raise BuildError(f"upload source does not exist: {src}")
        target = self._path(destination)
        if src.is_dir():
            if not source_str.endswith("/"):
                target = target / src.name
            self._copy_tree(src, target)
            return
        if destination.endswith("/") or target.is_dir():
            target = target / src.name
        self._copy_file(src, target, f"upload {src.name}")

    def download(self, source: str, destination: Path | str) -> None:
        """Copy a file or directory at ``source`` on the machine to the local ``destination``."""
        src = self._path(source)
        if not src.exists():
            raise BuildError(f"download source {source} not found on the machine")
        target = Path(destination)
        if src.is_dir():
            if not source.endswith("/"):
                target = target / src.name
            self._copy_tree(src, target)
            return
        if str(destination).endswith("/") or target.is_dir():
            target = target / src.name
        self._copy_file(src, target, f"download {src.name}")

    def _copy_tree(self, src: Path, target: Path) -> None:
        try:
            target.mkdir(parents=True, exist_ok=True)
            for root, dirs, files in os.walk(src):
                dirs.sort()
                rel = Path(root).relative_to(src)
                dest_root = target / rel
                dest_root.mkdir(parents=True, exist_ok=True)
                shutil.copymode(root, dest_root)
                for name in sorted(files):
                    local = Path(root) / name
                    if local.is_symlink() and not local.exists():
                        continue
                    self._copy_file(local, dest_root / name, f"copy {name}")
        except OSError as exc:
            raise BuildError(f"copy of {src} to {target} failed: {exc}") from None

    def _copy_file(self, src: Path, target: Path, label: str) -> None:
        if not target.parent.is_dir():
            raise BuildError(f"cannot copy {src} to {target}: directory {target.parent} does not exist")
        size = src.stat().st_size
        partial = target.with_name(f".{target.name}.part")
        try:
            with open(src, "rb") as fin, open(partial, "wb") as fout:
                done = 0
                while True:
                    if self.cancel.is_set():
                        raise Cancelled(f"cancelled while copying {src}")
                    chunk = fin.read(_CHUNK)
                    if not chunk:
                        break
                    fout.write(chunk)
                    done += len(chunk)
                    if size > 4 * 1024 * 1024:
                        self.ui.progress(label, done, size)
            shutil.copymode(src, partial)
            os.replace(partial, target)
        except OSError as exc:
            raise BuildError(f"copy of {src} to {target} failed: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)


PLUGIN = LocalCommunicator
