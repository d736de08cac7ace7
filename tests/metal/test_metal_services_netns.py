"""``metal serve`` for real: DHCP, TFTP and HTTP inside network namespaces this test creates and removes.

Layout per test: namespace ``sfst-<id>`` holds bridge ``sfbr0`` (``10.<a>.<b>.1/24``) and one end of a veth pair;
the other end (``vcli``, a fixed MAC) is in namespace ``sfsc-<id>``, which plays the server being provisioned with
busybox's ``udhcpc``, ``tftp`` and ``wget``. ``metal serve`` runs in the first namespace through ``ip netns exec``.
No packet leaves the two namespaces. Namespaces and processes are removed even when a test fails; ``ip netns pids``
proves that nothing (dnsmasq included) outlives the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cpi.providers.baremetal.store import Bmc, Event, MetalStore, NodeSpec

pytestmark = pytest.mark.metal

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with deconfig | bound | renew | nak; record what the server said, take the address when bound
env | grep -E '^(ip|boot_file|siaddr|serverid|subnet|interface|mask)=' | sort > "$OUT.$1"
if [ "$1" = bound ]; then ip addr flush dev "$interface"; ip addr add "$ip/${mask:-24}" dev "$interface"; fi
exit 0
"""


def _run(*argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class Lab:
    ident: str
    server_ns: str
    client_ns: str
    net: str  # "10.a.b"
    client_mac: str
    work: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return f"{self.net}.1"

    @property
    def dhcp_range(self) -> str:
        return f"{self.net}.100,{self.net}.199"

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    def pids_in(self, ns: str) -> list[int]:
        out = _run("ip", "netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in out]

    def client(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.client_ns, *argv, timeout=timeout, check=check)

    def udhcpc(self, *extra: str, tag: str, tries: int = 8) -> dict[str, str]:
        """One DHCP exchange from the client namespace; the variables udhcpc's script saw at ``bound``."""
        script = self.work / "udhcpc.sh"
        if not script.exists():
            script.write_text(UDHCPC_SCRIPT)
            script.chmod(0o755)
        out = self.work / f"dhcp-{tag}"
        env_prefix = ["env", f"OUT={out}"]
        argv = ["busybox", "udhcpc", "-i", "vcli", "-n", "-q", "-f", "-t", str(tries), "-T", "1", "-A", "1",
                "-s", str(script), *extra]  # fmt: skip
        result = self.client(*env_prefix, *argv, timeout=60)
        bound = Path(f"{out}.bound")
        if result.returncode != 0 or not bound.exists():
            return {}
        return dict(line.split("=", 1) for line in bound.read_text().splitlines() if "=" in line)

    def serve_argv(self, *extra: str, cli: str = "module", ramdisk: Path | None = None) -> list[str]:
        base = (
            [PYTHON, "-m", "cpi.providers.baremetal.serve"]
            if cli == "module"
            else [str(Path(PYTHON).parent / "stemforge"), "metal", "serve"]
        )
        return [
            "ip", "netns", "exec", self.server_ns, *base,
            "--state-dir", str(self.state_dir), "--listen", self.ip, "--http-port", "8080", "--interface", "sfbr0",
            "--dhcp-range", self.dhcp_range, "--ramdisk-dir", str(ramdisk or self.work / "ramdisk"),
            "--ready-file", str(self.work / "ready.json"), *extra,
        ]  # fmt: skip

    def start_serve(self, *extra: str, cli: str = "module", ramdisk: Path | None = None) -> subprocess.Popen[str]:
        log = open(self.work / "serve.log", "a")  # noqa: SIM115 - handed to the child
        argv = self.serve_argv(*extra, cli=cli, ramdisk=ramdisk)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        log.close()
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, object]:
        ready = self.work / "ready.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.exists():
                info: dict[str, object] = json.loads(ready.read_text())
                if info["pid"] == proc.pid:  # `ip netns exec` execs: its pid is the server's; a stale file is not
                    return info
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode} before ready:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"serve not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        path = self.work / "serve.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    ident = os.urandom(3).hex()
    a, b = 200 + int(ident[:2], 16) % 50, int(ident[2:4], 16)
    octets = [0x52, 0x54, 0x00, 0x5F, int(ident[2:4], 16), int(ident[4:6], 16)]
    lab = Lab(ident, f"sfst-{ident}", f"sfsc-{ident}", f"10.{a}.{b}", ":".join(f"{o:02x}" for o in octets),
              tmp_path)  # fmt: skip
    (tmp_path / "ramdisk").mkdir()
    (tmp_path / "ramdisk" / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "ramdisk" / "initrd.img").write_bytes(b"initrd")
    created: list[str] = []
    try:
        for ns in (lab.server_ns, lab.client_ns):
            _run("ip", "netns", "add", ns)
            created.append(ns)
        srv, cli = lab.server_ns, lab.client_ns
        for argv in (
            ["ip", "-n", srv, "link", "set", "lo", "up"],
            ["ip", "-n", cli, "link", "set", "lo", "up"],
            ["ip", "-n", srv, "link", "add", "sfbr0", "type", "bridge"],
            ["ip", "-n", srv, "addr", "add", f"{lab.ip}/24", "dev", "sfbr0"],
            ["ip", "-n", srv, "link", "set", "sfbr0", "up"],
            ["ip", "-n", srv, "link", "add", "vsrv", "type", "veth", "peer", "name", "vcli", "netns", cli],
            ["ip", "-n", srv, "link", "set", "vsrv", "master", "sfbr0"],
            ["ip", "-n", srv, "link", "set", "vsrv", "up"],
            ["ip", "-n", cli, "link", "set", "vcli", "address", lab.client_mac],
            ["ip", "-n", cli, "link", "set", "vcli", "up"],
        ):
            _run(*argv)
        yield lab
    finally:
        for proc in lab.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in created:
            for pid in lab.pids_in(ns):  # anything a failed test left in its namespaces
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
        leftover = set(_run("ip", "netns", "list").stdout.split()) & set(created)
        assert not leftover, f"namespaces left behind: {leftover}"


