"""The emulated bare-metal lab (``stemforge metal lab up|down|status``), as Ironic's and metal3's CI emulate it.

What ``up`` builds, in order (each a Packer-style step with its cleanup next to it, run by
``stemforge.steps.StepRunner``: a failure, Ctrl-C/SIGTERM or an armed failpoint ``after:<step>`` removes everything
the completed steps made, in reverse):

1. ``lab-dir``: the lab directory (default ``/var/lib/stemforge/labs/<id>``; every parent must be traversable by the
   QEMU user) and ``lab.json`` (0600), rewritten after every change, which describes everything the lab made
   (names, pids with their start times, ports, paths). ``down`` is driven by it, so it works after a crash too.
2. ``lab-namespace``: network namespace ``sf-lab-<id>`` with ``lo`` and the bridge ``sfbr0`` = ``10.a.b.1/24``
   (``a``, ``b``: the first two bytes of the 6-hex-digit id) plus an IPv6 ULA, so that ``metal serve`` sends
   router advertisements (iPXE otherwise waits ~13 s for IPv6 autoconfiguration on every network boot).
3. ``lab-vde-switch``: ``vde_switch`` inside the namespace, its tap ``sfvde0`` enslaved to the bridge
   (see :mod:`lab_net`).
4. ``lab-ramdisk``: RAMDISK's deploy ramdisk (``ensure_ramdisk()``, built once and cached).
5. ``lab-pool`` and ``lab-disks``: a private libvirt ``dir`` pool ``sf-lab-<id>`` in ``<lab>/pool`` holding, per
   server, a sparse 4 GiB root and a 1 GiB extra raw volume with distinct serials.
6. ``lab-domains``: the servers, libvirt domains ``sf-lab-<id>-s<n>`` in the HOST libvirtd (TCG unless KVM really
   works: :func:`cpi.providers.libvirt.accel.choose`), defined and powered off, network boot first, serial console
   to ``<lab>/consoles/<name>.log``; the virtio NIC reaches the bridge through the VDE switch (see
   :mod:`lab_domain` for how the NIC is declared so sushy-tools can switch Pxe/Hdd).
7. ``lab-redfish``: sushy-tools' ``sushy-emulator`` (libvirt driver) on ``127.0.0.1:<free port>`` in the host
   namespace, basic auth with a generated password, restricted to the lab's domains (see :mod:`lab_bmc`).
8. ``lab-serve``: SERVICES's ``stemforge metal serve`` inside the namespace (``ip netns exec``), serving DHCP/TFTP
   and HTTP on the bridge address; the step waits until ``/boot.ipxe`` answers from inside the namespace.
9. ``lab-files``: ``<lab>/inventory.yml`` (the enroll file for ``stemforge metal enroll``, 0600: it holds the BMC
   credentials) and ``<lab>/cpi.json`` (a CPI config for plugin ``baremetal`` whose state dir is ``<lab>/metal``,
   shared with ``metal serve``).

Why VDE and the host libvirtd (not the spec's fallback, a private libvirtd inside the namespace): verified on this
machine that a host-libvirtd domain whose NIC is plugged into a VDE switch running in the namespace gets DHCP from
dnsmasq there and iPXE-boots over HTTP (~20 s under TCG). The VDE control socket is a filesystem path, which QEMU
in the host namespace can reach, while the frames only ever appear inside the namespace. One libvirtd serves the
CPI tests and the lab, and sushy-tools' libvirt driver talks to it as it would in Ironic's CI.

The network rule holds by construction: the namespace has only ``lo`` and the bridge (no uplink, no route out), and
the emulator listens on loopback only.

``down`` removes, in reverse and idempotently: ``metal serve``, the emulator, the domains (destroy + undefine, found
by name prefix), the volumes and the pool, the VDE switch, every process still in the namespace, the namespace
(with the bridge and tap), the lab directory and its index entry. A lab built for a process (``up(owner_pid=...)``,
as the test harness does) is removed by :func:`reap_orphans` once that process is gone, so a killed test run does
not leak VMs and namespaces; labs from ``stemforge metal lab up`` have no owner and stay until ``down``.
Secrets (the BMC password) live only in ``lab.json`` and ``inventory.yml`` (both 0600); nothing logs them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpi.providers.baremetal import lab_bmc, lab_domain, lab_net, lab_proc
from stemforge.steps import StepRunner

log = logging.getLogger("stemforge.metal.lab")

LABS_ROOT_ENV = "STEMFORGE_LABS_ROOT"
DEFAULT_LABS_ROOT = "/var/lib/stemforge/labs"
SERVE_PORT = 8080
MAX_SERVERS = 16
LIBVIRT_URI = "qemu:///system"


def labs_root() -> Path:
    return Path(os.environ.get(LABS_ROOT_ENV) or DEFAULT_LABS_ROOT)


class LabError(RuntimeError):
    """Bad input or a failed lab operation; the message names the field or the resource at fault."""


@dataclass
class LabRecord:
    """Everything a lab made (``<lab>/lab.json``). ``bmc["password"]`` is a secret: ``repr`` hides it."""

    id: str
    dir: str
    dir_preexisted: bool = False
    namespace: str = ""
    bridge: str = lab_domain.BRIDGE
    bridge_ip: str = ""
    prefix: int = 24
    dhcp_range: list[str] = field(default_factory=list)
    serve_port: int = SERVE_PORT
    provisioning_url: str = ""
    state_dir: str = ""
    pool: dict[str, Any] = field(default_factory=dict)
    vde: dict[str, Any] | None = None
    bmc: dict[str, Any] | None = None
    serve: dict[str, Any] | None = None
    ramdisk: dict[str, Any] | None = None
    accelerator: str = ""
    memory_mib: int = 512
    vcpus: int = 1
    servers: list[dict[str, Any]] = field(default_factory=list)
    inventory: str = ""
    cpi_config: str = ""
    phase: str = "creating"  # creating | ready
    #: the process the lab belongs to ({"pid", "starttime"}), for labs that must not outlive it (test harness);
    #: None for labs made by ``stemforge metal lab up``, which outlive the command by design
    owner: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return f"LabRecord(id={self.id!r}, dir={self.dir!r}, phase={self.phase!r}, servers={len(self.servers)})"

    @property
    def path(self) -> Path:
        return Path(self.dir) / "lab.json"

    def save(self) -> None:
        """Atomically rewrite ``lab.json`` (mode 0600)."""
        tmp = self.path.with_name("lab.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> LabRecord:
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """The record with the BMC password masked (for ``status`` and logs)."""
        data = asdict(self)
        if data.get("bmc") and data["bmc"].get("password"):
            data["bmc"]["password"] = "***"
        return data


# -- locating labs ---------------------------------------------------------------------------------------------------
def _index_entry(lab_id: str) -> Path:
    return labs_root() / "index" / lab_id


def find_lab_dir(lab_id: str | None = None, lab_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory of lab ``lab_id`` (or ``lab_dir`` itself when given), or None when unknown."""
    if lab_dir is not None:
        return Path(lab_dir)
    if lab_id is None:
        raise LabError("name the lab: --name ID (or --state-dir DIR)")
    lab_domain.check_lab_id(lab_id)
    default = labs_root() / lab_id
    if (default / "lab.json").exists():
        return default
    entry = _index_entry(lab_id)
    with contextlib.suppress(OSError):
        return Path(entry.read_text().strip())
    return default if default.exists() else None


