"""Choosing the accelerator: KVM when it really runs guests, else TCG (software emulation).

``/dev/kvm`` existing is not enough (in some sandboxes guests hang under KVM), so ``auto`` boots a Linux kernel
under KVM with a bounded timeout and looks for its first console line. The verdict is cached per host boot
(keyed by ``/proc/sys/kernel/random/boot_id`` and the QEMU binary) in the state directory, under a file lock, so
32 concurrent CPI calls probe at most once.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

#: libvirt domain types
KVM = "kvm"
TCG = "qemu"


def choose(mode: str, state_dir: Path, log: logging.Logger, *, timeout: float = 15.0,
           kernel: str | None = None) -> str:
    """The libvirt domain type for ``mode`` (auto|kvm|tcg)."""
    if mode == "tcg":
        return TCG
    if mode == "kvm":
        return KVM
    qemu = find_qemu()
    if qemu is None or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return TCG
    key = f"{_boot_id()}:{qemu}:{os.stat(qemu).st_mtime_ns}"
    cache = state_dir / "accelerator.json"
    with open(state_dir / "accelerator.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, ValueError, KeyError):
            cached = json.loads(cache.read_text())
            if cached["key"] == key:
                return str(cached["domain_type"])
        works, detail = probe_kvm(qemu, kernel or find_probe_kernel(), timeout)
        domain_type = KVM if works else TCG
        log.info("accelerator probe: KVM %s (%s); using %s", "works" if works else "unusable", detail,
                 "kvm" if works else "tcg")
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "domain_type": domain_type, "detail": detail}))
        os.replace(tmp, cache)
        return domain_type


def find_qemu() -> str | None:
    for name in ("qemu-system-x86_64", "kvm"):
        found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/bin:/usr/libexec")
        if found:
            return found
    return None


def find_probe_kernel() -> str | None:
    """A Linux kernel to boot for the probe: the host's, else one cached by the stemforge test image build."""
    cache = os.environ.get("STEMFORGE_CACHE") or os.path.expanduser("~/.cache/stemforge")
    for pattern in ("/boot/vmlinuz-*", f"{cache}/testimage/images/*/vmlinuz"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    return None


def probe_kvm(qemu: str, kernel: str | None, timeout: float) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM with the CPU model the provider uses (``-cpu host``), no disk and no network,
    and wait at most ``timeout`` s for it to reach the missing-root panic on the serial console.

    Firmware alone proves nothing (it runs where kernels hang), so without a kernel the answer is no."""
    if not kernel:
        return False, "no Linux kernel to probe with (set libvirt.kvm_probe_kernel to use KVM)"
    with tempfile.TemporaryDirectory(prefix="stemforge-kvm-probe-") as tmp:
        log = Path(tmp) / "console.log"
        cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-nodefaults", "-display", "none",
               "-m", "128", "-no-reboot", "-nic", "none", "-kernel", kernel,
               "-append", "console=ttyS0 panic=-1 loglevel=4", "-serial", f"file:{log}"]
        expect = b"Kernel panic"  # a full boot, up to looking for the root filesystem
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                seen = log.exists() and expect in log.read_bytes()
                if seen:
                    return True, "a kernel booted under KVM"
                if proc.poll() is not None:
                    return False, f"qemu exited with status {proc.returncode} under KVM"
                time.sleep(0.2)
            return False, f"a kernel did not boot under KVM within {timeout:g}s"
        finally:
            proc.kill()
            proc.wait()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"