def _enroll(lab: Lab, name: str, mac: str) -> None:
    store = MetalStore(lab.state_dir)
    try:
        store.enroll([NodeSpec(name=name, bmc=Bmc("redfish", "http://127.0.0.1:9", name, "u", "bmc-pw"),
                               macs=(mac,), plan={"arch": "x86_64", "disks": [{"size_gib": 4}]})],
                     who="test")  # fmt: skip
    finally:
        store.close()


def _stop(lab: Lab, proc: subprocess.Popen[str], sig: int = signal.SIGTERM, *, tftp_copied: bool = True) -> None:
    proc.send_signal(sig)
    assert proc.wait(20) == 0, lab.log()
    assert lab.pids_in(lab.server_ns) == [], "a process outlived metal serve in its namespace"
    assert not (lab.work / "ready.json").exists()
    leftovers = (
        sorted(p.name for p in (lab.state_dir / "dnsmasq").glob("*")) if (lab.state_dir / "dnsmasq").exists() else []
    )
    assert leftovers == [], leftovers
    if tftp_copied:
        assert not (lab.state_dir / "tftp").exists(), "the boot files this run copied stay behind"


def test_pxe_and_ipxe_clients_get_their_boot_file_and_fetch_it(lab: Lab) -> None:
    _enroll(lab, "n1", lab.client_mac)
    proc = lab.start_serve()
    info = lab.wait_ready(proc)
    assert info["url"] == f"http://{lab.ip}:8080" and info["interface"] == "sfbr0"
    assert isinstance(info["dnsmasq_pid"], int) and info["dnsmasq_pid"] in lab.pids_in(lab.server_ns)
    hosts = (lab.state_dir / "dnsmasq" / "dnsmasq.hosts").read_text()
    assert hosts == f"{lab.client_mac},set:enrolled,n1\n"

    # a plain PXE ROM (no option 175): TFTP chainload of iPXE
    pxe = lab.udhcpc(tag="pxe")
    assert pxe, f"no DHCP lease:\n{lab.log()}"
    assert pxe["boot_file"] == "undionly.kpxe"
    assert pxe["siaddr"] == lab.ip and pxe["serverid"] == lab.ip
    assert int(pxe["ip"].rsplit(".", 1)[1]) in range(100, 200) and pxe["ip"].startswith(lab.net + ".")
    # iPXE itself (option 175 present): straight to HTTP
    ipxe = lab.udhcpc("-x", "0xaf:b10101", tag="ipxe")
    assert ipxe["boot_file"] == f"http://{lab.ip}:8080/boot.ipxe"
    # a UEFI x86-64 PXE ROM (client architecture 7): the EFI build of iPXE
    efi = lab.udhcpc("-x", "0x5d:0007", tag="efi")
    assert efi["boot_file"] == "ipxe.efi"
    leases = (lab.state_dir / "dnsmasq" / "dnsmasq.leases").read_text()
    assert lab.client_mac in leases and " n1 " in leases

    # TFTP: the boot file is Debian's undionly.kpxe, byte for byte
    got = lab.work / "undionly.kpxe"
    tftp = lab.client("busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l", str(got), lab.ip)
    assert tftp.returncode == 0, tftp.stderr
    assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    # HTTP: /boot.ipxe, then this MAC's script (no job: exit; with a job: the ramdisk with the job token)
    boot = lab.client("busybox", "wget", "-q", "-O", "-", f"http://{lab.ip}:8080/boot.ipxe")
    assert boot.returncode == 0 and f"chain http://{lab.ip}:8080/ipxe/${{netX/mac}}" in boot.stdout
    url = f"http://{lab.ip}:8080/ipxe/{lab.client_mac.replace(':', '%3A')}"
    assert "exit 1" in lab.client("busybox", "wget", "-q", "-O", "-", url).stdout
    store = MetalStore(lab.state_dir)
    try:
        job = store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=60)
        script = lab.client("busybox", "wget", "-q", "-O", "-", url).stdout
        assert f"sf.api=http://{lab.ip}:8080/v1/nodes/n1 sf.token={job.token}" in script
        # the same request from an address dnsmasq did not lease that MAC (here the bridge's own): 403, no token
        other = _run("ip", "netns", "exec", lab.server_ns, "busybox", "wget", "-q", "-O", "-", url, check=False)
        assert other.returncode != 0 and job.token not in other.stdout
        # the ramdisk's side: instructions and an event with busybox wget, as the ramdisk sends them
        api = f"http://{lab.ip}:8080/v1/nodes/n1"
        header = f"X-Stemforge-Token: {job.token}"
        text = lab.client("busybox", "wget", "-q", "-O", "-", "--header", header, f"{api}/instructions").stdout
        assert text == "SF_MODE='clean'\n"
        posted = lab.client("busybox", "wget", "-q", "-O", "-", "--header", header,
                            "--post-data", '{"kind":"stage","stage":"booted"}', f"{api}/events")  # fmt: skip
        assert posted.returncode == 0, posted.stderr
        assert [(e.kind, e.data) for e in store.events("n1", kinds=["stage"])] == [
            ("stage", {"kind": "stage", "stage": "booted"})
        ]
        denied = lab.client("busybox", "wget", "-q", "-O", "-", "--header", "X-Stemforge-Token: nope",
                            f"{api}/instructions")  # fmt: skip
        assert denied.returncode != 0
    finally:
        store.close()
    _stop(lab, proc)
    log = lab.log()
    assert "DHCPACK(sfbr0)" in log and "sent /" in log and "undionly.kpxe to" in log
    assert f"rejected callback for node n1 from {lab.net}." in log
    assert f"refused to {lab.ip}: dnsmasq leased that MAC to {lab.net}." in log
    assert job.token not in log and "nope" not in log
    for step in ("check_network", "open_store", "tftp_root", "http_server", "dnsmasq", "ready_file"):
        assert f"step {step}: done in " in log


