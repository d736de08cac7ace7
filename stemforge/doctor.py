"""``stemforge doctor``: which components this machine has and which it lacks, each gap with the exact fix.

Every check is a small function that returns :class:`Check` values. Contracts shared by all of them:

* A check never changes the machine (the fixes it prints are for the user to run) and never sends network traffic
  other than to local sockets: libvirt is reached over its unix socket, Terraform runs with
  ``CHECKPOINT_DISABLE=1`` and only ``terraform version``.
* Every external command runs with a timeout (:attr:`Options.timeout`, the KVM boot probe
  :attr:`Options.probe_timeout`); a command that does not finish in time is killed and the check fails with
  that as its detail. Python imports are tried in a subprocess of :attr:`Options.python` so doctor's own
  process stays light and a broken module cannot take it down.
* Binaries are looked up in ``Options.path`` when given (exactly that search path, so tests can hide a binary),
  otherwise in ``$PATH`` plus the sbin directories, where Debian puts ``dnsmasq``, ``mke2fs`` and ``debootstrap``.

A failing check whose ``required_for`` is :data:`LIBVIRT_CPI` and that is not ``optional`` makes ``doctor`` exit
1; gaps for bare metal, image builds and AWS/Terraform are listed as warnings.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import grp
import json
import os
import platform
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: ``Check.required_for`` values, in report order, with the heading each group gets.
LIBVIRT_CPI = "libvirt CPI"
BARE_METAL = "bare metal"
IMAGES = "image builds"
AWS_TERRAFORM = "AWS/Terraform"
AREA_TITLES: dict[str, str] = {
    LIBVIRT_CPI: "CPI/libvirt",
    BARE_METAL: "bare metal",
    IMAGES: "images",
    AWS_TERRAFORM: "AWS/Terraform",
}

#: Directories searched after ``$PATH`` when no explicit search path is given.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
DEFAULT_POOL_PATH = Path("/var/lib/stemforge/pool")
DEFAULT_URI = "qemu:///system"
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
#: Where an unconfigured provider mirror may have been unpacked (reported as a fix, never used silently).
MIRROR_CANDIDATE_GLOBS = ("/opt/*", "/opt/*/*", "/srv/*", "/usr/local/share/*", "/var/lib/*")
#: Places to look for ``terraform`` when it is not on PATH (globs; ``~`` is the user's home).
TERRAFORM_CANDIDATE_DIRS = ("/usr/local/bin", "/usr/bin", "/snap/bin", "~/.local/bin", "~/bin", "/opt/*/bin", "/opt/*")
#: iPXE files of Debian's ``ipxe`` package (``dpkg -L ipxe``): name -> where it may be, and whether it is needed.
IPXE_FILES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("undionly.kpxe", ("/usr/lib/ipxe/undionly.kpxe",), True),  # BIOS PXE chainload
    ("ipxe.efi", ("/usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"), True),  # UEFI, iPXE's own NIC drivers
    ("snponly.efi", ("/usr/lib/ipxe/snponly.efi",), False),  # UEFI, the firmware's NIC driver
    ("ipxe.lkrn", ("/usr/lib/ipxe/ipxe.lkrn", "/boot/ipxe.lkrn"), False),
    ("ipxe.pxe", ("/usr/lib/ipxe/ipxe.pxe",), False),
    ("ipxe.iso", ("/usr/lib/ipxe/ipxe.iso",), False),
)
SYSLINUX_MBR = "/usr/lib/syslinux/mbr/mbr.bin"
#: Debian package providing each host tool the test image build runs (for the fix line).
TOOL_PACKAGES = {
    "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "mke2fs": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "mcopy": "mtools", "mattrib": "mtools", "sfdisk": "fdisk", "qemu-img": "qemu-utils",
}
#: Python modules the libvirt CPI imports: (check name, module, distribution, pip requirement).
CORE_MODULES = (
    ("python: libvirt-python", "libvirt", "libvirt-python", "libvirt-python>=9.0"),
    ("python: pycdlib", "pycdlib", "pycdlib", "pycdlib>=1.14"),
    ("python: jsonschema", "jsonschema", "jsonschema", "jsonschema>=4.17"),
    ("python: PyYAML", "yaml", "PyYAML", "PyYAML>=6.0"),
    ("python: tenacity", "tenacity", "tenacity", "tenacity>=8.2"),
)
#: Python modules for the bare-metal and AWS emulators (imported in a second subprocess: they are slower).
EXTRA_MODULES = (
    ("sushy_tools.emulator.main", "sushy-tools"),
    ("boto3", "boto3"),
    ("moto", "moto"),
    ("moto.server", "moto"),
)


@dataclass(frozen=True)
class Check:
    """One finding. ``fix`` is the exact command (or edit) that closes the gap; None when ``ok`` or when no
    command can (the detail then says why). ``required_for`` is one of the :data:`AREA_TITLES` keys.
    ``optional`` marks a gap its area works without (KVM: guests run under TCG, slower)."""

    name: str
    ok: bool
    detail: str
    fix: str | None
    required_for: str
    optional: bool = False

    @property
    def blocking(self) -> bool:
        """True when this failure means the libvirt CPI cannot work here (doctor then exits 1)."""
        return not self.ok and not self.optional and self.required_for == LIBVIRT_CPI


@dataclass(frozen=True)
class Options:
    """What to check and how long to wait. ``path`` None: ``$PATH`` plus :data:`SBIN_DIRS`."""

    uri: str = DEFAULT_URI
    pool_path: Path = DEFAULT_POOL_PATH
    probe_kernel: str | None = None
    probe_timeout: float = 15.0
    quick: bool = False
    timeout: float = 10.0
    min_free_gib: float = 5.0
    python: str = sys.executable
    path: str | None = None
    home: Path = field(default_factory=Path.home)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = field(default_factory=Path.cwd)


# -- helpers --------------------------------------------------------------------------------------------------


def sudo() -> str:
    """``"sudo "`` unless we are root: the prefix for fixes that need root."""
    return "" if os.geteuid() == 0 else "sudo "


def apt_fix(*packages: str) -> str:
    """The exact command that installs Debian ``packages``."""
    return f"{sudo()}apt-get install -y --no-install-recommends {' '.join(packages)}"


def search_path(path: str | None) -> str:
    """The search path binaries are looked up in: ``path`` itself when given, else ``$PATH`` plus sbin dirs."""
    if path is not None:
        return path
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return os.pathsep.join(dirs + [d for d in SBIN_DIRS if d not in dirs])


def find_binary(name: str, path: str | None = None) -> str | None:
    """Absolute path of executable ``name`` in :func:`search_path` ``(path)``, or None."""
    return shutil.which(name, path=search_path(path))


def run(cmd: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` (stdin closed) for at most ``timeout`` s. Returns (exit status, stdout+stderr as text);
    the status is None when the command could not start or was killed at the timeout (the text says which)."""
    try:
        proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              env=dict(env) if env is not None else None, check=False)
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]} did not finish within {timeout:g}s"
    except OSError as exc:
        return None, f"cannot run {cmd[0]}: {exc.strerror or exc}"
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def first_line(text: str, limit: int = 100) -> str:
    """The first non-blank line of ``text``, stripped and cut at ``limit`` characters."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def running(names: Iterable[str]) -> dict[str, list[int]]:
    """PIDs of processes whose command name (``/proc/PID/comm``) is one of ``names``."""
    wanted = set(names)
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        if comm in wanted:
            found.setdefault(comm, []).append(int(entry.name))
    return found


def has_systemd() -> bool:
    """True when systemd is the init system (the test ``sd_booted()`` uses)."""
    return os.path.isdir("/run/systemd/system")


def elf_is_static(path: str) -> bool | None:
    """Whether the ELF file at ``path`` has no program interpreter (statically linked); None if not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return None
            is64, little = head[4] == 2, head[5] == 1
            order = "<" if little else ">"
            if is64:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return None
    for i in range(phnum):
        p_type, = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


