"""create_vm for AWS: a plan decided up front (validation and look-ups, nothing created), then Packer-style steps
whose cleanups remove exactly what they made.

Plan: VM cloud_properties (``instance_type`` ... ``root_disk``, ``ephemeral_disk``), the one manual or dynamic
network (its ``cloud_properties.subnet`` and ``security_groups``; a manual network's IP becomes the private IP; a
``vip`` network's IP an Elastic IP association), the AMI (light CIDs are ``"<ami> light"``), the availability zone
(the subnet's; the VM's ``availability_zone`` and the disks' zones must agree), security groups (names resolved to
ids in the subnet's VPC), block devices (root, ephemeral ``/dev/sdb``), the agent settings as EC2 user-data and the
tags (``env.bosh.tags``).

User-data is what bosh-agent's HTTP metadata source reads from ``/latest/user-data`` (its ``UserDataContentsType``
embeds the settings document): the full settings (``agent_id``, ``vm``, ``mbus``, ``ntp``, ``blobstore``,
``networks`` with ``use_dhcp`` -- EC2 hands out the private IP by DHCP --, ``disks``, ``env`` verbatim) plus
``server.name`` and ``dns.nameserver``, as compact JSON (boto3 base64-encodes it on the wire). EC2 keeps it
immutable while the instance runs, so attach_disk answers the disk hint to the director (stemcell API v2) instead
of rewriting it.

Steps: ``run_instance`` (cleanup: terminate and wait until terminated), ``wait_running``, ``associate_vip``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cpi import agent_settings
from cpi.errors import CloudError, NetworkNotFound, VMCreationFailed
from cpi.provider import VmRequest
from cpi.provider_steps import ProviderStep
from cpi.providers.aws import tags as tagging
from cpi.providers.aws import volumes
from cpi.providers.aws.clients import AwsCallError
from cpi.providers.aws.config import NETWORK_CLOUD_PROPERTIES_SCHEMA, VM_CLOUD_PROPERTIES_SCHEMA, validate
from stemforge_base.steps import Step

if TYPE_CHECKING:
    import logging

    from cpi.providers.aws.clients import AwsApi
    from cpi.providers.aws.config import AwsConfig
    from cpi.providers.aws.stemcells import StemcellManager


class VmHost(Protocol):
    """What create_vm's planner and steps use of the AWS provider (``AWSProvider`` implements it)."""

    config: AwsConfig
    agent_config: Mapping[str, Any]
    api: AwsApi
    stemcells: StemcellManager
    log: logging.Logger

    def describe_volumes(self, volume_ids: list[str]) -> list[dict[str, Any]]: ...

    def terminate(self, vm_cid: str) -> None: ...

    def wait_instance(self, vm_cid: str, *, want: set[str], failed: set[str] | frozenset[str] = frozenset()) -> None:
        ...

MAX_USER_DATA = 16384
EPHEMERAL_DEVICE = "/dev/sdb"
#: RunInstances failures a later attempt can get past (capacity comes back, a terminating VM frees its IP).
RETRYABLE_RUN_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InvalidIPAddress.InUse",
        "InsufficientCapacity",
        "Unsupported.CapacityNotAvailable",
    }
)


@dataclass
class VmPlan:
    """Everything create_vm decided before creating anything."""

    agent_id: str
    image_id: str
    instance_type: str
    availability_zone: str
    subnet_id: str
    security_group_ids: list[str]
    key_name: str
    block_devices: list[dict[str, Any]]
    user_data: str
    tags: dict[str, str]
    networks: dict[str, dict[str, Any]]
    private_ip: str | None = None
    vip: str | None = None
    iam_instance_profile: str | None = None
    placement_group: str | None = None
    tenancy: str | None = None
    auto_assign_public_ip: bool | None = None
    client_token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def run_instances_params(self) -> dict[str, Any]:
        nic: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": self.subnet_id, "Groups": self.security_group_ids}
        if self.private_ip:
            nic["PrivateIpAddress"] = self.private_ip
        if self.auto_assign_public_ip is not None:
            nic["AssociatePublicIpAddress"] = self.auto_assign_public_ip
        placement: dict[str, Any] = {"AvailabilityZone": self.availability_zone}
        if self.placement_group:
            placement["GroupName"] = self.placement_group
        if self.tenancy == "dedicated":
            placement["Tenancy"] = "dedicated"
        params: dict[str, Any] = {
            "ImageId": self.image_id,
            "InstanceType": self.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": self.key_name,
            "UserData": self.user_data,
            "Placement": placement,
            "NetworkInterfaces": [nic],
            "BlockDeviceMappings": self.block_devices,
            "ClientToken": self.client_token,
        }
        if self.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": self.iam_instance_profile}
        specs = tagging.tag_specifications(["instance", "volume"], self.tags)
        if specs:
            params["TagSpecifications"] = specs
        return params


