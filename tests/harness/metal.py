"""Test harness for the bare-metal provider: an emulated lab per test (or module), always torn down.

    with metal_lab(2) as lab:
        lab.enroll()                                   # the lab's inventory.yml into its MetalStore
        lab.power_on(lab.servers[0], boot="Pxe")       # through the Redfish emulator (sushy)
        lab.wait_for_event(lab.servers[0].name, "booted", timeout=240)
        print(lab.serve_log())

Building a lab costs about 1-2 s (the deploy ramdisk is built once and cached; the accelerator probe is cached
per boot): namespace + bridge + VDE switch, libvirt domains in the host libvirtd with blank sparse disks, one
sushy-tools emulator and ``metal serve`` inside the namespace (see ``cpi/providers/baremetal/lab/``).
``metal_lab`` removes everything on exit, whatever happened inside, and checks that nothing is left
(:meth:`Lab.leftovers`).

Network rule: every address here is loopback (the emulator) or inside the lab's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cpi.providers.baremetal.lab import lifecycle as labmod
from cpi.providers.baremetal.lab import net as lab_net
from cpi.providers.baremetal.lab import proc as lab_proc
from cpi.providers.baremetal.lab import record, virt


@dataclass(frozen=True)
class LabDisk:
    path: Path
    serial: str
    size_bytes: int
    device: str  # /dev/vda, /dev/vdb as the guest sees them


@dataclass(frozen=True)
class LabServer:
    """One emulated server. ``password`` is the BMC password (hidden from ``repr``)."""

    name: str  # libvirt domain name == inventory node name
    macs: tuple[str, ...]
    bmc_address: str  # http://127.0.0.1:<port>
    system_id: str  # Redfish system id (the domain's UUID)
    username: str
    password: str = field(repr=False)
    disks: tuple[LabDisk, ...] = ()
    console_log: Path = Path()

    @property
    def system_url(self) -> str:
        return f"{self.bmc_address}/redfish/v1/Systems/{self.system_id}"

    @property
    def root_disk(self) -> LabDisk:
        return self.disks[0]

    def console(self) -> str:
        try:
            return self.console_log.read_bytes().decode(errors="replace").replace("\r", "")
        except OSError:
            return ""


@dataclass
class Lab:
    """A running lab as tests see it."""

    id: str
    dir: Path
    namespace: str
    bridge: str
    bridge_ip: str
    provisioning_url: str
    servers: list[LabServer]
    inventory_path: Path
    cpi_config_path: Path
    state_dir: Path  # the bare-metal state dir (metal.db, images/, configdrives/) shared by CPI and serve
    serve_log_path: Path | None
    record: record.LabRecord = field(repr=False)

    @classmethod
    def from_record(cls, rec: record.LabRecord) -> Lab:
        bmc = rec.bmc or {}
        servers = [
            LabServer(name=s["name"], macs=tuple(s["macs"]), bmc_address=s["bmc_address"], system_id=s["system_id"],
                      username=bmc.get("username", ""), password=bmc.get("password", ""),
                      disks=tuple(LabDisk(Path(d["path"]), d["serial"], d["size_bytes"], f"/dev/{d['target']}")
                                  for d in s["disks"]),
                      console_log=Path(s["console_log"]))
            for s in rec.servers
        ]  # fmt: skip
        return cls(id=rec.id, dir=Path(rec.dir), namespace=rec.namespace, bridge=rec.bridge, bridge_ip=rec.bridge_ip,
                   provisioning_url=rec.provisioning_url, servers=servers, inventory_path=Path(rec.inventory),
                   cpi_config_path=Path(rec.cpi_config), state_dir=Path(rec.state_dir),
                   serve_log_path=Path(rec.serve["log"]) if rec.serve else None, record=rec)  # fmt: skip

    def server(self, name: str) -> LabServer:
        return next(s for s in self.servers if s.name == name)

    # -- the BMC ---------------------------------------------------------------------------------------------
    def redfish(self, server: LabServer) -> requests.Session:
        session = requests.Session()
        session.auth = (server.username, server.password)
        return session

    def power_state(self, server: LabServer) -> str:
        r = self.redfish(server).get(server.system_url, timeout=30)
        r.raise_for_status()
        return str(r.json()["PowerState"])

    def set_boot(self, server: LabServer, target: str = "Pxe", enabled: str = "Once") -> None:
        r = self.redfish(server).patch(
            server.system_url,
            timeout=30,
            json={"Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled}},
        )
        r.raise_for_status()

    def reset(self, server: LabServer, reset_type: str) -> None:
        r = self.redfish(server).post(
            f"{server.system_url}/Actions/ComputerSystem.Reset", timeout=60, json={"ResetType": reset_type}
        )
        r.raise_for_status()

    def power_on(self, server: LabServer, boot: str | None = "Pxe") -> None:
        if boot:
            self.set_boot(server, boot)
        self.reset(server, "On")

    def power_off(self, server: LabServer) -> None:
        self.reset(server, "ForceOff")

    # -- the provisioning side -------------------------------------------------------------------------------
    def store(self) -> Any:
        from cpi.providers.baremetal.store import MetalStore

        return MetalStore(self.state_dir)

    def enroll(self) -> list[Any]:
        """Enrol the lab's inventory file into its store (CORE's ``enroll_file``: the file must validate)."""
        from cpi.providers.baremetal.inventory import enroll_file

        return list(enroll_file(self.store(), self.inventory_path, who="metal_harness"))

    def serve_log(self) -> str:
        if self.serve_log_path is None:
            return ""
        try:
            return self.serve_log_path.read_text(errors="replace")
        except OSError:
            return ""

    def http_get(self, url: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET from inside the lab's namespace (where the provisioning network is)."""
        return lab_net.http_get_in_namespace(self.namespace, url, timeout)

    def wait_for_event(self, node: str, stage: str, timeout: float, after_id: int = 0) -> Any:
        """The first event of ``node`` whose stage (or kind) is ``stage``; on timeout, fail with the node's
        console tail and the serve log tail, which say where the boot stopped."""
        store = self.store()

        def find() -> Any:
            for ev in store.events(node, after_id=after_id):
                if stage in (ev.kind, ev.data.get("stage")):
                    return ev
            return None

        return wait_until(find, timeout, lambda: f"no {stage!r} event from {node}\n{self.diagnostics(node)}")

    def diagnostics(self, node: str | None = None) -> str:
        parts = []
        for s in self.servers:
            if node in (None, s.name):
                parts.append(f"--- console of {s.name} (tail) ---\n{s.console()[-3000:]}")
        parts.append(f"--- metal serve log (tail) ---\n{self.serve_log()[-3000:]}")
        return "\n".join(parts)

    # -- after down ------------------------------------------------------------------------------------------
    def leftovers(self) -> dict[str, Any]:
        """Everything of this lab that still exists (empty after ``down``)."""
        return leftovers(self.record)


