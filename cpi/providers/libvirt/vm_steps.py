"""create_vm as a list of steps (Packer style): each step that creates something records it in the state dict
and its cleanup removes exactly that, so a failure at any point leaves nothing behind."""

from __future__ import annotations

import contextlib
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import libvirt

from cpi import agent_settings
from cpi.errors import CloudError, VMCreationFailed
from cpi.provider_steps import ProviderStep
from cpi.providers.libvirt import domain_xml
from stemforge_base.steps import Step

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cpi.providers.libvirt.config import LibvirtConfig
    from cpi.providers.libvirt.storage import Pool
    from cpi.state import StateStore

MIB = 1024 * 1024


@dataclass
class VmPlan:
    """Everything create_vm decided before touching anything."""

    vm_cid: str
    instance_uuid: str
    agent_id: str
    stemcell_cid: str
    stemcell_volume: str
    stemcell_format: str
    root_size_bytes: int
    ephemeral_mib: int
    memory_mib: int
    vcpus: int
    machine: str
    nics: list[domain_xml.NicSpec]
    networks: dict[str, dict[str, Any]]
    env: dict[str, Any]


class VmHost(Protocol):
    """What create_vm's steps use of the libvirt provider (``LibvirtProvider`` implements it)."""

    config: LibvirtConfig
    agent_config: Mapping[str, Any]
    state: StateStore
    conn: libvirt.virConnect

    @property
    def pool(self) -> Pool: ...

    @property
    def domain_type(self) -> str: ...

    def console_log_path(self, vm_cid: str) -> Path: ...

    def config_drive_path(self, vm_cid: str, generation: int) -> Path: ...

    def write_config_drive(self, path: Path, vm_cid: str, instance_uuid: str, settings: Mapping[str, Any]) -> None:
        ...

    def remove_domain(self, name: str) -> bool: ...


#: The base of the libvirt create_vm steps.
VmStep = ProviderStep[VmHost, VmPlan]


class CreateRootDisk(VmStep):
    name = "create_root_disk"

    def run(self, state: dict[str, Any]) -> None:
        name = f"{self.plan.vm_cid}-root.qcow2"
        backing = self.p.pool.lookup(self.plan.stemcell_volume)
        if backing is None:
            raise CloudError(f"stemcell {self.plan.stemcell_cid}: its volume {self.plan.stemcell_volume} is gone")
        state["root_volume"] = name
        vol = self.p.pool.create(name, self.plan.root_size_bytes, "qcow2",
                                 backing=(backing.path(), self.plan.stemcell_format))
        state["root_path"] = vol.path()

    def cleanup(self, state: dict[str, Any]) -> None:
        if "root_volume" in state:
            self.p.pool.delete(state["root_volume"])


class CreateEphemeralDisk(VmStep):
    name = "create_ephemeral_disk"

    def run(self, state: dict[str, Any]) -> None:
        if self.plan.ephemeral_mib <= 0:
            return
        name = f"{self.plan.vm_cid}-ephemeral.qcow2"
        state["ephemeral_volume"] = name
        vol = self.p.pool.create(name, self.plan.ephemeral_mib * MIB, "qcow2")
        state["ephemeral_path"] = vol.path()

    def cleanup(self, state: dict[str, Any]) -> None:
        if "ephemeral_volume" in state:
            self.p.pool.delete(state["ephemeral_volume"])


class WriteConfigDrive(VmStep):
    name = "write_config_drive"

    def run(self, state: dict[str, Any]) -> None:
        plan = self.plan
        ephemeral = None
        if "ephemeral_path" in state:
            ephemeral = {"path": "/dev/vdb", "id": ephemeral_serial(plan.vm_cid)}
        settings = agent_settings.build(
            agent_id=plan.agent_id,
            vm_name=plan.vm_cid,
            networks=plan.networks,
            env=plan.env,
            agent_config=self.p.agent_config,
            system_disk="/dev/vda",
            ephemeral_disk=ephemeral,
        )
        state["settings"] = settings
        path = self.p.config_drive_path(plan.vm_cid, 1)
        state["config_drive"] = str(path)
        self.p.write_config_drive(path, plan.vm_cid, plan.instance_uuid, settings)

    def cleanup(self, state: dict[str, Any]) -> None:
        if "config_drive" in state:
            with contextlib.suppress(FileNotFoundError):
                Path(state["config_drive"]).unlink()