def test_enrolled_only_follows_the_inventory_and_sigint_stops_cleanly(lab: Lab) -> None:
    proc = lab.start_serve("--enrolled-only", cli="stemforge")
    lab.wait_ready(proc)
    assert lab.udhcpc(tag="before", tries=3) == {}, "an unenrolled MAC must get no lease with --enrolled-only"
    _enroll(lab, "late-node", lab.client_mac)  # the running server notices, rewrites host entries, restarts dnsmasq
    deadline = time.monotonic() + 10
    hosts = lab.state_dir / "dnsmasq" / "dnsmasq.hosts"
    while time.monotonic() < deadline and lab.client_mac not in hosts.read_text():
        time.sleep(0.2)
    assert hosts.read_text() == f"{lab.client_mac},set:enrolled,late-node\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "restarted with the new host entries" not in lab.log():
        time.sleep(0.2)
    after = lab.udhcpc(tag="after")
    assert after.get("boot_file") == "undionly.kpxe", lab.log()
    _stop(lab, proc, signal.SIGINT)
    assert "inventory changed: 1 enrolled MAC(s); restarting dnsmasq" in lab.log()
    assert lab.log().count("dnsmasq.hosts") >= 2  # read at start and again after the restart


def test_refuses_addresses_it_must_not_listen_on(lab: Lab) -> None:
    for listen, words in (
        ("0.0.0.0", "--listen 0.0.0.0: refusing to listen on every address"),
        ("127.0.0.1", "--listen 127.0.0.1 is not an address of --interface sfbr0"),
        (f"{lab.net}.2", f"--listen {lab.net}.2 is not an address of --interface sfbr0 (it has {lab.ip}/24)"),
    ):
        argv = lab.serve_argv()
        argv[argv.index("--listen") + 1] = listen
        result = _run(*argv, check=False, timeout=60)
        assert result.returncode == 1, result.stderr
        assert f"metal serve: error: {words}" in result.stderr
    argv = lab.serve_argv()
    argv[argv.index("--dhcp-range") + 1] = "10.0.0.100,10.0.0.199"
    result = _run(*argv, check=False, timeout=60)
    assert result.returncode == 1 and "--dhcp-range: 10.0.0.100 is not a host address" in result.stderr
    argv[argv.index("--interface") + 1] = "nosuch0"
    result = _run(*argv, check=False, timeout=60)
    assert result.returncode == 1 and "--interface nosuch0: no such interface" in result.stderr
    argv = lab.serve_argv()
    argv[argv.index("--ramdisk-dir") + 1] = str(lab.work / "no-ramdisk")
    result = _run(*argv, check=False, timeout=60)
    assert result.returncode == 1 and f"--ramdisk-dir {lab.work / 'no-ramdisk'}: not a directory" in result.stderr
    not_a_dir = lab.work / "state-file"
    not_a_dir.write_text("x")
    argv = lab.serve_argv()
    argv[argv.index("--state-dir") + 1] = str(not_a_dir)
    result = _run(*argv, check=False, timeout=60)
    assert result.returncode == 1 and f"--state-dir {not_a_dir}: cannot open the store" in result.stderr
    assert lab.pids_in(lab.server_ns) == []
    assert not (lab.work / "ready.json").exists()


