"""The bare-metal provider: BOSH VMs as enrolled servers deployed by PXE/iPXE and our ramdisk.

Resource naming: stemcells ``sc-<uuid>`` (``<state_dir>/images/<cid>.raw`` served by ``metal serve`` at
``/images/<cid>.raw``, sha256 recorded), VMs ``vm-<uuid>`` (the claim of one server: ``nodes.claimed_by``), disks
``disk-<uuid>`` (one of a server's extra local disks, reserved by create_disk with VM locality).

create_vm is a list of steps (``stemforge_base.steps``) whose cleanups undo exactly what ran: claim a matching
available server atomically (its lock held for the whole call) → write the config drive (agent settings with the
server's real MACs, phone-home URL and a new token under ``meta``) → record the VM → deploy through the ramdisk
(one-time PXE, power on, follow its stages) → boot from disk → confirm the server booted it without the guest's
help (the BMC reports it on; with ``boot_check`` ``dhcp``/``auto`` its OS asked ``metal serve`` for an address: see
``config.py``) → only with ``phone_home: true``, wait for the OS's phone-home. Every wait is bounded by
``timeouts``. On failure the server is powered off, cleaned and released (a server whose BMC stayed
unreachable goes to maintenance instead, and create_vm moves on to the next matching server). Nothing secret
(BMC passwords, tokens, ``env``) is ever logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpi import agent_settings, configdrive
from cpi.errors import CloudError, DiskNotAttached, DiskNotFound, NotSupported, VMCreationFailed, VMNotFound
from cpi.provider import DiskHint, Networks, Provider, VmRequest
from cpi.provider_steps import ProviderStep, run_create_vm
from cpi.providers.baremetal import inventory, phone_home, placement, states, stemcell_images
from cpi.providers.baremetal.config import (
    DHCP_EVENT,
    DISK_CLOUD_PROPERTIES_SCHEMA,
    VM_CLOUD_PROPERTIES_SCHEMA,
    MetalConfig,
)
from cpi.providers.baremetal.instructions import InstructionsError, validate_instructions
from cpi.providers.baremetal.interfaces import hardware_for
from cpi.providers.baremetal.interfaces.base import (
    POWER_OFF,
    POWER_ON,
    BmcUnreachable,
    DeployFailed,
    InterfaceError,
    Task,
)
from cpi.providers.baremetal.plan_disks import root_disk, system_disk_hint
from cpi.providers.baremetal.store import MetalStore, Node
from cpi.validation import validate
from stemforge_base.hashing import sha256_file
from stemforge_base.steps import Step

MIB = 1024 * 1024


class BareMetalProvider(Provider):
    name = "baremetal"

    def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
        super().__init__(properties, logger)
        self.config = MetalConfig.from_properties(properties.get("baremetal"), properties.get("state_dir"))
        self.agent_config: Mapping[str, Any] = properties.get("agent") or {}
        self.store = MetalStore(self.config.state_dir)
        self.images_dir = self.config.state_dir / "images"
        self.drives_dir = self.config.state_dir / "configdrives"
        for directory in (self.images_dir, self.drives_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
        self.who = "cpi"

    # -- helpers ------------------------------------------------------------------------------------------------
    def _url(self, what: str) -> str:
        if not self.config.provisioning_url:
            raise CloudError("baremetal config: 'provisioning_url' is required to deploy servers")
        return f"{self.config.provisioning_url}{what}"

    @contextlib.contextmanager
    def _vm_task(self, vm_cid: str, method: str) -> Any:
        """The task of the server running ``vm_cid`` (its lock held); VMNotFound when no server runs it."""
        node = self.store.node_for_vm(vm_cid)
        if node is None:
            raise VMNotFound(f"{method}: VM {vm_cid} not found")
        with Task.acquire(self.store, node.name, self.config, self.log, self.who) as task:
            if task.node.claimed_by != vm_cid:
                raise VMNotFound(f"{method}: VM {vm_cid} not found (server {node.name} was released meanwhile)")
            yield task

    def _bmc_step(self, task: Task, fn: Any) -> Any:
        """Run ``fn``; a BMC that stayed unreachable puts the server in maintenance with the reason."""
        try:
            return fn()
        except BmcUnreachable as exc:
            self.store.set_maintenance(task.node.name, True, exc.message, self.who)
            raise

    # -- stemcells ----------------------------------------------------------------------------------------------
    def create_stemcell(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        path = Path(image_path)
        if not path.is_file():
            raise CloudError(f"create_stemcell: image {image_path} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise CloudError("create_stemcell: light stemcells are not supported on bare metal (no image to deploy)")
        cid = f"sc-{uuidlib.uuid4()}"
        target = self.images_dir / f"{cid}.raw"
        tmp = self.images_dir / f".{cid}.raw.tmp"
        started = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="stemforge-stemcell-", dir=self.config.state_dir) as work:
                root = stemcell_images.root_image(path, Path(work))
                stemcell_images.to_raw(root, tmp)
            sha256, size = sha256_file(tmp), tmp.stat().st_size
            rootfs = stemcell_images.root_partition(tmp)  # for file-based deploys; None: whole-disk only
            streams = stemcell_images.streams(tmp, rootfs, self.images_dir, cid)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            self.store.put_stemcell(cid, str(target), sha256, size, "raw", dict(tags), rootfs, streams)
        except BaseException:
            for leftover in (tmp, target, *stemcell_images.stream_paths(self.images_dir, cid)):
                leftover.unlink(missing_ok=True)
            raise
        self.log.info("create_stemcell: %s: raw image of %d MiB, sha256 %s, %s; streamed as %s (%.1fs)", cid,
                      size // MIB, sha256, stemcell_images.describe(rootfs), stemcell_images.describe_streams(streams),
                      time.monotonic() - started)  # fmt: skip
        return cid

    def delete_stemcell(self, stemcell_cid: str) -> None:
        record = self.store.stemcell(stemcell_cid)
        path = Path(record["path"]) if record else self.images_dir / f"{Path(stemcell_cid).name}.raw"
        path.unlink(missing_ok=True)
        for stream in stemcell_images.stream_paths(self.images_dir, Path(stemcell_cid).name):
            stream.unlink(missing_ok=True)
        self.store.delete_stemcell(stemcell_cid)

    # -- VMs: choosing a server ---------------------------------------------------------------------------------
    def _matches(self, node: Node, props: Mapping[str, Any]) -> bool:
        plan = node.plan
        if "node" in props and node.name != props["node"]:
            return False
        if "nodes" in props and node.name not in props["nodes"]:
            return False
        if "arch" in props and plan.get("arch") != props["arch"]:
            return False
        if int(plan.get("cpus", 0)) < int(props.get("cpu", 0)):
            return False
        if int(plan.get("memory_mib", 0)) < int(props.get("ram", 0)):
            return False
        labels = plan.get("labels") or {}
        if any(labels.get(k) != v for k, v in (props.get("labels") or {}).items()):
            return False
        root_mib = int(float(root_disk(node).get("size_gib", 0)) * 1024)
        need = int(props.get("ephemeral_disk_size", 0)) + int(props.get("root_disk_size", 0))
        return root_mib >= need

    @staticmethod
    def _plan_key(node: Node) -> tuple[Any, ...]:
        plan = node.plan
        disks = sum(float(d.get("size_gib", 0)) for d in plan.get("disks", []))
        return (int(plan.get("cpus", 0)), int(plan.get("memory_mib", 0)), disks, node.name)

    def _candidates(self, props: Mapping[str, Any]) -> list[Node]:
        return sorted((n for n in self.store.nodes() if self._matches(n, props)), key=self._plan_key)

    def _no_server(self, props: Mapping[str, Any], tried: list[str], unfit: dict[str, str]) -> VMCreationFailed:
        matching = [n for n in self.store.nodes() if self._matches(n, props)]
        wanted = ", ".join(
            f"{k}={'(inline)' if k == 'layout' else v}" for k, v in sorted(props.items())
        ) or "any server"  # fmt: skip
        if not matching:
            return VMCreationFailed(
                f"create_vm: no server available: none of {len(self.store.nodes())} enrolled servers matches {wanted}"
            )
        if unfit and all(n.name in unfit or n.name in tried for n in matching):
            storage = placement.requested(props)
            return VMCreationFailed(
                f"create_vm: no available server satisfies {wanted}{' (' + storage + ')' if storage else ''}: "
                + placement.reasons(unfit)
                + (f"; tried and failed: {', '.join(tried)}" if tried else "")
            )
        busy = ", ".join(
            f"{n.name} ({unfit.get(n.name) or n.provision_state}{', maintenance' if n.maintenance else ''}"
            f"{', claimed' if n.claimed_by else ''})"
            for n in matching
        )
        extra = f"; tried and failed: {', '.join(tried)}" if tried else ""
        return VMCreationFailed(f"create_vm: no server available matching {wanted}: {busy}{extra}")

    def _claim(self, vm_cid: str, props: Mapping[str, Any], exclude: list[str]) -> tuple[Task, contextlib.ExitStack]:
        """Claim the smallest free matching server whose inspection fits the request (``placement.check``); its
        lock stays held in the returned ExitStack. None: VMCreationFailed naming what each server lacks."""
        unfit: dict[str, str] = {}
        for node in self._candidates(props):
            if node.name in exclude or node.provision_state != states.AVAILABLE or node.maintenance:
                continue
            try:
                placement.check(self.store, node, props)
            except placement.NotPlaceable as exc:
                unfit[node.name] = str(exc)
                continue
            stack = contextlib.ExitStack()
            if not stack.enter_context(self.store.try_lock("node", node.name)):
                stack.close()
                continue
            if states.claim(self.store, node.name, vm_cid, self.who, f"create_vm {vm_cid}"):
                task = Task(self.store, self.store.get_node(node.name), self.config, self.log, self.who)
                return task, stack
            stack.close()
        raise self._no_server(props, exclude, unfit)

    # -- VMs ----------------------------------------------------------------------------------------------------
    def calculate_vm_cloud_properties(self, vm_resources: Mapping[str, int]) -> dict[str, Any]:
        want = {
            "cpu": int(vm_resources["cpu"]),
            "ram": int(vm_resources["ram"]),
            "ephemeral_disk_size": int(vm_resources["ephemeral_disk_size"]),
        }
        storage = {k: vm_resources[k] for k in ("plan", "layout") if vm_resources.get(k) is not None}
        validate("calculate_vm_cloud_properties: vm_resources", VM_CLOUD_PROPERTIES_SCHEMA, storage)
        fits = [n for n in self.store.nodes() if not n.maintenance and self._matches(n, want)]
        if not fits:
            raise CloudError(
                f"calculate_vm_cloud_properties: no enrolled server has cpu >= {want['cpu']}, "
                f"ram >= {want['ram']} MiB and a root disk >= {want['ephemeral_disk_size']} MiB"
            )
        if storage:
            fits, unfit = placement.fitting(self.store, fits, storage)
            if not fits:
                raise VMCreationFailed(
                    f"calculate_vm_cloud_properties: no server satisfies {placement.requested(storage)}: "
                    + placement.reasons(unfit)
                )
        smallest = min(fits, key=self._plan_key)
        return {
            "cpu": int(smallest.plan["cpus"]),
            "ram": int(smallest.plan["memory_mib"]),
            "arch": str(smallest.plan.get("arch", "")),
            "ephemeral_disk_size": want["ephemeral_disk_size"],
            **storage,
        }

    def create_vm(self, request: VmRequest) -> tuple[str, Networks]:
        agent_id, stemcell_cid, cloud_properties = request.agent_id, request.stemcell_cid, request.cloud_properties
        validate("create_vm: cloud_properties", VM_CLOUD_PROPERTIES_SCHEMA, dict(cloud_properties))
        stemcell = self.store.stemcell(stemcell_cid)
        if stemcell is None or not Path(stemcell["path"]).is_file():
            raise VMCreationFailed(f"create_vm: stemcell {stemcell_cid} not found")
        self._url("")  # provisioning_url is required before anything is claimed
        states.reap(self.store, self.who)
        vm_cid = f"vm-{uuidlib.uuid4()}"
        tried: list[str] = []
        while True:
            task, lock = self._claim(vm_cid, cloud_properties, tried)
            name = task.node.name
            self.log.info("create_vm: %s on server %s (%s)", vm_cid, name, _plan_text(task.node))
            plan = _VmPlan(vm_cid, agent_id, stemcell, dict(cloud_properties), request.networks, dict(request.env))
            try:
                with lock:
                    run_create_vm(
                        _steps(self, task, plan),
                        {},
                        self.log,
                        where=f"create_vm {vm_cid} on server {name}",
                        describe=_describe_interface_error,
                        passthrough=(BmcUnreachable,),
                    )
                return vm_cid, plan.networks
            except BmcUnreachable as exc:
                tried.append(name)
                self.log.warning(
                    "create_vm: %s: server %s is in maintenance now (%s); trying another server",
                    vm_cid,
                    name,
                    exc.message,
                )
                continue
            except VMCreationFailed as exc:
                # another available server may succeed where this one failed
                exc.ok_to_retry = exc.ok_to_retry or any(
                    n.name != name and n.provision_state == states.AVAILABLE and not n.maintenance
                    for n in self._candidates(cloud_properties)
                )
                raise

    def delete_vm(self, vm_cid: str) -> None:
        states.reap(self.store, self.who)
        node = self.store.node_for_vm(vm_cid)
        if node is None:
            self.store.delete_vm(vm_cid)
            self.log.info("delete_vm: %s runs on no server; nothing to do", vm_cid)
            return
        with Task.acquire(self.store, node.name, self.config, self.log, self.who) as task:
            node = task.node
            if node.claimed_by != vm_cid:
                self.log.info("delete_vm: %s was released meanwhile; nothing to do", vm_cid)
                return
            self.log.info("delete_vm: %s: powering off and cleaning server %s", vm_cid, node.name)
            why = f"delete_vm {vm_cid}"
            if node.provision_state in (states.ACTIVE, states.DEPLOY_FAILED):
                states.apply(self.store, node.name, "undeploy", self.who, why)
                self._power_off(task, strict=True)
                states.apply(self.store, node.name, "clean", self.who, why)
            elif node.provision_state == states.CLEAN_FAILED:
                states.apply(self.store, node.name, "provide", self.who, f"{why} (cleaning again)")
            else:
                raise CloudError(
                    f"delete_vm {vm_cid}: server {node.name} is in state {node.provision_state!r}; "
                    f"another operation is running on it",
                    ok_to_retry=True,
                )
            self._forget_vm(vm_cid, node.name)
            try:
                inventory.run_cleaning(task, self.who, why)
            except inventory.InventoryError as exc:
                raise CloudError(f"delete_vm {vm_cid}: {exc}", ok_to_retry=True) from None
            self.log.info("delete_vm: %s: server %s is clean and available", vm_cid, node.name)

    def _forget_vm(self, vm_cid: str, node: str) -> None:
        self.store.delete_vm(vm_cid)
        self.store.revoke_phone_home_token(node)
        (self.drives_dir / f"{node}.iso").unlink(missing_ok=True)
        for disk in self.store.disks_of_node(node):
            # cleaning wipes every local disk of the server: a persistent disk does not outlive it
            self.log.info(
                "delete_vm: local disk %s (%s) of server %s is wiped with it", disk["cid"], disk["device"], node
            )
            self.store.delete_disk(disk["cid"])

    def _power_off(self, task: Task, strict: bool = False) -> None:
        try:
            self._bmc_step(task, lambda: hardware_for(task.node).power.set_power_state(task, POWER_OFF))
        except InterfaceError as exc:
            if strict:
                raise CloudError(
                    f"server {task.node.name}: cannot power off: {exc.message}", ok_to_retry=True
                ) from None
            self.log.warning("server %s: cannot power off: %s", task.node.name, exc.message)

    def has_vm(self, vm_cid: str) -> bool:
        node = self.store.node_for_vm(vm_cid)
        return node is not None and self.store.vm(vm_cid) is not None

    def reboot_vm(self, vm_cid: str) -> None:
        with self._vm_task(vm_cid, "reboot_vm") as task:
            try:
                self._bmc_step(task, lambda: hardware_for(task.node).power.reboot(task))
            except InterfaceError as exc:
                raise CloudError(f"reboot_vm {vm_cid}: {exc.message}", ok_to_retry=True) from None

    def set_vm_metadata(self, vm_cid: str, metadata: Mapping[str, str]) -> None:
        values = {str(k): str(v) for k, v in metadata.items()}
        if not self.store.update_vm(vm_cid, metadata=values):
            raise VMNotFound(f"set_vm_metadata: VM {vm_cid} not found")

    def get_disks(self, vm_cid: str) -> list[str]:
        node = self.store.node_for_vm(vm_cid)
        if node is None:
            raise VMNotFound(f"get_disks: VM {vm_cid} not found")
        return [d["cid"] for d in self.store.disks_of_node(node.name) if d["attached"]]

    # -- disks: the server's extra local disks --------------------------------------------------------------------
    def create_disk(self, size_mib: int, cloud_properties: Mapping[str, Any], vm_locality: str | None) -> str:
        validate("create_disk: cloud_properties", DISK_CLOUD_PROPERTIES_SCHEMA, dict(cloud_properties))
        if not vm_locality:
            raise NotSupported(
                "create_disk: on bare metal a persistent disk is one of a server's local disks; "
                "it needs a VM (vm_locality) to choose the server"
            )
        node = self.store.node_for_vm(vm_locality)
        if node is None:
            raise VMNotFound(f"create_disk: VM {vm_locality} not found")
        root = root_disk(node)
        candidates = []
        for disk in node.plan.get("disks", []):
            if disk is root or float(disk.get("size_gib", 0)) * 1024 < size_mib:
                continue
            if any(disk.get(k) != v for k, v in cloud_properties.items()):
                continue
            device = disk.get("serial") or disk.get("name")
            if device:
                candidates.append({**disk, "device": device})
        cid = f"disk-{uuidlib.uuid4()}"
        if self.store.reserve_disk(cid, node.name, candidates, size_mib) is None:
            raise CloudError(
                f"create_disk: server {node.name} (VM {vm_locality}) has no free local disk of at least "
                f"{size_mib} MiB with a serial or name"
                + (f" matching {dict(cloud_properties)}" if cloud_properties else "")
            )
        return cid

    def _disk(self, disk_cid: str, method: str) -> dict[str, Any]:
        record = self.store.disk(disk_cid)
        if record is None:
            raise DiskNotFound(f"{method}: disk {disk_cid} not found")
        return record

    def delete_disk(self, disk_cid: str) -> None:
        record = self._disk(disk_cid, "delete_disk")
        if record["attached"]:
            raise CloudError(f"delete_disk: disk {disk_cid} is attached; detach it first")
        self.store.delete_disk(disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        return self.store.disk(disk_cid) is not None

    def _hint(self, node: Node, device: str) -> dict[str, Any]:
        disk: dict[str, Any] = next(
            (d for d in node.plan.get("disks", []) if device in (d.get("serial"), d.get("name"))), {}
        )
        hint: dict[str, Any] = {}
        if disk.get("serial"):
            hint["id"] = disk["serial"]
        if disk.get("name"):
            hint["path"] = disk["name"]
        return hint or {"path": device}

    def attach_disk(self, vm_cid: str, disk_cid: str) -> DiskHint:
        with self._vm_task(vm_cid, "attach_disk") as task:
            record = self._disk(disk_cid, "attach_disk")
            if record["node"] != task.node.name:
                raise CloudError(
                    f"attach_disk: disk {disk_cid} is a local disk of server {record['node']}; VM "
                    f"{vm_cid} runs on server {task.node.name}"
                )
            hint = self._hint(task.node, record["device"])
            self._update_settings(task, vm_cid, lambda s: agent_settings.with_persistent(s, disk_cid, hint))
            self.store.update_disk(disk_cid, attached=True)
            return hint

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        with self._vm_task(vm_cid, "detach_disk") as task:
            record = self._disk(disk_cid, "detach_disk")
            if record["node"] != task.node.name or not record["attached"]:
                raise DiskNotAttached(f"detach_disk: disk {disk_cid} is not attached to VM {vm_cid}")
            self._update_settings(task, vm_cid, lambda s: agent_settings.without_persistent(s, disk_cid))
            self.store.update_disk(disk_cid, attached=False)

    def set_disk_metadata(self, disk_cid: str, metadata: Mapping[str, str]) -> None:
        self._disk(disk_cid, "set_disk_metadata")
        self.store.update_disk(disk_cid, metadata={str(k): str(v) for k, v in metadata.items()})

    def _update_settings(self, task: Task, vm_cid: str, change: Any) -> None:
        """Rewrite the VM's settings and its config-drive image (what a redeploy of the server would write; the
        running agent learns of the disk from the director and caches its settings)."""
        vm = self.store.vm(vm_cid)
        if vm is None:
            raise CloudError(f"VM {vm_cid} has no recorded settings (not created by this CPI?)")
        settings = change(vm["settings"])
        token = self.store.issue_phone_home_token(task.node.name)
        self.write_config_drive(task.node.name, vm_cid, settings, token)
        self.store.update_vm(vm_cid, settings=settings)

    # -- config drive -------------------------------------------------------------------------------------------
    def config_drive_path(self, node: str) -> Path:
        return self.drives_dir / f"{node}.iso"

    def write_config_drive(self, node: str, vm_cid: str, settings: Mapping[str, Any], token: str) -> Path:
        """The ``config-2`` ISO for ``node`` with the agent settings and, under ``meta``, the phone-home URL and
        token, and cloud-init's phone_home in ``vendor_data.json`` (``<state_dir>/configdrives/<node>.iso``,
        served to the ramdisk by ``metal serve``)."""
        files = configdrive.files_for(
            settings,
            instance_uuid=vm_cid.removeprefix("vm-"),
            hostname=vm_cid,
            network_data=agent_settings.openstack_network_data(settings["networks"]),
        )
        meta = json.loads(files["openstack/latest/meta_data.json"])
        meta["meta"] = {"phone_home_url": self._url(f"/v1/nodes/{node}/phone-home"), "phone_home_token": token}
        files["openstack/latest/meta_data.json"] = json.dumps(meta, sort_keys=True).encode()
        # cloud-init's phone_home module (phone_home.py): the token in the URL's path
        files[phone_home.VENDOR_DATA_PATH] = phone_home.vendor_data(phone_home.url(self._url(""), node, token))
        return configdrive.write_iso(self.config_drive_path(node), files)


# -- create_vm steps --------------------------------------------------------------------------------------------
class _VmPlan:
    def __init__(
        self,
        vm_cid: str,
        agent_id: str,
        stemcell: dict[str, Any],
        props: dict[str, Any],
        networks: Networks,
        env: dict[str, Any],
    ) -> None:
        self.vm_cid = vm_cid
        self.agent_id = agent_id
        self.stemcell = stemcell
        self.props = props
        self.requested_networks = networks
        self.networks: Networks = {}
        self.env = env


def _describe_interface_error(exc: Exception) -> tuple[str, bool] | None:
    """A hardware interface failure during create_vm: its message (which names the server and what failed)."""
    return (exc.message, False) if isinstance(exc, InterfaceError) else None


class _Step(ProviderStep["BareMetalProvider", _VmPlan]):
    """A bare-metal create_vm step: also the claimed server's task (``task``, its lock held) and its name."""

    def __init__(self, provider: BareMetalProvider, task: Task, plan: _VmPlan) -> None:
        super().__init__(provider, plan)
        self.task = task
        self.store = provider.store
        self.node = task.node.name


