"""The QEMU command line (Packer's defaults and ``qemuargs`` merge rules) and the QEMU process.

Merge rules (Packer's ``applyUserOverrides``): each ``qemuargs`` row is ``[switch, value parts...]``; the parts are
joined without a separator; rows with the same switch accumulate. A switch the user gives replaces *all* of the
builder's values for it (so a user ``-device`` drops the default disk/NIC devices, except that the NIC device is
re-added when no user ``-device`` mentions ``net_device``, Packer's fix #6804). Switches the user does not give keep
the builder's defaults. Rows may use ``{{ .HTTPIP }}``, ``{{ .HTTPPort }}``, ``{{ .HTTPDir }}``,
``{{ .OutputDir }}``, ``{{ .Name }}`` and ``{{ .SSHHostPort }}``.

Networking is user-mode only: ``-netdev user,id=user.0,restrict=on[,hostfwd=tcp:127.0.0.1:PORT-:22]
[,guestfwd=tcp:10.0.2.100:HTTP-cmd:<relay to 127.0.0.1:HTTP>]``. ``restrict=on`` cuts the guest off from the host
and the outside; the explicit forwards still work (the guest reaches the HTTP server at ``10.0.2.100``; QEMU runs a
small relay per connection that connects to the server on 127.0.0.1). A user ``-netdev``
without ``restrict=on`` is warned about. The builder always adds its own QMP socket (in a private temporary
directory) for the boot command and ACPI power-down, and a serial console log shown when the guest fails.

QEMU runs in its own session (Ctrl-C reaches stemforge, which then stops QEMU in the step's cleanup) with
``PR_SET_PDEATHSIG`` so that a killed stemforge does not leave a VM running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builders.builder_types.qemu.boot_command import render_fields
from builders.builder_types.qemu.config import QemuConfig
from builders.builder_types.qemu.qmp import QMPClient, QMPError
from builders.core import BuildError

#: The guest-side address of the HTTP server (a ``guestfwd`` to 127.0.0.1 on the host).
GUEST_HTTP_IP = "10.0.2.100"


@dataclass
class LaunchPlan:
    """Everything that decides the command line."""

    accel: str  # kvm | tcg | none
    disks: list[Path]
    cd_paths: list[Path]
    qmp_path: Path
    serial_path: Path
    ssh_host_port: int | None = None
    http_port: int | None = None
    #: The per-connection relay QEMU runs for each guest connection to the HTTP server (see RELAY_SCRIPT).
    http_relay: Path | None = None
    python: str = field(default_factory=lambda: sys.executable)
    warnings: list[str] = field(default_factory=list)
    #: The floppy image (``floppy_files``...), attached as drive A:.
    floppy_path: Path | None = None


#: Run by QEMU (``guestfwd=...-cmd:``) once per guest connection with the connection on stdin/stdout: relays it
#: to the HTTP server on 127.0.0.1. (A ``guestfwd`` to a ``tcp:`` chardev carries a single connection for
#: QEMU's whole life; installers fetch several files.) Bounded: it ends when either side closes or after an
#: hour.
RELAY_SCRIPT = """\
import os, select, socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
sock.setblocking(False)
deadline = time.monotonic() + 3600
open_in, open_out = True, True
while (open_in or open_out) and time.monotonic() < deadline:
    readable, _, _ = select.select(([0] if open_in else []) + ([sock] if open_out else []), [], [], 5)
    if 0 in readable:
        data = os.read(0, 65536)
        if data:
            sock.sendall(data)
        else:
            open_in = False
            sock.shutdown(socket.SHUT_WR)
    if sock in readable:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            continue
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
        else:
            break
sock.close()
"""


def default_args(cfg: QemuConfig, plan: LaunchPlan) -> dict[str, list[str]]:
    """Packer's default switches (insertion order is the command-line order)."""
    args: dict[str, list[str]] = {}
    args["-name"] = [cfg.vm_name]
    if plan.accel == "none":
        args["-machine"] = [f"type={cfg.machine_type}"]
    else:
        args["-machine"] = [f"type={cfg.machine_type},accel={plan.accel}"]
    netdev = "user,id=user.0,restrict=on"
    if plan.ssh_host_port:
        netdev += f",hostfwd=tcp:127.0.0.1:{plan.ssh_host_port}-:{cfg.ssh_port}"
    if plan.http_port:
        relay = plan.http_relay or Path("http-relay.py")
        cmd = f"{plan.python} {relay} {plan.http_port}".replace(",", ",,")
        netdev += f",guestfwd=tcp:{GUEST_HTTP_IP}:{plan.http_port}-cmd:{cmd}"
    args["-netdev"] = [netdev]
    devices: list[str] = []
    drives: list[str] = []
    for i, disk in enumerate(plan.disks):
        opts = f"cache={cfg.disk_cache},discard={cfg.disk_discard},format={cfg.format}"
        if cfg.disk_detect_zeroes != "off":
            opts += f",detect-zeroes={cfg.disk_detect_zeroes}"
        if cfg.disk_interface == "virtio-scsi":
            if i == 0:
                devices.append("virtio-scsi-pci,id=scsi0")
            devices.append(f"scsi-hd,bus=scsi0.0,drive=drive{i}")
            drives.append(f"if=none,file={disk},id=drive{i},{opts}")
        elif cfg.disk_interface == "sata":
            if i == 0:
                devices.append("ahci,id=ahci0")
            devices.append(f"ide-hd,bus=ahci0.{i},drive=drive{i}")
            drives.append(f"if=none,file={disk},id=drive{i},{opts}")
        else:
            drives.append(f"file={disk},if={cfg.disk_interface},{opts}")
    devices.append(f"{cfg.net_device},netdev=user.0")
    for i, cd in enumerate(plan.cd_paths):
        if not cfg.cdrom_interface:
            drives.append(f"file={cd},media=cdrom")
        elif cfg.cdrom_interface == "virtio-scsi":
            if not any(d.startswith("virtio-scsi-pci") for d in devices):
                devices.append("virtio-scsi-pci,id=scsi0")
            drives.append(f"file={cd},if=none,id=cdrom{i},media=cdrom")
            devices.append(f"scsi-cd,drive=cdrom{i}")
        else:
            drives.append(f"file={cd},if={cfg.cdrom_interface},index={i},id=cdrom{i},media=cdrom")
    if plan.floppy_path is not None:
        drives.append(f"file={plan.floppy_path},if=floppy,index=0,format=raw")
    if cfg.firmware:
        drives.append(f"file={cfg.firmware},if=pflash,format=raw,readonly=on")
    args["-device"] = devices
    args["-drive"] = drives
    args["-boot"] = ["c" if cfg.disk_image else "once=d"]
    args["-m"] = [f"{cfg.memory}M"]
    if cfg.cpus > 1:
        args["-smp"] = [f"cpus={cfg.cpus},sockets={cfg.cpus}"]
    args["-display"] = ["none"]
    args["-serial"] = [f"file:{plan.serial_path}"]
    return args