def list_labs() -> list[str]:
    """Ids of the labs known under the labs root (directories and index entries)."""
    root = labs_root()
    ids = set()
    if root.is_dir():
        ids |= {p.name for p in root.iterdir() if lab_domain.LAB_ID_RE.match(p.name)}
    if (root / "index").is_dir():
        ids |= {p.name for p in (root / "index").iterdir() if lab_domain.LAB_ID_RE.match(p.name)}
    ids |= {
        ns[len(lab_domain.NAMESPACE_PREFIX) :]
        for ns in lab_net.namespaces()
        if ns.startswith(lab_domain.NAMESPACE_PREFIX)
        and lab_domain.LAB_ID_RE.match(ns[len(lab_domain.NAMESPACE_PREFIX) :])
    }
    return sorted(ids)


def load(lab_id: str | None = None, lab_dir: str | os.PathLike[str] | None = None) -> LabRecord:
    found = find_lab_dir(lab_id, lab_dir)
    if found is None or not (found / "lab.json").exists():
        raise LabError(f"no lab {lab_id or lab_dir}: {found or labs_root() / str(lab_id)}/lab.json does not exist")
    return LabRecord.load(found / "lab.json")


# -- libvirt ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _libvirt() -> Iterator[Any]:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised; libvirt must not print them
    conn = libvirt.open(LIBVIRT_URI)
    try:
        yield conn
    finally:
        conn.close()


