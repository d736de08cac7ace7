"""``stemforge metal serve``: dnsmasq (DHCP + TFTP) and the HTTP server in one long-running process.

    stemforge metal serve --state-dir DIR --listen IP --http-port P --interface IF --dhcp-range START,END
                          --ramdisk-dir DIR [--tftp-root DIR] [--ready-file PATH]

(also ``python -m cpi.providers.baremetal.serve`` with the same flags: ``__main__.py``).

Start-up is a list of Packer-style steps (``stemforge_base.steps.StepRunner``; one line with the elapsed time per step):
check the network (``--listen`` must be an IPv4 address configured on ``--interface``: never 0.0.0.0; the DHCP range
must lie in that address's subnet) → open the store → fill the TFTP root with iPXE → bind the HTTP server → start
dnsmasq (``dnsmasq --test`` first; host entries for every enrolled MAC; IPv6 router advertisements, RA only, when
the interface has a global IPv6 address) → watch the inventory (host entries rewritten and dnsmasq sent SIGHUP
when MACs change) → write the ready file (JSON: pid, url, interface, ...; only once dnsmasq reported its sockets
bound and a GET of our own ``/boot.ipxe`` answered) → serve until SIGTERM/SIGINT (or until dnsmasq dies: exit
status 1). Run it from the main thread: dnsmasq's parent-death signal is tied to the thread that started it.
Every step's cleanup runs in reverse whether start-up failed, was interrupted or serving ended: the ready file, the
HTTP server, dnsmasq and its pid/lease/hosts files and the boot files this run copied are removed; no child process
outlives the server (dnsmasq also gets SIGTERM from the kernel if this process is killed).

Exit status: 0 after a clean stop, 1 when start-up failed (one line naming the flag at fault) or dnsmasq died, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.serve import dhcp_seen
from cpi.providers.baremetal.serve import dnsmasq as dnsmasq_mod
from cpi.providers.baremetal.serve.dnsmasq import DnsmasqConfig, DnsmasqError, DnsmasqProcess
from cpi.providers.baremetal.serve.http import MetalHTTPServer
from cpi.providers.baremetal.serve.ipxe import INITRD_FILE, KERNEL_FILE
from cpi.providers.baremetal.serve.shared_store import SharedStore
from cpi.providers.baremetal.store import MetalStore
from stemforge_base.steps import Cancelled, Step, StepRunner

log = logging.getLogger("stemforge.metal.serve")

HOSTS_POLL_S = 1.0


class ServeError(Exception):
    """A start-up or runtime failure of ``metal serve``; the message names the flag or part at fault."""


@dataclass(frozen=True)
class ServeOptions:
    """The validated command line of ``metal serve``."""

    state_dir: Path
    listen: str
    http_port: int
    interface: str
    dhcp_range: tuple[str, str]
    ramdisk_dir: Path
    tftp_root: Path
    ready_file: Path | None = None
    lease_time: str = "1h"
    enrolled_only: bool = False
    log_dhcp: bool = False
    ramdisk_debug: bool = False
    ipxe_dir: Path = dnsmasq_mod.IPXE_DIR


# -- checks ----------------------------------------------------------------------------------------------------


def interface_addresses(interface: str) -> list[ipaddress.IPv4Interface]:
    """The IPv4 addresses configured on ``interface`` in this network namespace; ServeError if it does not exist."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    result = subprocess.run(
        [ip, "-j", "-4", "addr", "show", "dev", interface], capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        words = result.stderr.strip() or f"exit status {result.returncode}"
        raise ServeError(f"--interface {interface}: no such interface in this network namespace ({words})")
    try:
        links = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise ServeError(f"--interface {interface}: cannot read `ip -j addr` output: {exc}") from None
    found = []
    for link in links:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                found.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
    return found


