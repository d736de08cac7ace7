"""The steps of ``lab up`` (Packer-style, run by ``stemforge_base.steps.StepRunner``; each cleanup undoes exactly what
its run made), in the order :func:`steps` lists them; :mod:`.lifecycle` says what each builds."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.lab import bmc as lab_bmc
from cpi.providers.baremetal.lab import domain as lab_domain
from cpi.providers.baremetal.lab import files as lab_files
from cpi.providers.baremetal.lab import net as lab_net
from cpi.providers.baremetal.lab import plans as lab_plans
from cpi.providers.baremetal.lab import proc as lab_proc
from cpi.providers.baremetal.lab import virt
from cpi.providers.baremetal.lab.net import http_get_in_namespace
from cpi.providers.baremetal.lab.record import (
    DEFAULT_LABS_ROOT,
    LabError,
    LabRecord,
    index_entry,
    labs_root,
    remove_lab_files,
)
from cpi.providers.baremetal.ramdisk.build import ensure_ramdisk
from cpi.providers.libvirt import accel, domain_xml
from stemforge_base.steps import Step

log = logging.getLogger("stemforge.metal.lab")


@dataclass
class StepLabDir(Step):
    name: str = "lab_dir"
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
            entry = index_entry(rec.id)
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.write_text(str(path) + "\n")

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("lab_dir_made"):
            remove_lab_files(rec)


@dataclass
class StepNamespace(Step):
    name: str = "lab_namespace"
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
class StepVdeSwitch(Step):
    name: str = "lab_vde_switch"
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
class StepRamdisk(Step):
    name: str = "lab_ramdisk"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if not state.get("with_ramdisk", True):
            return
        art = ensure_ramdisk(progress=lambda line: log.info("ramdisk: %s", line))
        rec.ramdisk = {"dir": str(art.directory), "kernel": str(art.kernel), "initrd": str(art.initrd), "key": art.key}
        rec.save()

    def cleanup(self, state: dict[str, Any]) -> None:
        """The ramdisk is a shared cache entry: nothing to remove."""


@dataclass
class StepPool(Step):
    name: str = "lab_pool"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        import libvirt

        rec: LabRecord = state["lab"]
        path = Path(rec.dir) / "pool"
        path.mkdir(mode=0o755, exist_ok=True)
        rec.pool = {"name": lab_domain.pool_name(rec.id), "path": str(path)}
        rec.save()
        with virt.connect() as conn:
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
            virt.remove_pool(rec.id)
            log.info("removed pool %s and its volumes", rec.pool.get("name"))


@dataclass
class StepDisks(Step):
    name: str = "lab_disks"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        with virt.connect() as conn:
            pool = conn.storagePoolLookupByName(rec.pool["name"])
            for server in rec.servers:
                for disk in server["disks"]:
                    vol = pool.createXML(lab_domain.raw_volume(disk["volume"], disk["size_bytes"]), 0)
                    disk["path"] = vol.path()
                if server.get("nvram"):
                    copy_nvram_template(Path(server["nvram"]))
                rec.save()

    def cleanup(self, state: dict[str, Any]) -> None:
        """The volumes go with the pool (``lab_pool``'s cleanup), the NVRAM files with the lab directory."""


@dataclass
class StepDomains(Step):
    name: str = "lab_domains"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        root = labs_root()
        root.mkdir(parents=True, exist_ok=True)
        rec.accelerator = accel.choose("auto", root, log)
        assert rec.vde is not None
        with virt.connect() as conn:
            for server in rec.servers:
                state["domains_made"] = True
                conn.defineXML(lab_domain.domain(domain_spec(rec, server)))
        rec.save()
        log.info(
            "defined %d server(s) (%s, powered off, network boot first)",
            len(rec.servers),
            "KVM" if rec.accelerator == "kvm" else "TCG",
        )

    def cleanup(self, state: dict[str, Any]) -> None:
        rec: LabRecord = state["lab"]
        if state.get("domains_made"):
            removed = virt.remove_domains(rec.id)
            log.info("removed domain(s) %s", ", ".join(removed) or "(none)")


@dataclass
class StepRedfish(Step):
    name: str = "lab_redfish"
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
class StepServe(Step):
    name: str = "lab_serve"
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
class StepFiles(Step):
    name: str = "lab_files"
    temporary: bool = False

    def run(self, state: dict[str, Any]) -> None:
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
    "lab_dir",
    "lab_namespace",
    "lab_vde_switch",
    "lab_ramdisk",
    "lab_pool",
    "lab_disks",
    "lab_domains",
    "lab_redfish",
    "lab_serve",
    "lab_files",
)


def steps() -> list[Any]:
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


def domain_spec(rec: LabRecord, server: dict[str, Any]) -> lab_domain.LabDomainSpec:
    """The domain of ``server`` as its record says (only its attached disks)."""
    assert rec.vde is not None
    return lab_domain.LabDomainSpec(
        name=server["name"],
        uuid=server["uuid"],
        domain_type=rec.accelerator,
        memory_mib=rec.memory_mib,
        vcpus=rec.vcpus,
        disks=[
            lab_domain.LabDiskSpec(
                path=d["path"],
                target=d["target"],
                serial=d["serial"],
                size_bytes=d["size_bytes"],
                bus=d.get("bus", "virtio"),
                vendor=d.get("vendor", ""),
                model=d.get("model", ""),
            )
            for d in server["disks"]
            if d.get("attached", True)
        ],
        macs=server["macs"],
        vde_socket=rec.vde["ctl"],
        console_log=server["console_log"],
        uefi=(lab_plans.OVMF_CODE, server["nvram"]) if server.get("firmware") == "uefi" else None,
    )


def copy_nvram_template(path: Path) -> None:
    """The domain's own UEFI variable store: a copy of OVMF's empty one (Debian's ``ovmf`` package)."""
    for firmware_file in (lab_plans.OVMF_CODE, lab_plans.OVMF_VARS):
        if not Path(firmware_file).is_file():
            raise LabError(f"plans: a uefi server needs {firmware_file} (apt-get install ovmf)")
    path.parent.mkdir(mode=0o755, exist_ok=True)
    shutil.copyfile(lab_plans.OVMF_VARS, path)
    path.chmod(0o644)


# -- serve (SERVICES's process) ------------------------------------------------------------------------------------
def serve_argv(rec: LabRecord, ready_file: Path) -> list[str]:
    """``metal serve`` for this lab (run inside the namespace), with a ready file it writes once DHCP, TFTP and
    HTTP all answer."""
    if rec.ramdisk is None:
        raise LabError("metal serve needs the deploy ramdisk (the lab-ramdisk step did not run)")
    return [
        sys.executable,
        "-m",
        "cpi.providers.baremetal.serve",
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


def stop_bmc(rec: LabRecord) -> bool:
    """Stop the emulator by its record, and any emulator still running with this lab's config (a crash between
    start and record)."""
    stopped = lab_bmc.stop(rec.bmc)
    config = str(Path(rec.dir) / "redfish" / "emulator.conf")
    for pid in _pids_with_arg(config):
        stopped = lab_proc.stop({"pid": pid, "starttime": lab_proc.starttime(pid)}) or stopped
    return stopped


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
