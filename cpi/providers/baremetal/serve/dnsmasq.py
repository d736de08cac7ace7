"""dnsmasq as a child process of ``metal serve``: DHCP + TFTP on the provisioning bridge, iPXE chainloading.

The command line (:meth:`DnsmasqConfig.argv`) ignores every system file (``--conf-file=/dev/null``, ``--no-hosts``,
``--no-resolv``) and runs no DNS (``--port=0``). It binds only the given interface (``--interface``,
``--bind-interfaces``, ``--except-interface=lo``), answers DHCP in ``--dhcp-range`` (authoritatively: it is the only
DHCP server of the provisioning network) and serves TFTP from a directory holding Debian's iPXE builds:

* a client that already runs iPXE (DHCP option 175 present, tag ``ipxe``) is given ``http://<ip>:<port>/boot.ipxe``;
* a plain PXE ROM gets ``undionly.kpxe`` (BIOS) or ``ipxe.efi`` (client architecture 7 or 9, tag ``efi64``) by TFTP,
  which then asks again as iPXE;
* when the interface has a global IPv6 address, router advertisements (RA only, router lifetime 0): iPXE otherwise
  waits ~13 s per boot for one.

Enrolled servers get per-MAC host entries (``--dhcp-hostsfile``, tag ``enrolled``; with ``enrolled_only`` every other
MAC is ignored). :meth:`DnsmasqProcess.update_hosts` rewrites the file atomically; a change is applied with
:meth:`DnsmasqProcess.restart` (not SIGHUP: see there).
dnsmasq stays in the foreground with ``--no-daemon``: it then keeps the credentials of ``metal serve`` (no user or
capability change; the state dir is private to that user anyway), which keeps ``PR_SET_PDEATHSIG`` in force (a
credential change would clear it), so the child gets SIGTERM if ``metal serve`` dies and a killed server never
leaves a DHCP server behind. It logs to its stderr (``--log-facility=-``), which :class:`DnsmasqProcess` forwards
line by line to our log as ``dnsmasq: ...``. Its lease file and the pid file we write for it live in the work
directory; :meth:`DnsmasqProcess.stop` removes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("stemforge.metal.dnsmasq")

DNSMASQ: Final = "dnsmasq"
IPXE_DIR: Final = Path("/usr/lib/ipxe")
#: TFTP boot files copied from Debian's ``ipxe`` package: (name, required).
BOOT_FILES: Final = (("undionly.kpxe", True), ("ipxe.efi", False))
_STARTED_RE: Final = re.compile(r"\bstarted, version\b")
_LINE_RE: Final = re.compile(r"^(?:[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d )?(dnsmasq(?:-[a-z]+)?)(?:\[\d+\])?: ?(.*)$")
_HOSTNAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PR_SET_PDEATHSIG: Final = 1
#: The lease file's name in the work directory (``metal serve`` binds per-MAC iPXE scripts to its leases).
LEASE_FILE: Final = "dnsmasq.leases"


class DnsmasqError(RuntimeError):
    """dnsmasq could not be configured or started; the message names the option at fault and dnsmasq's words."""


