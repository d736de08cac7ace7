"""The ``amazon-ebs`` build as Packer-style steps (packer-plugin-amazon's order), each removing in ``cleanup``
exactly what its ``run`` created and recorded in the state dict:

``pre_validate`` (the AMI name is free in every target region unless ``force_deregister``) -> ``source_ami``
(``source_ami`` or ``source_ami_filter``) -> ``network_info`` (VPC/subnet) -> ``key_pair`` (temporary, deleted
afterwards) -> ``security_group`` (temporary, deleted afterwards) -> ``run_instance`` (terminated afterwards) ->
``connect`` (``ssh`` or ``none``) -> ``provision`` -> ``stop_instance`` -> ``modify_instance`` (ENA/SR-IOV)
-> ``deregister_ami`` (force_deregister)
-> ``create_ami`` -> ``ami_region_copy`` (all ``ami_regions`` in parallel, bounded) -> ``modify_ami_attributes``
-> ``create_tags`` (AMIs and snapshots in every region, in parallel).

State keys: ``source_image`` (the source AMI's description), ``vpc_id``, ``subnet_id``, ``key_pair_name``,
``ssh_private_key`` (never logged), ``security_group_ids``, ``temp_security_group``, ``instance_id``,
``instance``, ``amis`` (region -> AMI id), ``snapshots`` (region -> snapshot ids), ``ami_copies``.

On a failure, an interrupt or an armed failpoint, the runner calls every started step's cleanup in reverse: the
copies in every region are deregistered and their snapshots deleted (beyond Packer, which leaves them), then the
build region's AMI, the instance, the security group and the key pair. ``-on-error=abort`` leaves everything and
the copy step says where.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from builders.builder_types._sdk.communicator import SSHTarget
from builders.builder_types._sdk.communicator import StepConnect as SdkStepConnect
from builders.builder_types.amazon_ebs.config import EbsConfig
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Ec2Error, image_snapshots
from builders.builder_types.amazon_ebs.regions import AmiCopies, CopyTarget, RegionsFailed, run_in_regions, uncancelled
from builders.builder_types.amazon_ebs.template_data import build_data, ec2_tags, render_text, tag_specs
from builders.core import BuildContext, BuildError, BuildStep, ProvisionHook, StepProvision
from stemforge_base.steps import Step

LOG = logging.getLogger("stemforge.builders.amazon")

#: Generated-data keys holding secrets (never logged, kept out of the artifact).
SECRET_KEYS = ("SSHPrivateKey", "Password")


class AwsStep(BuildStep[EbsConfig]):
    """An amazon-ebs step: the AWS access for its work and, for cleanups, one that keeps retrying after the build
    was cancelled."""

    @property
    def access(self) -> AwsAccess:
        return self.cfg.access

    @property
    def cleanup_access(self) -> AwsAccess:
        return uncancelled(self.cfg.access)


def failing() -> bool:
    """True inside a cleanup run because the build failed or was interrupted (the runner unwinds from its
    ``except`` block), False in the cleanups of temporary steps after a successful run."""
    return sys.exc_info()[0] is not None


# ---------------------------------------------------------------------------------------------------- source


class RegionNameCheck:
    """The AMI-name check of the copy regions, run in the background from ``pre_validate`` (it also sets up the
    per-region clients) while the instance is launched and provisioned; ``create_ami`` waits for it before any AMI
    is made. ``wait`` raises BuildError naming the region where the name is taken."""

    def __init__(self, access: AwsAccess, name: str, regions: list[str], parallel: int) -> None:
        self.error: str | None = None
        self.thread = threading.Thread(
            target=self._run, args=(access, name, regions, parallel), daemon=True, name="ami-name-check"
        )

    def _run(self, access: AwsAccess, name: str, regions: list[str], parallel: int) -> None:
        def check(region: str, _abort: Any) -> None:
            found = access.find_images(name, region)
            if found:
                raise BuildError(
                    f"Error: AMI Name: '{found[0]['Name']}' is used by an existing AMI: "
                    f"{found[0]['ImageId']} ({region})"
                )

        try:
            run_in_regions(access, regions, check, parallel=parallel, what="prevalidating the AMI name")
        except RegionsFailed as exc:
            self.error = "\n".join(exc.errors.values())
        except BaseException as exc:  # noqa: BLE001 - reported by wait()
            self.error = str(exc) or type(exc).__name__

    def start(self) -> RegionNameCheck:
        self.thread.start()
        return self

    def wait(self, cancel: threading.Event) -> None:
        while self.thread.is_alive():
            self.thread.join(0.1)
            if cancel.is_set():
                break
        if self.error:
            raise BuildError(self.error)


class StepPreValidate(AwsStep):
    """Fail before anything is created: the AMI name must be free in the build region (Packer's check) -- and,
    beyond Packer, in every ami_region, checked in the background until ``create_ami``; the VPC/subnet, when
    given, must exist."""

    name = "pre_validate"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.subnet_id or cfg.vpc_id:
            try:
                if cfg.subnet_id:
                    self.access.call("describe_subnets", SubnetIds=[cfg.subnet_id])
                if cfg.vpc_id:
                    self.access.call("describe_vpcs", VpcIds=[cfg.vpc_id])
            except Ec2Error as exc:
                raise BuildError(f"Error: {exc}") from None
        if cfg.force_deregister:
            self.ui.say("Force Deregister flag found, skipping prevalidating AMI Name")
            return
        if cfg.skip_create_ami:
            return
        self.ui.say(f"Prevalidating AMI Name: {cfg.ami_name}")
        if cfg.ami_regions:
            state["region_name_check"] = RegionNameCheck(
                self.access, cfg.ami_name, list(cfg.ami_regions), cfg.ami_copy_parallelism
            ).start()
        found = self.access.find_images(cfg.ami_name, cfg.region)
        if found:
            raise BuildError(f"Error: AMI Name: '{found[0]['Name']}' is used by an existing AMI: {found[0]['ImageId']}")

    def cleanup(self, state: dict[str, Any]) -> None:
        check: RegionNameCheck | None = state.pop("region_name_check", None)
        if check is not None:
            check.thread.join(120)  # bounded by the calls' own timeouts; no thread outlives the build


class StepSourceAMIInfo(AwsStep):
    """Find the source AMI (``source_ami``, or ``source_ami_filter`` with owners and ``most_recent``)."""

    name = "source_ami"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        self.ui.say("Inspecting the source AMI...")
        params: dict[str, Any] = {}
        if cfg.source_ami:
            params["ImageIds"] = [cfg.source_ami]
        flt = cfg.source_ami_filter
        if flt:
            params["Owners"] = list(flt.get("owners") or [])
            filters = [{"Name": k, "Values": [v]} for k, v in (flt.get("filters") or {}).items()]
            if filters:
                params["Filters"] = filters
            if flt.get("include_deprecated"):
                params["IncludeDeprecated"] = True
        try:
            images = self.access.call("describe_images", **params).get("Images") or []
        except Ec2Error as exc:
            raise BuildError(f"Error querying AMI: {exc}") from None
        if not images:
            what = cfg.source_ami or f"filters: {flt.get('filters')} owners: {flt.get('owners')}"
            raise BuildError(f"No AMI was found matching filters: {what}")
        if len(images) > 1 and not flt.get("most_recent"):
            raise BuildError(
                "Your query returned more than one result. Please try a more specific search, or set "
                "most_recent to true."
            )
        image = max(images, key=lambda i: str(i.get("CreationDate", "")))
        root_type = image.get("RootDeviceType", "ebs")
        if root_type not in ("ebs", ""):
            raise BuildError(f"The root device of the source AMI must be EBS-backed (it is {root_type!r})")
        self.ui.message(f"Found Image ID: {image['ImageId']} ({image.get('Name', '')})")
        state["source_image"] = image
        self.ctx.generated.update({k: v for k, v in build_data(state, cfg.region).items()})


class StepNetworkInfo(AwsStep):
    """The VPC and subnet: the subnet's VPC when ``subnet_id`` is given, a subnet of ``vpc_id`` (in
    ``availability_zone`` if set) otherwise, else the default VPC (EC2 picks its subnet)."""

    name = "network_info"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        vpc_id, subnet_id = cfg.vpc_id, cfg.subnet_id
        if subnet_id:
            subnet = self.access.call("describe_subnets", SubnetIds=[subnet_id])["Subnets"][0]
            vpc_id = vpc_id or subnet["VpcId"]
            if subnet["VpcId"] != vpc_id:
                raise BuildError(f"subnet_id {subnet_id} is in {subnet['VpcId']}, not in vpc_id {vpc_id}")
        elif vpc_id:
            filters = [{"Name": "vpc-id", "Values": [vpc_id]}]
            if cfg.availability_zone:
                filters.append({"Name": "availability-zone", "Values": [cfg.availability_zone]})
            subnets = self.access.call("describe_subnets", Filters=filters).get("Subnets") or []
            if not subnets:
                raise BuildError(
                    f"No subnet found in vpc_id {vpc_id}"
                    + (f" in {cfg.availability_zone}" if cfg.availability_zone else "")
                )
            best = max(subnets, key=lambda s: int(s.get("AvailableIpAddressCount", 0)))
            subnet_id = best["SubnetId"]
            self.ui.message(f"Found Subnet ID: {subnet_id}")
        else:
            vpcs = self.access.call("describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise BuildError(f"no default VPC in {cfg.region}: set vpc_id or subnet_id")
            vpc_id = vpcs[0]["VpcId"]
        state["vpc_id"], state["subnet_id"] = vpc_id, subnet_id


class StepKeyPair(AwsStep):
    """A temporary key pair (Packer's ``packer_<uuid>``), unless the template brings a key pair, a private key
    or a password; deleted in cleanup. The private key stays in memory (state only)."""

    name = "key_pair"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.ssh_private_key_file:
            from pathlib import Path

            pair = f" and key pair {cfg.ssh_keypair_name}" if cfg.ssh_keypair_name else ""
            self.ui.say(f"Using existing SSH private key{pair}")
            state["ssh_private_key"] = Path(cfg.ssh_private_key_file).read_text()
            state["key_pair_name"] = cfg.ssh_keypair_name
            return
        if not cfg.temporary_key_pair_name:
            self.ui.say("Not using temporary keypair")
            state["key_pair_name"] = cfg.ssh_keypair_name
            return
        self.ui.say(f"Creating temporary keypair: {cfg.temporary_key_pair_name}")
        params: dict[str, Any] = {"KeyName": cfg.temporary_key_pair_name, "KeyType": cfg.temporary_key_pair_type}
        specs = tag_specs(self.ctx, {"key-pair": cfg.run_tags}, build_data(state, cfg.region))
        if specs:
            params["TagSpecifications"] = specs
        answer = self.access.call("create_key_pair", **params)
        state["temp_key_pair"] = cfg.temporary_key_pair_name
        state["key_pair_name"] = cfg.temporary_key_pair_name
        state["ssh_private_key"] = answer.get("KeyMaterial", "")

    def cleanup(self, state: dict[str, Any]) -> None:
        name = state.pop("temp_key_pair", None)
        state.pop("ssh_private_key", None)
        if not name:
            return
        self.ui.say("Deleting temporary keypair...")
        try:
            self.cleanup_access.call("delete_key_pair", KeyName=name)
        except Ec2Error as exc:
            self.ui.error(f"Error cleaning up keypair. Please delete the key manually: {name}: {exc}")


class StepSecurityGroup(AwsStep):
    """A temporary security group (``packer_<uuid>``) in the build's VPC opening the SSH port to
    ``temporary_security_group_source_cidrs`` (no rule with communicator ``none``), unless ``security_group_ids``
    are given; deleted in cleanup (retried while the terminating instance still holds it)."""

    name = "security_group"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.security_group_ids:
            self.ui.say(f"Using specified security groups: {', '.join(cfg.security_group_ids)}")
            state["security_group_ids"] = list(cfg.security_group_ids)
            return
        name = f"packer_{uuid.uuid4()}"
        self.ui.say("Creating temporary security group for this instance: " + name)
        params: dict[str, Any] = {"GroupName": name, "Description": "Temporary group for Packer"}
        if state.get("vpc_id"):
            params["VpcId"] = state["vpc_id"]
        specs = tag_specs(self.ctx, {"security-group": cfg.run_tags}, build_data(state, cfg.region))
        if specs:
            params["TagSpecifications"] = specs
        group_id = self.access.call("create_security_group", **params)["GroupId"]
        state["temp_security_group"] = group_id
        state["security_group_ids"] = [group_id]
        if cfg.communicator == "ssh":
            ranges = [{"CidrIp": c} for c in cfg.temporary_security_group_source_cidrs if ":" not in c]
            ranges6 = [{"CidrIpv6": c} for c in cfg.temporary_security_group_source_cidrs if ":" in c]
            permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": cfg.ssh_port, "ToPort": cfg.ssh_port}
            if ranges:
                permission["IpRanges"] = ranges
            if ranges6:
                permission["Ipv6Ranges"] = ranges6
            self.ui.message(
                f"Authorizing access to port {cfg.ssh_port} from "
                f"{cfg.temporary_security_group_source_cidrs} in the temporary security groups..."
            )
            self.access.call("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[permission])

    def cleanup(self, state: dict[str, Any]) -> None:
        group_id = state.pop("temp_security_group", None)
        if not group_id:
            return
        self.ui.say("Deleting temporary security group...")
        access = self.cleanup_access
        deadline = time.monotonic() + 300
        while True:
            try:
                access.call("delete_security_group", GroupId=group_id)
                return
            except Ec2Error as exc:
                if exc.code == "InvalidGroup.NotFound":
                    return
                if exc.code == "DependencyViolation" and time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                self.ui.error(f"Error cleaning up security group. Please delete the group manually: {group_id}: {exc}")
                return


# -------------------------------------------------------------------------------------------------- instance


def _instance(access: AwsAccess, instance_id: str) -> dict[str, Any] | None:
    try:
        reservations = access.call("describe_instances", InstanceIds=[instance_id]).get("Reservations") or []
    except Ec2Error as exc:
        if exc.code == "InvalidInstanceID.NotFound":
            return None
        raise
    for reservation in reservations:
        for instance in reservation.get("Instances") or []:
            return dict(instance)
    return None


def wait_instance_state(
    access: AwsAccess, instance_id: str, wanted: str, *, cancellable: bool = True
) -> dict[str, Any]:
    """Poll until the instance is in ``wanted``; BuildError if it ends up elsewhere (terminated while waiting)."""
    view = access if cancellable else uncancelled(access)

    def check() -> dict[str, Any] | None:
        instance = _instance(view, instance_id)
        state = ((instance or {}).get("State") or {}).get("Name", "terminated" if instance is None else "")
        if state == wanted:
            return instance or {"InstanceId": instance_id}
        if state == "terminated" or (wanted == "running" and state in ("stopped", "shutting-down")):
            reason = ((instance or {}).get("StateReason") or {}).get("Message", "")
            raise BuildError(
                f"instance {instance_id} is {state} while waiting for {wanted}" + (f": {reason}" if reason else "")
            )
        return None

    return view.wait_for(f"instance {instance_id} to become {wanted}", check)


class StepRunSourceInstance(AwsStep):
    """RunInstances from the source AMI (key pair, security groups, subnet, launch block device mappings,
    user data, run_tags on the instance and run_volume_tags on its volumes, shutdown behaviour), then wait until
    it runs. Cleanup terminates it and waits until it is terminated."""

    name = "run_instance"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        data = build_data(state, cfg.region)
        params: dict[str, Any] = {
            "ImageId": state["source_image"]["ImageId"],
            "InstanceType": cfg.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceInitiatedShutdownBehavior": cfg.shutdown_behavior,
            "EbsOptimized": cfg.ebs_optimized,
        }
        if state.get("key_pair_name"):
            params["KeyName"] = state["key_pair_name"]
        if cfg.user_data:
            params["UserData"] = cfg.user_data
        if cfg.launch_block_device_mappings:
            params["BlockDeviceMappings"] = [d.to_ec2() for d in cfg.launch_block_device_mappings]
        if cfg.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": cfg.iam_instance_profile}
        if cfg.metadata_options:
            params["MetadataOptions"] = cfg.metadata_options
        placement: dict[str, Any] = {}
        if cfg.availability_zone:
            placement["AvailabilityZone"] = cfg.availability_zone
        if cfg.tenancy:
            placement["Tenancy"] = cfg.tenancy
        if placement:
            params["Placement"] = placement
        groups = list(state.get("security_group_ids") or [])
        if cfg.associate_public_ip_address is not None and state.get("subnet_id"):
            params["NetworkInterfaces"] = [
                {
                    "DeviceIndex": 0,
                    "SubnetId": state["subnet_id"],
                    "Groups": groups,
                    "AssociatePublicIpAddress": cfg.associate_public_ip_address,
                    "DeleteOnTermination": True,
                }
            ]
        else:
            if groups:
                params["SecurityGroupIds"] = groups
            if state.get("subnet_id"):
                params["SubnetId"] = state["subnet_id"]
        run_tags = {"Name": "Packer Builder", **cfg.run_tags}
        specs = tag_specs(self.ctx, {"instance": run_tags, "volume": cfg.run_volume_tags}, data)
        if specs:
            params["TagSpecifications"] = specs
        self.ui.say("Launching a source AWS instance...")
        answer = self.access.call("run_instances", **params)
        instance_id = answer["Instances"][0]["InstanceId"]
        state["instance_id"] = instance_id
        self.ui.message(f"Instance ID: {instance_id}")
        self.ui.say(f"Waiting for instance ({instance_id}) to become ready...")
        instance = wait_instance_state(self.access, instance_id, "running")
        state["instance"] = instance
        self.ctx.generated["ID"] = instance_id
        for key, label in (("PublicIpAddress", "Public IP"), ("PrivateIpAddress", "Private IP")):
            if instance.get(key):
                self.ui.message(f"{label}: {instance[key]}")

    def cleanup(self, state: dict[str, Any]) -> None:
        instance_id = state.pop("instance_id", None)
        state.pop("instance", None)
        if not instance_id:
            return
        self.ui.say("Terminating the source AWS instance...")
        access = self.cleanup_access
        try:
            access.call("terminate_instances", InstanceIds=[instance_id])
            wait_instance_state(access, instance_id, "terminated", cancellable=False)
        except (Ec2Error, BuildError) as exc:
            self.ui.error(f"Error terminating instance, may still be around: {instance_id}: {exc}")


class StepConnect(SdkStepConnect[EbsConfig]):
    """``communicator: none`` -> no machine access; ``ssh`` -> connect to ``ssh_host`` or the address chosen by
    ``ssh_interface`` (public IP when the instance has one, else the private IP) with the build's key."""

    log = LOG

    def target(self, state: dict[str, Any]) -> SSHTarget:
        cfg = self.cfg
        host = cfg.ssh_host or _ssh_host(state.get("instance") or {}, cfg.ssh_interface)
        if not host:
            raise BuildError(
                f"instance {state.get('instance_id')} has no address for ssh_interface "
                f"{cfg.ssh_interface or 'public_ip/private_ip'}"
            )
        self.ui.say(f"Using SSH communicator to connect: {host}")
        instance_id = str(state.get("instance_id"))

        def alive() -> str | None:
            current = _instance(cfg.access, instance_id)
            name = ((current or {}).get("State") or {}).get("Name", "terminated")
            return None if name in ("running", "pending") else f"instance {instance_id} is {name}"

        return SSHTarget(host, cfg.ssh_port, state.get("ssh_private_key"), alive)


def _ssh_host(instance: Mapping[str, Any], interface: str) -> str:
    keys = {
        "public_ip": ["PublicIpAddress"],
        "private_ip": ["PrivateIpAddress"],
        "public_dns": ["PublicDnsName"],
        "private_dns": ["PrivateDnsName"],
    }.get(interface, ["PublicIpAddress", "PrivateIpAddress"])
    for key in keys:
        if instance.get(key):
            return str(instance[key])
    return ""


class StepStopInstance(AwsStep):
    """StopInstances and wait until stopped (with ``disable_stop_instance`` only wait: a provisioner stops it)."""

    name = "stop_instance"

    def run(self, state: dict[str, Any]) -> None:
        instance_id = state["instance_id"]
        if self.cfg.disable_stop_instance:
            self.ui.say("Automatic instance stop disabled. Please stop instance manually.")
        else:
            self.ui.say("Stopping the source instance...")
            self.access.call("stop_instances", InstanceIds=[instance_id])
        self.ui.say("Waiting for the instance to stop...")
        wait_instance_state(self.access, instance_id, "stopped")


class StepModifyInstance(AwsStep):
    """``ena_support`` / ``sriov_support`` on the stopped instance (Packer's ``StepModifyEBSBackedInstance``), so
    the AMI made from it has enhanced networking."""

    name = "modify_instance"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        instance_id = state["instance_id"]
        if cfg.sriov_support:
            self.ui.say("Enabling Enhanced Networking (SR-IOV)...")
            self.access.call("modify_instance_attribute", InstanceId=instance_id, SriovNetSupport={"Value": "simple"})
        if cfg.ena_support is not None:
            self.ui.say(f"{'Enabling' if cfg.ena_support else 'Disabling'} Enhanced Networking (ENA)...")
            self.access.call("modify_instance_attribute", InstanceId=instance_id, EnaSupport={"Value": cfg.ena_support})


# ------------------------------------------------------------------------------------------------------ AMIs


class StepDeregisterAMI(AwsStep):
    """``force_deregister``: deregister this account's AMIs named ``ami_name`` in the build region and every
    ami_region (and with ``force_delete_snapshot`` delete their snapshots), in parallel."""

    name = "deregister_ami"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.force_deregister or cfg.skip_create_ami:
            return
        regions = [cfg.region, *cfg.ami_regions]

        def one(region: str, _abort: Any) -> None:
            for image in self.access.find_images(cfg.ami_name, region):
                image_id = image["ImageId"]
                self.access.call("deregister_image", region, ImageId=image_id)
                self.ui.message(f"Deregistered AMI id: {image_id} ({region})")
                if cfg.force_delete_snapshot:
                    for snap in image_snapshots(image):
                        self.access.call("delete_snapshot", region, SnapshotId=snap)
                        self.ui.message(f"Deleted snapshot: {snap} ({region})")

        try:
            run_in_regions(
                self.access, regions, one, parallel=cfg.ami_copy_parallelism, what="deregistering existing AMIs"
            )
        except RegionsFailed as exc:
            raise BuildError(str(exc)) from None


class StepCreateAMI(AwsStep):
    """CreateImage from the stopped instance (``ami_block_device_mappings``), wait until available; an
    intermediary name when the AMI will be re-copied (encrypt_boot / skip_save_build_region). Cleanup (failure
    only, or the intermediary on success) deregisters it and deletes its snapshots."""

    name = "create_ami"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.skip_create_ami:
            self.ui.say("Skipping AMI creation...")
            return
        check: RegionNameCheck | None = state.get("region_name_check")
        if check is not None:
            check.wait(self.ctx.cancel)
            self.ctx.check_cancelled()
        name = f"packer-intermediary-{uuid.uuid4().hex[:16]}" if cfg.intermediary else cfg.ami_name
        self.ui.say(f"Creating AMI {name} from instance {state['instance_id']}")
        params: dict[str, Any] = {"InstanceId": state["instance_id"], "Name": name}
        description = render_text(self.ctx, cfg.ami_description, build_data(state, cfg.region))
        if description:
            params["Description"] = description
        if cfg.ami_block_device_mappings:
            params["BlockDeviceMappings"] = [d.to_ec2() for d in cfg.ami_block_device_mappings]
        image_id = self.access.call("create_image", **params)["ImageId"]
        amis: dict[str, str] = state.setdefault("amis", {})
        snapshots: dict[str, list[str]] = state.setdefault("snapshots", {})
        amis[cfg.region] = image_id
        state["build_region_ami"] = image_id
        state["intermediary_image"] = cfg.intermediary
        self.ui.message(f"AMI: {image_id}")
        self.ui.say("Waiting for AMI to become ready...")
        image = self.access.wait_image_available(image_id, cfg.region)
        snapshots[cfg.region] = image_snapshots(image)
        if cfg.intermediary:
            # the copy step puts the final AMIs in place; the intermediary is not a result
            amis.pop(cfg.region, None)
            snapshots.pop(cfg.region, None)
            state["intermediary_snapshots"] = image_snapshots(image)

    temporary = True  # its cleanup runs on success too: it removes an intermediary AMI

    def cleanup(self, state: dict[str, Any]) -> None:
        region = self.cfg.region
        image_id = state.get("build_region_ami")
        if not image_id:
            return
        intermediary = bool(state.get("intermediary_image"))
        if not failing() and not intermediary:
            return  # the build's result
        state.pop("build_region_ami", None)
        snaps = state.pop("intermediary_snapshots", None) or (state.get("snapshots") or {}).get(region)
        if (state.get("amis") or {}).get(region) == image_id:
            state["amis"].pop(region, None)
            state.get("snapshots", {}).pop(region, None)
        what = "intermediary AMI" if intermediary else "AMI"
        self.ui.say(f"Deregistering the {what} {image_id} and deleting its snapshots...")
        try:
            deleted = self.cleanup_access.destroy_image(image_id, region, snaps)
            self.ui.message(f"{region}: removed {image_id} (snapshots: {', '.join(deleted) or 'none'})")
        except Ec2Error as exc:
            self.ui.error(f"Error deregistering AMI {image_id}, may still be around: {exc}")


class StepAMIRegionCopy(AwsStep):
    """Copy the AMI to every ami_region in parallel (at most ``ami_copy_parallelism`` at once) and wait for each;
    with ``encrypt_boot`` also re-copy into the build region encrypted (``kms_key_id``/``region_kms_key_ids``).
    Copies are recorded in ``amis``/``snapshots`` as they complete. Cleanup (after a failure or an interrupt, here
    or in a later step) deregisters every copy in every region and deletes its snapshots; a region whose CopyImage
    answer never came back is searched by name."""

    name = "ami_region_copy"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.skip_create_ami:
            self.ui.say("Skipping AMI region copy...")
            return
        source = state["build_region_ami"]
        targets: list[CopyTarget] = []
        regions = list(cfg.ami_regions)
        if cfg.intermediary and not cfg.skip_save_build_region:
            regions.insert(0, cfg.region)
        for region in regions:
            if cfg.encrypt_boot is True:
                key = cfg.region_kms_key_ids.get(region, "")
                if region == cfg.region and not key:
                    key = cfg.kms_key_id
                targets.append(CopyTarget(region, True, key))
            elif cfg.encrypt_boot is False:
                targets.append(CopyTarget(region, False))
            else:
                targets.append(CopyTarget(region))
        if not targets:
            return
        description = render_text(self.ctx, cfg.ami_description, build_data(state, cfg.region))
        copies = AmiCopies(
            self.access,
            self.ui,
            source,
            cfg.region,
            cfg.ami_name,
            description,
            amis=state.setdefault("amis", {}),
            snapshots=state.setdefault("snapshots", {}),
            parallel=cfg.ami_copy_parallelism,
        )
        state["ami_copies"] = copies
        self.ui.say(f"Copying/Encrypting AMI ({source}) to other regions...")
        try:
            copies.copy(targets)
        except RegionsFailed as exc:
            if self.ctx.on_error == "abort":
                self._report_left(copies)
            raise BuildError(str(exc)) from None
        except BaseException:
            if self.ctx.on_error == "abort":
                self._report_left(copies)
            raise

    def _report_left(self, copies: AmiCopies) -> None:
        made = sorted(f"{r}:{i}" for r, i in copies.amis.items())
        if made:
            self.ui.error("Leaving the AMIs made so far in place (-on-error=abort): " + ", ".join(made))

    def cleanup(self, state: dict[str, Any]) -> None:
        copies: AmiCopies | None = state.get("ami_copies")
        if copies is None or not failing():
            return
        state.pop("ami_copies", None)
        lines = copies.remove_all(keep=() if state.get("intermediary_image") else (self.cfg.region,))
        failed = [line for line in lines if "FAILED" in line]
        if failed:
            self.ui.error("Some AMI copies could not be removed; delete them manually:\n" + "\n".join(failed))


class StepModifyAMIAttributes(AwsStep):
    """Launch permissions (``ami_users``, ``ami_groups``, ``ami_org_arns``, ``ami_ou_arns``), product codes and
    snapshot permissions (``snapshot_users``/``snapshot_groups``) in every region, in parallel."""

    name = "modify_ami_attributes"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        amis: dict[str, str] = dict(state.get("amis") or {})
        if cfg.skip_create_ami or not amis:
            return
        launch: list[dict[str, str]] = (
            [{"UserId": u} for u in cfg.ami_users]
            + [{"Group": g} for g in cfg.ami_groups]
            + [{"OrganizationArn": a} for a in cfg.ami_org_arns]
            + [{"OrganizationalUnitArn": a} for a in cfg.ami_ou_arns]
        )
        volume: list[dict[str, str]] = [{"UserId": u} for u in cfg.snapshot_users] + [
            {"Group": g} for g in cfg.snapshot_groups
        ]
        if not (launch or volume or cfg.ami_product_codes):
            return
        snapshots: dict[str, list[str]] = state.get("snapshots") or {}

        def one(region: str, _abort: Any) -> None:
            image_id = amis[region]
            if launch:
                self.ui.message(f"Modifying attributes on AMI ({image_id}) in {region}: launch permissions")
                self.access.call("modify_image_attribute", region, ImageId=image_id, LaunchPermission={"Add": launch})
            if cfg.ami_product_codes:
                self.access.call("modify_image_attribute", region, ImageId=image_id, ProductCodes=cfg.ami_product_codes)
            if volume:
                for snap in snapshots.get(region) or []:
                    self.access.call(
                        "modify_snapshot_attribute",
                        region,
                        SnapshotId=snap,
                        Attribute="createVolumePermission",
                        OperationType="add",
                        CreateVolumePermission={"Add": volume},
                    )

        self.ui.say("Modifying attributes on AMIs...")
        try:
            run_in_regions(
                self.access, sorted(amis), one, parallel=cfg.ami_copy_parallelism, what="modifying AMI attributes"
            )
        except RegionsFailed as exc:
            raise BuildError(str(exc)) from None


class StepCreateTags(AwsStep):
    """``tags`` on the AMI and its snapshots, plus ``snapshot_tags`` on the snapshots, in every region, in
    parallel (values rendered per region: ``{{ .BuildRegion }}``, ``{{ .SourceAMIName }}``...)."""

    name = "create_tags"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        amis: dict[str, str] = dict(state.get("amis") or {})
        snapshots: dict[str, list[str]] = state.get("snapshots") or {}
        if amis and (cfg.tags or cfg.snapshot_tags):
            self.ui.say(f"Adding tags to AMIs and snapshots in {len(amis)} region(s)...")

            def one(region: str, _abort: Any) -> None:
                data = build_data(state, region)
                tags = ec2_tags(self.ctx, cfg.tags, data)
                snap_tags = ec2_tags(self.ctx, {**cfg.tags, **cfg.snapshot_tags}, data)
                if tags:
                    self.access.call("create_tags", region, Resources=[amis[region]], Tags=tags)
                snaps = snapshots.get(region) or []
                if snaps and snap_tags:
                    self.access.call("create_tags", region, Resources=snaps, Tags=snap_tags)

            try:
                run_in_regions(self.access, sorted(amis), one, parallel=cfg.ami_copy_parallelism, what="tagging AMIs")
            except RegionsFailed as exc:
                raise BuildError(str(exc)) from None


def build_steps(cfg: EbsConfig, ctx: BuildContext, hook: ProvisionHook) -> list[Step]:
    """The build in Packer's order."""
    return [
        StepPreValidate(cfg, ctx),
        StepSourceAMIInfo(cfg, ctx),
        StepNetworkInfo(cfg, ctx),
        StepKeyPair(cfg, ctx),
        StepSecurityGroup(cfg, ctx),
        StepRunSourceInstance(cfg, ctx),
        StepConnect(cfg, ctx),
        StepProvision(hook),
        StepStopInstance(cfg, ctx),
        StepModifyInstance(cfg, ctx),
        StepDeregisterAMI(cfg, ctx),
        StepCreateAMI(cfg, ctx),
        StepAMIRegionCopy(cfg, ctx),
        StepModifyAMIAttributes(cfg, ctx),
        StepCreateTags(cfg, ctx),
    ]