def remove_domains(lab_id: str) -> list[str]:
    """Destroy and undefine every domain named ``sf-lab-<id>-*``. Idempotent."""
    import libvirt

    removed = []
    prefix = lab_domain.domain_prefix(lab_id)
    with _libvirt() as conn:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if not dom.name().startswith(prefix):
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                removed.append(dom.name())
    return removed


def remove_pool(lab_id: str) -> list[str]:
    """Delete the lab pool's volumes, then stop and undefine the pool. Idempotent."""
    import libvirt

    removed: list[str] = []
    with _libvirt() as conn:
        try:
            pool = conn.storagePoolLookupByName(lab_domain.pool_name(lab_id))
        except libvirt.libvirtError:
            return removed
        with contextlib.suppress(libvirt.libvirtError):
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    name = vol.name()
                    vol.delete(0)
                    removed.append(name)
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()
        removed.append(f"pool {lab_domain.pool_name(lab_id)}")
    return removed


def domain_states(lab_id: str) -> dict[str, str]:
    import libvirt

    prefix = lab_domain.domain_prefix(lab_id)
    out = {}
    with _libvirt() as conn:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.name().startswith(prefix):
                    out[dom.name()] = "running" if dom.isActive() else "shut off"
    return out


def pool_exists(lab_id: str) -> bool:
    import libvirt

    with _libvirt() as conn:
        try:
            conn.storagePoolLookupByName(lab_domain.pool_name(lab_id))
            return True
        except libvirt.libvirtError:
            return False


# -- running commands inside the namespace ---------------------------------------------------------------------------
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


# -- the steps -------------------------------------------------------------------------------------------------------
@dataclass
class StepLabDir:
    name: str = "lab-dir"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        path = Path(rec.dir)
        if path.exists() and any(path.iterdir()):
            raise LabError(f"state-dir {path} is not empty (a lab directory must be new or empty)")
        rec.dir_preexisted = path.exists()
        path.mkdir(parents=True, exist_ok=True)
        state["lab_dir_made"] = True
        os.chmod(path, 0o755)
        _check_traversable(path)
        for sub in ("consoles", "metal", "logs"):
            (path / sub).mkdir(exist_ok=True)
        rec.save()
        if path != labs_root() / rec.id:
            entry = _index_entry(rec.id)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_text(str(path) + "\n")

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("lab_dir_made"):
            remove_lab_files(rec)


@dataclass
class StepNamespace:
    name: str = "lab-namespace"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if lab_net.namespace_exists(rec.namespace):
            raise LabError(
                f"network namespace {rec.namespace} already exists (lab {rec.id} is up; "
                f"`stemforge metal lab down --name {rec.id}` removes it)"
            )
        state["namespace_made"] = True
        lab_net.create_namespace(rec.namespace, rec.bridge_ip, rec.prefix, lab_domain.bridge_ula(rec.id))
        log.info("namespace %s: bridge %s %s/%d", rec.namespace, rec.bridge, rec.bridge_ip, rec.prefix)

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("namespace_made") and lab_net.delete_namespace(rec.namespace):
            log.info("deleted namespace %s", rec.namespace)


@dataclass
class StepVdeSwitch:
    name: str = "lab-vde-switch"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        rec.vde = lab_net.start_vde_switch(rec.namespace, Path(rec.dir))
        rec.save()
        log.info("vde_switch pid %d (socket %s)", rec.vde["pid"], rec.vde["ctl"])

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if lab_net.stop_vde_switch(rec.vde):
            log.info("stopped vde_switch pid %s", (rec.vde or {}).get("pid"))


