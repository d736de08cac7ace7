"""The lab's provisioning network: a network namespace with a bridge, and a VDE switch plugged into it.

``sf-lab-<id>`` holds ``lo`` and the bridge ``sfbr0`` (``10.a.b.1/24``). ``vde_switch`` (Debian's vde2) runs inside
the namespace with its tap ``sfvde0`` enslaved to the bridge; its control socket is a directory on the filesystem,
which is not namespaced, so QEMU processes in the host namespace connect to it (``-netdev vde,sock=...``) and their
frames come out on the bridge inside the namespace. Nothing of this is routed anywhere: the namespace has no
other interface and no default route; removing the namespace removes the bridge and the tap with it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.lab import proc as lab_proc
from cpi.providers.baremetal.lab.domain import BRIDGE, VDE_TAP

IP = "ip"


class LabNetError(RuntimeError):
    """A namespace/bridge/switch command failed; the message names the command and its error output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise LabNetError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def namespaces() -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_exists(ns: str) -> bool:
    return ns in namespaces() or Path(f"/run/netns/{ns}").exists()


def create_namespace(ns: str, address: str, prefix: int = 24, ula: str | None = None) -> None:
    """The namespace with ``lo`` up and the bridge holding ``address/prefix`` and, when given, the IPv6 ULA
    ``ula`` (``fd../64``; it lets ``metal serve`` send router advertisements, without which iPXE waits ~13 s for
    IPv6 autoconfiguration on every boot). Fails if ``ns`` exists."""
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "add", BRIDGE, "type", "bridge")
    # no STP/forward delay: a port is forwarding at once (DHCP from a firmware does not wait 15 s)
    _ip("-n", ns, "link", "set", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    _ip("-n", ns, "addr", "add", f"{address}/{prefix}", "dev", BRIDGE)
    if ula:
        _ip("-n", ns, "addr", "add", ula, "dev", BRIDGE, "nodad")
    _ip("-n", ns, "link", "set", BRIDGE, "up")


def delete_namespace(ns: str) -> bool:
    """Stop every process still inside ``ns``, then delete it; False when it did not exist. Idempotent."""
    if not namespace_exists(ns):
        return False
    pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.strip().isdigit()]
    if pids:
        lab_proc.stop_pids(pids)
    _ip("netns", "del", ns, check=False)
    deadline = time.monotonic() + 10
    while namespace_exists(ns) and time.monotonic() < deadline:
        time.sleep(0.1)
        _ip("netns", "del", ns, check=False)
    if namespace_exists(ns):
        raise LabNetError(f"network namespace {ns} could not be deleted")
    return True


def namespace_pids(ns: str) -> list[int]:
    if not namespace_exists(ns):
        return []
    return [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split() if p.strip().isdigit()]


def links(ns: str) -> list[str]:
    """Interface names inside ``ns``."""
    out = _ip("-n", ns, "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def start_vde_switch(ns: str, lab_dir: Path) -> dict[str, Any]:
    """``vde_switch`` inside ``ns`` (daemon, control dir ``<lab_dir>/vde.ctl`` open to the QEMU user) with its tap
    on the bridge. Returns the record ``stop_vde_switch`` needs."""
    ctl = lab_dir / "vde.ctl"
    pidfile = lab_dir / "vde.pid"
    mgmt = lab_dir / "vde.mgmt"
    argv = [
        IP,
        "netns",
        "exec",
        ns,
        "vde_switch",
        "--sock",
        str(ctl),
        "--mode",
        "0777",
        "--dirmode",
        "0777",
        "--tap",
        VDE_TAP,
        "--mgmt",
        str(mgmt),
        "--pidfile",
        str(pidfile),
        "--daemon",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise LabNetError(f"vde_switch failed to start: {proc.stderr.strip() or proc.stdout.strip()}")
    pid = lab_proc.wait_pidfile(pidfile, 10)
    record = {**lab_proc.identity(pid), "ctl": str(ctl), "pidfile": str(pidfile), "mgmt": str(mgmt)}
    try:
        _ip("-n", ns, "link", "set", VDE_TAP, "master", BRIDGE)
        _ip("-n", ns, "link", "set", VDE_TAP, "up")
    except BaseException:
        lab_proc.stop(record)
        raise
    return record


def stop_vde_switch(record: dict[str, Any] | None) -> bool:
    return lab_proc.stop(record)


def http_get_in_namespace(namespace: str, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET ``url`` from inside ``namespace`` (the provisioning network is unreachable from the host namespace).
    Returns (status, body); status 0 when the connection failed."""
    code = (
        "import sys,urllib.request,urllib.error\n"
        "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2]));b=r.read();s=r.status\n"
        "except urllib.error.HTTPError as e:\n b=e.read();s=e.code\n"
        "except Exception as e:\n b=str(e).encode();s=0\n"
        "sys.stdout.buffer.write(b'%03d'%s+b)\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-I", "-S", "-c", code, url, str(timeout)],
        capture_output=True,
        timeout=timeout + 20,
        check=False,
    )
    out = proc.stdout
    if proc.returncode != 0 or len(out) < 3:
        return 0, proc.stderr
    return int(out[:3]), out[3:]
