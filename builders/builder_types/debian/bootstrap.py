"""The bootstrap tree: ``debootstrap`` from the Debian mirror plus the packages the options need (installed with apt
in the chroot), cached as a tarball keyed by its inputs.

The key hashes everything that shapes the tree: suite, variant, mirror, components, the full package list
(``packages`` plus what the options add: kernel, grub-pc, openssh-server, cloud-init), the debootstrap version,
the architecture and :data:`TREE_FORMAT`. A cache entry is ``<cache>/bootstrap/<key>.tar.zst`` plus
``<key>.json`` (its inputs). ``extra_packages`` (and the EFI GRUB package) are not in the tree: the install step
adds them at every build (:func:`extra_packages`). Builders sharing a cache serialise on ``<key>.lock``
(``flock``): the first one bootstraps and publishes atomically (write to a temporary name, fsync, rename), the
others wait and then unpack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builders.core import BuildError
from stemforge_base.steps import Cancelled

from . import proc
from .config import DebianConfig

#: Bump when the way the tree is produced changes (invalidates every cache entry).
TREE_FORMAT = 6
#: How long a builder waits for another one bootstrapping the same key.
LOCK_WAIT_SECONDS = 3600.0

_TAR_FLAGS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"]


def base_packages(cfg: DebianConfig) -> list[str]:
    """The packages the bootstrap tree gets on top of the variant: what the options need plus ``packages``."""
    wanted = set(cfg.packages)
    if cfg.kernel is not None:
        wanted.update({cfg.kernel, "initramfs-tools", "systemd-sysv", "udev", "iproute2", "zstd"})
    if cfg.bootloader == "grub" and cfg.firmware in ("bios", "hybrid"):
        wanted.add("grub-pc")
    if cfg.include_sshd:
        wanted.update({"openssh-server", "systemd-sysv"})
    if cfg.include_cloud_init:
        wanted.update({"cloud-init", "systemd-sysv", "iproute2"})
    return sorted(wanted)


#: GRUB's x86_64-efi modules and grub-mkimage target (no grub-efi-amd64: it conflicts with grub-pc).
EFI_GRUB_PACKAGE = "grub-efi-amd64-bin"


def extra_packages(cfg: DebianConfig) -> list[str]:
    """What apt installs on top of the (cached) bootstrap tree at every build: ``extra_packages`` plus the EFI GRUB
    package when the firmware includes UEFI. Not part of the bootstrap key, so a ``hybrid`` image shares the
    bootstrap of a ``bios`` one."""
    wanted = set(cfg.extra_packages)
    if cfg.bootloader == "grub" and cfg.firmware in ("uefi", "hybrid"):
        wanted.add(EFI_GRUB_PACKAGE)
    return sorted(wanted - set(base_packages(cfg)))


def debootstrap_version() -> str:
    out = subprocess.run(["debootstrap", "--version"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() or "unknown"


def host_arch() -> str:
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() or "amd64"


@dataclass(frozen=True)
class BootstrapInputs:
    suite: str
    variant: str
    mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    debootstrap: str
    arch: str
    tree_format: int = TREE_FORMAT

    @classmethod
    def from_config(cls, cfg: DebianConfig) -> BootstrapInputs:
        return cls(cfg.suite, cfg.variant, cfg.mirror, cfg.components, tuple(base_packages(cfg)),
                   debootstrap_version(), host_arch())

    def as_dict(self) -> dict[str, object]:
        return {"suite": self.suite, "variant": self.variant, "mirror": self.mirror,
                "components": list(self.components), "packages": list(self.packages),
                "debootstrap": self.debootstrap, "arch": self.arch, "tree_format": self.tree_format}

    @property
    def key(self) -> str:
        blob = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


class BootstrapCache:
    """Cached bootstrap tarballs under ``<cache_dir>/bootstrap``."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "bootstrap"

    def tarball(self, key: str) -> Path:
        return self.root / f"{key}.tar.zst"

    def has(self, key: str) -> bool:
        return self.tarball(key).is_file() and (self.root / f"{key}.json").is_file()

    @contextlib.contextmanager
    def locked(self, key: str, cancel: threading.Event | None, wait: float = LOCK_WAIT_SECONDS,
               on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold ``<key>.lock``; polls so cancellation and the ``wait`` bound apply while another build holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / f"{key}.lock", "a+")  # noqa: SIM115 - closed in finally
        try:
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told and on_wait is not None:
                        on_wait()
                        told = True
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("bootstrap: cancelled while waiting for the cache lock") from None
                    if time.monotonic() > deadline:
                        raise BuildError(f"bootstrap: cache entry {key} stayed locked for {wait:.0f}s") from None
                    time.sleep(0.5)
            self._clean_stale(key)
            yield
        finally:
            fh.close()  # releases the lock

    def _clean_stale(self, key: str) -> None:
        """Remove temporaries of builds that died mid-publish (only called under the key's lock)."""
        for tmp in self.root.glob(f".{key}.*.tmp"):
            tmp.unlink(missing_ok=True)

    def publish(self, tree: Path, inputs: BootstrapInputs, cancel: threading.Event | None,
                on_line: Callable[[str], None] | None = None, seconds: float | None = None) -> Path:
        """Pack ``tree`` into the cache under ``inputs.key`` atomically (caller holds the lock); ``seconds`` (how
        long the bootstrap took) is recorded in ``<key>.json``."""
        key = inputs.key
        final = self.tarball(key)
        tmp = self.root / f".{key}.{os.getpid()}.tar.zst.tmp"
        meta_tmp = self.root / f".{key}.{os.getpid()}.json.tmp"
        try:
            proc.run(["tar", *_TAR_FLAGS, "--use-compress-program=zstd -1 -T0 -q", "-C", str(tree),
                      "-cf", str(tmp), "."], what="bootstrap: caching the tree", cancel=cancel,
                     timeout=1800, on_line=on_line)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            meta = {**inputs.as_dict(), "created": time.time(), "seconds": seconds}
            meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp, final)
            os.replace(meta_tmp, self.root / f"{key}.json")
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
        return final

    def meta(self, key: str) -> dict[str, object]:
        """The inputs (and ``seconds``, ``created``) recorded with a cache entry."""
        data: dict[str, object] = json.loads((self.root / f"{key}.json").read_text())
        return data

    def extract(self, key: str, dest: Path, cancel: threading.Event | None) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        proc.run(["tar", *_TAR_FLAGS, "--use-compress-program=zstd -d -T0 -q", "-C", str(dest), "-xpf",
                  str(self.tarball(key))], what="bootstrap: unpacking the cached tree", cancel=cancel, timeout=1800)


