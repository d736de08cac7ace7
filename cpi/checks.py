"""``stemforge doctor``'s checks for the CPI's providers on this host: the libvirt CPI's requirements (libvirt
answering, virtlogd, libvirt's ``default`` network off, QEMU, ``/dev/kvm``, the accelerator, pool space, the
Python modules; a failure here makes ``doctor`` exit 1) and the bare-metal tools (dnsmasq, vde_switch, iPXE,
sushy-tools, ``ip netns``; warnings only).

The framework and its contracts (bounded, no network, nothing changed) are :mod:`stemforge_base.checks`.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpi.providers.libvirt import accel
from stemforge_base.checks import (
    BARE_METAL,
    LIBVIRT_CPI,
    Check,
    CheckFn,
    Context,
    Options,
    apt_fix,
    check_binary,
    find_binary,
    first_line,
    has_systemd,
    pip_fix,
    run,
    running,
    sudo,
    user_name,
)

#: iPXE files of Debian's ``ipxe`` package (``dpkg -L ipxe``): name -> where it may be, and whether it is needed.
IPXE_FILES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("undionly.kpxe", ("/usr/lib/ipxe/undionly.kpxe",), True),  # BIOS PXE chainload
    ("ipxe.efi", ("/usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"), True),  # UEFI, iPXE's own NIC drivers
    ("snponly.efi", ("/usr/lib/ipxe/snponly.efi",), False),  # UEFI, the firmware's NIC driver
    ("ipxe.lkrn", ("/usr/lib/ipxe/ipxe.lkrn", "/boot/ipxe.lkrn"), False),
    ("ipxe.pxe", ("/usr/lib/ipxe/ipxe.pxe",), False),
    ("ipxe.iso", ("/usr/lib/ipxe/ipxe.iso",), False),
)
#: Python modules the libvirt CPI imports: (check name, module, distribution, pip requirement).
CORE_MODULES = (
    ("python: libvirt-python", "libvirt", "libvirt-python", "libvirt-python>=9.0"),
    ("python: pycdlib", "pycdlib", "pycdlib", "pycdlib>=1.14"),
    ("python: jsonschema", "jsonschema", "jsonschema", "jsonschema>=4.17"),
    ("python: PyYAML", "yaml", "PyYAML", "PyYAML>=6.0"),
    ("python: tenacity", "tenacity", "tenacity", "tenacity>=8.2"),
)
#: Python modules of the bare-metal emulators, imported in a subprocess of their own (slow to import).
METAL_MODULES = (("sushy_tools.emulator.main", "sushy-tools"),)


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


def libvirt_probe(ctx: Context) -> dict[str, Any]:
    """:func:`probe_libvirt` of ``ctx.options``, run once for all the checks that read it."""
    return ctx.shared("libvirt", lambda: probe_libvirt(ctx.options))


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
    probe = libvirt_probe(ctx)
    if "error" not in probe:
        detail = f"{daemon} answers on {opts.uri}: libvirt {probe['libvirt']}, {probe['hypervisor']}"
        return [Check("libvirt", True, detail, None, LIBVIRT_CPI)]
    error = probe["error"]
    if not procs:
        fix = _daemon_start_fix(opts.path)
    elif "ermission denied" in error or "authentication" in error.lower():
        fix = f"{sudo()}usermod -aG libvirt {user_name()}  (then log in again)"
    elif "Failed to connect socket" in error:
        fix = (f"the daemon runs but does not listen there: check libvirt.uri in the CPI config ({opts.uri}), or "
               f"restart it: {_daemon_restart_fix(procs)}")
    elif probe.get("timeout"):
        fix = _daemon_restart_fix(procs) + "  (the daemon is wedged)"
    else:
        fix = ("see journalctl -u libvirtd" if has_systemd() else "run 'libvirtd' in a terminal to see why") + \
              f"; then: virsh -c {opts.uri} version"
    return [Check("libvirt", False, f"{daemon}; {opts.uri}: {error}", fix, LIBVIRT_CPI)]


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
    probe = libvirt_probe(ctx)
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
    opts = ctx.options
    qemu = find_binary("qemu-system-x86_64", opts.path) or (accel.find_qemu() if opts.path is None else None)
    if qemu is None:
        return [Check("accelerator", False, "none: QEMU is not installed", apt_fix("qemu-system-x86"), LIBVIRT_CPI)]
    tcg = "TCG (software emulation) — KVM unusable: "
    if not os.path.exists("/dev/kvm"):
        return [Check("accelerator", False, tcg + "/dev/kvm is missing", "see /dev/kvm above", LIBVIRT_CPI,
                      optional=True)]
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return [Check("accelerator", False, tcg + f"/dev/kvm is not read-write for {user_name()}",
                      f"{sudo()}usermod -aG kvm {user_name()}  (and fix /dev/kvm's mode above)", LIBVIRT_CPI,
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
    found = ctx.imports([(m, d) for _, m, d, _ in CORE_MODULES])
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
    probe = ctx.imports(METAL_MODULES).get("sushy_tools.emulator.main", {"ok": False, "error": "not probed"})
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


def checks() -> tuple[CheckFn, ...]:
    """This package's checks, in report order: the libvirt CPI's, then bare metal's."""
    return (check_libvirt, check_virtlogd, check_default_network, check_qemu, check_kvm_device, check_accelerator,
            check_storage, check_python_deps,
            check_dnsmasq, check_vde, check_ipxe, check_sushy, check_netns)