class _Release(_Step):
    """Already claimed (with the lock) by ``_claim``; on failure: power off, clean, release."""

    name = "claim_server"

    def run(self, state: dict[str, Any]) -> None:
        state["claimed"] = self.node

    def cleanup(self, state: dict[str, Any]) -> None:
        node = self.store.get_node(self.node)
        why = f"create_vm {self.plan.vm_cid} failed"
        if node.provision_state in (states.DEPLOYING, states.WAIT_CALLBACK):
            states.apply(self.store, self.node, "fail", self.p.who, why, last_error=why)
        if node.maintenance:
            # the BMC is gone: nothing can be powered off or cleaned; out of the pool until an operator acts
            self.store.transition(
                self.node,
                "release",
                [states.DEPLOY_FAILED],
                states.DEPLOY_FAILED,
                self.p.who,
                f"{why}: BMC unreachable, left in maintenance",
                claimed_by=None,
            )
            return
        if not state.get("touched"):
            # nothing reached the server (no power or boot change, no disk write): straight back to the pool
            for verb in ("undeploy", "clean", "done"):
                states.apply(self.store, self.node, verb, self.p.who, f"{why} before touching the server")
            return
        self.task.say(f"create_vm {self.plan.vm_cid}: cleaning server {self.node} after the failure")
        self.p._power_off(self.task)
        states.apply(self.store, self.node, "undeploy", self.p.who, why)
        states.apply(self.store, self.node, "clean", self.p.who, why)
        try:
            inventory.run_cleaning(self.task, self.p.who, why)
        except inventory.InventoryError as exc:
            self.task.log.error("create_vm %s: %s (server %s stays out of the pool)", self.plan.vm_cid, exc, self.node)
            self.store.transition(
                self.node,
                "release",
                [states.CLEAN_FAILED],
                states.CLEAN_FAILED,
                self.p.who,
                f"{why}: released after failed cleaning",
                claimed_by=None,
            )