class VmPlanner:
    """Turns create_vm's arguments into a :class:`VmPlan` (look-ups only; nothing is created)."""

    def __init__(self, provider: VmHost) -> None:
        self.p = provider
        self.cfg = provider.config

    def plan(self, request: VmRequest) -> VmPlan:
        agent_id, networks, env, disk_cids = request.agent_id, request.networks, request.env, request.disk_cids
        props = dict(request.cloud_properties)
        validate("create_vm: cloud_properties", VM_CLOUD_PROPERTIES_SCHEMA, props)
        net_name, net, vip = self._networks(networks)
        net_props = dict(net.get("cloud_properties") or {})
        image = self._image(request.stemcell_cid)
        subnet = self._subnet(net_name, net_props["subnet"])
        zone = str(subnet["AvailabilityZone"])
        self._check_zone(zone, props, disk_cids, net_name)
        groups = self._security_groups(props, networks, str(subnet["VpcId"]))
        key_name = props.get("key_name") or self.cfg.default_key_name
        if not key_name:
            raise CloudError("create_vm: no key pair: set cloud_properties.key_name or aws.default_key_name")
        root_device, block_devices = self._block_devices(image, props)
        vm_name = f"vm-{uuid.uuid4()}"
        user_data = self._user_data(agent_id, vm_name, networks, env, system_disk_hint(image))
        bosh_env = env.get("bosh") if isinstance(env, Mapping) else None
        env_tags = bosh_env.get("tags") if isinstance(bosh_env, Mapping) else None
        if env_tags is not None and not isinstance(env_tags, Mapping):
            raise CloudError("create_vm: env.bosh.tags must be an object of tag name -> value")
        return VmPlan(
            agent_id=agent_id,
            image_id=str(image["ImageId"]),
            instance_type=str(props["instance_type"]),
            availability_zone=zone,
            subnet_id=str(subnet["SubnetId"]),
            security_group_ids=groups,
            key_name=str(key_name),
            block_devices=block_devices,
            user_data=user_data,
            tags={str(k): str(v) for k, v in (env_tags or {}).items()},
            networks={name: dict(value) for name, value in networks.items()},
            private_ip=net.get("ip") if net.get("type", "manual") == "manual" else None,
            vip=vip,
            iam_instance_profile=props.get("iam_instance_profile") or self.cfg.default_iam_instance_profile,
            placement_group=props.get("placement_group"),
            tenancy=props.get("tenancy"),
            auto_assign_public_ip=props.get("auto_assign_public_ip"),
        )

    # -- networks ------------------------------------------------------------------------------------------------
    def _networks(self, networks: Mapping[str, Any]) -> tuple[str, dict[str, Any], str | None]:
        """The one manual/dynamic network (name, spec) and the vip network's IP, if any."""
        if not networks:
            raise CloudError("create_vm: networks is empty (a VM needs one manual or dynamic network)")
        subnet_nets: list[tuple[str, dict[str, Any]]] = []
        vip: str | None = None
        for name in sorted(networks):
            net = dict(networks[name])
            kind = net.get("type", "manual")
            if kind == "vip":
                if not net.get("ip"):
                    raise CloudError(f"create_vm: networks.{name}: a vip network needs an 'ip' (an Elastic IP)")
                if vip is not None:
                    raise CloudError("create_vm: more than one vip network (AWS associates one Elastic IP)")
                vip = str(net["ip"])
                continue
            if kind not in ("manual", "dynamic"):
                raise CloudError(f"create_vm: networks.{name}.type: '{kind}' is not one of 'manual', 'dynamic', 'vip'")
            props = net.get("cloud_properties") or {}
            validate(f"create_vm: networks.{name}.cloud_properties", NETWORK_CLOUD_PROPERTIES_SCHEMA, dict(props))
            if not props.get("subnet"):
                raise CloudError(f"create_vm: networks.{name}.cloud_properties.subnet is required (the subnet id)")
            if kind == "manual" and not net.get("ip"):
                raise CloudError(f"create_vm: networks.{name}.ip is required for a manual network")
            subnet_nets.append((name, net))
        if len(subnet_nets) != 1:
            raise CloudError(
                f"create_vm: exactly one manual or dynamic network is supported per VM, got "
                f"{len(subnet_nets)} ({', '.join(n for n, _ in subnet_nets) or 'none'})"
            )
        return subnet_nets[0][0], subnet_nets[0][1], vip

    def _subnet(self, net_name: str, subnet_id: str) -> dict[str, Any]:
        try:
            subnets = self.p.api.ec2_call("describe_subnets", SubnetIds=[subnet_id])["Subnets"]
        except AwsCallError as exc:
            if exc.code in ("InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed"):
                subnets = []
            else:
                raise
        if not subnets:
            raise NetworkNotFound(
                f"create_vm: networks.{net_name}.cloud_properties.subnet: subnet {subnet_id} "
                f"not found in {self.cfg.region}"
            )
        return dict(subnets[0])

    def _check_zone(self, zone: str, props: Mapping[str, Any], disk_cids: list[str], net_name: str) -> None:
        wanted = props.get("availability_zone")
        if wanted and wanted != zone:
            raise CloudError(
                f"create_vm: cloud_properties.availability_zone is {wanted} but subnet of network "
                f"{net_name} is in {zone}"
            )
        if disk_cids:
            for volume in self.p.describe_volumes(disk_cids):
                if volume["AvailabilityZone"] != zone:
                    raise CloudError(
                        f"create_vm: disk {volume['VolumeId']} is in {volume['AvailabilityZone']} but "
                        f"the VM's subnet is in {zone}"
                    )

    def _security_groups(self, props: Mapping[str, Any], networks: Mapping[str, Any], vpc_id: str) -> list[str]:
        """bosh-aws-cpi's precedence: the VM type's groups, else the networks', else ``default_security_groups``."""
        from_networks = sorted(
            {
                g
                for net in networks.values()
                if net.get("type") != "vip"
                for g in (net.get("cloud_properties") or {}).get("security_groups") or []
            }
        )
        groups = list(props.get("security_groups") or from_networks or self.cfg.default_security_groups)
        if not groups:
            raise CloudError(
                "create_vm: no security groups: set cloud_properties.security_groups, "
                "networks.<name>.cloud_properties.security_groups or aws.default_security_groups"
            )
        names = [g for g in groups if not g.startswith("sg-")]
        if not names:
            return groups
        found = self.p.api.ec2_call(
            "describe_security_groups",
            Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": names}],
        )["SecurityGroups"]
        by_name = {g["GroupName"]: g["GroupId"] for g in found}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise CloudError(f"create_vm: security group(s) {', '.join(missing)} not found in VPC {vpc_id}")
        return [by_name.get(g, g) for g in groups]

    # -- image and disks -----------------------------------------------------------------------------------------
    def _image(self, stemcell_cid: str) -> dict[str, Any]:
        ami_id = stemcell_cid.removesuffix(" light")
        image = self.p.stemcells.describe_image(ami_id)
        if image is None:
            raise CloudError(f"create_vm: stemcell {stemcell_cid}: AMI {ami_id} not found in {self.cfg.region}")
        if image.get("State") != "available":
            raise CloudError(f"create_vm: stemcell {stemcell_cid}: AMI {ami_id} is '{image.get('State')}'")
        return image

    def _block_devices(self, image: Mapping[str, Any], props: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        root_device = root_device_name(image)
        root_spec = dict(props.get("root_disk") or {})
        root = volumes.ebs_params(
            root_spec,
            what="create_vm: cloud_properties.root_disk",
            size_mib=root_spec.get("size"),
            encrypted=False,
            kms_key_arn=None,
        )
        if "Size" not in root:  # keep the AMI's snapshot and size, change only the type (and size when asked)
            snapshot = next(
                (
                    m["Ebs"].get("SnapshotId")
                    for m in image.get("BlockDeviceMappings") or []
                    if m.get("DeviceName") == root_device and m.get("Ebs")
                ),
                None,
            )
            if snapshot:
                root["SnapshotId"] = snapshot
        devices = [volumes.block_device(root_device, root)]
        eph = dict(props.get("ephemeral_disk") or {})
        if eph.get("use_instance_storage"):
            if set(eph) - {"use_instance_storage"}:
                raise CloudError(
                    "create_vm: cloud_properties.ephemeral_disk: use_instance_storage cannot be combined "
                    "with size, type, iops, throughput or encryption"
                )
            devices.append({"DeviceName": EPHEMERAL_DEVICE, "VirtualName": "ephemeral0"})
        else:
            params = volumes.ebs_params(
                eph,
                what="create_vm: cloud_properties.ephemeral_disk",
                size_mib=int(eph.get("size", volumes.DEFAULT_EPHEMERAL_MIB)),
                encrypted=bool(eph.get("encrypted", self.cfg.encrypted)),
                kms_key_arn=eph.get("kms_key_arn", self.cfg.kms_key_arn),
            )
            devices.append(volumes.block_device(EPHEMERAL_DEVICE, params))
        return root_device, devices

    # -- agent settings ------------------------------------------------------------------------------------------
    def _user_data(
        self, agent_id: str, vm_name: str, networks: Mapping[str, Any], env: Mapping[str, Any], system_disk: str
    ) -> str:
        """The settings document as user-data. Disk hints as bosh-aws-cpi's ``AgentSettings``: ``system`` the AMI's
        root device name, ``ephemeral`` the string ``/dev/sdb`` (the agent maps it to ``/dev/xvdb`` on Xen types),
        ``persistent`` empty (attach_disk answers its hint to the director; user-data is immutable)."""
        settings = agent_settings.build(
            agent_id=agent_id,
            vm_name=vm_name,
            networks=networks,
            env=env,
            agent_config=self.p.agent_config,
            system_disk=system_disk,
            ephemeral_disk=EPHEMERAL_DEVICE,
        )
        for name, net in settings["networks"].items():
            if networks[name].get("type", "manual") != "vip":
                net["use_dhcp"] = True  # EC2 assigns the private IP (the requested one) by DHCP
        document: dict[str, Any] = {**settings, "server": {"name": vm_name}}
        dns = next(
            (
                list(n["dns"])
                for _, n in sorted(networks.items())
                if n.get("type", "manual") == "manual" and n.get("dns")
            ),
            None,
        )
        if dns:
            document["dns"] = {"nameserver": dns}
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) > MAX_USER_DATA:
            raise CloudError(
                f"create_vm: the agent settings are {len(text.encode())} bytes; EC2 user-data holds at "
                f"most {MAX_USER_DATA} (env is too large)"
            )
        return text