class Once:
    """A value computed on first use, at most once, shared by the checks running in parallel threads."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None

    def get(self) -> Any:
        with self._lock:
            if not self._done:
                self._value = self._compute()
                self._done = True
            return self._value


_IMPORT_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
out = {}
for spec in sys.argv[1:]:
    module, _, dist = spec.partition("=")
    try:
        importlib.import_module(module)
    except BaseException as exc:
        out[module] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        continue
    try:
        version = md.version(dist) if dist else ""
    except md.PackageNotFoundError:
        version = ""
    out[module] = {"ok": True, "version": version}
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""


def probe_imports(python: str, modules: Iterable[tuple[str, str]], timeout: float) -> dict[str, dict[str, Any]]:
    """Import each ``(module, distribution)`` in a fresh ``python`` process. Returns module ->
    ``{"ok": bool, "version": str}`` or ``{"ok": False, "error": str}``; every module gets an entry."""
    pairs = list(modules)
    status, out = run([python, "-c", _IMPORT_PROBE, *(f"{m}={d}" for m, d in pairs)], timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if status == 0 and lines:
        with contextlib.suppress(ValueError):
            result: dict[str, dict[str, Any]] = json.loads(lines[-1])
            return result
    why = first_line(out, 300) or f"{python} exited {status}"
    return {m: {"ok": False, "error": why} for m, _ in pairs}


_LIBVIRT_PROBE = r"""
import json, re, sys
try:
    import libvirt
