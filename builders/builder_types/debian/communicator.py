"""The debian builder's chroot communicator: provisioners reach its offline root tree as if it were a machine (in
Packer the chroot communicator likewise belongs to the chroot builders, packer-plugin-sdk/chroot).

``run`` executes ``chroot <root> /bin/sh -c <command>`` with a clean environment (plus the caller's ``env``),
streams each output line to the UI, honours ``timeout`` and cancellation (the command's whole process group is
killed) and never raises for a non-zero exit status. ``upload``/``download`` copy into and out of the tree with
Packer's trailing-slash rules; guest paths are resolved *inside* the tree (an absolute symlink in the tree points
into the tree, never at the host), so nothing outside the root is ever written.

Packer's rules, as implemented:
- upload of a file: ``destination`` ending in ``/`` (or naming an existing directory) receives the file under its
  own name; otherwise ``destination`` is the file's new path. Missing parent directories are created.
- upload of a directory: ``source`` ending in ``/`` copies its *contents* into ``destination``; without the slash
  the directory itself is copied into ``destination`` (``/tmp`` + ``foo`` -> ``/tmp/foo``).
- download mirrors both rules with the guest path as the source and the local path as the destination.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from builders.core import BuildError, CommandResult, Communicator

from . import proc

#: Symlink hops allowed while resolving one guest path (loops end with an error).
_MAX_SYMLINKS = 40

_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}


def resolve_in_root(root: Path, guest_path: str, *, follow_last: bool = True) -> Path:
    """The host path of ``guest_path`` inside ``root``, following symlinks as the chroot would (absolute links
    restart at ``root``; ``..`` never climbs above it). Missing trailing components are allowed."""
    if not guest_path.startswith("/"):
        guest_path = "/root/" + guest_path  # relative paths are relative to root's home, like an SSH login
    parts = [p for p in PurePosixPath(guest_path).parts[1:] if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise BuildError(f"chroot: too many symbolic links resolving {guest_path}")
            target = os.readlink(candidate)
            target_parts = [p for p in PurePosixPath(target).parts if p not in ("", ".")]
            if target.startswith("/"):
                resolved = []
                target_parts = target_parts[1:]
            parts = target_parts + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


class ChrootCommunicator(Communicator):
    """Runs commands in, and copies files into and out of, the root tree ``root`` (which must already have
    /proc, /sys and /dev bound when commands need them; the debian builder does that)."""

    def __init__(self, root: Path, *, say: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None, shell: str = "/bin/sh") -> None:
        self.root = Path(root).resolve()
        self.say = say or (lambda line: None)
        self.cancel = cancel
        self.shell = shell
        if not (self.root / shell.lstrip("/")).exists() and not (self.root / shell.lstrip("/")).is_symlink():
            raise BuildError(f"chroot: {self.root} has no {shell}; is it a root tree?")

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        full_env = dict(_BASE_ENV)
        if env:
            full_env.update(env)
        result = proc.run(["chroot", str(self.root), self.shell, "-c", command], what="chroot command",
                          cancel=self.cancel, timeout=timeout, env=full_env, on_line=self.say,
                          capture=capture, check=False)
        if capture:
            return CommandResult(result.returncode, result.stdout, result.stderr)
        return CommandResult(result.returncode)

    # -- files -------------------------------------------------------------------------------------------------

    def upload(self, source: Path | str, destination: str) -> None:
        src_text = str(source)
        src = Path(source)
        if not src.exists():
            raise BuildError(f"chroot upload: {src} does not exist")
        if src.is_dir():
            base = resolve_in_root(self.root, destination)
            target = base if src_text.endswith("/") else resolve_in_root(self.root, f"{destination.rstrip('/')}/"
                                                                                     f"{src.name}")
            self._check_inside(target)
            target.mkdir(parents=True, exist_ok=True)
            self._copy_tree_into(src, target)
        else:
            target = resolve_in_root(self.root, destination)
            if destination.endswith("/") or target.is_dir():
                target = resolve_in_root(self.root, f"{destination.rstrip('/')}/{src.name}")
            self._check_inside(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target, follow_symlinks=True)
            os.chown(target, 0, 0)

    def download(self, source: str, destination: Path | str) -> None:
        dest_text = str(destination)
        dest = Path(destination)
        src = resolve_in_root(self.root, source)
        self._check_inside(src)
        if not src.exists():
            raise BuildError(f"chroot download: {source} does not exist in the image")
        if src.is_dir():
            target = dest if source.endswith("/") else dest / src.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            if dest_text.endswith("/") or dest.is_dir():
                dest = dest / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)

    def _check_inside(self, path: Path) -> None:
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            # resolve() follows host-side symlinks; resolve_in_root already kept us inside, so this means the
            # path itself is a dangling link target; compare the unresolved path instead.
            try:
                path.relative_to(self.root)
            except ValueError:
                raise BuildError(f"chroot: {path} is outside the image root") from None

    def _copy_tree_into(self, src: Path, target: Path) -> None:
        """Copy the contents of ``src`` into ``target``; symlinks are copied as links, ownership becomes root."""
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            out_dir = resolve_in_root(self.root, "/" + str(target.relative_to(self.root) / rel))
            self._check_inside(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copystat(dirpath, out_dir)
            for name in [*filenames, *[d for d in dirnames if (Path(dirpath) / d).is_symlink()]]:
                s = Path(dirpath) / name
                d = out_dir / name
                if d.is_symlink() or d.is_file():
                    d.unlink()
                if s.is_symlink():
                    os.symlink(os.readlink(s), d)
                    os.lchown(d, 0, 0)
                else:
                    shutil.copy2(s, d)
                    os.chown(d, 0, 0)
            os.chown(out_dir, 0, 0)