@dataclass(frozen=True)
class DnsmasqConfig:
    """Everything dnsmasq is started with. ``work_dir`` holds its pid, lease and hosts files."""

    interface: str
    dhcp_range: tuple[str, str]
    boot_url: str
    tftp_root: Path
    work_dir: Path
    lease_time: str = "1h"
    enrolled_only: bool = False
    log_dhcp: bool = False
    #: Send IPv6 router advertisements (RA only: no DHCPv6, router lifetime 0 so nobody routes through us). iPXE
    #: waits ~13 s for an RA while configuring a NIC; answering it makes every network boot that much faster.
    router_advertisements: bool = False

    @property
    def pid_file(self) -> Path:
        return self.work_dir / "dnsmasq.pid"

    @property
    def lease_file(self) -> Path:
        return self.work_dir / LEASE_FILE

    @property
    def hosts_file(self) -> Path:
        return self.work_dir / "dnsmasq.hosts"

    def argv(self, binary: str = DNSMASQ) -> list[str]:
        """The full dnsmasq command line."""
        start, end = self.dhcp_range
        args = [
            binary,
            "--conf-file=/dev/null",
            "--no-daemon",
            "--log-facility=-",
            "--port=0",
            "--no-hosts",
            "--no-resolv",
            f"--interface={self.interface}",
            "--bind-interfaces",
            "--except-interface=lo",
            f"--dhcp-range={start},{end},{self.lease_time}",
            "--dhcp-authoritative",
            f"--dhcp-leasefile={self.lease_file}",
            f"--dhcp-hostsfile={self.hosts_file}",
            "--enable-tftp",
            f"--tftp-root={self.tftp_root}",
            "--dhcp-match=set:ipxe,175",
            "--dhcp-match=set:efi64,option:client-arch,7",
            "--dhcp-match=set:efi64,option:client-arch,9",
            f"--dhcp-boot=tag:ipxe,{self.boot_url}",
            "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
            "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        ]
        if self.router_advertisements:
            args += [
                "--enable-ra",
                f"--dhcp-range=::,constructor:{self.interface},ra-only",
                f"--ra-param={self.interface},0,0",
                "--quiet-ra",
            ]
        if self.enrolled_only:
            args.append("--dhcp-ignore=tag:!enrolled")
        if self.log_dhcp:
            args.append("--log-dhcp")
        return args


def prepare_tftp_root(tftp_root: Path, ipxe_dir: Path = IPXE_DIR) -> list[Path]:
    """Copy the iPXE boot files missing from ``tftp_root`` (created if needed); return the files this call created.

    Raises DnsmasqError naming the file when a required one is neither in ``tftp_root`` nor in ``ipxe_dir``.
    """
    created: list[Path] = []
    tftp_root.mkdir(parents=True, exist_ok=True)
    try:
        for name, required in BOOT_FILES:
            target = tftp_root / name
            if target.is_file():
                continue
            source = ipxe_dir / name
            if not source.is_file():
                if required:
                    raise DnsmasqError(
                        f"--tftp-root {tftp_root}: no {name} there and none in {ipxe_dir} (install Debian's ipxe)"
                    )
                continue
            tmp = target.with_name(f".{name}.tmp")
            shutil.copyfile(source, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            created.append(target)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return created


def hosts_text(entries: Iterable[tuple[str, str]]) -> str:
    """``--dhcp-hostsfile`` lines for ``(mac, node name)`` pairs: ``mac,set:enrolled[,hostname]`` sorted by MAC."""
    lines = []
    for mac, name in sorted(set(entries)):
        host = name.lower()
        lines.append(f"{mac},set:enrolled,{host}" if _HOSTNAME_RE.match(host) else f"{mac},set:enrolled")
    return "".join(f"{line}\n" for line in lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def check_config(config: DnsmasqConfig, binary: str = DNSMASQ) -> None:
    """``dnsmasq --test`` with the real command line: DnsmasqError with dnsmasq's words on a syntax problem."""
    try:
        result = subprocess.run(
            [*config.argv(binary), "--test"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise DnsmasqError(f"{binary} not found (install Debian's dnsmasq-base)") from None
    if result.returncode != 0:
        words = (result.stderr or result.stdout).strip().replace("\n", "; ")
        raise DnsmasqError(f"dnsmasq rejected its configuration ({_hint(words, config)}): {words}")


def _hint(message: str, config: DnsmasqConfig) -> str:
    """The serve option most likely at fault for a dnsmasq start-up message."""
    lowered = message.lower()
    if "listening socket" in lowered or "address already in use" in lowered:
        return (
            f"--interface {config.interface}: DHCP port 67 or TFTP port 69 is already taken there"
            " (another DHCP/TFTP server in this network namespace?)"
        )
    if "interface" in lowered:
        return f"--interface {config.interface}"
    if "tftp" in lowered or "port 69" in lowered:
        return f"--tftp-root {config.tftp_root} (or TFTP port 69 already taken on --interface {config.interface})"
    if "dhcp-range" in lowered:
        return f"--dhcp-range {','.join(config.dhcp_range)} / --lease-time {config.lease_time}"
    if "dhcp" in lowered or "port 67" in lowered:
        return f"--dhcp-range {','.join(config.dhcp_range)} (or DHCP port 67 already taken: another DHCP server?)"
    if "lease" in lowered or "pid" in lowered or "permission" in lowered:
        return f"--state-dir ({config.work_dir})"
    return f"--interface {config.interface}"


def _pdeathsig_hook() -> Callable[[], None]:
    """A ``preexec_fn`` making the child get SIGTERM when its parent thread dies (libc looked up here, not in the
    child, so the child only makes one system call between fork and exec)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


class DnsmasqProcess:
    """One dnsmasq child: start (wait until it serves), reload host entries, stop (and remove its files)."""

    def __init__(
        self, config: DnsmasqConfig, binary: str = DNSMASQ, on_line: Callable[[str], None] | None = None
    ) -> None:
        """``on_line`` gets every line dnsmasq logs (without its ``dnsmasq-dhcp[pid]:`` prefix), on the log pump
        thread (``metal serve`` turns DHCPACK lines into ``dhcp`` events: ``dhcp_seen.py``)."""
        self.config = config
        self.binary = binary
        self.on_line = on_line
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self._started = threading.Event()
        self._tail: list[str] = []
        self._hosts = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0, cancel: threading.Event | None = None) -> None:
        """Start dnsmasq and return once it reports ``started`` (its sockets are bound); DnsmasqError otherwise.

        On any failure the child is gone and its files removed before the error propagates.
        """
        config = self.config
        config.work_dir.mkdir(parents=True, exist_ok=True)
        if not config.hosts_file.exists():
            _write_atomic(config.hosts_file, self._hosts)
        check_config(config, self.binary)
        argv = config.argv(self.binary)
        log.info("starting: %s", " ".join(argv))
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_pdeathsig_hook(),  # started from the main thread, which lives as long as the process
        )
        self._pump = threading.Thread(target=self._forward_output, name="dnsmasq-log", daemon=True)
        self._pump.start()
        deadline = time.monotonic() + timeout
        try:
            while not self._started.wait(0.05):
                if self.proc.poll() is not None:
                    self._pump.join(timeout=2)
                    words = "; ".join(self._tail[-5:]) or f"exit status {self.proc.returncode}"
                    raise DnsmasqError(f"dnsmasq failed to start ({_hint(words, config)}): {words}")
                if cancel is not None and cancel.is_set():
                    raise DnsmasqError("interrupted while dnsmasq was starting")
                if time.monotonic() > deadline:
                    raise DnsmasqError(f"dnsmasq did not report 'started' within {timeout:.0f}s")
            _write_atomic(config.pid_file, f"{self.proc.pid}\n")
        except BaseException:
            self.stop()
            raise

    def _forward_output(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            match = _LINE_RE.match(line)
            name, text = (match.group(1), match.group(2)) if match else ("dnsmasq", line)
            if _STARTED_RE.search(text):
                self._started.set()
            if not self._started.is_set():
                self._tail.append(text.removeprefix("dnsmasq: "))
            log.info("%s: %s", name, text)
            if self.on_line is not None:
                self.on_line(text)

    def update_hosts(self, entries: Iterable[tuple[str, str]]) -> bool:
        """Rewrite the host entries for ``(mac, node)`` pairs; True if they changed. A running dnsmasq is not
        signalled: the caller applies the change with :meth:`restart` (dnsmasq 2.90 died with SIGSEGV on a SIGHUP
        reload in a lab whose servers held leases; a restart with the lease file kept has no such risk)."""
        text = hosts_text(entries)
        if text == self._hosts and self.config.hosts_file.exists():
            return False
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.config.hosts_file, text)
        self._hosts = text
        return True

    def restart(self, timeout: float = 15.0, cancel: threading.Event | None = None) -> None:
        """Stop the running dnsmasq, keeping its lease and hosts files (``--dhcp-authoritative`` lets it rebuild
        leases from renewals), and start it again. Call from the thread that started it (PR_SET_PDEATHSIG)."""
        self._terminate(10.0)
        self._started.clear()
        self._tail = []
        self.start(timeout, cancel)

    def _terminate(self, timeout: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("dnsmasq (pid %d) ignored SIGTERM for %.0fs: killing it", proc.pid, timeout)
                proc.kill()
                proc.wait(5)
        if proc is not None:
            log.info("stopped (pid %d, exit status %s)", proc.pid, proc.returncode)
        if self._pump is not None:
            self._pump.join(timeout=5)
            self._pump = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL after ``timeout``), reap, remove the pid, lease and hosts files. Idempotent."""
        self._terminate(timeout)
        for path in (self.config.pid_file, self.config.lease_file, self.config.hosts_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):  # only when empty: it may be a directory someone else uses too
            self.config.work_dir.rmdir()