class _WriteConfigDrive(_Step):
    name = "write_config_drive"

    def run(self, state: dict[str, Any]) -> None:
        plan = self.plan
        macs = list(self.task.node.macs)
        planned: Networks = {}
        for net_name in sorted(plan.requested_networks):
            net = dict(plan.requested_networks[net_name])
            if net.get("type") != "vip":
                if not macs:
                    raise CloudError(
                        f"networks.{net_name}: server {self.node} has no NIC left for it "
                        f"({len(self.task.node.macs)} NIC(s) for "
                        f"{sum(1 for n in plan.requested_networks.values() if n.get('type') != 'vip')} "
                        f"networks)"
                    )
                net["mac"] = macs.pop(0)
            planned[net_name] = net
        plan.networks = planned
        root = root_disk(self.task.node)
        settings = agent_settings.build(
            agent_id=plan.agent_id,
            vm_name=plan.vm_cid,
            networks=planned,
            env=plan.env,
            agent_config=self.p.agent_config,
            system_disk=system_disk_hint(root),
            # no separate ephemeral disk: a stock agent (CreatePartitionIfNoEphemeralDisk) partitions the root disk
            ephemeral_disk=None,
        )
        state["settings"] = settings
        token = self.store.issue_phone_home_token(self.node)
        state["config_drive"] = str(self.p.write_config_drive(self.node, plan.vm_cid, settings, token))

    def cleanup(self, state: dict[str, Any]) -> None:
        self.store.revoke_phone_home_token(self.node)
        if "config_drive" in state:
            Path(state["config_drive"]).unlink(missing_ok=True)