def global_ipv6_addresses(interface: str) -> list[ipaddress.IPv6Interface]:
    """The global-scope IPv6 addresses of ``interface`` (ULAs included); [] when there are none."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    result = subprocess.run(
        [ip, "-j", "-6", "addr", "show", "dev", interface, "scope", "global"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode != 0:
        return []
    found = []
    for link in json.loads(result.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet6":
                found.append(ipaddress.IPv6Interface(f"{info['local']}/{info['prefixlen']}"))
    return found


def check_network(options: ServeOptions) -> ipaddress.IPv4Interface:
    """The interface address ``--listen`` names, after checking it and the DHCP range; ServeError otherwise."""
    try:
        listen = ipaddress.ip_address(options.listen)
    except ValueError:
        raise ServeError(f"--listen {options.listen!r} is not an IP address") from None
    if listen.version != 4:
        raise ServeError(f"--listen {listen}: only IPv4 provisioning networks are supported")
    if listen.is_unspecified:
        raise ServeError(
            f"--listen {listen}: refusing to listen on every address; give the provisioning network's address"
        )
    addresses = interface_addresses(options.interface)
    matching = [a for a in addresses if a.ip == listen]
    if not matching:
        have = ", ".join(str(a) for a in addresses) or "no IPv4 address"
        raise ServeError(f"--listen {listen} is not an address of --interface {options.interface} (it has {have})")
    iface = matching[0]
    try:
        start, end = (ipaddress.IPv4Address(x) for x in options.dhcp_range)
    except ValueError:
        raise ServeError(f"--dhcp-range {','.join(options.dhcp_range)}: not two IPv4 addresses") from None
    for value in (start, end):
        if value not in iface.network or value in (iface.network.network_address, iface.network.broadcast_address):
            raise ServeError(
                f"--dhcp-range: {value} is not a host address of {iface.network} (the network of --listen {listen})"
            )
    if start > end:
        raise ServeError(f"--dhcp-range: start {start} is after end {end}")
    if start <= listen <= end:
        raise ServeError(f"--dhcp-range {start},{end} contains the server's own address --listen {listen}")
    return iface


# -- steps -------------------------------------------------------------------------------------------------------


class StepCheckNetwork(Step):
    name = "check_network"
    temporary = True

    def __init__(self, options: ServeOptions) -> None:
        self.options = options

    def run(self, state: dict[str, Any]) -> None:
        options = self.options
        if options.ready_file is not None and options.ready_file.exists():
            log.info("removing the stale ready file %s (a previous server did not stop cleanly)", options.ready_file)
            options.ready_file.unlink()
        iface = check_network(options)
        if not options.ramdisk_dir.is_dir():
            raise ServeError(f"--ramdisk-dir {options.ramdisk_dir}: not a directory")
        missing = [f for f in (KERNEL_FILE, INITRD_FILE) if not (options.ramdisk_dir / f).is_file()]
        if missing:
            log.warning("--ramdisk-dir %s has no %s yet: deploys fail until it does", options.ramdisk_dir,
                        " or ".join(missing))  # fmt: skip
        state["network"] = iface
        v6 = global_ipv6_addresses(options.interface)
        state["ipv6"] = v6
        log.info("provisioning network: %s on %s%s", iface, options.interface,
                 f" (IPv6 {', '.join(map(str, v6))}: router advertisements on, RA only)" if v6 else "")  # fmt: skip

    def cleanup(self, state: dict[str, Any]) -> None:
        pass


class StepOpenStore(Step):
    name = "open_store"
    temporary = True

    def __init__(self, options: ServeOptions) -> None:
        self.options = options

    def run(self, state: dict[str, Any]) -> None:
        try:
            store = MetalStore(self.options.state_dir)
        except Exception as exc:  # noqa: BLE001 - any reason the store cannot open is a start-up error
            raise ServeError(f"--state-dir {self.options.state_dir}: cannot open the store: {exc}") from None
        state["store"] = SharedStore(store)

    def cleanup(self, state: dict[str, Any]) -> None:
        store: SharedStore | None = state.pop("store", None)
        if store is not None:
            store.close()


class StepTftpRoot(Step):
    name = "tftp_root"
    temporary = True

    def __init__(self, options: ServeOptions) -> None:
        self.options = options

    def run(self, state: dict[str, Any]) -> None:
        state["tftp_dir_created"] = not self.options.tftp_root.exists()
        try:
            state["tftp_created"] = dnsmasq_mod.prepare_tftp_root(self.options.tftp_root, self.options.ipxe_dir)
        except OSError as exc:
            raise ServeError(f"--tftp-root {self.options.tftp_root}: {exc.strerror or exc}") from None
        except DnsmasqError as exc:
            raise ServeError(str(exc)) from None
        log.info("TFTP root %s: %s", self.options.tftp_root,
                 ", ".join(sorted(p.name for p in self.options.tftp_root.iterdir() if p.is_file())))  # fmt: skip

    def cleanup(self, state: dict[str, Any]) -> None:
        for path in state.pop("tftp_created", []):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if state.pop("tftp_dir_created", False):
            with contextlib.suppress(OSError):  # only when empty
                self.options.tftp_root.rmdir()


class StepHTTPServer(Step):
    name = "http_server"
    temporary = True

    def __init__(self, options: ServeOptions) -> None:
        self.options = options

    def run(self, state: dict[str, Any]) -> None:
        options = self.options
        try:
            server = MetalHTTPServer(
                (options.listen, options.http_port),
                store=state["store"],
                state_dir=options.state_dir,
                ramdisk_dir=options.ramdisk_dir,
                ramdisk_debug=options.ramdisk_debug,
                lease_file=_dnsmasq_work_dir(options) / dnsmasq_mod.LEASE_FILE,
            )
        except OSError as exc:
            raise ServeError(
                f"--listen {options.listen} --http-port {options.http_port}: cannot bind: {exc.strerror or exc}"
            ) from None
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="metal-http", daemon=True
        )
        thread.start()
        state["http"] = server
        state["http_thread"] = thread
        log.info("HTTP server on %s", server.base_url)

    def cleanup(self, state: dict[str, Any]) -> None:
        server: MetalHTTPServer | None = state.pop("http", None)
        if server is None:
            return
        server.shutdown()
        server.server_close()
        thread: threading.Thread = state.pop("http_thread")
        thread.join(timeout=10)
        log.info("HTTP server stopped")


def _dnsmasq_work_dir(options: ServeOptions) -> Path:
    """dnsmasq's pid, lease and hosts files live here."""
    return options.state_dir / "dnsmasq"