#: dpkg configuration dropped into the tree while it is built (no fsync per file: the tree is a temporary that is
#: packed, fsynced and published as a whole), removed before the tree is cached.
UNSAFE_IO_CONF = "etc/dpkg/dpkg.cfg.d/stemforge-unsafe-io"


def debootstrap(cfg: DebianConfig, packages: list[str], target: Path, cancel: threading.Event | None,
                on_line: Callable[[str], None]) -> None:
    """Run debootstrap into ``target`` (which must be empty or absent) in its two documented stages, so dpkg runs
    the second stage with ``force-unsafe-io``. The downloaded .debs are removed afterwards."""
    if shutil.which("debootstrap") is None:
        raise BuildError("bootstrap: debootstrap is not installed (apt-get install debootstrap)")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["debootstrap", "--foreign", f"--variant={cfg.variant}", f"--components={','.join(cfg.components)}"]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    argv += [cfg.suite, str(target), cfg.mirror]
    proc.run(argv, what="bootstrap: debootstrap (first stage)", cancel=cancel, timeout=3600, on_line=on_line,
             env=env)
    unsafe = target / UNSAFE_IO_CONF
    unsafe.parent.mkdir(parents=True, exist_ok=True)
    unsafe.write_text("force-unsafe-io\n")
    proc.run(["chroot", str(target), "/debootstrap/debootstrap", "--second-stage"],
             what="bootstrap: debootstrap (second stage)", cancel=cancel, timeout=3600, on_line=on_line, env=env)
    # The downloaded .debs are not part of the image (and would double the cache entry).
    archives = target / "var" / "cache" / "apt" / "archives"
    for deb in archives.glob("*.deb"):
        deb.unlink()


def drop_unsafe_io(target: Path) -> None:
    (target / UNSAFE_IO_CONF).unlink(missing_ok=True)