except Exception as exc:
    print(json.dumps({"import_error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
try:
    conn = libvirt.open(sys.argv[1])
except libvirt.libvirtError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(0)
out = {"libvirt": conn.getLibVersion(), "hypervisor": conn.getVersion(), "type": conn.getType()}
try:
    net = conn.networkLookupByName("default")
    m = re.search(r"<bridge[^>]*name=['\"]([^'\"]+)", net.XMLDesc(0))
    out["default"] = {"active": bool(net.isActive()), "autostart": bool(net.autostart()),
                      "bridge": m.group(1) if m else None}
except libvirt.libvirtError:
    out["default"] = None
print(json.dumps(out))
"""


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def probe_libvirt(options: Options) -> dict[str, Any]:
    """Ask libvirt at ``options.uri`` for its versions and the ``default`` network's state, bounded by
    ``options.timeout``. Uses libvirt-python in a subprocess, else ``virsh``. Result keys: ``libvirt``,
    ``hypervisor`` (version strings), ``default`` (None or {active, autostart, bridge}), ``via``; or
    ``error`` (str) when libvirt did not answer."""
    status, out = run([options.python, "-c", _LIBVIRT_PROBE, options.uri], options.timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    doc: dict[str, Any] = {}
    if status == 0 and lines:
        with contextlib.suppress(ValueError):
            doc = json.loads(lines[-1])
    if status is None:
        return {"error": f"no answer from {options.uri} within {options.timeout:g}s", "timeout": True}
    if "libvirt" in doc:
        return {"libvirt": _version(doc["libvirt"]), "hypervisor": f"{doc['type']} {_version(doc['hypervisor'])}",
                "default": doc["default"], "via": "libvirt-python"}
    if "error" in doc:
        return {"error": doc["error"]}
    virsh = find_binary("virsh", options.path)
    if virsh is None:
        return {"error": f"libvirt-python is not importable ({doc.get('import_error', first_line(out))}) "
                         "and virsh is not installed"}
    status, out = run([virsh, "-c", options.uri, "version"], options.timeout)
    if status != 0:
        return {"error": first_line(out, 300) or f"virsh exited {status}", "timeout": status is None}
    lib = re.search(r"Using library: libvirt (\S+)", out)
    hyp = re.search(r"Running hypervisor: (.+)", out)
    result: dict[str, Any] = {"libvirt": lib.group(1) if lib else "?", "hypervisor": hyp.group(1).strip() if hyp
                              else "?", "via": "virsh", "default": None}
    status, out = run([virsh, "-c", options.uri, "net-info", "default"], options.timeout)
    if status == 0:
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        result["default"] = {"active": info.get("Active") == "yes", "autostart": info.get("Autostart") == "yes",
                             "bridge": info.get("Bridge")}
    return result


class Context:
    """Options plus the probes several checks share (each run once, lazily, thread-safe)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.libvirt = Once(lambda: probe_libvirt(options))
        self.core_imports = Once(lambda: probe_imports(
            options.python, [(m, d) for _, m, d, _ in CORE_MODULES], max(options.timeout, 30.0)))
        self.extra_imports = Once(lambda: probe_imports(options.python, EXTRA_MODULES, max(options.timeout, 30.0)))


def pip_fix(python: str, requirement: str) -> str:
    """The command that installs ``requirement`` into the environment of ``python``."""
    return f"{python} -m pip install '{requirement}'"


# -- generic checks ---------------------------------------------------------------------------------------------


def check_binary(name: str, *, package: str, required_for: str, binary: str | None = None,
                 version_args: Sequence[str] | None = ("--version",), path: str | None = None,
                 timeout: float = 10.0, optional: bool = False) -> Check:
    """Is ``binary`` (default ``name``) on :func:`search_path` ``(path)``? Detail: where, and the first line of
    ``binary version_args`` (None: skip). The fix installs Debian ``package``."""
    exe = find_binary(binary or name, path)
    if exe is None:
        return Check(name, False, f"{binary or name} not found in {search_path(path) or '(empty PATH)'}",
                     apt_fix(package), required_for, optional)
    detail = exe
    if version_args is not None:
        status, out = run([exe, *version_args], timeout)
        line = first_line(out)
        if status is None:
            detail = f"{exe} ({line})"
        elif line:
            detail = f"{line} at {exe}"
    return Check(name, True, detail, None, required_for, optional)


def check_file(name: str, paths: Sequence[str], *, package: str, required_for: str) -> Check:
    """Does one of ``paths`` exist as a file? The fix installs Debian ``package``."""
    for p in paths:
        if os.path.isfile(p):
            return Check(name, True, p, None, required_for)
    return Check(name, False, f"missing: {', '.join(paths)}", apt_fix(package), required_for)


# -- CPI / libvirt ----------------------------------------------------------------------------------------------


def _daemon_start_fix(path: str | None) -> str:
    modular = find_binary("virtqemud", path) is not None and find_binary("libvirtd", path) is None
    daemon = "virtqemud" if modular else "libvirtd"
    if has_systemd():
        return f"{sudo()}systemctl start virtlogd.socket {daemon}.socket {daemon}.service"
    return f"{sudo()}sh -c 'pgrep -x virtlogd >/dev/null || virtlogd -d; {daemon} -d'"


def _daemon_restart_fix(procs: Mapping[str, list[int]]) -> str:
    name = sorted(procs)[0]
    if has_systemd():
        return f"{sudo()}systemctl restart {name}"
    return f"{sudo()}sh -c 'kill {procs[name][0]} && sleep 2 && {name} -d'"


def check_libvirt(ctx: Context) -> list[Check]:
    """libvirtd (or modular virtqemud) running and ``uri`` answering; the daemon is named in the detail."""
    opts = ctx.options
    procs = running(("libvirtd", "virtqemud"))
    daemon = ", ".join(f"{n} (pid {pids[0]})" for n, pids in sorted(procs.items())) or "no libvirtd/virtqemud process"
    probe = ctx.libvirt.get()
    if "error" not in probe:
        detail = f"{daemon} answers on {opts.uri}: libvirt {probe['libvirt']}, {probe['hypervisor']}"
        return [Check("libvirt", True, detail, None, LIBVIRT_CPI)]
    error = probe["error"]
    if not procs:
        fix = _daemon_start_fix(opts.path)
    elif "ermission denied" in error or "authentication" in error.lower():
        fix = f"{sudo()}usermod -aG libvirt {_user()}  (then log in again)"
    elif "Failed to connect socket" in error:
        fix = (f"the daemon runs but does not listen there: check libvirt.uri in the CPI config ({opts.uri}), or "
               f"restart it: {_daemon_restart_fix(procs)}")
    elif probe.get("timeout"):
        fix = _daemon_restart_fix(procs) + "  (the daemon is wedged)"
    else:
        fix = ("see journalctl -u libvirtd" if has_systemd() else "run 'libvirtd' in a terminal to see why") + \
              f"; then: virsh -c {opts.uri} version"
    return [Check("libvirt", False, f"{daemon}; {opts.uri}: {error}", fix, LIBVIRT_CPI)]


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_virtlogd(ctx: Context) -> list[Check]:
    """virtlogd running (or socket-activated under systemd): QEMU's console and log go through it."""
    procs = running(("virtlogd",))
    if procs:
        return [Check("virtlogd", True, f"running (pid {procs['virtlogd'][0]})", None, LIBVIRT_CPI)]
    sock = Path("/run/libvirt/virtlogd-sock")
    if has_systemd() and sock.exists():
        return [Check("virtlogd", True, f"socket-activated ({sock})", None, LIBVIRT_CPI)]
    fix = f"{sudo()}systemctl start virtlogd.socket" if has_systemd() else f"{sudo()}virtlogd -d"
    return [Check("virtlogd", False, "not running: libvirt cannot start guests without it", fix, LIBVIRT_CPI)]


def check_default_network(ctx: Context) -> list[Check]:
    """libvirt's predefined ``default`` network must be neither active nor autostarted: it puts a bridge with a
    private address in the host namespace, which stemforge's network rule forbids."""
    uri = ctx.options.uri
    probe = ctx.libvirt.get()
    source = ""
    if "error" in probe:  # libvirt did not answer: read the state it keeps on disk
        state: dict[str, Any] | None = {
            "active": os.path.exists("/run/libvirt/network/default.xml"),
            "autostart": os.path.exists("/etc/libvirt/qemu/networks/autostart/default.xml"),
            "bridge": "virbr0"}
        if not os.path.exists("/etc/libvirt/qemu/networks/default.xml"):
            state = None
        source = " (from libvirt's files; libvirt did not answer)"
    else:
        state = probe["default"]
    if state is None:
        return [Check("default network", True, f"not defined{source}", None, LIBVIRT_CPI)]
    bridge = state.get("bridge")
    up = bool(bridge) and os.path.exists(f"/sys/class/net/{bridge}")
    bad = [w for w, on in (("active", state["active"]), ("autostarted", state["autostart"])) if on]
    if not bad:
        return [Check("default network", True, f"defined but inactive and not autostarted{source}", None,
                      LIBVIRT_CPI)]
    fixes = []
    if state["active"]:
        fixes.append(f"{sudo()}virsh -c {uri} net-destroy default")
    if state["autostart"]:
        fixes.append(f"{sudo()}virsh -c {uri} net-autostart --disable default")
    detail = f"{' and '.join(bad)}{source}" + (f"; bridge {bridge} is up in the host namespace" if up else "")
    return [Check("default network", False, detail, "; ".join(fixes), LIBVIRT_CPI)]


def check_qemu(ctx: Context) -> list[Check]:
    """``qemu-system-x86_64`` and ``qemu-img`` present, with their versions."""
    opts = ctx.options
    return [
        check_binary("qemu-system-x86_64", package="qemu-system-x86", required_for=LIBVIRT_CPI, path=opts.path,
                     timeout=opts.timeout),
        check_binary("qemu-img", package="qemu-utils", required_for=LIBVIRT_CPI, path=opts.path,
                     timeout=opts.timeout),
    ]


def check_kvm_device(ctx: Context, device: str = "/dev/kvm") -> list[Check]:
    """``/dev/kvm`` must be group ``kvm`` mode 0660 (Debian's udev rule; 0666, as other distributions set it, is
    accepted too). Root-only (no udev), libvirt sees KVM come and go between probes and re-probes QEMU on every
    call, tens of seconds per define. A missing device is optional (guests run under TCG)."""
    try:
        st = os.stat(device)
    except OSError:
        fix = (f"{sudo()}modprobe kvm_intel || {sudo()}modprobe kvm_amd  (on a VM: enable nested virtualisation "
               "in the host)")
        return [Check("/dev/kvm", False, "missing: guests run under TCG (software emulation)", fix, LIBVIRT_CPI,
                      optional=True)]
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    detail = f"{device}: group {group}, mode {mode:04o}"
    if (group == "kvm" and mode & 0o660 == 0o660) or mode & 0o666 == 0o666:
        return [Check("/dev/kvm", True, detail, None, LIBVIRT_CPI)]
    fix = f"{sudo()}chgrp kvm {device} && {sudo()}chmod 0660 {device}"
    return [Check("/dev/kvm", False, detail + " (needs group kvm, mode 0660: without it libvirt re-probes QEMU on "
                  "every call, tens of seconds per define)", fix, LIBVIRT_CPI)]


def check_accelerator(ctx: Context) -> list[Check]:
    """Which accelerator works: boots a kernel under KVM with ``cpi.providers.libvirt.accel.probe_kvm`` (what the
    CPI's ``accelerator: auto`` does), bounded by ``probe_timeout``. ``quick`` skips the boot and says so.
    Always optional: the CPI falls back to TCG."""
    from cpi.providers.libvirt import accel

    opts = ctx.options
    qemu = find_binary("qemu-system-x86_64", opts.path) or (accel.find_qemu() if opts.path is None else None)
    if qemu is None:
        return [Check("accelerator", False, "none: QEMU is not installed", apt_fix("qemu-system-x86"), LIBVIRT_CPI)]
    tcg = "TCG (software emulation) — KVM unusable: "
    if not os.path.exists("/dev/kvm"):
        return [Check("accelerator", False, tcg + "/dev/kvm is missing", "see /dev/kvm above", LIBVIRT_CPI,
                      optional=True)]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return [Check("accelerator", False, tcg + f"/dev/kvm is not read-write for {_user()}",
                      f"{sudo()}usermod -aG kvm {_user()}  (and fix /dev/kvm's mode above)", LIBVIRT_CPI,
                      optional=True)]
    if opts.quick:
        return [Check("accelerator", True, "/dev/kvm is usable; boot probe skipped (--quick), so KVM is not verified",
                      None, LIBVIRT_CPI, optional=True)]
    kernel = opts.probe_kernel or accel.find_probe_kernel()
    started = time.monotonic()
    works, why = accel.probe_kvm(qemu, kernel, opts.probe_timeout)
    took = f"{time.monotonic() - started:.1f}s"
    if works:
        return [Check("accelerator", True, f"KVM works ({why}: {kernel}, {took})", None, LIBVIRT_CPI, optional=True)]
    if why.startswith("qemu exited"):
        why += qemu_kvm_error(qemu, kernel, opts.timeout)
    if not kernel:
        fix = (f"{apt_fix('linux-image-cloud-amd64')}  (puts /boot/vmlinuz-*), or set libvirt.kvm_probe_kernel "
               "in the CPI config and pass it here with --probe-kernel")
    else:
        fix = ("none on this host (KVM is present but does not run guests, e.g. no nested virtualisation); set "
               "libvirt.accelerator: tcg in the CPI config to skip the probe")
    return [Check("accelerator", False, tcg + why, fix, LIBVIRT_CPI, optional=True)]


def qemu_kvm_error(qemu: str, kernel: str | None, timeout: float) -> str:
    """QEMU's own complaint when it exits at once under KVM (``probe_kvm`` discards stderr): the same kind of
    boot run again for at most ``timeout`` s with stderr kept. ``": <message>"``, or "" if there is none."""
    cmd = [qemu, "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-nodefaults", "-display", "none", "-m", "128",
           "-no-reboot", "-nic", "none", "-serial", "null"]
    if kernel:
        cmd += ["-kernel", kernel, "-append", "console=ttyS0 panic=-1"]
    status, out = run(cmd, timeout)
    if status is None:
        return ""
    lines = [line.split(": ", 1)[-1] for line in out.splitlines() if line.startswith(os.path.basename(qemu))]
    return f" ({lines[0][:160]})" if lines else ""


def check_storage(ctx: Context) -> list[Check]:
    """Free space on the filesystem that holds (or will hold) the storage pool, at least ``min_free_gib``."""
    opts = ctx.options
    where = opts.pool_path
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError as exc:
        return [Check("storage", False, f"{opts.pool_path}: {exc.strerror}", None, LIBVIRT_CPI)]
    free = st.f_bavail * st.f_frsize / 2**30
    total = st.f_blocks * st.f_frsize / 2**30
    at = "" if where == opts.pool_path else f" (not created yet; measured at {where})"
    detail = f"{free:.1f} GiB free of {total:.1f} GiB for {opts.pool_path}{at}"
    if free >= opts.min_free_gib:
        return [Check("storage", True, detail, None, LIBVIRT_CPI)]
    fix = (f"free space on that filesystem (du -xh -d1 {where} | sort -h) or set libvirt.pool_path in the CPI config "
           f"to a filesystem with at least {opts.min_free_gib:g} GiB free")
    return [Check("storage", False, detail + f", below {opts.min_free_gib:g} GiB", fix, LIBVIRT_CPI)]


def check_python_deps(ctx: Context) -> list[Check]:
    """The Python modules the CPI imports, tried in a subprocess of ``options.python``."""
    python = ctx.options.python
    found = ctx.core_imports.get()
    checks = []
    for name, module, dist, requirement in CORE_MODULES:
        r = found.get(module, {"ok": False, "error": "not probed"})
        if r["ok"]:
            checks.append(Check(name, True, f"{dist} {r.get('version') or ''}".strip(), None, LIBVIRT_CPI))
            continue
        fix = pip_fix(python, requirement)
        if module == "libvirt":
            fix = f"{apt_fix('libvirt-dev', 'pkg-config', 'gcc', 'python3-dev')} && {fix}"
        checks.append(Check(name, False, r["error"], fix, LIBVIRT_CPI))
    return checks


# -- bare metal -------------------------------------------------------------------------------------------------


def check_dnsmasq(ctx: Context) -> list[Check]:
    """``dnsmasq`` (DHCP/TFTP for PXE); only ``--version`` is run."""
    return [check_binary("dnsmasq", package="dnsmasq-base", required_for=BARE_METAL, path=ctx.options.path,
                         timeout=ctx.options.timeout)]


def check_vde(ctx: Context) -> list[Check]:
    """``vde_switch`` (Debian's vde2): joins the lab servers' QEMU NICs to the lab namespace's bridge."""
    return [check_binary("vde_switch", package="vde2", required_for=BARE_METAL, path=ctx.options.path,
                         timeout=ctx.options.timeout)]


def check_ipxe(ctx: Context) -> list[Check]:
    """iPXE binaries from Debian's ``ipxe`` package: ``undionly.kpxe`` (BIOS) and ``ipxe.efi`` (UEFI) needed."""
    found, missing = [], []
    for name, paths, needed in IPXE_FILES:
        hit = next((p for p in paths if os.path.isfile(p)), None)
        if hit:
            found.append(hit)
        elif needed:
            missing.append(name)
    if missing:
        return [Check("ipxe", False, f"missing {', '.join(missing)}" + (f"; found {', '.join(found)}" if found else ""),
                      apt_fix("ipxe"), BARE_METAL)]
    return [Check("ipxe", True, ", ".join(found), None, BARE_METAL)]


def check_sushy(ctx: Context) -> list[Check]:
    """The sushy-tools Redfish emulator: ``sushy-emulator`` on PATH (or beside ``python``), or importable."""
    opts = ctx.options
    beside = str(Path(opts.python).parent)
    exe = find_binary("sushy-emulator", opts.path) or shutil.which("sushy-emulator", path=beside)
    probe = ctx.extra_imports.get().get("sushy_tools.emulator.main", {"ok": False, "error": "not probed"})
    if probe["ok"]:
        where = f"; {exe}" if exe else ""
        return [Check("sushy-tools", True, f"sushy_tools {probe.get('version', '')} importable{where}", None,
                      BARE_METAL)]
    if exe:
        return [Check("sushy-tools", True, f"{exe} (not importable in {opts.python}: {probe['error']})", None,
                      BARE_METAL)]
    return [Check("sushy-tools", False, f"no sushy-emulator and {probe['error']}", pip_fix(opts.python, "sushy-tools"),
                  BARE_METAL)]


def check_netns(ctx: Context) -> list[Check]:
    """``ip netns`` usable: ``ip netns list`` succeeds."""
    opts = ctx.options
    ip = find_binary("ip", opts.path)
    if ip is None:
        return [Check("ip netns", False, "ip not found", apt_fix("iproute2"), BARE_METAL)]
    status, out = run([ip, "netns", "list"], opts.timeout)
    if status == 0:
        count = len([line for line in out.splitlines() if line.strip()])
        return [Check("ip netns", True, f"ip netns list works ({count} namespace{'s' * (count != 1)})", None,
                      BARE_METAL)]
    return [Check("ip netns", False, first_line(out, 200) or f"ip netns list exited {status}",
                  "run doctor and the bare-metal tools as root (network namespaces need CAP_SYS_ADMIN)", BARE_METAL)]


# -- images -----------------------------------------------------------------------------------------------------


def check_image_tools(ctx: Context) -> list[Check]:
    """debootstrap, mke2fs, mtools, syslinux's MBR, a static busybox, and the test image build's host tools."""
    opts = ctx.options
    checks = [
        check_binary("debootstrap", package="debootstrap", required_for=IMAGES, path=opts.path, timeout=opts.timeout),
        check_binary("mke2fs", package="e2fsprogs", required_for=IMAGES, version_args=("-V",), path=opts.path,
                     timeout=opts.timeout),
        check_binary("mtools", binary="mcopy", package="mtools", required_for=IMAGES, path=opts.path,
                     timeout=opts.timeout),
        check_file("syslinux", (SYSLINUX_MBR,), package="syslinux-common", required_for=IMAGES),
        check_busybox_static(opts.path, opts.timeout),
    ]
    try:
        from stemcells.testimage.build import HOST_TOOLS
    except ImportError as exc:  # the image builder is being edited elsewhere; report, do not crash
        checks.append(Check("test image tools", False, f"cannot read the tool list: {exc}", None, IMAGES))
        return checks
    missing = [t for t in HOST_TOOLS if find_binary(t, opts.path) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
        checks.append(Check("test image tools", False, f"missing {', '.join(missing)}", apt_fix(*packages), IMAGES))
    else:
        checks.append(Check("test image tools", True, " ".join(HOST_TOOLS), None, IMAGES))
    return checks


def check_busybox_static(path: str | None = None, timeout: float = 10.0) -> Check:
    """A statically linked ``busybox`` (Debian's busybox-static) on the search path."""
    exe = find_binary("busybox", path)
    if exe is None:
        return Check("busybox-static", False, "busybox not found", apt_fix("busybox-static"), IMAGES)
    static = elf_is_static(exe)
    _, out = run([exe, "--help"], timeout)
    version = first_line(out).removesuffix(" multi-call binary.")
    if static is False:
        return Check("busybox-static", False, f"{exe} is dynamically linked ({version})", apt_fix("busybox-static"),
                     IMAGES)
    return Check("busybox-static", True, f"{version} at {exe}, statically linked", None, IMAGES)


# -- Terraform / AWS --------------------------------------------------------------------------------------------


def find_terraform(path: str | None = None, home: Path | None = None,
                   candidates: Sequence[str] = TERRAFORM_CANDIDATE_DIRS) -> tuple[str | None, bool]:
    """``terraform`` on the search path, else in the first of ``candidates`` (globs) that has it.
    Returns (path or None, whether it is on the search path)."""
    exe = find_binary("terraform", path)
    if exe:
        return exe, True
    home = home or Path.home()
    for pattern in candidates:
        if pattern.startswith("~"):
            pattern = str(home) + pattern[1:]
        for d in sorted(glob.glob(pattern)):
            candidate = os.path.join(d, "terraform")
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate, False
    return None, False


def terraform_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for running terraform without network traffic (no update/security checkpoint)."""
    return {**env, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def check_terraform(ctx: Context) -> list[Check]:
    """A ``terraform`` binary and its version (``terraform version -json`` with the checkpoint disabled)."""
    opts = ctx.options
    exe, on_path = find_terraform(opts.path, opts.home)
    if exe is None:
        fix = ("unzip terraform_<version>_linux_amd64.zip from https://releases.hashicorp.com/terraform/ into "
               "/usr/local/bin (or apt-get install terraform from apt.releases.hashicorp.com)")
        return [Check("terraform", False, "no terraform binary on PATH or in " + ", ".join(TERRAFORM_CANDIDATE_DIRS),
                      fix, AWS_TERRAFORM)]
    status, out = run([exe, "version", "-json"], opts.timeout, env=terraform_env(opts.env))
    version = ""
    with contextlib.suppress(ValueError):
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1])
        version = f"Terraform v{doc['terraform_version']} ({doc.get('platform', '?')})"
    if not version:
        version = first_line(out) or f"terraform version exited {status}"
    if status != 0:
        return [Check("terraform", False, f"{exe}: {version}", f"reinstall {exe}", AWS_TERRAFORM)]
    where = f" at {exe}" + ("" if on_path else f" (not on PATH: export PATH=\"$PATH:{os.path.dirname(exe)}\")")
    return [Check("terraform", True, version + where, None, AWS_TERRAFORM)]


def terraform_platform() -> str:
    """Terraform's ``os_arch`` name for this machine, e.g. ``linux_amd64``."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386",
            "i386": "386", "armv7l": "arm"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{platform.system().lower()}_{arch}"


def provider_versions(root: Path, provider: str = AWS_PROVIDER) -> dict[str, list[str]]:
    """Versions of ``provider`` in the filesystem mirror ``root``, each with its platforms, in both layouts
    Terraform reads: unpacked ``HOST/NS/TYPE/VERSION/OS_ARCH/terraform-provider-TYPE*`` and packed
    ``HOST/NS/TYPE/terraform-provider-TYPE_VERSION_OS_ARCH.zip``."""
    base = root / provider
    kind = provider.rsplit("/", 1)[-1]
    found: dict[str, set[str]] = {}
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            if entry.is_dir():
                for plat in entry.iterdir():
                    if plat.is_dir() and any(plat.glob(f"terraform-provider-{kind}*")):
                        found.setdefault(entry.name, set()).add(plat.name)
            else:
                m = re.fullmatch(rf"terraform-provider-{re.escape(kind)}_(.+)_([a-z0-9]+_[a-z0-9]+)\.zip", entry.name)
                if m:
                    found.setdefault(m.group(1), set()).add(m.group(2))
    return {v: sorted(p) for v, p in sorted(found.items(), key=lambda kv: _version_key(kv[0]))}


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.+-]", version))


@dataclass(frozen=True)
class TerraformCliConfig:
    """What the Terraform CLI configuration says about provider installation (as Terraform loads it:
    ``$TF_CLI_CONFIG_FILE`` or ``$TERRAFORM_CONFIG`` alone when set, else ``~/.terraformrc`` plus
    ``~/.terraform.d/*.tfrc`` and ``*.tfrc.json``)."""

    main_file: Path  # the file a fix should edit
    files: tuple[Path, ...]  # the files that exist and were read
    override_missing: bool  # $TF_CLI_CONFIG_FILE names a file that does not exist
    explicit: bool  # some file has a provider_installation block (the implied mirrors are then unused)
    mirrors: tuple[Path, ...]  # its filesystem_mirror paths
    plugin_cache_dir: Path | None
    disable_checkpoint: bool


def _strip_hcl_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?m)(#|//).*$", "", text)


def _json_mirrors(node: Any) -> list[str]:
    paths: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filesystem_mirror":
                for block in value if isinstance(value, list) else [value]:
                    if isinstance(block, dict) and isinstance(block.get("path"), str):
                        paths.append(block["path"])
            else:
                paths.extend(_json_mirrors(value))
    elif isinstance(node, list):
        for item in node:
            paths.extend(_json_mirrors(item))
    return paths


def read_terraform_cli_config(home: Path, env: Mapping[str, str]) -> TerraformCliConfig:
    """Read the Terraform CLI configuration files of ``home``/``env`` (see :class:`TerraformCliConfig`); an
    unreadable file counts as absent."""
    override = env.get("TF_CLI_CONFIG_FILE") or env.get("TERRAFORM_CONFIG")
    main = Path(override) if override else home / ".terraformrc"
    candidates = [main]
    if not override:
        config_dir = home / ".terraform.d"
        candidates += sorted(config_dir.glob("*.tfrc")) + sorted(config_dir.glob("*.tfrc.json"))
    files, mirrors = [], []
    explicit = checkpoint_off = False
    cache: str | None = None
    for f in candidates:
        try:
            text = f.read_text()
        except OSError:
            continue
        files.append(f)
        if f.name.endswith(".json"):
            with contextlib.suppress(ValueError):
                doc = json.loads(text)
                explicit |= isinstance(doc, dict) and "provider_installation" in doc
                mirrors += _json_mirrors(doc.get("provider_installation", {}) if isinstance(doc, dict) else {})
                checkpoint_off |= isinstance(doc, dict) and doc.get("disable_checkpoint") is True
                cache = cache or (doc.get("plugin_cache_dir") if isinstance(doc, dict) else None)
            continue
        text = _strip_hcl_comments(text)
        explicit |= re.search(r"\bprovider_installation\s*\{", text) is not None
        for block in re.finditer(r"\bfilesystem_mirror\s*\{([^}]*)\}", text):
            m = re.search(r'\bpath\s*=\s*"([^"]*)"', block.group(1))
            if m:
                mirrors.append(m.group(1))
        checkpoint_off |= re.search(r"\bdisable_checkpoint\s*=\s*true\b", text) is not None
        m = re.search(r'\bplugin_cache_dir\s*=\s*"([^"]*)"', text)
        if m and not cache:
            cache = os.path.expandvars(m.group(1))
    cache = env.get("TF_PLUGIN_CACHE_DIR") or cache
    return TerraformCliConfig(main, tuple(files), bool(override) and not main.exists(), explicit,
                              tuple(Path(p) for p in mirrors), Path(cache) if cache else None, checkpoint_off)


def implied_mirror_dirs(home: Path, env: Mapping[str, str], cwd: Path) -> list[Path]:
    """The directories Terraform searches on Linux when no ``provider_installation`` block is configured:
    ``./terraform.d/plugins``, ``~/.terraform.d/plugins``, ``$XDG_DATA_HOME/terraform/plugins`` (default
    ``~/.local/share``) and each ``$XDG_DATA_DIRS`` entry's ``terraform/plugins`` (default ``/usr/local/share``,
    ``/usr/share``)."""
    data_home = env.get("XDG_DATA_HOME") or str(home / ".local/share")
    data_dirs = [d for d in (env.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":") if d]
    dirs = [cwd / "terraform.d/plugins", home / ".terraform.d/plugins"]
    dirs += [Path(d) / "terraform/plugins" for d in (data_home, *data_dirs)]
    return list(dict.fromkeys(dirs))


def _describe(found: Mapping[str, list[str]]) -> str:
    return ", ".join(f"{v} ({'/'.join(p)})" for v, p in found.items())


def check_aws_provider(ctx: Context, candidate_globs: Sequence[str] = MIRROR_CANDIDATE_GLOBS) -> list[Check]:
    """hashicorp/aws for this platform in a local filesystem mirror Terraform will actually use: the configured
    ``filesystem_mirror`` paths when a ``provider_installation`` block exists, else the implied directories.
    Plugin caches (``TF_PLUGIN_CACHE_DIR``/``plugin_cache_dir``) are reported but are no offline source:
    ``terraform init`` still asks the registry. A mirror found elsewhere (``candidate_globs``) is named in the
    fix."""
    opts = ctx.options
    config = read_terraform_cli_config(opts.home, opts.env)
    plat = terraform_platform()
    implied = implied_mirror_dirs(opts.home, opts.env, opts.cwd)
    used = list(config.mirrors) if config.explicit else implied
    usable: dict[Path, dict[str, list[str]]] = {}
    other: list[str] = []
    for d in used:
        versions = provider_versions(d)
        if any(plat in p for p in versions.values()):
            usable[d] = {v: p for v, p in versions.items() if plat in p}
        elif versions:
            other.append(f"{d}: {_describe(versions)} (not {plat})")
    if config.explicit:
        other += [f"{d}: {_describe(v)} (ignored: provider_installation is explicit)"
                  for d in implied if (v := provider_versions(d))]
    if config.plugin_cache_dir and (v := provider_versions(config.plugin_cache_dir)):
        other.append(f"plugin cache {config.plugin_cache_dir}: {_describe(v)} (a cache, not an offline source)")
    notes = []
    if config.override_missing:
        notes.append(f"TF_CLI_CONFIG_FILE names {config.main_file}, which does not exist")
    if usable:
        detail = "; ".join(f"{d}: {', '.join(v)}" for d, v in usable.items())
        return [Check("terraform aws provider", True, "; ".join([detail, *other, *notes]), None, AWS_TERRAFORM)]
    if config.explicit:
        searched = ("the filesystem_mirror " + ", ".join(str(d) for d in used) if used
                    else f"any mirror (the provider_installation in {', '.join(map(str, config.files))} has no "
                         "filesystem_mirror)")
    else:
        searched = ", ".join(str(d) for d in used)
    detail = f"no {AWS_PROVIDER} for {plat} in {searched}"
    if config.plugin_cache_dir is None:
        notes.append("no TF_PLUGIN_CACHE_DIR/plugin_cache_dir")
    candidates = [Path(d) for pattern in candidate_globs for d in sorted(glob.glob(pattern))
                  if Path(d) not in used and any(plat in p for p in provider_versions(Path(d)).values())]
    if candidates:
        mirror = candidates[0]
        other.insert(0, f"unconfigured mirror {mirror}: {_describe(provider_versions(mirror))}")
        block = f'provider_installation {{\\n  filesystem_mirror {{\\n    path = "{mirror}"\\n  }}\\n}}\\n'
        if config.explicit:
            fix = (f'add  filesystem_mirror {{ path = "{mirror}" }}  to the provider_installation block in '
                   f"{config.main_file}")
        else:
            prefix = "" if config.disable_checkpoint else "disable_checkpoint = true\\n"
            fix = f"printf '{prefix}{block}' >> {config.main_file}"
    else:
        fix = (f"where the registry is reachable: terraform providers mirror -platform={plat} DIR (in a directory "
               f"whose .tf requires hashicorp/aws); copy DIR here and point provider_installation "
               f"{{ filesystem_mirror {{ path = \"DIR\" }} }} in {config.main_file} at it")
    # optional: `stemforge env` finds a mirror by itself (check_env_provider); this is about a bare terraform.
    return [Check("terraform aws provider", False, "; ".join([detail, *other, *notes]), fix, AWS_TERRAFORM,
                  optional=True)]


def check_env_provider(ctx: Context) -> list[Check]:
    """hashicorp/aws where ``stemforge env`` looks at run time (``terraform.mirror.find_aws_provider``: the CLI
    config's mirrors, the plugin cache, the implied directories, then a bounded search); it writes a private CLI
    config for what it finds, so this, not the bare-Terraform check above, decides whether the AWS work can run."""
    from terraform.mirror import ProviderNotFound, find_aws_provider

    opts = ctx.options
    try:
        found = find_aws_provider(env=opts.env, home=opts.home, cwd=opts.cwd)
    except ProviderNotFound as exc:
        return [Check("stemforge env provider", False, first_line(str(exc), 300), str(exc).rsplit("Fix: ", 1)[-1],
                      AWS_TERRAFORM)]
    detail = f"hashicorp/aws {found.version} ({found.platform}) in {found.path}, {found.source}"
    return [Check("stemforge env provider", True, detail, None, AWS_TERRAFORM)]


def check_aws_python(ctx: Context) -> list[Check]:
    """``moto`` with its server (``moto.server``, i.e. ``moto[server]``) and ``boto3``, importable by ``python``."""
    python = ctx.options.python
    found = ctx.extra_imports.get()
    moto, server, boto3 = (found.get(m, {"ok": False, "error": "not probed"}) for m in ("moto", "moto.server", "boto3"))
    if moto["ok"] and server["ok"]:
        moto_check = Check("moto", True, f"moto {moto.get('version', '')} with moto.server", None, AWS_TERRAFORM)
    elif moto["ok"]:
        moto_check = Check("moto", False, f"moto {moto.get('version', '')} without its server: {server['error']}",
                           pip_fix(python, "moto[server]"), AWS_TERRAFORM)
    else:
        moto_check = Check("moto", False, moto["error"], pip_fix(python, "moto[server]"), AWS_TERRAFORM)
    if boto3["ok"]:
        boto3_check = Check("boto3", True, f"boto3 {boto3.get('version', '')}", None, AWS_TERRAFORM)
    else:
        boto3_check = Check("boto3", False, boto3["error"], pip_fix(python, "boto3"), AWS_TERRAFORM)
    return [moto_check, boto3_check]


#: All checks, in report order (grouped by ``required_for`` when printed).
CHECKS: tuple[Callable[[Context], list[Check]], ...] = (
    check_libvirt, check_virtlogd, check_default_network, check_qemu, check_kvm_device, check_accelerator,
    check_storage, check_python_deps,
    check_dnsmasq, check_vde, check_ipxe, check_sushy, check_netns,
    check_image_tools,
    check_terraform, check_aws_provider, check_env_provider, check_aws_python,
)


def collect(options: Options, checks: Sequence[Callable[[Context], list[Check]]] = CHECKS) -> list[Check]:
    """Run ``checks`` concurrently (each one's external probes are bounded) and return their findings in
    ``checks`` order. A check that raises becomes a failed check naming the exception, so one bug cannot hide
    the rest of the report."""
    ctx = Context(options)

    def guarded(fn: Callable[[Context], list[Check]]) -> list[Check]:
        try:
            return fn(ctx)
        except Exception as exc:  # noqa: BLE001 - reported as a finding
            name = fn.__name__.removeprefix("check_").replace("_", " ")
            return [Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}", None, LIBVIRT_CPI,
                          optional=True)]

    with ThreadPoolExecutor(max_workers=len(checks) or 1, thread_name_prefix="doctor") as pool:
        results = list(pool.map(guarded, checks))
    return [c for group in results for c in group]


# -- output -----------------------------------------------------------------------------------------------------


def _marks() -> tuple[str, str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK", "XX", "-"
    return "✔", "✘", "—"


def summary(checks: Sequence[Check]) -> str:
    """One line: how many pass, whether the libvirt CPI can run here, and the warnings by name."""
    passed = sum(c.ok for c in checks)
    blocking = [c.name for c in checks if c.blocking]
    optional = [c.name for c in checks if not c.ok and c.required_for == LIBVIRT_CPI and c.optional]
    warnings = [c for c in checks if not c.ok and c.required_for != LIBVIRT_CPI]
    head = f"{passed}/{len(checks)} checks pass. "
    if blocking:
        head += f"The libvirt CPI is NOT ready: fix {', '.join(blocking)}."
    else:
        head += "The libvirt CPI has everything it needs"
        head += f" (optional gaps: {', '.join(optional)})." if optional else "."
    if warnings:
        by_area: dict[str, list[str]] = {}
        for c in warnings:
            by_area.setdefault(c.required_for, []).append(c.name)
        head += " Warnings: " + "; ".join(f"{AREA_TITLES.get(a, a)}: {', '.join(n)}" for a, n in by_area.items()) + "."
    return head


def render(checks: Sequence[Check]) -> str:
    """The human report: checks grouped by area, ``✔ name — detail`` or ``✘ name — detail`` plus an indented
    ``fix:`` line, then :func:`summary`."""
    ok_mark, bad_mark, dash = _marks()
    lines = [f"stemforge doctor on {socket.gethostname()} ({platform.machine()}, user {_user()})"]
    areas = list(AREA_TITLES) + sorted({c.required_for for c in checks} - set(AREA_TITLES))
    for area in areas:
        group = [c for c in checks if c.required_for == area]
        if not group:
            continue
        lines.append("")
        suffix = "" if area == LIBVIRT_CPI else " (warnings only)"
        lines.append(f"{AREA_TITLES.get(area, area)}{suffix}")
        for c in group:
            optional = " [optional]" if c.optional and not c.ok else ""
            lines.append(f"{ok_mark if c.ok else bad_mark} {c.name} {dash} {c.detail}{optional}")
            if not c.ok and c.fix:
                lines.append(f"    fix: {c.fix}")
    lines += ["", summary(checks)]
    return "\n".join(lines)


def exit_status(checks: Iterable[Check]) -> int:
    """0 when nothing the libvirt CPI requires is missing, else 1."""
    return 1 if any(c.blocking for c in checks) else 0


# -- command line -----------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="report which components this machine has and lacks, each with the exact fix",
        description="Checks the libvirt CPI's requirements (exit 1 when one is missing) and reports bare-metal, "
                    "image-build and AWS/Terraform gaps as warnings.")
    parser.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    parser.add_argument("--quick", action="store_true", help="skip the KVM boot probe (finishes in a few seconds)")
    parser.add_argument("--config", metavar="FILE",
                        help="a CPI config: take libvirt uri, pool_path and KVM probe settings from it")
    parser.add_argument("--probe-kernel", metavar="VMLINUZ", help="kernel for the KVM boot probe")
    parser.add_argument("--probe-timeout", type=float, metavar="SECONDS",
                        help="bound on the KVM boot probe (default: the config's kvm_probe_timeout, else 15)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound on every other external command (default 10)")
    parser.add_argument("--min-free-gib", type=float, default=5.0, help="free space the pool needs (default 5)")
    parser.set_defaults(handler=run_doctor)


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from the command line, with the CPI config's libvirt section (``--config``) filling the gaps.
    Raises ``cpi.errors.CpiError`` for a config that does not load."""
    uri, pool, kernel, probe_timeout = DEFAULT_URI, DEFAULT_POOL_PATH, None, 15.0
    if args.config:
        from cpi.config import read_document
        from cpi.providers.libvirt.config import LibvirtConfig

        document = read_document(args.config)
        properties = ((document.get("cloud") or {}).get("properties") or {})
        libvirt = LibvirtConfig.from_properties(properties.get("libvirt"))
        uri, pool, kernel, probe_timeout = (libvirt.uri, libvirt.pool_path, libvirt.kvm_probe_kernel,
                                            libvirt.kvm_probe_timeout)
    return Options(uri=uri, pool_path=pool, probe_kernel=args.probe_kernel or kernel,
                   probe_timeout=args.probe_timeout if args.probe_timeout is not None else probe_timeout,
                   quick=args.quick, timeout=args.timeout, min_free_gib=args.min_free_gib)


def run_doctor(args: argparse.Namespace) -> int:
    """Handler of ``stemforge doctor``: print the report (or ``--json``) and return :func:`exit_status`."""
    from cpi.errors import CpiError

    try:
        options = options_from_args(args)
    except CpiError as exc:
        print(f"stemforge doctor: {exc}", file=sys.stderr)
        return 2
    checks = collect(options)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return exit_status(checks)


if __name__ == "__main__":
    from stemforge.cli import main

    sys.exit(main(["doctor", *sys.argv[1:]]))