@dataclass
class StepRamdisk:
    name: str = "lab-ramdisk"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if not state.get("with_ramdisk", True):
            return
        from cpi.providers.baremetal.ramdisk.build import ensure_ramdisk

        art = ensure_ramdisk(progress=lambda line: log.info("ramdisk: %s", line))
        rec.ramdisk = {"dir": str(art.directory), "kernel": str(art.kernel), "initrd": str(art.initrd), "key": art.key}
        rec.save()

    def cleanup(self, state: dict[str, Any]) -> None:
        """The ramdisk is a shared cache entry: nothing to remove."""


@dataclass
class StepPool:
    name: str = "lab-pool"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        import libvirt

        from cpi.providers.libvirt import domain_xml

        rec: LabRecord = state["lab"]
        path = Path(rec.dir) / "pool"
        path.mkdir(mode=0o755, exist_ok=True)
        rec.pool = {"name": lab_domain.pool_name(rec.id), "path": str(path)}
        rec.save()
        with _libvirt() as conn:
            try:
                conn.storagePoolLookupByName(rec.pool["name"])
                raise LabError(f"libvirt storage pool {rec.pool['name']} already exists")
            except libvirt.libvirtError:
                pass
            state["pool_made"] = True
            pool = conn.storagePoolDefineXML(domain_xml.dir_pool(rec.pool["name"], str(path)), 0)
            pool.create(0)

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("pool_made"):
            remove_pool(rec.id)
            log.info("removed pool %s and its volumes", rec.pool.get("name"))


@dataclass
class StepDisks:
    name: str = "lab-disks"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        with _libvirt() as conn:
            pool = conn.storagePoolLookupByName(rec.pool["name"])
            for server in rec.servers:
                for disk in server["disks"]:
                    vol = pool.createXML(lab_domain.raw_volume(disk["volume"], disk["size_bytes"]), 0)
                    disk["path"] = vol.path()
                rec.save()

    def cleanup(self, state: dict[str, Any]) -> None:
        """The volumes go with the pool (``lab-pool``'s cleanup)."""


@dataclass
class StepDomains:
    name: str = "lab-domains"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        from cpi.providers.libvirt import accel

        rec: LabRecord = state["lab"]
        root = labs_root()
        root.mkdir(parents=True, exist_ok=True)
        rec.accelerator = accel.choose("auto", root, log)
        assert rec.vde is not None
        with _libvirt() as conn:
            for server in rec.servers:
                spec = lab_domain.LabDomainSpec(
                    name=server["name"],
                    uuid=server["uuid"],
                    domain_type=rec.accelerator,
                    memory_mib=rec.memory_mib,
                    vcpus=rec.vcpus,
                    disks=[
                        lab_domain.LabDiskSpec(
                            path=d["path"], target=d["target"], serial=d["serial"], size_bytes=d["size_bytes"]
                        )
                        for d in server["disks"]
                    ],
                    macs=server["macs"],
                    vde_socket=rec.vde["ctl"],
                    console_log=server["console_log"],
                )
                state["domains_made"] = True
                conn.defineXML(lab_domain.domain(spec))
        rec.save()
        log.info(
            "defined %d server(s) (%s, powered off, network boot first)",
            len(rec.servers),
            "KVM" if rec.accelerator == "kvm" else "TCG",
        )

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("domains_made"):
            removed = remove_domains(rec.id)
            log.info("removed domain(s) %s", ", ".join(removed) or "(none)")


@dataclass
class StepRedfish:
    name: str = "lab-redfish"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        allowed = [s["name"] for s in rec.servers] + [s["uuid"] for s in rec.servers]
        # record where it will live before it runs, so a crash mid-start is still found by ``down``
        rec.bmc = {"dir": str(Path(rec.dir) / "redfish")}
        rec.save()
        rec.bmc = lab_bmc.start(Path(rec.dir) / "redfish", allowed)
        for server in rec.servers:
            server["bmc_address"] = rec.bmc["address"]
            server["system_id"] = server["uuid"]
        rec.save()
        log.info("Redfish emulator on %s (pid %d)", rec.bmc["address"], rec.bmc["pid"])

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        stop_bmc(rec)