def _enrolled_macs(store: SharedStore) -> list[tuple[str, str]]:
    return store.call(lambda s: [(mac, node.name) for node in s.nodes() for mac in node.macs])


class StepDnsmasq(Step):
    name = "dnsmasq"
    temporary = True

    def __init__(self, options: ServeOptions, cancel: threading.Event) -> None:
        self.options = options
        self.cancel = cancel

    def run(self, state: dict[str, Any]) -> None:
        options = self.options
        server: MetalHTTPServer = state["http"]
        config = DnsmasqConfig(
            interface=options.interface,
            dhcp_range=options.dhcp_range,
            boot_url=f"{server.base_url}/boot.ipxe",
            tftp_root=options.tftp_root,
            work_dir=_dnsmasq_work_dir(options),
            lease_time=options.lease_time,
            enrolled_only=options.enrolled_only,
            log_dhcp=options.log_dhcp,
            router_advertisements=bool(state.get("ipv6")),
        )
        proc = DnsmasqProcess(config, on_line=dhcp_seen.recorder(state["store"]))  # DHCPACK -> "dhcp" events
        state["dnsmasq"] = proc
        entries = _enrolled_macs(state["store"])
        proc.update_hosts(entries)
        try:
            proc.start(cancel=self.cancel)
        except DnsmasqError as exc:
            raise ServeError(str(exc)) from None
        log.info("dnsmasq (pid %s) serving DHCP %s-%s and TFTP on %s; %d enrolled MAC(s)", proc.pid,
                 *options.dhcp_range, options.interface, len(entries))  # fmt: skip

    def cleanup(self, state: dict[str, Any]) -> None:
        proc: DnsmasqProcess | None = state.pop("dnsmasq", None)
        if proc is not None:
            proc.stop()


class StepWatchInventory(Step):
    """Keep dnsmasq's host entries equal to the enrolled MACs (polls the store; the serve step restarts dnsmasq)."""

    name = "watch_inventory"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        stop = threading.Event()
        changed: threading.Event = state.setdefault("hosts_changed", threading.Event())
        store: SharedStore = state["store"]
        proc: DnsmasqProcess = state["dnsmasq"]

        def watch() -> None:
            while not stop.wait(HOSTS_POLL_S):
                try:
                    entries = _enrolled_macs(store)
                    if proc.update_hosts(entries):
                        log.info("inventory changed: %d enrolled MAC(s); restarting dnsmasq", len(entries))
                        changed.set()
                except Exception as exc:  # noqa: BLE001 - keep watching; the next poll retries
                    log.warning("cannot refresh dnsmasq host entries: %s", exc)

        thread = threading.Thread(target=watch, name="metal-inventory-watch", daemon=True)
        thread.start()
        state["watch"] = (stop, thread)

    def cleanup(self, state: dict[str, Any]) -> None:
        watch = state.pop("watch", None)
        if watch is not None:
            stop, thread = watch
            stop.set()
            thread.join(timeout=10)


