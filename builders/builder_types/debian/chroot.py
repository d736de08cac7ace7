"""The chroot's host-side resources: bind mounts, the service-start blocker, resolv.conf, stray processes, and
removing a tree safely.

Mounts are checked against ``/proc/self/mountinfo`` (not our own bookkeeping), so a cleanup after a crash, a
cancelled debootstrap (which mounts /proc and /sys itself) or a half-done prepare still finds and removes every
mount under the tree, deepest first. ``remove_tree`` refuses to delete anything while a mount is below it: a
bind-mounted /dev must never be emptied by a recursive delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builders.core import BuildError

#: (mount point inside the tree, host source) in mount order; unmounted in reverse. /dev is NOT the host's: package
#: scripts in the chroot (systemd-tmpfiles' static-nodes rules, udev) would chown/chmod the host's device nodes with
#: the chroot's group ids (seen: /dev/kvm handed to the host's ssl-cert group, after which libvirt re-probed QEMU
#: on every call). It is a private tmpfs with the basic nodes and a new devpts instance.
BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("proc", "/proc"), ("sys", "/sys"), ("dev", "tmpfs"), ("dev/pts", "devpts"),
)

#: The device nodes a package build needs: (name, mode, major, minor).
DEV_NODES: tuple[tuple[str, int, int, int], ...] = (
    ("null", 0o666, 1, 3), ("zero", 0o666, 1, 5), ("full", 0o666, 1, 7), ("random", 0o666, 1, 8),
    ("urandom", 0o666, 1, 9), ("tty", 0o666, 5, 0), ("console", 0o600, 5, 1),
)

POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_RC_D_BODY = "#!/bin/sh\n# stemforge: no service starts while building the image\nexit 101\n"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:
                points.append(_unescape(fields[4]))
    return points


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (resolved), in mount order."""
    base = os.path.realpath(path)
    return [m for m in mount_points() if m == base or m.startswith(base.rstrip("/") + "/")]


def chroot_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for commands in the tree (nothing of the host's leaks in)."""
    env = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "TERM": "dumb",
    }
    if extra:
        env.update(extra)
    return env


def bind_mounts(root: Path, record: Callable[[str], None]) -> None:
    """Bind /proc, /sys, /dev, /dev/pts into ``root``; ``record(mountpoint)`` is called right after each mount
    succeeds so a failure half-way still unmounts what was mounted."""
    for rel, source in BIND_MOUNTS:
        target = root / rel
        target.mkdir(parents=True, exist_ok=True)
        if os.path.realpath(target) != str(root.resolve() / rel):
            raise BuildError(f"prepare chroot: {target} is a symlink; refusing to mount over it")
        if source == "tmpfs":
            command = ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,size=16m", "stemforge-dev", str(target)]
        elif source == "devpts":
            command = ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5", "devpts",
                       str(target)]
        else:
            command = ["mount", "--bind", source, str(target)]
        subprocess.run(command, check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        record(str(target))
        if source == "tmpfs":
            _populate_dev(target)
        # A private mount: nothing mounted inside the chroot propagates back to the host.
        subprocess.run(["mount", "--make-private", str(target)], check=False, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _populate_dev(dev: Path) -> None:
    """Basic device nodes, the usual symlinks and mount points inside a private /dev."""
    import stat

    for name, mode, major, minor in DEV_NODES:
        os.mknod(dev / name, mode | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, mode)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(target, dev / name)
    for name in ("pts", "shm"):
        (dev / name).mkdir(mode=0o755 if name == "pts" else 0o1777, exist_ok=True)
    os.chmod(dev / "shm", 0o1777)


def unmount_all(root: Path, say: Callable[[str], None] | None = None, attempts: int = 5) -> None:
    """Unmount every mount under ``root`` deepest-first (reverse mount order), retrying busy ones and finally
    detaching lazily; verified against /proc/self/mountinfo. Raises BuildError if any mount survives."""
    for _ in range(attempts):
        remaining = mounts_under(root)
        if not remaining:
            return
        kill_processes_in(root)
        for point in reversed(remaining):
            proc = subprocess.run(["umount", point], timeout=60, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, check=False)
            if proc.returncode == 0:
                if say:
                    say(f"Unmounted {point}")
            elif point not in mount_points():
                continue
        if mounts_under(root):
            time.sleep(0.5)
    for point in reversed(mounts_under(root)):
        subprocess.run(["umount", "--lazy", point], timeout=60, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left = mounts_under(root)
    if left:
        raise BuildError(f"cleanup: could not unmount {', '.join(left)}")


def processes_in(root: Path) -> list[int]:
    """PIDs whose root directory is ``root`` or below it (processes started inside the chroot)."""
    base = os.path.realpath(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            proc_root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if proc_root == base or proc_root.startswith(base.rstrip("/") + "/"):
            found.append(int(entry))
    return found


def kill_processes_in(root: Path, grace: float = 3.0) -> list[int]:
    """Terminate (then kill) every process running inside the chroot; returns the PIDs found."""
    pids = processes_in(root)
    if not pids:
        return []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and processes_in(root):
            time.sleep(0.1)
        if not processes_in(root):
            break
    return pids


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively after unmounting anything below it; refuses (BuildError) while a mount
    remains, so a bound host directory is never emptied."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_all(path)
    if mounts_under(path):
        raise BuildError(f"refusing to delete {path}: something is still mounted below it")

    def onerror(func: Callable[..., Any], p: str, exc: Any) -> None:
        # chattr +i or read-only dirs inside the tree: make writable and retry once.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)

    shutil.rmtree(path, onerror=onerror)
    if path.exists():
        raise BuildError(f"could not delete {path}")


def write_policy_rc_d(root: Path) -> bool:
    """Install a policy-rc.d that blocks service starts; True if we created it (False: one was there)."""
    target = root / POLICY_RC_D
    if target.exists() or target.is_symlink():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(POLICY_RC_D_BODY)
    target.chmod(0o755)
    return True


def remove_policy_rc_d(root: Path) -> None:
    target = root / POLICY_RC_D
    if target.is_file() and target.read_text() == POLICY_RC_D_BODY:
        target.unlink()


def ensure_resolv_conf(root: Path) -> bytes | None:
    """Give the chroot the host's resolv.conf when it has none with a nameserver (apt must resolve the mirror).
    Returns the previous content to restore (``b""`` for no file), or None when nothing was changed."""
    target = root / "etc" / "resolv.conf"
    current: bytes | None = None
    if target.is_file() and not target.is_symlink():
        current = target.read_bytes()
        if b"nameserver" in current:
            return None
    host = Path("/etc/resolv.conf")
    if not host.is_file():
        return None
    if target.is_symlink():
        return None  # managed by something in the tree (systemd-resolved); leave it
    target.write_bytes(host.read_bytes())
    return current if current is not None else b""


def restore_resolv_conf(root: Path, previous: bytes | None) -> None:
    if previous is None:
        return
    target = root / "etc" / "resolv.conf"
    if previous == b"":
        target.unlink(missing_ok=True)
    else:
        target.write_bytes(previous)