class _RecordVm(_Step):
    name = "record_vm"

    def run(self, state: dict[str, Any]) -> None:
        plan = self.plan
        self.store.put_vm(plan.vm_cid, self.node, plan.agent_id, plan.stemcell["cid"], state["settings"], plan.networks)
        state["recorded"] = True

    def cleanup(self, state: dict[str, Any]) -> None:
        if state.get("recorded"):
            self.store.delete_vm(self.plan.vm_cid)


class _Deploy(_Step):
    name = "deploy_image"

    def run(self, state: dict[str, Any]) -> None:
        stemcell = self.plan.stemcell
        timeout = self.p.config.timeouts.deploy
        try:
            storage = placement.check(self.store, self.task.node, self.plan.props)
            instructions = placement.deploy_instructions(
                storage, stemcell, self.p._url("/images/"),
                self.p._url(f"/v1/nodes/{self.node}/configdrive"), int(self.p.config.heartbeat_s),
            )  # fmt: skip
            validate_instructions(self.node, "deploy", {"mode": "deploy", **instructions})
        except (InstructionsError, placement.NotPlaceable) as exc:
            raise CloudError(f"server {self.node}: {exc}") from None
        self.task.say(
            f"create_vm {self.plan.vm_cid}: {instructions.get('deploy_kind', 'whole-disk')} deploy onto server "
            f"{self.node} ({storage.source})"
        )
        state["touched"] = True
        state["deploy_after"] = self.store.last_event_id(self.node)
        states.apply(
            self.store, self.node, "wait", self.p.who, f"deploy job for {self.plan.vm_cid}", wait_s=timeout + 120
        )
        hw = hardware_for(self.task.node)
        try:
            stages = self.p._bmc_step(self.task, lambda: hw.deploy.deploy(self.task, instructions, timeout))
        except DeployFailed as exc:
            raise CloudError(exc.message) from None
        if instructions.get("deploy_kind") != "layout":  # a layout's disk-selected names several disks
            self._check_root_disk(state, stages or [])
        states.apply(self.store, self.node, "resume", self.p.who, "ramdisk reported the image and config drive written")

    def _check_root_disk(self, state: dict[str, Any], stages: list[dict[str, Any]]) -> None:
        """Compare the settings' ``disks.system`` with the disk the ramdisk saw and selected; on a mismatch (an
        inventory whose plan does not describe the server) record what it saw, so later settings say the truth."""
        seen = next((s.get("data") for s in reversed(stages) if s.get("stage") == "disk-selected"), None)
        if not isinstance(seen, dict):
            return
        written = str(state["settings"]["disks"]["system"])
        actual = system_disk_hint({**seen, "name": seen.get("device") or seen.get("name")})
        if actual and actual != written:
            self.task.say(
                f"create_vm {self.plan.vm_cid}: the ramdisk deployed to {actual} (serial {seen.get('serial') or '-'})"
                f", the plan's root disk is {written}: later settings name {actual} (fix the inventory's plan)"
            )
            state["settings"]["disks"]["system"] = actual
            self.store.update_vm(self.plan.vm_cid, settings=state["settings"])

    def cleanup(self, state: dict[str, Any]) -> None:
        self.store.end_job(self.node)