def _self_check(server: MetalHTTPServer) -> None:
    """GET ``/boot.ipxe`` from our own address, as a server would: ServeError unless it answers 200."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/boot.ipxe")
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise ServeError(f"the HTTP server does not answer on {server.base_url}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200 or not body.startswith(b"#!ipxe"):
        raise ServeError(f"{server.base_url}/boot.ipxe answered {resp.status}, not an iPXE script")


class StepReadyFile(Step):
    name = "ready_file"
    temporary = True

    def __init__(self, options: ServeOptions, started: float) -> None:
        self.options = options
        self.started = started

    def run(self, state: dict[str, Any]) -> None:
        server: MetalHTTPServer = state["http"]
        proc: DnsmasqProcess = state["dnsmasq"]
        _self_check(server)
        info = {
            "pid": os.getpid(),
            "url": server.base_url,
            "boot_url": f"{server.base_url}/boot.ipxe",
            "listen": self.options.listen,
            "http_port": server.port,
            "interface": self.options.interface,
            "dhcp_range": list(self.options.dhcp_range),
            "dnsmasq_pid": proc.pid,
            "tftp_root": str(self.options.tftp_root),
            "state_dir": str(self.options.state_dir),
            "started_s": round(time.monotonic() - self.started, 3),
        }
        state["ready_info"] = info
        path = self.options.ready_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, path)
        state["ready_file"] = path

    def cleanup(self, state: dict[str, Any]) -> None:
        path: Path | None = state.pop("ready_file", None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class StepServe(Step):
    """Serve until asked to stop; fail if dnsmasq dies under us."""

    name = "serve"
    temporary = True

    def __init__(self, stop: threading.Event, started: float) -> None:
        self.stop = stop
        self.started = started

    def run(self, state: dict[str, Any]) -> None:
        info = state["ready_info"]
        proc: DnsmasqProcess = state["dnsmasq"]
        log.info("ready in %.2fs: %s (dnsmasq pid %s, DHCP and TFTP on %s)", time.monotonic() - self.started,
                 info["url"], info["dnsmasq_pid"], info["interface"])  # fmt: skip
        changed: threading.Event = state.setdefault("hosts_changed", threading.Event())
        while not self.stop.wait(0.5):
            if changed.is_set():  # the inventory watch rewrote the host entries: apply them (main thread)
                changed.clear()
                try:
                    proc.restart(cancel=self.stop)
                except DnsmasqError as exc:
                    raise ServeError(f"dnsmasq did not come back after the host entries changed: {exc}") from None
                log.info("dnsmasq (pid %s) restarted with the new host entries", proc.pid)
            if not proc.running():
                code = proc.proc.returncode if proc.proc else None
                raise ServeError(f"dnsmasq exited unexpectedly (exit status {code}); stopping")
        log.info("stopping")

    def cleanup(self, state: dict[str, Any]) -> None:
        pass


def serve(options: ServeOptions, stop: threading.Event | None = None) -> None:
    """Run the services until ``stop`` is set (or SIGTERM/SIGINT when called from ``main``); ServeError on failure."""
    started = time.monotonic()
    stop = stop or threading.Event()
    runner = StepRunner(log=log, cancel=stop)
    steps: list[Step] = [
        StepCheckNetwork(options),
        StepOpenStore(options),
        StepTftpRoot(options),
        StepHTTPServer(options),
        StepDnsmasq(options, stop),
        StepWatchInventory(),
        StepReadyFile(options, started),
        StepServe(stop, started),
    ]
    runner.run(steps, {})


# -- command line ------------------------------------------------------------------------------------------------


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    state_dir = Path(args.state_dir).absolute()
    return ServeOptions(
        state_dir=state_dir,
        listen=args.listen,
        http_port=args.http_port,
        interface=args.interface,
        dhcp_range=args.dhcp_range,
        ramdisk_dir=Path(args.ramdisk_dir).absolute(),
        tftp_root=Path(args.tftp_root).absolute() if args.tftp_root else state_dir / "tftp",
        ready_file=Path(args.ready_file).absolute() if args.ready_file else None,
        lease_time=args.lease_time,
        enrolled_only=args.enrolled_only,
        log_dhcp=args.log_dhcp,
        ramdisk_debug=args.ramdisk_debug,
        ipxe_dir=args.ipxe_dir,
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``metal serve``: set up logging and signals, serve, return the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("stemforge.metal").setLevel(logging.INFO)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve(options_from_args(args), stop)
    except ServeError as exc:
        print(f"metal serve: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Cancelled:
        print("metal serve: interrupted during start-up; everything started was stopped", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("metal serve: stopped", file=sys.stderr, flush=True)
    return 0
