"""The libvirt provider: BOSH VMs as libvirt domains, disks as volumes of one storage pool.

Resource naming: stemcells ``sc-<uuid>`` (volume ``sc-<uuid>.<fmt>``; light stemcells ``<volume> light``), VMs
``vm-<uuid>`` (domain of that name, volumes ``<cid>-root.qcow2``/``<cid>-ephemeral.qcow2``, config drive
``<cid>-config-<n>.iso``), disks ``disk-<uuid>`` (volume ``<cid>.<fmt>``), snapshots ``snap-<uuid>``. libvirt is the
source of truth for existence; ``cpi.state`` keeps settings, attachments and metadata.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import signal
import tempfile
import time
import uuid as uuidlib
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from cpi import agent_settings, configdrive, deadline
from cpi.errors import (
    CloudError,
    CpiError,
    DiskNotAttached,
    DiskNotFound,
    NetworkNotFound,
    NotSupported,
    VMNotFound,
)
from cpi.provider import DiskHint, DiskResizer, DiskUpdater, Networks, Provider, Snapshots, VmRequest
from cpi.provider_steps import run_create_vm
from cpi.providers.libvirt import accel, domain_xml, vm_steps
from cpi.providers.libvirt.config import (
    DISK_CLOUD_PROPERTIES_SCHEMA,
    LIGHT_STEMCELL_SCHEMA,
    NETWORK_CLOUD_PROPERTIES_SCHEMA,
    VM_CLOUD_PROPERTIES_SCHEMA,
    LibvirtConfig,
    validate,
)
from cpi.providers.libvirt.storage import MIB, Pool
from cpi.state import StateStore
from stemforge_base.processes import stop_group

if TYPE_CHECKING:
    from stemcells.image_check import ImageInfo

DEFAULT_STATE_DIR = "/var/lib/stemforge/cpi"
DETACH_RETRY_SECONDS = 10.0
#: Temporary directories of create_stemcell in the state dir (swept when a killed call left one).
STEMCELL_TMP_PREFIX = "stemforge-stemcell-"
PERSISTENT_TARGETS = [f"vd{c}" for c in "cdefghijklmnopqrstuvwxyz"]


def _silence_libvirt_stderr(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we report errors ourselves."""


libvirt.registerErrorHandler(_silence_libvirt_stderr, None)


def _describe_libvirt_error(exc: Exception) -> tuple[str, bool] | None:
    """A libvirt failure during create_vm: libvirt's own message, worth a retry."""
    if isinstance(exc, libvirt.libvirtError):
        return f"libvirt: {exc.get_error_message()}", True
    return None