class DefineDomain(VmStep):
    name = "define_domain"

    def run(self, state: dict[str, Any]) -> None:
        plan = self.plan
        disks = [domain_xml.DiskSpec(state["root_path"], "vda", "qcow2", serial=root_serial(plan.vm_cid))]
        if "ephemeral_path" in state:
            disks.append(domain_xml.DiskSpec(state["ephemeral_path"], "vdb", "qcow2",
                                             serial=ephemeral_serial(plan.vm_cid)))
        spec = domain_xml.DomainSpec(
            name=plan.vm_cid,
            uuid=plan.instance_uuid,
            domain_type=self.p.domain_type,
            memory_mib=plan.memory_mib,
            vcpus=plan.vcpus,
            machine=plan.machine,
            disks=disks,
            cdrom=state["config_drive"],
            nics=plan.nics,
            console_log=str(self.p.console_log_path(plan.vm_cid)),
            title=f"stemforge {plan.vm_cid} (agent {plan.agent_id})",
            metadata={"agent_id": plan.agent_id, "stemcell": plan.stemcell_cid},
            spare_pcie_ports=self.p.config.spare_pcie_ports,
        )
        state["domain_name"] = plan.vm_cid
        try:
            self.p.conn.defineXML(domain_xml.domain(spec))
        except libvirt.libvirtError as exc:
            raise VMCreationFailed(f"defining domain {plan.vm_cid}: {exc.get_error_message()}") from None

    def cleanup(self, state: dict[str, Any]) -> None:
        if "domain_name" in state:
            self.p.remove_domain(state["domain_name"])


class RecordVm(VmStep):
    name = "record_vm"

    def run(self, state: dict[str, Any]) -> None:
        with self.p.state.transaction() as tx:
            tx.insert("vms", cid=self.plan.vm_cid, agent_id=self.plan.agent_id,
                      stemcell_cid=self.plan.stemcell_cid, settings=state["settings"],
                      config_drive=state["config_drive"])
        state["recorded"] = True

    def cleanup(self, state: dict[str, Any]) -> None:
        if state.get("recorded"):
            with self.p.state.transaction() as tx:
                tx.delete("vms", self.plan.vm_cid)


class StartDomain(VmStep):
    name = "start_domain"

    def run(self, state: dict[str, Any]) -> None:
        dom = self.p.conn.lookupByName(self.plan.vm_cid)
        state["started"] = True
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            raise VMCreationFailed(f"starting domain {self.plan.vm_cid}: {exc.get_error_message()}",
                                   ok_to_retry=True) from None

    def cleanup(self, state: dict[str, Any]) -> None:
        if state.get("started"):
            with contextlib.suppress(libvirt.libvirtError):
                self.p.conn.lookupByName(self.plan.vm_cid).destroy()


class ConfirmRunning(VmStep):
    name = "confirm_running"

    def run(self, state: dict[str, Any]) -> None:
        dom = self.p.conn.lookupByName(self.plan.vm_cid)
        deadline = time.monotonic() + self.p.config.start_confirm_seconds
        while True:
            st, reason = dom.state()
            if st != libvirt.VIR_DOMAIN_RUNNING:
                raise VMCreationFailed(
                    f"domain {self.plan.vm_cid} stopped right after start (state {st}, reason {reason}); "
                    f"see its console log {self.p.console_log_path(self.plan.vm_cid)}", ok_to_retry=True)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)


def steps(provider: VmHost, plan: VmPlan) -> list[Step]:
    return [cls(provider, plan) for cls in (CreateRootDisk, CreateEphemeralDisk, WriteConfigDrive, DefineDomain,
                                            RecordVm, StartDomain, ConfirmRunning)]


def new_vm_cid() -> tuple[str, str]:
    """A VM CID and the domain UUID it is derived from."""
    u = uuidlib.uuid4()
    return f"vm-{u}", str(u)


def root_serial(vm_cid: str) -> str:
    return _serial("r", vm_cid)


def ephemeral_serial(vm_cid: str) -> str:
    return _serial("e", vm_cid)


def _serial(prefix: str, cid: str) -> str:
    """A 20-character disk serial (QEMU's virtio-blk keeps only 20) unique per CID."""
    import hashlib

    return (prefix + hashlib.sha256(cid.encode()).hexdigest())[:20]