def system_disk_hint(image: Mapping[str, Any]) -> str:
    """``disks.system`` of the agent settings: the AMI's root device name (``/dev/sda1``, ``/dev/xvda``) as
    bosh-aws-cpi writes it (``cloud_core.rb``: ``settings.root_device_name = stemcell.root_device_name``), not the
    block-device mapping :func:`root_device_name` overrides (``/dev/sda`` for a ``/dev/sda1`` root)."""
    return str(image.get("RootDeviceName") or root_device_name(image))


def root_device_name(image: Mapping[str, Any]) -> str:
    """The block device to override for the root disk, as bosh-aws-cpi picks it: the AMI's mapping equal to its
    root device name, else the mapping the root device is a partition of (``/dev/sda`` for ``/dev/sda1``), else
    ``/dev/xvda``."""
    root = image.get("RootDeviceName")
    names = [m.get("DeviceName", "") for m in image.get("BlockDeviceMappings") or []]
    if root:
        if root in names:
            return str(root)
        for name in names:
            if name and str(root).startswith(name):
                return str(name)
        return str(root)
    return "/dev/xvda"


# -- steps -------------------------------------------------------------------------------------------------------------


#: The base of the AWS create_vm steps.
VmStep = ProviderStep[VmHost, VmPlan]


class RunInstance(VmStep):
    name = "run_instance"

    def run(self, state: dict[str, Any]) -> None:
        try:
            response = self.p.api.ec2_call("run_instances", **self.plan.run_instances_params())
        except AwsCallError as exc:
            raise VMCreationFailed(
                f"create_vm: {exc.message}", ok_to_retry=exc.ok_to_retry or exc.code in RETRYABLE_RUN_CODES
            ) from None
        instance = response["Instances"][0]
        state["instance_id"] = instance["InstanceId"]
        self.p.log.info(
            "create_vm: instance %s (%s in %s) requested",
            instance["InstanceId"],
            self.plan.instance_type,
            self.plan.availability_zone,
        )

    def cleanup(self, state: dict[str, Any]) -> None:
        instance_id = state.get("instance_id")
        if instance_id:
            self.p.log.info("create_vm: terminating instance %s", instance_id)
            self.p.terminate(instance_id)