class _BootToDisk(_Step):
    name = "boot_to_disk"

    def run(self, state: dict[str, Any]) -> None:
        hw = hardware_for(self.task.node)
        state["phone_home_after"] = self.store.last_event_id(self.node)
        self.p._bmc_step(self.task, lambda: hw.boot.prepare_instance(self.task))
        # taken just before the reset: a DHCP request after it comes from the disk's OS (firmware and iPXE after
        # the ramdisk's own reboot need seconds to get that far, the reset follows within a BMC call)
        state["boot_after"] = self.store.last_event_id(self.node)
        self.p._bmc_step(self.task, lambda: hw.power.reboot(self.task))
        self.task.say(f"create_vm {self.plan.vm_cid}: server {self.node} boots the installed OS from its disk")


class _WaitBooted(_Step):
    """The server runs its deployed disk, judged without the guest's help (``boot_check``, see ``config.py``)."""

    name = "wait_booted"

    def run(self, state: dict[str, Any]) -> None:
        hw = hardware_for(self.task.node)
        power = self.p._bmc_step(self.task, lambda: hw.power.get_power_state(self.task))
        if power != POWER_ON:
            raise CloudError(f"server {self.node} is {power!r}, not on, after booting from its disk (BMC)")
        watch, why = self._dhcp_macs(state)
        vm = self.plan.vm_cid
        if not watch:
            self.task.say(f"create_vm {vm}: server {self.node} is on and booting its disk ({why})")
            return
        timeout = self.p.config.timeouts.boot_to_disk
        after = int(state["boot_after"])
        started = time.monotonic()
        deadline = started + timeout
        while True:
            for event in self.store.events(self.node, after_id=after, kinds=[DHCP_EVENT]):
                after = event.id
                mac = str(event.data.get("mac", "")).lower()
                if mac in watch:
                    self.task.say(
                        f"create_vm {vm}: server {self.node} booted its disk: its OS asked for an address on "
                        f"{mac} ({event.data.get('ip', '?')}) {time.monotonic() - started:.1f}s after the reboot"
                    )
                    return
            if time.monotonic() >= deadline:
                try:
                    power = self.p._bmc_step(self.task, lambda: hw.power.get_power_state(self.task))
                except InterfaceError as exc:
                    power = f"unknown: {exc.message}"
                raise CloudError(
                    f"server {self.node} booted from its disk (BMC: on) but no DHCP request from "
                    f"{', '.join(sorted(watch))} reached metal serve within {timeout:g} s (timeouts.boot_to_disk; "
                    f"power now {power}); the disk did not boot or its OS does not use DHCP on the provisioning "
                    f"network (boot_check: {self.p.config.boot_check}; 'power' skips this check)"
                )
            time.sleep(0.5)

    def _dhcp_macs(self, state: dict[str, Any]) -> tuple[set[str], str]:
        """The MACs whose DHCP request proves the boot, or none and why not."""
        mode = self.p.config.boot_check
        if mode == "power":
            return set(), "boot_check: power"
        if mode == "dhcp":
            return {m.lower() for m in self.task.node.macs}, ""
        dynamic = {
            str(net["mac"]).lower()
            for net in self.plan.networks.values()
            if net.get("type") == "dynamic" and net.get("mac")
        }
        served = {
            str(e.data.get("mac", "")).lower()
            for e in self.store.events(self.node, after_id=int(state.get("deploy_after", 0)), kinds=[DHCP_EVENT])
            if e.id <= int(state["boot_after"])
        }
        watch = dynamic & served
        if watch:
            return watch, ""
        if not dynamic:
            return set(), "no dynamic network: its OS configures static addresses, nothing to wait for"
        return set(), "its dynamic networks' NICs got no lease from metal serve during the deploy"