@dataclass
class StepServe:
    name: str = "lab-serve"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if not state.get("with_serve", True):
            log.info("not starting metal serve (asked not to): the lab has no DHCP/HTTP services")
            return
        log_path = Path(rec.dir) / "logs" / "serve.log"
        ready = Path(rec.dir) / "logs" / "serve.ready"
        argv = ["ip", "netns", "exec", rec.namespace, *serve_argv(rec, ready)]
        proc = lab_proc.spawn(argv, log_path)
        rec.serve = {
            **lab_proc.identity(proc.pid),
            "log": str(log_path),
            "port": rec.serve_port,
            "ready_file": str(ready),
        }
        rec.save()
        deadline = time.monotonic() + 60
        url = f"{rec.provisioning_url}/boot.ipxe"
        while not _ready_for(ready, proc.pid):
            if proc.poll() is not None:
                raise LabError(
                    f"metal serve exited with status {proc.returncode}; its log ends with: {_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise LabError(f"metal serve was not ready within 60s; its log ends with: {_tail(log_path)}")
            time.sleep(0.1)
        status, body = http_get_in_namespace(rec.namespace, url, timeout=5)
        if status != 200:
            raise LabError(
                f"metal serve is ready but {url} answered {status} from inside {rec.namespace}: {body[:200]!r}"
            )
        log.info("metal serve answering on %s (pid %d)", rec.provisioning_url, rec.serve["pid"])

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if lab_proc.stop(rec.serve):
            log.info("stopped metal serve")


@dataclass
class StepFiles:
    name: str = "lab-files"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        from cpi.providers.baremetal import lab_files

        rec: LabRecord = state["lab"]
        rec.inventory = str(Path(rec.dir) / "inventory.yml")
        rec.cpi_config = str(Path(rec.dir) / "cpi.json")
        lab_files.write_inventory(rec, Path(rec.inventory))
        lab_files.write_cpi_config(rec, Path(rec.cpi_config))
        rec.phase = "ready"
        rec.save()

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        for p in (rec.inventory, rec.cpi_config):
            if p:
                Path(p).unlink(missing_ok=True)


STEP_NAMES = (
    "lab-dir",
    "lab-namespace",
    "lab-vde-switch",
    "lab-ramdisk",
    "lab-pool",
    "lab-disks",
    "lab-domains",
    "lab-redfish",
    "lab-serve",
    "lab-files",
)


def _steps() -> list[Any]:
    return [
        StepLabDir(),
        StepNamespace(),
        StepVdeSwitch(),
        StepRamdisk(),
        StepPool(),
        StepDisks(),
        StepDomains(),
        StepRedfish(),
        StepServe(),
        StepFiles(),
    ]


# -- serve (SERVICES's process) ------------------------------------------------------------------------------------
def serve_argv(rec: LabRecord, ready_file: Path) -> list[str]:
    """``metal serve`` for this lab (run inside the namespace), with a ready file it writes once DHCP, TFTP and
    HTTP all answer."""
    if rec.ramdisk is None:
        raise LabError("metal serve needs the deploy ramdisk (the lab-ramdisk step did not run)")
    return [
        sys.executable,
        "-m",
        "cpi.providers.baremetal.services.serve",
        "--state-dir",
        rec.state_dir,
        "--listen",
        rec.bridge_ip,
        "--http-port",
        str(rec.serve_port),
        "--interface",
        rec.bridge,
        "--dhcp-range",
        f"{rec.dhcp_range[0]},{rec.dhcp_range[1]}",
        "--ramdisk-dir",
        rec.ramdisk["dir"],
        "--ready-file",
        str(ready_file),
    ]


# -- up / down / status ----------------------------------------------------------------------------------------------
def plan(
    servers: int,
    *,
    lab_id: str | None = None,
    lab_dir: str | os.PathLike[str] | None = None,
    memory_mib: int = 512,
    vcpus: int = 1,
) -> LabRecord:
    """Validate the request and compute every name, address and path (nothing is created)."""
    if isinstance(servers, bool) or not isinstance(servers, int) or not 1 <= servers <= MAX_SERVERS:
        raise LabError(f"servers: must be an integer from 1 to {MAX_SERVERS}, got {servers!r}")
    if not isinstance(memory_mib, int) or not 128 <= memory_mib <= 8192:
        raise LabError(f"memory_mib: must be an integer from 128 to 8192, got {memory_mib!r}")
    if not isinstance(vcpus, int) or not 1 <= vcpus <= 4:
        raise LabError(f"vcpus: must be an integer from 1 to 4, got {vcpus!r}")
    if lab_id is None:
        lab_id = _new_id()
    try:
        lab_domain.check_lab_id(lab_id)
    except ValueError as exc:
        raise LabError(f"name: {exc}") from None
    directory = Path(lab_dir) if lab_dir is not None else labs_root() / lab_id
    if not directory.is_absolute():
        directory = directory.absolute()
    rec = LabRecord(
        id=lab_id,
        dir=str(directory),
        namespace=lab_domain.namespace(lab_id),
        bridge_ip=lab_domain.bridge_ip(lab_id),
        dhcp_range=list(lab_domain.dhcp_range(lab_id)),
        memory_mib=memory_mib,
        vcpus=vcpus,
        state_dir=str(directory / "metal"),
    )
    rec.provisioning_url = f"http://{rec.bridge_ip}:{rec.serve_port}"
    for n in range(servers):
        name = lab_domain.server_name(lab_id, n)
        disks = []
        for d, (gib, target) in enumerate(((lab_domain.ROOT_DISK_GIB, "vda"), (lab_domain.EXTRA_DISK_GIB, "vdb"))):
            disks.append(
                {
                    "volume": f"{name}-disk{d}.raw",
                    "path": "",
                    "target": target,
                    "serial": lab_domain.disk_serial(lab_id, n, d),
                    "size_bytes": gib * lab_domain.GIB,
                }
            )
        rec.servers.append(
            {
                "name": name,
                "uuid": str(uuid.uuid4()),
                "macs": [lab_domain.mac(lab_id, n)],
                "disks": disks,
                "console_log": str(directory / "consoles" / f"{name}.log"),
                "bmc_address": "",
                "system_id": "",
            }
        )
    return rec


def up(
    servers: int,
    *,
    lab_id: str | None = None,
    lab_dir: str | os.PathLike[str] | None = None,
    memory_mib: int = 512,
    vcpus: int = 1,
    with_serve: bool = True,
    with_ramdisk: bool = True,
    owner_pid: int | None = None,
    runner: StepRunner | None = None,
) -> LabRecord:
    """Build a lab of ``servers`` emulated servers; on any failure (or interrupt) nothing is left behind.

    ``owner_pid``: the lab belongs to that process; once it is gone, :func:`reap_orphans` removes the lab."""
    rec = plan(servers, lab_id=lab_id, lab_dir=lab_dir, memory_mib=memory_mib, vcpus=vcpus)
    if owner_pid is not None:
        rec.owner = lab_proc.identity(owner_pid)
    if lab_net.namespace_exists(rec.namespace):
        raise LabError(f"name: lab {rec.id} already exists (namespace {rec.namespace})")
    runner = runner or StepRunner(log=log)
    started = time.monotonic()
    log.info("lab %s: %d server(s) in %s", rec.id, servers, rec.dir)
    state: dict[str, Any] = {"lab": rec, "with_serve": with_serve, "with_ramdisk": with_ramdisk}
    runner.run(_steps(), state)
    log.info("lab %s up in %.1fs", rec.id, time.monotonic() - started)
    return rec


def stop_bmc(rec: LabRecord) -> bool:
    """Stop the emulator by its record, and any emulator still running with this lab's config (a crash between
    start and record)."""
    stopped = lab_bmc.stop(rec.bmc)
    config = str(Path(rec.dir) / "redfish" / "emulator.conf")
    for pid in _pids_with_arg(config):
        stopped = lab_proc.stop({"pid": pid, "starttime": lab_proc.starttime(pid)}) or stopped
    return stopped


def remove_lab_files(rec: LabRecord) -> None:
    path = Path(rec.dir)
    if rec.dir_preexisted:
        for child in path.iterdir() if path.exists() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
    _index_entry(rec.id).unlink(missing_ok=True)


def down(lab_id: str | None = None, *, lab_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove everything lab ``lab_id`` made (driven by ``lab.json``, names as a fallback); returns what was
    removed. Idempotent: a second call, or one for a lab that never finished ``up``, is fine."""
    found = find_lab_dir(lab_id, lab_dir)
    rec: LabRecord | None = None
    if found is not None and (found / "lab.json").exists():
        with contextlib.suppress(OSError, ValueError, TypeError):
            rec = LabRecord.load(found / "lab.json")
    if rec is None:
        if lab_id is None:
            raise LabError(f"no lab.json in {found}: name the lab with --name ID")
        rec = LabRecord(id=lab_id, dir=str(found or labs_root() / lab_id), namespace=lab_domain.namespace(lab_id))
    lab_id = rec.id
    removed: list[str] = []
    if lab_proc.stop(rec.serve):
        removed.append("metal serve")
    if stop_bmc(rec):
        removed.append("redfish emulator")
    removed += [f"domain {d}" for d in remove_domains(lab_id)]
    removed += [f"volume {v}" if not v.startswith("pool ") else v for v in remove_pool(lab_id)]
    if lab_net.stop_vde_switch(rec.vde):
        removed.append("vde_switch")
    if lab_net.delete_namespace(rec.namespace or lab_domain.namespace(lab_id)):
        removed.append(f"namespace {rec.namespace}")
    if found is not None and found.exists():
        remove_lab_files(rec)
        removed.append(f"directory {found}")
    _index_entry(lab_id).unlink(missing_ok=True)
    for line in removed:
        log.info("removed %s", line)
    return removed


def reap_orphans() -> list[str]:
    """Remove every lab whose owner process is gone (a test run that was killed before its teardown). Labs
    without an owner are never touched. Returns the ids removed."""
    reaped = []
    for lab_id in list_labs():
        try:
            rec = load(lab_id)
        except (LabError, OSError, ValueError, TypeError):
            continue
        if rec.owner and not lab_proc.alive(rec.owner):
            log.info("lab %s: its owner (pid %s) is gone; removing it", lab_id, rec.owner.get("pid"))
            try:
                down(lab_id, lab_dir=rec.dir)
            except Exception as exc:  # noqa: BLE001 - another process may be reaping it too; never fail the caller
                log.warning("lab %s: removing it failed: %s", lab_id, exc)
                continue
            reaped.append(lab_id)
    return reaped


def status(lab_id: str | None = None, *, lab_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What the lab is and what of it is alive now (credentials masked)."""
    rec = load(lab_id, lab_dir)
    states = domain_states(rec.id)
    return {
        "id": rec.id,
        "dir": rec.dir,
        "phase": rec.phase,
        "namespace": rec.namespace,
        "namespace_exists": lab_net.namespace_exists(rec.namespace),
        "bridge_ip": rec.bridge_ip,
        "provisioning_url": rec.provisioning_url,
        "vde_switch": "running" if lab_proc.alive(rec.vde) else "stopped",
        "redfish": {"address": (rec.bmc or {}).get("address"), "running": lab_proc.alive(rec.bmc)},
        "serve": {"running": lab_proc.alive(rec.serve), "log": (rec.serve or {}).get("log")},
        "servers": [
            {
                "name": s["name"],
                "power": states.get(s["name"], "missing"),
                "macs": s["macs"],
                "system_id": s["system_id"],
                "console_log": s["console_log"],
            }
            for s in rec.servers
        ],
        "inventory": rec.inventory,
        "cpi_config": rec.cpi_config,
        "state_dir": rec.state_dir,
    }


# -- helpers ---------------------------------------------------------------------------------------------------------
def _new_id() -> str:
    for _ in range(100):
        lab_id = secrets.token_hex(3)
        a, b = lab_domain.subnet(lab_id)
        if a == 0 or b == 0:
            continue
        if not lab_net.namespace_exists(lab_domain.namespace(lab_id)) and not (labs_root() / lab_id).exists():
            return lab_id
    raise LabError("could not pick a free lab id")


def _check_traversable(path: Path) -> None:
    """QEMU runs as another user: every parent of the lab directory must be o+x."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise LabError(
                f"state-dir: {parent} is not traversable by the QEMU user (mode {mode & 0o777:o}); "
                f"use a directory under {DEFAULT_LABS_ROOT}"
            )


def _pids_with_arg(arg: str) -> list[int]:
    out = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if arg.encode() in argv:
                out.append(int(entry.name))
    return out


def _ready_for(ready_file: Path, pid: int) -> bool:
    """The ready file exists and was written by ``pid`` (a killed earlier serve can leave a stale one)."""
    try:
        return int(json.loads(ready_file.read_text())["pid"]) == pid
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"