class WaitRunning(VmStep):
    name = "wait_running"

    def run(self, state: dict[str, Any]) -> None:
        self.p.wait_instance(
            state["instance_id"], want={"running"}, failed={"terminated", "shutting-down", "stopped", "stopping"}
        )


class AssociateVip(VmStep):
    name = "associate_vip"

    def run(self, state: dict[str, Any]) -> None:
        if not self.plan.vip:
            return
        try:
            addresses = self.p.api.ec2_call("describe_addresses", PublicIps=[self.plan.vip])["Addresses"]
        except AwsCallError as exc:
            if exc.code not in ("InvalidAddress.NotFound", "InvalidParameterValue"):
                raise
            addresses = []
        if not addresses:
            raise CloudError(f"create_vm: Elastic IP {self.plan.vip} (the vip network's ip) not found")
        params: dict[str, Any] = {"InstanceId": state["instance_id"], "AllowReassociation": True}
        if addresses[0].get("AllocationId"):
            params["AllocationId"] = addresses[0]["AllocationId"]
        else:
            params["PublicIp"] = self.plan.vip
        self.p.api.ec2_call("associate_address", **params)


def steps(provider: VmHost, plan: VmPlan) -> list[Step]:
    return [RunInstance(provider, plan), WaitRunning(provider, plan), AssociateVip(provider, plan)]