def template_data(cfg: QemuConfig, plan: LaunchPlan) -> dict[str, object]:
    return {
        "HTTPIP": GUEST_HTTP_IP, "HTTPPort": plan.http_port or 0, "HTTPDir": cfg.http_directory,
        "OutputDir": str(cfg.output_directory), "Name": cfg.vm_name, "SSHHostPort": plan.ssh_host_port or 0,
    }


def command_line(cfg: QemuConfig, plan: LaunchPlan, binary: str,
                 render: Callable[[str], object] | None = None) -> list[str]:
    """The full argv (Packer's merge of defaults and ``qemuargs``, then the builder's QMP socket)."""
    defaults = default_args(cfg, plan)
    user: dict[str, list[str]] = {}
    data = template_data(cfg, plan)
    for row in cfg.qemuargs:
        rendered = [render_fields(part, data, render) for part in row]
        key, value = rendered[0], "".join(rendered[1:])
        user.setdefault(key, [])
        if value:
            user[key].append(value)
    merged: dict[str, list[str]] = {}
    for key, values in defaults.items():
        merged[key] = user.get(key, values)
    for key, values in user.items():
        merged.setdefault(key, values)
    if "-device" in user and not any(cfg.net_device in v for v in user["-device"]):
        merged["-device"] = [*merged["-device"], f"{cfg.net_device},netdev=user.0"]
    if "-netdev" in user:
        for value in user["-netdev"]:
            if value.startswith("user") and "restrict=on" not in value and "restrict=yes" not in value:
                plan.warnings.append(f"qemuargs -netdev {value!r} has no restrict=on: the guest can reach the "
                                     "host and the outside network")
    argv = [binary]
    for key, values in merged.items():
        if values:
            for v in values:
                argv += [key, v]
        else:
            argv.append(key)
    argv += ["-qmp", f"unix:{plan.qmp_path},server=on,wait=off"]
    return argv


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuProcess:
    """One running QEMU with its QMP connection. ``stop`` is idempotent and always reaps the process."""

    def __init__(self, argv: list[str], log_path: Path, qmp_path: Path, serial_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.qmp_path = qmp_path
        self.serial_path = serial_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start QEMU and connect QMP; BuildError (with QEMU's messages) if it exits or QMP never answers."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_pdeathsig)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while not self.qmp_path.exists():
            if self.proc.poll() is not None:
                raise BuildError(f"Error launching VM: qemu exited with status {self.proc.returncode}: "
                                 f"{self.output_tail()}")
            if time.monotonic() > deadline:
                raise BuildError(f"Error launching VM: no QMP socket after {timeout:g}s: {self.output_tail()}")
            time.sleep(0.05)
        qmp = QMPClient(self.qmp_path)
        try:
            qmp.connect(deadline)
        except QMPError as exc:
            raise BuildError(f"Error launching VM: {exc}: {self.output_tail()}") from None
        self.qmp = qmp

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exit_reason(self) -> str | None:
        """None while QEMU runs, else why it stopped (exit status and the serial console's last lines)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"qemu exited with status {self.proc.returncode}; {self.output_tail()}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, name: str, arguments: dict[str, object] | None = None) -> object:
        if self.qmp is None:
            raise BuildError("the VM's monitor is not connected")
        try:
            return self.qmp.command(name, arguments)
        except QMPError as exc:
            raise BuildError(f"QEMU monitor: {exc}") from None

    def wait(self, seconds: float, poll: Callable[[], None] | None = None) -> bool:
        """Wait up to ``seconds`` for QEMU to exit; ``poll`` runs between checks (cancellation)."""
        deadline = time.monotonic() + seconds
        while self.proc is not None and self.proc.poll() is None:
            if poll is not None:
                poll()
            if time.monotonic() >= deadline:
                return False
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        return True

    def stop(self, grace: float = 5.0) -> None:
        """Quit through QMP, then SIGKILL after ``grace`` seconds; always reaps."""
        if self.proc is not None and self.proc.poll() is None:
            if self.qmp is not None:
                with contextlib.suppress(Exception):
                    self.qmp.command("quit")
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None

    def output_tail(self, lines: int = 15) -> str:
        parts = []
        for label, path in (("qemu", self.log_path), ("console", self.serial_path)):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"{label}: " + " | ".join(text.splitlines()[-lines:]))
        return "; ".join(parts) or "(no output)"


def find_binary(name: str) -> str:
    found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
    if not found:
        raise BuildError(f"qemu_binary {name!r} not found in PATH (install qemu-system-x86)")
    return found