class LibvirtProvider(Provider, Snapshots, DiskResizer, DiskUpdater):
    name = "libvirt"

    def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
        super().__init__(properties, logger)
        self.config = LibvirtConfig.from_properties(properties.get("libvirt"))
        self.agent_config: Mapping[str, Any] = properties.get("agent") or {}
        self.state_dir = Path(properties.get("state_dir") or DEFAULT_STATE_DIR)
        self.state = StateStore(self.state_dir)
        self.state_dir.chmod(0o711)  # QEMU traverses it to the default consoles/ dir; no listing, files stay 0600
        try:
            self.conn = libvirt.open(self.config.uri)
        except libvirt.libvirtError as exc:
            raise CloudError(f"cannot connect to libvirt at {self.config.uri}: {exc.get_error_message()}",
                             ok_to_retry=True) from None

    # -- shared helpers ---------------------------------------------------------------------------------------
    @cached_property
    def pool(self) -> Pool:
        return Pool(self.conn, self.config, self.log)

    @cached_property
    def domain_type(self) -> str:
        return accel.choose(self.config.accelerator, self.state_dir, self.log,
                            timeout=self.config.kvm_probe_timeout, kernel=self.config.kvm_probe_kernel)

    def console_log_path(self, vm_cid: str) -> Path:
        directory = self.config.console_dir or (self.state_dir / "consoles")
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        return directory / f"{vm_cid}.log"

    def config_drive_path(self, vm_cid: str, generation: int) -> Path:
        return self.pool.path / f"{vm_cid}-config-{generation}.iso"

    def write_config_drive(self, path: Path, vm_cid: str, instance_uuid: str, settings: Mapping[str, Any]) -> None:
        files = configdrive.files_for(settings, instance_uuid=instance_uuid, hostname=vm_cid,
                                      network_data=agent_settings.openstack_network_data(settings["networks"]))
        configdrive.write_iso(path, files)

    def _domain(self, vm_cid: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(vm_cid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VMNotFound(f"VM {vm_cid} not found") from None
            raise CloudError(f"looking up VM {vm_cid}: {exc.get_error_message()}", ok_to_retry=True) from None

    def remove_domain(self, name: str) -> bool:
        """Destroy (if running) and undefine a domain; False when it did not exist."""
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                 | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        try:
            dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        return True

    @staticmethod
    def _live_flags(dom: libvirt.virDomain) -> int:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        return flags

    # -- stemcells --------------------------------------------------------------------------------------------
    def create_stemcell(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        path = Path(image_path)
        if not path.is_file():
            raise CloudError(f"create_stemcell: image {image_path} does not exist or is not a file")
        if path.stat().st_size == 0:
            return self._create_light_stemcell(cloud_properties, tags)
        cid = f"sc-{uuidlib.uuid4()}"
        self._sweep_stemcell_orphans()
        with deadline.undo_scope() as undo:  # what call_timeout's watchdog removes if it abandons this call
            tmp = Path(tempfile.mkdtemp(prefix=STEMCELL_TMP_PREFIX, dir=self.state_dir))
            undo.add(f"temporary directory {tmp}", functools.partial(shutil.rmtree, tmp, ignore_errors=True))
            try:
                root = self._root_image(path, tmp, undo)
                fmt = root.format
                volume = f"{cid}.{fmt}"
                self.log.info("create_stemcell: importing %s image (%d MiB virtual) as %s",
                              fmt, root.virtual_size // MIB, volume)
                capacity = root.virtual_size if fmt == "raw" else root.path.stat().st_size
                marker = self._pending_stemcells / volume  # until the state DB knows it (see the sweep)
                marker.touch()
                try:
                    self.pool.upload(volume, root.path, fmt, capacity, undo=undo)
                except BaseException:
                    marker.unlink(missing_ok=True)
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        try:
            with self.state.transaction() as tx:
                tx.insert("stemcells", cid=cid, volume=volume, format=fmt, tags=dict(tags))
        except BaseException:
            self.pool.delete(volume)
            raise
        finally:
            marker.unlink(missing_ok=True)
        return cid

    def _root_image(self, image: Path, tmp: Path, undo: deadline.UndoScope) -> ImageInfo:
        """The disk image inside the director's ``image`` file (a gzipped tar), or the file itself if it is
        already a disk, judged by ``stemcells.image_check`` (qcow2/raw, no backing or data file, not encrypted,
        virtual size within ``max_stemcell_virtual_gib``). Extraction and inspection run in a child process that
        the call's deadline kills."""
        from stemcells.errors import StemcellError
        from stemcells.image_check import ImageRejected, prepare_root_image_isolated

        timeout = float(self.properties.get("call_timeout") or 3600)
        try:
            return prepare_root_image_isolated(
                image, tmp, max_virtual_size=self.config.max_stemcell_virtual_gib * 1024**3, timeout=timeout,
                on_start=lambda proc: undo.add(f"child process {proc.pid}",
                                               functools.partial(stop_group, proc, first=signal.SIGKILL)))
        except ImageRejected as exc:
            raise CloudError(f"create_stemcell: root image {exc.path.name} of {image} refused: {exc.reason}") from None
        except StemcellError as exc:
            raise CloudError(f"create_stemcell: {exc.message}") from None

    @property
    def _pending_stemcells(self) -> Path:
        """Markers of stemcell volumes being made (``<state_dir>/pending-stemcells/<volume>``): a volume becomes
        known to the state DB only after its upload, so a killed call leaves a marker next to its orphan. Only
        marked volumes are ever swept: another CPI (another state dir) sharing the pool keeps its own."""
        directory = self.state_dir / "pending-stemcells"
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory

    def _sweep_stemcell_orphans(self) -> None:
        """Remove what killed create_stemcell calls left behind, once older than twice ``call_timeout`` (at least
        an hour): volumes with a pending marker that the state DB does not know, and temporary directories."""
        min_age = max(3600.0, 2 * float(self.properties.get("call_timeout") or 3600))
        now = time.time()
        markers = [m for m in self._pending_stemcells.iterdir() if _older(m, now, min_age)]
        known = {str(row["volume"]) for row in self.state.all("stemcells")} if markers else set()
        for marker in markers:
            if marker.name not in known:
                with contextlib.suppress(CpiError, libvirt.libvirtError):
                    if self.pool.delete(marker.name):
                        self.log.warning("create_stemcell: removed orphaned stemcell volume %s (left by a killed "
                                         "call; not in the state DB)", marker.name)
            marker.unlink(missing_ok=True)
        for entry in self.state_dir.glob(f"{STEMCELL_TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink() and now - entry.stat().st_mtime > min_age:
                    shutil.rmtree(entry)
                    self.log.warning("create_stemcell: removed orphaned temporary directory %s", entry)

    def _create_light_stemcell(self, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        validate("create_stemcell: light stemcell cloud_properties", LIGHT_STEMCELL_SCHEMA, dict(cloud_properties))
        image_id = cloud_properties["image_id"]
        region = self.config.region or self.config.storage_pool
        if isinstance(image_id, Mapping):
            if region not in image_id:
                raise CloudError(f"Stemcell does not contain an image in region {region} "
                                 f"(it lists: {', '.join(sorted(image_id))})")
            image_id = image_id[region]
        if not self.pool.exists(str(image_id)):
            raise CloudError(f"light stemcell image {image_id} not found in storage pool {self.config.storage_pool}")
        return f"{image_id} light"

    def delete_stemcell(self, stemcell_cid: str) -> None:
        if stemcell_cid.endswith(" light"):
            self.log.info("delete_stemcell: %s is light; its image belongs to the image publisher", stemcell_cid)
            return
        record = self.state.get("stemcells", stemcell_cid)
        volume = record["volume"] if record else None
        if volume is None:
            for fmt in ("qcow2", "raw"):
                if self.pool.exists(f"{stemcell_cid}.{fmt}"):
                    volume = f"{stemcell_cid}.{fmt}"
        if volume and self._stemcell_in_use(volume):
            raise CloudError(f"delete_stemcell: stemcell {stemcell_cid} is still the backing image of VMs")
        if volume:
            self.pool.delete(volume)
        with self.state.transaction() as tx:
            tx.delete("stemcells", stemcell_cid)

    def _stemcell_in_use(self, volume: str) -> bool:
        return any(vm["stemcell_cid"] == volume.rsplit(".", 1)[0] for vm in self.state.all("vms"))

    # -- VMs ----------------------------------------------------------------------------------------------------
    def calculate_vm_cloud_properties(self, vm_resources: Mapping[str, int]) -> dict[str, Any]:
        return {
            "cpu": int(vm_resources["cpu"]),
            "ram": int(vm_resources["ram"]),
            "ephemeral_disk_size": int(vm_resources["ephemeral_disk_size"]),
        }

    def create_vm(self, request: VmRequest) -> tuple[str, Networks]:
        plan = self._plan_vm(request.agent_id, request.stemcell_cid, request.cloud_properties, request.networks,
                             request.env)
        self.log.info("create_vm: %s from %s (%d vCPU, %d MiB RAM, %d MiB ephemeral, %s)", plan.vm_cid,
                      request.stemcell_cid, plan.vcpus, plan.memory_mib, plan.ephemeral_mib,
                      "kvm" if self.domain_type == accel.KVM else "tcg")
        run_create_vm(vm_steps.steps(self, plan), {}, self.log, where=f"create_vm {plan.vm_cid}",
                      describe=_describe_libvirt_error)
        return plan.vm_cid, plan.networks

    def _plan_vm(self, agent_id: str, stemcell_cid: str, cloud_properties: Mapping[str, Any],
                 networks: Networks, env: Mapping[str, Any]) -> vm_steps.VmPlan:
        validate("create_vm: cloud_properties", VM_CLOUD_PROPERTIES_SCHEMA, dict(cloud_properties))
        volume, fmt = self._stemcell_volume(stemcell_cid)
        backing = self.pool.lookup(volume)
        if backing is None:
            raise CloudError(f"create_vm: stemcell {stemcell_cid} not found (no volume {volume})")
        stemcell_bytes = backing.info()[1]
        root_mib = cloud_properties.get("root_disk_size")
        if root_mib is not None and root_mib * MIB < stemcell_bytes:
            raise CloudError(f"create_vm: cloud_properties.root_disk_size {root_mib} MiB is smaller than the "
                             f"stemcell's {stemcell_bytes // MIB} MiB")
        vm_cid, instance_uuid = vm_steps.new_vm_cid()
        nics, planned = self._plan_networks(networks)
        return vm_steps.VmPlan(
            vm_cid=vm_cid,
            instance_uuid=instance_uuid,
            agent_id=agent_id,
            stemcell_cid=stemcell_cid,
            stemcell_volume=volume,
            stemcell_format=fmt,
            root_size_bytes=max(stemcell_bytes, (root_mib or 0) * MIB),
            ephemeral_mib=int(cloud_properties.get("ephemeral_disk_size", 0)),
            memory_mib=int(cloud_properties.get("ram", 512)),
            vcpus=int(cloud_properties.get("cpu", 1)),
            machine=str(cloud_properties.get("machine_type", self.config.machine_type)),
            nics=nics,
            networks=planned,
            env=dict(env),
        )

    def _stemcell_volume(self, stemcell_cid: str) -> tuple[str, str]:
        if stemcell_cid.endswith(" light"):
            name = stemcell_cid[: -len(" light")]
            vol = self.pool.lookup(name)
            if vol is None:
                raise CloudError(f"create_vm: light stemcell image {name} not found")
            return name, _volume_format(vol)
        record = self.state.get("stemcells", stemcell_cid)
        if record is None:
            raise CloudError(f"create_vm: stemcell {stemcell_cid} not found")
        return record["volume"], record["format"]

    def _plan_networks(self, networks: Networks) -> tuple[list[domain_xml.NicSpec], Networks]:
        nics: list[domain_xml.NicSpec] = []
        planned: Networks = {}
        for name in sorted(networks):
            net = dict(networks[name])
            if net.get("type") == "vip":
                planned[name] = net
                continue
            props = dict(net.get("cloud_properties") or self.config.default_network)
            validate(f"create_vm: networks.{name}.cloud_properties", NETWORK_CLOUD_PROPERTIES_SCHEMA, props)
            kind = props.get("type") or ("network" if "network" in props else "bridge" if "bridge" in props
                                         else "user")
            source = props.get(kind) if kind in ("network", "bridge") else None
            if kind in ("network", "bridge") and not source:
                raise CloudError(f"create_vm: networks.{name}.cloud_properties: type {kind} needs a '{kind}' name")
            if kind == "network":
                self._check_network(name, str(source))
            elif kind == "bridge" and not Path(f"/sys/class/net/{source}/bridge").exists():
                raise NetworkNotFound(f"create_vm: networks.{name}: bridge {source} does not exist on this host")
            if kind != "user" and (props.get("restrict") or props.get("port_forwards")):
                raise CloudError(f"create_vm: networks.{name}.cloud_properties: restrict and port_forwards "
                                 f"apply to user-mode NICs only")
            forwards = tuple((f.get("host_address", "127.0.0.1"), f["host_port"], f["guest_port"])
                             for f in props.get("port_forwards", []))
            mac = net.get("mac") or _random_mac()
            net["mac"] = mac
            nics.append(domain_xml.NicSpec(mac=mac, kind=kind, source=source, model=props.get("model", "virtio"),
                                           restrict=bool(props.get("restrict")), port_forwards=forwards))
            planned[name] = net
        return nics, planned

    def _check_network(self, name: str, source: str) -> None:
        try:
            network = self.conn.networkLookupByName(source)
        except libvirt.libvirtError:
            raise NetworkNotFound(f"create_vm: networks.{name}: libvirt network {source} does not exist") from None
        if not network.isActive():
            raise NetworkNotFound(f"create_vm: networks.{name}: libvirt network {source} is not active")

    def delete_vm(self, vm_cid: str) -> None:
        with self.state.lock("vm", vm_cid):
            existed = self.remove_domain(vm_cid)
            removed = [v for v in (f"{vm_cid}-root.qcow2", f"{vm_cid}-ephemeral.qcow2") if self.pool.delete(v)]
            for iso in self.pool.path.glob(f"{vm_cid}-config-*.iso"):
                iso.unlink(missing_ok=True)
            with self.state.transaction() as tx:
                tx.detach_all_from(vm_cid)
                known = tx.delete("vms", vm_cid)
            with contextlib.suppress(FileNotFoundError):
                self.console_log_path(vm_cid).unlink()
            if not (existed or removed or known):
                self.log.info("delete_vm: %s does not exist; nothing to do", vm_cid)
        self.state.forget_lock("vm", vm_cid)

    def has_vm(self, vm_cid: str) -> bool:
        try:
            self._domain(vm_cid)
            return True
        except VMNotFound:
            return False

    def reboot_vm(self, vm_cid: str) -> None:
        with self.state.lock("vm", vm_cid):
            dom = self._domain(vm_cid)
            self._refresh_boot_paths(vm_cid, dom)
            try:
                if dom.isActive():
                    dom.reset(0)
                else:
                    dom.create()
            except libvirt.libvirtError as exc:
                raise CloudError(f"reboot_vm {vm_cid}: {exc.get_error_message()}", ok_to_retry=True) from None

    def set_vm_metadata(self, vm_cid: str, metadata: Mapping[str, str]) -> None:
        values = {str(k): str(v) for k, v in metadata.items()}
        with self.state.lock("vm", vm_cid):
            dom = self._domain(vm_cid)
            flags = self._live_flags(dom)
            title = _title(vm_cid, values)
            try:
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.metadata_body(values),
                                domain_xml.METADATA_PREFIX, domain_xml.METADATA_NS, flags)
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, title, None, None, flags)
            except libvirt.libvirtError as exc:
                raise CloudError(f"set_vm_metadata {vm_cid}: {exc.get_error_message()}") from None
            with self.state.transaction() as tx:
                tx.update("vms", vm_cid, metadata=values)

    def vm_metadata(self, vm_cid: str) -> dict[str, str]:
        """The director metadata stored in the domain (read back from libvirt)."""
        dom = self._domain(vm_cid)
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.METADATA_NS, 0)
        except libvirt.libvirtError:
            return {}
        return domain_xml.parse_metadata(xml)

    def get_disks(self, vm_cid: str) -> list[str]:
        dom = self._domain(vm_cid)
        serials = {d.serial for d in domain_xml.attached_disks(dom.XMLDesc(0)) if d.serial}
        return [d["cid"] for d in self.state.disks_of_vm(vm_cid) if d["serial"] in serials]

    # -- disks -------------------------------------------------------------------------------------------------
    def create_disk(self, size_mib: int, cloud_properties: Mapping[str, Any], vm_locality: str | None) -> str:
        validate("create_disk: cloud_properties", DISK_CLOUD_PROPERTIES_SCHEMA, dict(cloud_properties))
        fmt = str(cloud_properties.get("format", "qcow2"))
        cid, serial = new_disk_cid()
        volume = f"{cid}.{fmt}"
        self.pool.create(volume, size_mib * MIB, fmt)
        try:
            with self.state.transaction() as tx:
                tx.insert("disks", cid=cid, volume=volume, size_mib=size_mib, serial=serial,
                          cloud_properties=dict(cloud_properties))
        except BaseException:
            self.pool.delete(volume)
            raise
        return cid

    def _disk(self, disk_cid: str) -> dict[str, Any]:
        record = self.state.get("disks", disk_cid)
        if record is None or not self.pool.exists(record["volume"]):
            raise DiskNotFound(f"disk {disk_cid} not found")
        return record

    def delete_disk(self, disk_cid: str) -> None:
        with self.state.lock("disk", disk_cid):
            record = self._disk(disk_cid)
            if record["vm_cid"] and self.has_vm(record["vm_cid"]):
                raise CloudError(f"delete_disk: disk {disk_cid} is attached to VM {record['vm_cid']}; detach it first")
            self.pool.delete(record["volume"])
            with self.state.transaction() as tx:
                tx.delete("disks", disk_cid)
        self.state.forget_lock("disk", disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        try:
            self._disk(disk_cid)
            return True
        except DiskNotFound:
            return False

    def attach_disk(self, vm_cid: str, disk_cid: str) -> DiskHint:
        with self.state.lock("vm", vm_cid), self.state.lock("disk", disk_cid):
            dom = self._domain(vm_cid)
            record = self._disk(disk_cid)
            xml = dom.XMLDesc(0)
            present = {d.serial: d for d in domain_xml.attached_disks(xml)}
            if record["vm_cid"] and record["vm_cid"] != vm_cid and self.has_vm(record["vm_cid"]):
                raise CloudError(f"attach_disk: disk {disk_cid} is attached to another VM ({record['vm_cid']})")
            if record["serial"] in present:
                target = present[record["serial"]].target
                self.log.info("attach_disk: %s is already attached to %s as %s", disk_cid, vm_cid, target)
            else:
                used = {d.target for d in present.values()}
                free = [t for t in PERSISTENT_TARGETS if t not in used]
                if not free:
                    raise CloudError(f"attach_disk: VM {vm_cid} has no free disk slot")
                target = free[0]
                vol = self.pool.lookup(record["volume"])
                assert vol is not None
                spec = domain_xml.DiskSpec(vol.path(), target, _volume_format(vol), serial=record["serial"])
                try:
                    dom.attachDeviceFlags(domain_xml.disk(spec), self._live_flags(dom))
                except libvirt.libvirtError as exc:
                    raise CloudError(f"attach_disk {disk_cid} to {vm_cid}: {exc.get_error_message()}",
                                     ok_to_retry=True) from None
            hint: dict[str, Any] = {"id": record["serial"], "path": self._guest_path(vm_cid, dom, disk_cid,
                                                                                   record["serial"])}

            def change(settings: Mapping[str, Any]) -> dict[str, Any]:
                updated = agent_settings.with_persistent(settings, disk_cid, hint)
                return updated if dom.isActive() else self._with_boot_paths(updated, dom)

            try:
                self._update_settings(vm_cid, dom, change)
                with self.state.transaction() as tx:
                    tx.update("disks", disk_cid, vm_cid=vm_cid, target=target)
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.detachDeviceFlags(domain_xml.disk(spec), self._live_flags(dom))
                raise
            return hint

    # -- the device names persistent disk hints carry ------------------------------------------------------
    def _guest_path(self, vm_cid: str, dom: libvirt.virDomain, disk_cid: str, serial: str) -> str:
        """The name the guest gives the disk with ``serial`` (just attached to ``dom``). A running guest's
        virtio_blk gives a hot-plugged disk the lowest free index, so: the first ``/dev/vdX`` that no other disk
        in the VM's settings holds (the system disk, the ephemeral disk, the other persistent disks, whose paths
        are kept true by ``_refresh_boot_paths``). A stopped VM names its disks at boot, in PCI order."""
        if not dom.isActive():
            return domain_xml.virtio_boot_names(dom.XMLDesc(0)).get(serial, "")
        vm = self.state.get("vms", vm_cid) or {}
        disks = (vm.get("settings") or {}).get("disks") or {}
        if disk_cid in (disks.get("persistent") or {}):
            kept = _hint_path(disks["persistent"][disk_cid])
            if kept:
                return kept
        used = {_hint_path(disks.get("system")), _hint_path(disks.get("ephemeral"))}
        used |= {_hint_path(h) for c, h in (disks.get("persistent") or {}).items() if c != disk_cid}
        return next(p for p in (f"/dev/{domain_xml.virtio_name(i)}" for i in range(1, 702)) if p not in used)

    def _with_boot_paths(self, settings: Mapping[str, Any], dom: libvirt.virDomain) -> dict[str, Any]:
        """``settings`` with every persistent disk's hint path set to what the guest calls it after a boot."""
        names = domain_xml.virtio_boot_names(dom.XMLDesc(0))
        serials = {d["cid"]: d["serial"] for d in self.state.all("disks")}
        paths = {cid: names[serials[cid]] for cid in (settings.get("disks") or {}).get("persistent") or {}
                 if serials.get(cid) in names}
        return agent_settings.with_persistent_paths(settings, paths)

    def _refresh_boot_paths(self, vm_cid: str, dom: libvirt.virDomain) -> None:
        """Before a (re)boot: rewrite the config drive when a persistent disk's name will change (a disk
        detached from the middle leaves a gap that the guest closes when it boots)."""
        vm = self.state.get("vms", vm_cid)
        if vm is None:
            return
        if self._with_boot_paths(vm["settings"], dom) != vm["settings"]:
            self.log.info("reboot_vm: %s: persistent disk names change at boot; rewriting its settings", vm_cid)
            self._update_settings(vm_cid, dom, lambda s: self._with_boot_paths(s, dom))

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        with self.state.lock("vm", vm_cid), self.state.lock("disk", disk_cid):
            dom = self._domain(vm_cid)
            record = self.state.get("disks", disk_cid)
            if record is None:
                raise DiskNotFound(f"detach_disk: disk {disk_cid} not found")
            attached = {d.serial: d for d in domain_xml.attached_disks(dom.XMLDesc(0))}.get(record["serial"])
            if attached is None:
                if record["vm_cid"] == vm_cid:
                    with self.state.transaction() as tx:
                        tx.update("disks", disk_cid, vm_cid=None, target=None)
                raise DiskNotAttached(f"detach_disk: disk {disk_cid} is not attached to VM {vm_cid}")
            spec = domain_xml.DiskSpec(attached.path, attached.target, serial=record["serial"])
            try:
                dom.detachDeviceFlags(domain_xml.disk(spec), self._live_flags(dom))
            except libvirt.libvirtError as exc:
                raise CloudError(f"detach_disk {disk_cid} from {vm_cid}: {exc.get_error_message()}",
                                 ok_to_retry=True) from None
            self._wait_detached(dom, domain_xml.disk(spec), record["serial"], vm_cid, disk_cid)
            self._update_settings(vm_cid, dom, lambda s: agent_settings.without_persistent(s, disk_cid))
            with self.state.transaction() as tx:
                tx.update("disks", disk_cid, vm_cid=None, target=None)

    def _wait_detached(self, dom: libvirt.virDomain, disk_xml: str, serial: str, vm_cid: str, disk_cid: str) -> None:
        """Hot-unplug needs the guest's cooperation: wait (bounded) until the device is really gone. A guest that
        was still booting may have missed the unplug request (the PCIe attention button), so it is repeated every
        ``DETACH_RETRY_SECONDS``."""
        started = time.monotonic()
        deadline = started + self.config.detach_timeout
        next_retry = started + DETACH_RETRY_SECONDS
        while any(d.serial == serial for d in domain_xml.attached_disks(dom.XMLDesc(0))):
            now = time.monotonic()
            if now > deadline:
                raise CloudError(f"detach_disk {disk_cid} from {vm_cid}: the guest did not release the device "
                                 f"within {self.config.detach_timeout:g}s", ok_to_retry=True)
            if now >= next_retry and dom.isActive():
                self.log.info("detach_disk: %s still attached to %s after %.0fs; repeating the unplug request",
                              disk_cid, vm_cid, now - started)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.detachDeviceFlags(disk_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                next_retry = now + DETACH_RETRY_SECONDS
            time.sleep(0.25)

    def _update_settings(self, vm_cid: str, dom: libvirt.virDomain, change: Any) -> None:
        """Rewrite the VM's config drive with ``change(settings)`` and swap the CD-ROM media to it."""
        vm = self.state.get("vms", vm_cid)
        if vm is None:
            raise CloudError(f"VM {vm_cid} has no recorded settings (not created by this CPI?)")
        settings = change(vm["settings"])
        old = Path(vm["config_drive"])
        generation = int(old.stem.rsplit("-", 1)[-1]) + 1 if old.stem.rsplit("-", 1)[-1].isdigit() else 2
        new = self.config_drive_path(vm_cid, generation)
        self.write_config_drive(new, vm_cid, dom.UUIDString(), settings)
        try:
            self._swap_media(dom, vm_cid, str(new))
            with self.state.transaction() as tx:
                tx.update("vms", vm_cid, settings=settings, config_drive=str(new))
        except BaseException:
            new.unlink(missing_ok=True)
            raise
        if old != new:
            old.unlink(missing_ok=True)

    def _swap_media(self, dom: libvirt.virDomain, vm_cid: str, iso: str) -> None:
        """Point the config-drive CD-ROM at ``iso``. A guest that is booting may hold the tray shut for a moment
        ("Tray of device ... is not open"): retried with backoff, then CloudError(ok_to_retry)."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, libvirt.libvirtError) and "tray" in (exc.get_error_message() or "").lower()

        try:
            for attempt in Retrying(stop=stop_after_attempt(8), wait=wait_exponential(multiplier=0.5, max=5),
                                    retry=retry_if_exception(transient), reraise=True):
                with attempt:
                    # FORCE: a guest that locked the tray (early boot, a mounted drive) must not block the CPI
                    flags = self._live_flags(dom) | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
                    dom.updateDeviceFlags(domain_xml.cdrom(iso), flags)
        except libvirt.libvirtError as exc:
            raise CloudError(f"VM {vm_cid}: cannot swap the config drive media: {exc.get_error_message()}",
                             ok_to_retry=transient(exc)) from None

    def set_disk_metadata(self, disk_cid: str, metadata: Mapping[str, str]) -> None:
        with self.state.lock("disk", disk_cid):
            self._disk(disk_cid)
            with self.state.transaction() as tx:
                tx.update("disks", disk_cid, metadata={str(k): str(v) for k, v in metadata.items()})

    def resize_disk(self, disk_cid: str, new_size_mib: int) -> None:
        with self.state.lock("disk", disk_cid):
            record = self._disk(disk_cid)
            if new_size_mib < record["size_mib"]:
                raise NotSupported(f"resize_disk: disk {disk_cid} is {record['size_mib']} MiB; shrinking to "
                                   f"{new_size_mib} MiB is not supported")
            if record["vm_cid"] and self.has_vm(record["vm_cid"]):
                raise CloudError(f"resize_disk: disk {disk_cid} is attached to {record['vm_cid']}; detach it first")
            if new_size_mib == record["size_mib"]:
                self.log.info("resize_disk: %s is already %d MiB", disk_cid, new_size_mib)
                return
            vol = self.pool.lookup(record["volume"])
            assert vol is not None
            try:
                vol.resize(new_size_mib * MIB, 0)
            except libvirt.libvirtError as exc:
                raise CloudError(f"resize_disk {disk_cid}: {exc.get_error_message()}") from None
            with self.state.transaction() as tx:
                tx.update("disks", disk_cid, size_mib=new_size_mib)

    def update_disk(self, disk_cid: str, new_size_mib: int, cloud_properties: Mapping[str, Any]) -> str | None:
        validate("update_disk: cloud_properties", DISK_CLOUD_PROPERTIES_SCHEMA, dict(cloud_properties))
        record = self._disk(disk_cid)
        fmt = str(cloud_properties.get("format", record["cloud_properties"].get("format", "qcow2")))
        if fmt == record["volume"].rsplit(".", 1)[-1]:
            self.resize_disk(disk_cid, new_size_mib)
            with self.state.transaction() as tx:
                tx.update("disks", disk_cid, cloud_properties=dict(cloud_properties))
            return None
        if new_size_mib < record["size_mib"]:
            raise NotSupported(f"update_disk: shrinking disk {disk_cid} is not supported")
        if record["vm_cid"] and self.has_vm(record["vm_cid"]):
            raise CloudError(f"update_disk: disk {disk_cid} is attached to {record['vm_cid']}; detach it first")
        new_cid, new_serial = new_disk_cid()
        new_volume = f"{new_cid}.{fmt}"
        source = self.pool.lookup(record["volume"])
        assert source is not None
        vol = self.pool.clone(new_volume, source, fmt)
        try:
            if new_size_mib > record["size_mib"]:
                vol.resize(new_size_mib * MIB, 0)
            with self.state.transaction() as tx:
                tx.insert("disks", cid=new_cid, volume=new_volume, size_mib=new_size_mib,
                          serial=new_serial, cloud_properties=dict(cloud_properties),
                          metadata=record["metadata"])
        except BaseException:
            self.pool.delete(new_volume)
            raise
        self.delete_disk(disk_cid)
        return new_cid

    # -- snapshots ---------------------------------------------------------------------------------------------
    def snapshot_disk(self, disk_cid: str, metadata: Mapping[str, Any]) -> str:
        with self.state.lock("disk", disk_cid):
            record = self._disk(disk_cid)
            cid = f"snap-{uuidlib.uuid4()}"
            volume = f"{cid}.qcow2"
            source = self.pool.lookup(record["volume"])
            assert source is not None
            if record["vm_cid"] and self.has_vm(record["vm_cid"]):
                self._copy_in_use(source.path(), volume)
            else:
                self.pool.clone(volume, source, "qcow2")
            try:
                with self.state.transaction() as tx:
                    tx.insert("snapshots", cid=cid, disk_cid=disk_cid, volume=volume,
                              metadata={str(k): str(v) for k, v in metadata.items()})
            except BaseException:
                self.pool.delete(volume)
                raise
            return cid

    def _copy_in_use(self, source_path: str, volume: str) -> None:
        """A crash-consistent copy of a disk a running VM holds open (qemu-img with shared locking)."""
        import subprocess

        qemu_img = shutil.which("qemu-img") or "/usr/bin/qemu-img"
        target = self.pool.path / volume
        proc = subprocess.run([qemu_img, "convert", "-U", "-O", "qcow2", source_path, str(target)],
                              capture_output=True, text=True, timeout=3600, check=False)
        if proc.returncode != 0:
            target.unlink(missing_ok=True)
            raise CloudError(f"snapshot_disk: copying {source_path}: {proc.stderr.strip()}")
        target.chmod(0o644)
        self.pool.pool.refresh(0)

    def delete_snapshot(self, snapshot_cid: str) -> None:
        record = self.state.get("snapshots", snapshot_cid)
        self.pool.delete(record["volume"] if record else f"{snapshot_cid}.qcow2")
        with self.state.transaction() as tx:
            tx.delete("snapshots", snapshot_cid)


def new_disk_cid() -> tuple[str, str]:
    """A new persistent disk's CID and serial: the serial is 13 random base32 characters and the CID is
    ``virtio-<serial>``, exactly the ``/dev/disk/by-id`` link udev makes for the disk in the guest
    (60-persistent-storage.rules: ``virtio-$attr{serial}``). So bosh-agent's ID resolver finds the disk by
    its CID whatever the guest named it: with the stock OpenStack agent.json the CID does not match
    DiskIDTransformPattern and is globbed as it is; without a pattern the glob is ``*<CID>``; agents that
    glob ``*<first 20 characters of the CID>`` see all 20. See examples/cpi-libvirt.yml."""
    import base64
    import secrets

    serial = base64.b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()
    return f"virtio-{serial}", serial


def _older(path: Path, now: float, seconds: float) -> bool:
    try:
        return now - path.lstat().st_mtime > seconds
    except OSError:
        return False


def disk_serial(disk_cid: str) -> str:
    """The serial of a disk created before ``new_disk_cid`` (CID ``disk-<uuid>``): 20 characters of a hash.
    Such disks keep it; the agent finds them by the hint's path."""
    return ("p" + hashlib.sha256(disk_cid.encode()).hexdigest())[:20]


def _hint_path(hint: Any) -> str:
    """The device path of a disk hint (a string hint is the path)."""
    if isinstance(hint, str):
        return hint
    if isinstance(hint, Mapping):
        return str(hint.get("path") or "")
    return ""


def _volume_format(vol: libvirt.virStorageVol) -> str:
    import xml.etree.ElementTree as ET

    fmt = ET.fromstring(vol.XMLDesc(0)).find("./target/format")
    return fmt.get("type", "raw") if fmt is not None else "raw"


def _random_mac() -> str:
    import secrets

    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def _title(vm_cid: str, metadata: Mapping[str, str]) -> str:
    if "name" in metadata:
        return f"{metadata['name']} ({vm_cid})"
    parts = [metadata[k] for k in ("deployment", "job", "index") if k in metadata]
    return f"{'/'.join(parts)} ({vm_cid})" if parts else vm_cid