def wait_until(probe: Callable[[], Any], timeout: float, message: Callable[[], str], interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s: {message()}")
        time.sleep(interval)


@contextlib.contextmanager
def metal_lab(
    servers: int,
    *,
    memory_mib: int = 512,
    with_serve: bool = True,
    lab_dir: str | os.PathLike[str] | None = None,
    plans: str | None = None,
) -> Iterator[Lab]:
    """A lab of ``servers`` emulated servers; always removed on exit (and checked to be gone). The lab is owned by
    this process: labs of test processes that were killed before their teardown are removed first."""
    labmod.reap_orphans()
    rec = labmod.up(servers, memory_mib=memory_mib, with_serve=with_serve, lab_dir=lab_dir, plans=plans,
                    owner_pid=os.getpid())  # fmt: skip
    lab = Lab.from_record(rec)
    try:
        yield lab
    finally:
        labmod.down(rec.id, lab_dir=rec.dir)
        left = lab.leftovers()
        assert not left, f"lab {rec.id} left behind: {left}"


def metal_unavailable_reason() -> str | None:
    """Why the lab cannot exist on this machine (root, libvirt, vde_switch, sushy-emulator), or None."""
    import shutil

    from tests.harness.libvirt import libvirt_unavailable_reason

    reason = libvirt_unavailable_reason()
    if reason:
        return reason
    for tool in ("vde_switch", "dnsmasq", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    return None


def leftovers(rec: record.LabRecord) -> dict[str, Any]:
    """What of lab ``rec`` still exists: namespace, processes, domains, pool, volumes, host links, files, index.
    Works from a planned record too (``lab.plan``), for an ``up`` that failed before returning."""
    out: dict[str, Any] = {}
    if lab_net.namespace_exists(rec.namespace):
        out["namespace"] = rec.namespace
    procs = [
        name
        for name, r in (("vde_switch", rec.vde), ("sushy-emulator", rec.bmc), ("serve", rec.serve))
        if lab_proc.alive(r)
    ]
    procs += [f"pid {p}: {_cmdline(p)}" for p in _pids_mentioning(rec.dir)]
    if procs:
        out["processes"] = procs
    domains = virt.domain_states(rec.id)
    if domains:
        out["domains"] = domains
    if virt.pool_exists(rec.id):
        out["pool"] = rec.pool.get("name") or rec.id
    volumes = [d["path"] for s in rec.servers for d in s["disks"] if d["path"] and Path(d["path"]).exists()]
    if volumes:
        out["volumes"] = volumes
    links = [name for name in _host_links() if name.startswith(("sfvde", "sfbr"))]
    if links:
        out["host links"] = links
    directory = Path(rec.dir)
    if directory.exists():
        out["files"] = sorted(str(p) for p in directory.rglob("*"))[:20] or [str(directory)]
    if (record.labs_root() / "index" / rec.id).exists():
        out["index entry"] = rec.id
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def _host_links() -> list[str]:
    out = lab_net._ip("-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes() and lab_proc.starttime(int(entry.name)):
                found.append(int(entry.name))
    return found