def test_dnsmasq_failing_to_start_leaves_nothing_behind(lab: Lab) -> None:
    # hold TFTP's port on the bridge address so dnsmasq cannot bind it
    holder = subprocess.Popen(
        ["ip", "netns", "exec", lab.server_ns, PYTHON, "-c",
         "import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         f"s.bind(('{lab.ip}', 69)); print('bound', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.procs.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
    result = _run(*lab.serve_argv(), check=False, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("metal serve: error: dnsmasq failed to start (--interface sfbr0: DHCP port 67 or TFTP")
    assert "Address already in use" in last
    assert lab.pids_in(lab.server_ns) == [holder.pid]
    assert not (lab.work / "ready.json").exists()
    assert not (lab.state_dir / "dnsmasq").exists() and not (lab.state_dir / "tftp").exists()


def test_a_killed_server_takes_dnsmasq_with_it(lab: Lab) -> None:
    proc = lab.start_serve()
    info = lab.wait_ready(proc)
    dnsmasq_pid = info["dnsmasq_pid"]
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lab.pids_in(lab.server_ns):
        time.sleep(0.1)
    assert lab.pids_in(lab.server_ns) == [], f"dnsmasq (pid {dnsmasq_pid}) outlived a SIGKILLed metal serve"
    # a restart cleans up after it: stale ready file replaced, dnsmasq files reused
    proc = lab.start_serve()
    lab.wait_ready(proc)
    assert "removing the stale ready file" in lab.log()
    _stop(lab, proc, tftp_copied=False)  # the killed run copied them; this one leaves what it did not create
    assert sorted(p.name for p in (lab.state_dir / "tftp").iterdir()) == ["ipxe.efi", "undionly.kpxe"]


def test_router_advertisements_when_the_bridge_has_ipv6(lab: Lab) -> None:
    """iPXE waits ~13 s for an RA on every boot; with a ULA on the bridge, serve answers (RA only, lifetime 0)."""
    prefix = f"fd5f:{lab.ident[:4]}:{lab.ident[4:]}00::"
    _run("ip", "-n", lab.server_ns, "addr", "add", f"{prefix}1/64", "dev", "sfbr0", "nodad")
    proc = lab.start_serve()
    lab.wait_ready(proc)
    assert "router advertisements on" in lab.log()
    assert "--ra-param=sfbr0,0,0" in lab.log()
    deadline = time.monotonic() + 30
    got: list[str] = []
    while time.monotonic() < deadline and not got:
        out = lab.client("ip", "-j", "-6", "addr", "show", "dev", "vcli", "scope", "global").stdout
        got = [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", []) if "local" in a]
        time.sleep(0.5)
    assert got, "the client got no SLAAC address from the RA"
    assert ipaddress.ip_address(got[0]) in ipaddress.ip_network(f"{prefix}/64"), got
    routes = lab.client("ip", "-6", "route", "show", "default").stdout
    assert routes.strip() == "", f"router lifetime 0 must not make us a default router: {routes}"
    _stop(lab, proc)


@dataclass
class BootRig:
    """A QEMU guest on a tap in the lab bridge, booting from the network first (Debian's iPXE ROM, TCG)."""

    lab: Lab
    mac: str
    disk: Path
    console: Path
    proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        srv = self.lab.server_ns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", srv, "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none",
             "-vga", "none", "-serial", f"file:{self.console}", "-monitor", "none", "-no-reboot", "-boot", "n",
             "-netdev", "tap,id=n0,ifname=sftap0,script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
             "-drive", f"file={self.disk},format=raw,if=virtio"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lab.procs.append(self.proc)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""


def _boot_rig(lab: Lab, disk_bytes: int) -> tuple[BootRig, subprocess.Popen[str]]:
    """Tap + ULA on the bridge (RA: iPXE does not wait 13 s), node ``pxe1`` enrolled, ``metal serve`` with the real
    ramdisk started and ready; returns the (not yet started) guest and the server process."""
    from cpi.providers.baremetal.ramdisk.build import ensure_ramdisk

    ramdisk = ensure_ramdisk()
    srv = lab.server_ns
    _run("ip", "-n", srv, "tuntap", "add", "dev", "sftap0", "mode", "tap")
    _run("ip", "-n", srv, "link", "set", "sftap0", "master", "sfbr0", "up")
    prefix = f"fd5e:{lab.ident[:4]}:{lab.ident[4:]}00::"
    _run("ip", "-n", srv, "addr", "add", f"{prefix}1/64", "dev", "sfbr0", "nodad")
    mac = "52:54:00:5e:" + lab.client_mac[-5:]
    _enroll(lab, "pxe1", mac)
    disk = lab.work / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(disk_bytes)
        fh.write(b"OLD-PARTITION-TABLE" * 1000)
        fh.seek(-20000, os.SEEK_END)
        fh.write(b"OLD-BACKUP-GPT" * 1000)
    proc = lab.start_serve(ramdisk=ramdisk.kernel.parent)
    lab.wait_ready(proc)
    return BootRig(lab, mac, disk, lab.work / "console.log"), proc


def _wait_result(store: MetalStore, rig: BootRig, timeout: float = 420) -> list[Event]:
    """The node's events once the ramdisk reported its result (or the guest stopped); fails with the console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.events("pxe1", kinds=["result"]):
            break
        if rig.proc is not None and rig.proc.poll() is not None:
            break
        time.sleep(1)
    events = store.events("pxe1")
    results = [e for e in events if e.kind == "result"]
    seen = [(e.kind, e.data.get("stage")) for e in events if e.kind != "heartbeat"]
    assert results, f"no result event; events {seen}\n{rig.console_text()[-3000:]}"
    assert results[0].data["ok"] is True, f"{results[0].data}\n{rig.console_text()[-3000:]}"
    assert rig.proc is not None
    rig.proc.wait(60)  # the ramdisk powers off (clean) or reboots (deploy; -no-reboot makes QEMU exit)
    return events


@pytest.mark.slow
def test_a_real_pxe_boot_deploys_an_image_and_config_drive_from_serve(lab: Lab) -> None:
    """A real network boot through every route of metal serve: DHCP -> /boot.ipxe -> /ipxe/<mac> -> the deploy
    ramdisk (RAMDISK's build) over HTTP -> instructions -> /images/<name> streamed to the disk and verified ->
    /v1/nodes/<node>/configdrive written into a partition at the end of the disk -> stage and result events.
    (One boot proves the routes; cleaning is the same routes with a clean job, covered by the e2e tests.)"""
    from cpi.configdrive import write_iso

    rig, proc = _boot_rig(lab, 4 * 1024**3)
    images = lab.state_dir / "images"
    images.mkdir()
    image = images / "sc-test.raw"
    with open(image, "wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(image)], input="label: dos\nstart=2048, type=83\n", text=True,
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    with open(image, "r+b") as fh:  # mostly holes, like a real image: data at 1 MiB and in the last MiB
        fh.seek(1024 * 1024)
        fh.write(b"STEMFORGE-ROOT-FS" * 4096)
        fh.seek(-1024 * 1024, os.SEEK_END)
        fh.write(os.urandom(1024 * 1024 - 4096))
    payload = image.read_bytes()
    (lab.state_dir / "configdrives").mkdir()
    write_iso(lab.state_dir / "configdrives" / "pxe1.iso", {"openstack/latest/meta_data.json": b'{"uuid": "x"}'})
    base = f"http://{lab.ip}:8080"
    store = MetalStore(lab.state_dir)
    try:
        job = store.start_job("pxe1", "deploy", {
            "mode": "deploy", "image_url": f"{base}/images/sc-test.raw",
            "image_sha256": hashlib.sha256(payload).hexdigest(), "image_size": len(payload), "image_format": "raw",
            "configdrive_url": f"{base}/v1/nodes/pxe1/configdrive", "root_hints": {"size": 4}, "heartbeat_s": 2,
        }, timeout_s=600)  # fmt: skip
        rig.start()
        events = _wait_result(store, rig)
    finally:
        store.close()
    stages = [e.data["stage"] for e in events if e.kind == "stage"]
    assert stages == ["booted", "disk-selected", "image-written", "checksum-ok", "configdrive-written", "done"], stages
    with open(rig.disk, "rb") as fh:
        assert fh.read(len(payload))[1024 * 1024 :] == payload[1024 * 1024 :]
        fh.seek(-64 * 1024 * 1024, os.SEEK_END)
        assert b"config-2" in fh.read(64 * 1024), "no ISO config-2 volume in the last 64 MiB of the disk"
    _stop(lab, proc)
    log = lab.log()
    for line in ("GET /boot.ipxe 200", f"iPXE script for node pxe1 ({rig.mac}, deploy job)",
                 "GET /ramdisk/vmlinuz 200", "GET /ramdisk/initrd.img 200", "GET /v1/nodes/pxe1/instructions 200",
                 "GET /images/sc-test.raw 200", "GET /v1/nodes/pxe1/configdrive 200",
                 "node pxe1 result done ok"):  # fmt: skip
        assert line in log, line
    assert job.token not in log
    assert job.token not in rig.console_text(), "the token reached the serial console"