class _WaitPhoneHome(_Step):
    name = "wait_phone_home"

    def run(self, state: dict[str, Any]) -> None:
        if not self.p.config.phone_home:
            states.apply(self.store, self.node, "done", self.p.who, "deployed: the server booted its disk")
            return
        timeout = self.p.config.timeouts.phone_home
        deadline = time.monotonic() + timeout
        after = int(state.get("phone_home_after", 0))
        started = time.monotonic()
        while True:
            for event in self.store.events(self.node, after_id=after, kinds=["phone-home"]):
                after = event.id
                reported = str(event.data.get("agent_id", ""))
                # cloud-init's phone_home sends the config drive's uuid (metal serve checked it)
                by_cloud_init = event.data.get("instance_id") == self.plan.vm_cid.removeprefix("vm-")
                if reported != self.plan.agent_id and not by_cloud_init:
                    self.task.log.warning(
                        "server %s phoned home as agent %r, expected %r; ignored",
                        self.node,
                        reported,
                        self.plan.agent_id,
                    )
                    continue
                self.task.say(
                    f"create_vm {self.plan.vm_cid}: server {self.node} phoned home after "
                    f"{time.monotonic() - started:.1f}s"
                )
                states.apply(self.store, self.node, "done", self.p.who, "the installed OS phoned home")
                return
            if time.monotonic() >= deadline:
                raise CloudError(
                    f"server {self.node} did not phone home within {timeout:g} s after booting from its disk"
                )
            time.sleep(0.5)


def _steps(provider: BareMetalProvider, task: Task, plan: _VmPlan) -> list[Step]:
    return [
        cls(provider, task, plan)
        for cls in (_Release, _WriteConfigDrive, _RecordVm, _Deploy, _BootToDisk, _WaitBooted, _WaitPhoneHome)
    ]


# -- helpers ----------------------------------------------------------------------------------------------------
def _plan_text(node: Node) -> str:
    plan = node.plan
    return f"{plan.get('arch', '?')}, {plan.get('cpus', '?')} CPU, {plan.get('memory_mib', '?')} MiB"
