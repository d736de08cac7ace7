"""The AWS provider: BOSH VMs as EC2 instances, persistent disks as EBS volumes, stemcells as AMIs (boto3; the
moto server in tests). AWS is the only source of truth: the provider keeps no local state.

CIDs: VMs are instance ids (``i-...``), disks volume ids (``vol-...``), snapshots ``snap-...``, stemcells AMI ids
(``ami-...``; light stemcells ``"ami-... light"``). Every AWS call goes through :class:`~cpi.providers.aws.clients.
AwsApi` (bounded timeouts, tenacity retries on throttling/5xx); every wait is bounded by ``aws.wait_timeout``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from cpi.errors import (
    CloudError,
    CpiError,
    DiskNotAttached,
    DiskNotFound,
    NotSupported,
    VMNotFound,
)
from cpi.provider import DiskHint, DiskResizer, DiskUpdater, Networks, Provider, Snapshots, VmRequest
from cpi.provider_steps import run_create_vm
from cpi.providers.aws import instance_types, vms, volumes
from cpi.providers.aws import tags as tagging
from cpi.providers.aws.clients import AwsApi, AwsCallError, wait_for
from cpi.providers.aws.config import DISK_CLOUD_PROPERTIES_SCHEMA, AwsConfig, validate
from cpi.providers.aws.stemcells import StemcellManager, delete_snapshot

_VM_MISSING = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
_DISK_MISSING = frozenset({"InvalidVolume.NotFound", "InvalidVolumeID.Malformed"})
#: Device names bosh-aws-cpi gives persistent disks ("f..p is what the console suggests").
PERSISTENT_DEVICES = tuple(f"/dev/sd{c}" for c in "fghijklmnop")
_GONE = frozenset({"terminated"})


class AWSProvider(Provider, Snapshots, DiskResizer, DiskUpdater):
    name = "aws"

    def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
        super().__init__(properties, logger)
        self.config = AwsConfig.from_properties(properties.get("aws"))
        self.agent_config: Mapping[str, Any] = properties.get("agent") or {}
        self.api = AwsApi(self.config, logger)
        self.stemcells = StemcellManager(self.api, self.config, logger)

    # -- stemcells ---------------------------------------------------------------------------------------------
    def create_stemcell(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        return self.stemcells.create(image_path, cloud_properties, tags)

    def delete_stemcell(self, stemcell_cid: str) -> None:
        self.stemcells.delete(stemcell_cid)

    # -- VMs -----------------------------------------------------------------------------------------------------
    def create_vm(self, request: VmRequest) -> tuple[str, Networks]:
        plan = vms.VmPlanner(self).plan(request)
        self.log.info(
            "create_vm: %s from %s in %s, subnet %s",
            plan.instance_type,
            plan.image_id,
            plan.availability_zone,
            plan.subnet_id,
        )
        state: dict[str, Any] = {}
        run_create_vm(vms.steps(self, plan), state, self.log, where="create_vm")
        return str(state["instance_id"]), plan.networks

    def instance(self, vm_cid: str) -> dict[str, Any]:
        """The instance (any state); VMNotFound when AWS does not know it."""
        try:
            reservations = self.api.ec2_call("describe_instances", InstanceIds=[vm_cid])["Reservations"]
        except AwsCallError as exc:
            if exc.code in _VM_MISSING:
                raise VMNotFound(f"VM {vm_cid} not found") from None
            raise
        found = [i for r in reservations for i in r.get("Instances", [])]
        if not found:
            raise VMNotFound(f"VM {vm_cid} not found")
        return dict(found[0])

    def wait_instance(self, vm_cid: str, *, want: set[str], failed: set[str] | frozenset[str] = frozenset()) -> None:
        def describe() -> dict[str, Any]:
            try:
                return self.instance(vm_cid)
            except VMNotFound:
                return {"State": {"Name": "terminated" if "terminated" in want else "missing"}}

        wait_for(
            describe,
            _state_name,
            want=want,
            failed=set(failed) | {"missing"},
            reason=lambda i: str((i.get("StateReason") or {}).get("Message", "")),
            what=f"VM {vm_cid}",
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
            log=self.log,
        )

    def terminate(self, vm_cid: str) -> None:
        """Terminate and wait (bounded) until AWS reports it terminated."""
        try:
            self.api.ec2_call("terminate_instances", InstanceIds=[vm_cid])
        except AwsCallError as exc:
            if exc.code in _VM_MISSING:
                return
            raise
        self.wait_instance(vm_cid, want={"terminated"})

    def delete_vm(self, vm_cid: str) -> None:
        instance = self.instance(vm_cid)
        if _state_name(instance) in _GONE:
            self.log.info("delete_vm: %s is already terminated", vm_cid)
            return
        self.terminate(vm_cid)
        self.log.info("delete_vm: %s terminated", vm_cid)

    def has_vm(self, vm_cid: str) -> bool:
        try:
            return _state_name(self.instance(vm_cid)) not in _GONE
        except VMNotFound:
            return False

    def reboot_vm(self, vm_cid: str) -> None:
        self._live_instance(vm_cid)
        self.api.ec2_call("reboot_instances", InstanceIds=[vm_cid])

    def set_vm_metadata(self, vm_cid: str, metadata: Mapping[str, str]) -> None:
        self._tag(vm_cid, tagging.vm_name_tags(metadata), VMNotFound, f"VM {vm_cid}", _VM_MISSING)

    def get_disks(self, vm_cid: str) -> list[str]:
        instance = self.instance(vm_cid)
        root = instance.get("RootDeviceName")
        return [
            m["Ebs"]["VolumeId"]
            for m in instance.get("BlockDeviceMappings", [])
            if m.get("Ebs") and m.get("DeviceName") != root and not m["Ebs"].get("DeleteOnTermination")
        ]

    def calculate_vm_cloud_properties(self, vm_resources: Mapping[str, int]) -> dict[str, Any]:
        chosen = instance_types.smallest_for(vm_resources)
        props: dict[str, Any] = {"instance_type": chosen.name}
        ephemeral = int(vm_resources.get("ephemeral_disk_size") or 0)
        if ephemeral > 0:
            props["ephemeral_disk"] = {"size": ephemeral}
        return props

    def _live_instance(self, vm_cid: str) -> dict[str, Any]:
        instance = self.instance(vm_cid)
        if _state_name(instance) in _GONE:
            raise VMNotFound(f"VM {vm_cid} is terminated")
        return instance

    def _tag(
        self, resource: str, tags: Mapping[str, str], missing: type[CpiError], what: str, missing_codes: frozenset[str]
    ) -> None:
        listed = tagging.tag_list(tags)
        if not listed:
            return
        try:
            self.api.ec2_call("create_tags", Resources=[resource], Tags=listed)
        except AwsCallError as exc:
            if exc.code in missing_codes:
                raise missing(f"{what} not found") from None
            if exc.code == "TagLimitExceeded":
                self.log.error("could not tag %s: %s", what, exc.message)
                return
            raise

    # -- disks ---------------------------------------------------------------------------------------------------
    def describe_volumes(self, volume_ids: list[str]) -> list[dict[str, Any]]:
        """The volumes; DiskNotFound naming the first id AWS does not know."""
        try:
            return list(self.api.ec2_call("describe_volumes", VolumeIds=list(volume_ids))["Volumes"])
        except AwsCallError as exc:
            if exc.code in _DISK_MISSING:
                raise DiskNotFound(f"disk(s) {', '.join(volume_ids)}: {exc.message}") from None
            raise

    def volume(self, disk_cid: str) -> dict[str, Any]:
        found = self.describe_volumes([disk_cid])
        if not found or found[0].get("State") in ("deleting", "deleted"):
            raise DiskNotFound(f"disk {disk_cid} not found")
        return found[0]

    def create_disk(self, size_mib: int, cloud_properties: Mapping[str, Any], vm_locality: str | None) -> str:
        props = dict(cloud_properties)
        validate("create_disk: cloud_properties", DISK_CLOUD_PROPERTIES_SCHEMA, props)
        params = volumes.ebs_params(
            props,
            what="create_disk: cloud_properties",
            size_mib=size_mib,
            encrypted=bool(props.get("encrypted", self.config.encrypted)),
            kms_key_arn=props.get("kms_key_arn", self.config.kms_key_arn),
        )
        zone = self._disk_zone(vm_locality)
        response = self.api.ec2_call("create_volume", AvailabilityZone=zone, ClientToken=uuid.uuid4().hex, **params)
        volume_id = str(response["VolumeId"])
        try:
            self._wait_volume(volume_id, want={"available"}, failed={"error", "deleting", "deleted"})
        except BaseException:
            self._delete_volume(volume_id)
            raise
        self.log.info(
            "create_disk: %s (%d GiB %s in %s for %d MiB)",
            volume_id,
            params["Size"],
            params["VolumeType"],
            zone,
            size_mib,
        )
        return volume_id

    def _disk_zone(self, vm_locality: str | None) -> str:
        if vm_locality:
            return str(self.instance(vm_locality)["Placement"]["AvailabilityZone"])
        if self.config.default_availability_zone:
            return self.config.default_availability_zone
        zones = self.api.ec2_call("describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}])[
            "AvailabilityZones"
        ]
        names = sorted(z["ZoneName"] for z in zones if z.get("ZoneType", "availability-zone") == "availability-zone")
        if not names:
            raise CloudError(f"create_disk: region {self.config.region} has no available availability zone")
        return names[0]

    def _wait_volume(self, volume_id: str, *, want: set[str], failed: set[str]) -> dict[str, Any]:
        def describe() -> dict[str, Any]:
            try:
                return self.describe_volumes([volume_id])[0]
            except (DiskNotFound, IndexError):
                return {"State": "deleted"}

        return wait_for(
            describe,
            lambda v: str(v.get("State", "")),
            want=want,
            failed=failed,
            what=f"disk {volume_id}",
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
            log=self.log,
        )

    def _delete_volume(self, volume_id: str) -> None:
        try:
            self.api.ec2_call("delete_volume", VolumeId=volume_id)
        except AwsCallError as exc:
            if exc.code not in _DISK_MISSING:
                raise

    def delete_disk(self, disk_cid: str) -> None:
        volume = self.volume(disk_cid)
        if volume.get("Attachments"):
            # a VM deleted a moment ago may still hold it (bosh-aws-cpi retries VolumeInUse for minutes)
            holders = ", ".join(a.get("InstanceId", "?") for a in volume["Attachments"])
            self.log.info("delete_disk: %s is still attached to %s; waiting for it to be released", disk_cid, holders)
            self._wait_volume(disk_cid, want={"available", "deleted"}, failed={"error"})
        self._delete_volume(disk_cid)
        self._wait_volume(disk_cid, want={"deleted"}, failed={"error"})
        self.log.info("delete_disk: %s deleted", disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        try:
            self.volume(disk_cid)
            return True
        except DiskNotFound:
            return False

    def attach_disk(self, vm_cid: str, disk_cid: str) -> DiskHint:
        instance = self._live_instance(vm_cid)
        volume = self.volume(disk_cid)
        zone = instance["Placement"]["AvailabilityZone"]
        if volume["AvailabilityZone"] != zone:
            raise CloudError(f"attach_disk: disk {disk_cid} is in {volume['AvailabilityZone']}, VM {vm_cid} in {zone}")
        mine = [a for a in volume.get("Attachments", []) if a.get("InstanceId") == vm_cid]
        others = [a for a in volume.get("Attachments", []) if a.get("InstanceId") != vm_cid]
        if mine:
            device = str(mine[0]["Device"])
            self.log.info("attach_disk: %s is already attached to %s as %s", disk_cid, vm_cid, device)
        else:
            if others:
                holder = others[0].get("InstanceId")
                raise CloudError(f"attach_disk: disk {disk_cid} is attached to another VM ({holder})", ok_to_retry=True)
            device = self._attach(vm_cid, disk_cid, instance)
        self._wait_attachment(disk_cid, vm_cid, attached=True)
        hint = instance_types.device_hint(device, instance.get("InstanceType"), disk_cid)
        self.log.info("attach_disk: %s attached to %s as %s (hint %s)", disk_cid, vm_cid, device, hint)
        return hint

    def _attach(self, vm_cid: str, disk_cid: str, instance: Mapping[str, Any]) -> str:
        """AttachVolume at the first free device name (/dev/sdf../dev/sdp, as bosh-aws-cpi) and return it.
        IncorrectState/VolumeInUse (AWS's eventual consistency, a VM just deleted) are retried within the wait bound;
        a device name taken meanwhile (a concurrent attach_disk on the same VM) moves on to the next free one."""
        import time

        deadline = time.monotonic() + self.config.wait_timeout
        delay = self.config.poll_interval / 5
        taken: set[str] = set()
        while True:
            used = {m.get("DeviceName") for m in instance.get("BlockDeviceMappings", [])} | taken
            free = [d for d in PERSISTENT_DEVICES if d not in used]
            if not free:
                raise CloudError(f"attach_disk: VM {vm_cid} has no free device name (/dev/sdf-/dev/sdp all in use)")
            device = free[0]
            try:
                self.api.ec2_call("attach_volume", VolumeId=disk_cid, InstanceId=vm_cid, Device=device)
                return device
            except AwsCallError as exc:
                in_use = exc.code == "InvalidParameterValue" and "in use" in exc.message
                transient = exc.code in ("IncorrectState", "VolumeInUse")
                if not (in_use or transient) or time.monotonic() > deadline:
                    raise CloudError(f"attach_disk: {exc.message}", ok_to_retry=transient or in_use) from None
                if in_use:
                    self.log.info("attach_disk: %s on %s was taken meanwhile; trying the next one", device, vm_cid)
                    taken.add(device)
                    instance = self._live_instance(vm_cid)
                    continue
                self.log.info("attach_disk: %s not attachable yet (%s); retrying", disk_cid, exc.code)
            time.sleep(delay)
            delay = min(self.config.poll_interval, delay * 1.5)

    def _wait_attachment(self, disk_cid: str, vm_cid: str, *, attached: bool) -> None:
        def describe() -> str:
            try:
                volume = self.describe_volumes([disk_cid])[0]
            except DiskNotFound:
                return "detached"
            states = [a.get("State", "") for a in volume.get("Attachments", []) if a.get("InstanceId") == vm_cid]
            return states[0] if states else "detached"

        wait_for(
            describe,
            lambda s: s,
            want={"attached"} if attached else {"detached"},
            failed=set(),
            what=f"disk {disk_cid} on VM {vm_cid}",
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
            log=self.log,
        )

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        self.instance(vm_cid)
        volume = self.volume(disk_cid)
        attachment = next((a for a in volume.get("Attachments", []) if a.get("InstanceId") == vm_cid), None)
        if attachment is None or attachment.get("State") == "detached":
            raise DiskNotAttached(f"detach_disk: disk {disk_cid} is not attached to VM {vm_cid}", ok_to_retry=True)
        if attachment.get("State") != "detaching":
            try:
                self.api.ec2_call(
                    "detach_volume", VolumeId=disk_cid, InstanceId=vm_cid, Device=attachment.get("Device")
                )
            except AwsCallError as exc:
                if exc.code == "IncorrectState":
                    self.log.info("detach_disk: %s: %s", disk_cid, exc.message)
                elif exc.code in _DISK_MISSING:
                    raise DiskNotFound(f"detach_disk: disk {disk_cid} not found") from None
                else:
                    raise
        self._wait_attachment(disk_cid, vm_cid, attached=False)
        self.log.info("detach_disk: %s detached from %s", disk_cid, vm_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: Mapping[str, str]) -> None:
        self._tag(disk_cid, metadata, DiskNotFound, f"disk {disk_cid}", _DISK_MISSING)

    def resize_disk(self, disk_cid: str, new_size_mib: int) -> None:
        volume = self.volume(disk_cid)
        current = int(volume["Size"])
        wanted = volumes.gib(new_size_mib)
        if wanted < current:
            raise NotSupported(
                f"resize_disk: disk {disk_cid} is {current} GiB; shrinking to {new_size_mib} MiB is not supported"
            )
        if wanted == current:
            self.log.info("resize_disk: %s is already %d GiB (>= %d MiB)", disk_cid, current, new_size_mib)
            return
        volumes.ebs_params(
            {"type": volume.get("VolumeType", "gp3"), **_iops_of(volume)},
            what=f"resize_disk: disk {disk_cid}",
            size_mib=new_size_mib,
            encrypted=False,
            kms_key_arn=None,
        )
        self._modify(disk_cid, {"Size": wanted})

    def update_disk(self, disk_cid: str, new_size_mib: int, cloud_properties: Mapping[str, Any]) -> str | None:
        props = dict(cloud_properties)
        validate("update_disk: cloud_properties", DISK_CLOUD_PROPERTIES_SCHEMA, props)
        volume = self.volume(disk_cid)
        current = int(volume["Size"])
        wanted = volumes.gib(new_size_mib)
        if wanted < current:
            raise NotSupported(
                f"update_disk: disk {disk_cid} is {current} GiB; shrinking to {new_size_mib} MiB is not supported"
            )
        if "encrypted" in props and bool(props["encrypted"]) != bool(volume.get("Encrypted")):
            raise NotSupported(f"update_disk: disk {disk_cid}: encryption cannot be changed in place")
        if "kms_key_arn" in props and props["kms_key_arn"] != volume.get("KmsKeyId"):
            raise NotSupported(f"update_disk: disk {disk_cid}: the KMS key cannot be changed in place")
        kind = str(props.get("type") or volume.get("VolumeType") or volumes.DEFAULT_TYPE)
        spec: dict[str, Any] = {"type": kind, **{k: props[k] for k in ("iops", "throughput") if k in props}}
        if "type" not in props:
            spec = {**_iops_of(volume), **spec}
        target = volumes.ebs_params(
            spec,
            what="update_disk: cloud_properties",
            size_mib=max(new_size_mib, current * 1024),
            encrypted=False,
            kms_key_arn=None,
        )
        changes: dict[str, Any] = {}
        if wanted > current:
            changes["Size"] = wanted
        if kind != volume.get("VolumeType"):
            changes["VolumeType"] = kind
        for key in ("Iops", "Throughput"):
            if key in target and target[key] != volume.get(key) and key.lower() in props:
                changes[key] = target[key]
        if not changes:
            self.log.info("update_disk: %s already matches", disk_cid)
            return None
        self._modify(disk_cid, changes)
        return None

    def _modify(self, disk_cid: str, changes: dict[str, Any]) -> None:
        try:
            self.api.ec2_call("modify_volume", VolumeId=disk_cid, **changes)
        except AwsCallError as exc:
            if exc.code in ("IncorrectModificationState", "VolumeModificationRateExceeded", "UnsupportedOperation"):
                # AWS allows one modification per volume every 6 hours: the director falls back to a new disk
                raise NotSupported(f"modifying disk {disk_cid}: {exc.message}") from None
            if exc.code in _DISK_MISSING:
                raise DiskNotFound(f"disk {disk_cid} not found") from None
            raise

        def describe() -> dict[str, Any]:
            found = self.api.ec2_call("describe_volumes_modifications", VolumeIds=[disk_cid])
            mods = found.get("VolumesModifications") or [{}]
            return dict(mods[-1])

        wait_for(
            describe,
            lambda m: str(m.get("ModificationState", "")),
            want={"optimizing", "completed"},
            failed={"failed"},
            reason=lambda m: str(m.get("StatusMessage", "")),
            what=f"modification of disk {disk_cid}",
            timeout=self.config.wait_timeout,
            interval=self.config.poll_interval,
            log=self.log,
        )
        self.log.info("disk %s modified: %s", disk_cid, ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))

    # -- snapshots ---------------------------------------------------------------------------------------------
    def snapshot_disk(self, disk_cid: str, metadata: Mapping[str, Any]) -> str:
        volume = self.volume(disk_cid)
        device = next((a.get("Device") for a in volume.get("Attachments", []) if a.get("State") == "attached"), None)
        description, tags = tagging.snapshot_tags(metadata, device)
        params: dict[str, Any] = {"VolumeId": disk_cid, "Description": description[:255]}
        specs = tagging.tag_specifications(["snapshot"], tags)
        if specs:
            params["TagSpecifications"] = specs
        snapshot_id = str(self.api.ec2_call("create_snapshot", **params)["SnapshotId"])
        try:

            def describe() -> dict[str, Any]:
                found = self.api.ec2_call("describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"]
                return dict(found[0]) if found else {"State": "error"}

            wait_for(
                describe,
                lambda s: str(s.get("State", "")),
                want={"completed"},
                failed={"error"},
                reason=lambda s: str(s.get("StateMessage", "")),
                what=f"snapshot {snapshot_id} of {disk_cid}",
                timeout=self.config.wait_timeout,
                interval=self.config.poll_interval,
                log=self.log,
            )
        except BaseException:
            delete_snapshot(self.api, snapshot_id, self.log)
            raise
        self.log.info("snapshot_disk: %s of %s", snapshot_id, disk_cid)
        return snapshot_id

    def delete_snapshot(self, snapshot_cid: str) -> None:
        delete_snapshot(self.api, snapshot_cid, self.log)


def _state_name(instance: Mapping[str, Any]) -> str:
    return str((instance.get("State") or {}).get("Name", ""))


def _iops_of(volume: Mapping[str, Any]) -> dict[str, Any]:
    """A volume's current iops/throughput as a disk spec (gp2 reports an iops figure it does not take)."""
    kind = volume.get("VolumeType")
    spec: dict[str, Any] = {}
    if kind in volumes.IOPS_TYPES and volume.get("Iops"):
        spec["iops"] = volume["Iops"]
    if kind == "gp3" and volume.get("Throughput"):
        spec["throughput"] = volume["Throughput"]
    return spec
