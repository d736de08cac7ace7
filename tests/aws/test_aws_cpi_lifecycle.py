"""The AWS provider through the real CPI entry point (``bin/cpi`` subprocesses, the director's stripped environment)
against a loopback moto server, in the environment the Terraform module makes: the OpenStack CPI's lifecycle order,
a failed create_vm leaving nothing, bad input named by field, light stemcells, API v1 shapes, and no secret in any
output. Every check of what exists is made straight against moto with boto3, not through the CPI."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.aws import (
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    AwsCpi,
    aws_env,
    ec2_client,
    make_cpi,
    register_ami,
)

pytestmark = [pytest.mark.aws]

SECRETS = (
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    ACCESS_KEY_ID,
    "env-SECRET-password",
    "MBUS-CERT-SECRET-PEM",
    "blobstore-env-SECRET",
    "mbus-SECRET-pw",
    "blobstore-SECRET-pw",
)


def _env(run: str) -> dict[str, Any]:
    return {
        "bosh": {
            "password": "env-SECRET-password",
            "mbus": {"cert": {"ca": "MBUS-CERT-SECRET-PEM", "private_key": "MBUS-CERT-SECRET-PEM"}},
            "blobstores": [{"provider": "dav", "options": {"password": "blobstore-env-SECRET"}}],
            "tags": {"test_run": run, "team": "stemforge"},
            "group": "lifecycle",
        }
    }


@pytest.fixture(scope="module")
def env(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Overrides aws/conftest.py's: the environment Terraform makes (``aws_env``), as the director would see it."""
    with aws_env(moto_endpoint, tmp_path_factory.mktemp("aws-env"), f"sf{uuid.uuid4().hex[:6]}") as metadata:
        yield metadata


@pytest.fixture(scope="module")
def cpi(moto_endpoint: str, env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AwsCpi:
    return make_cpi(tmp_path_factory.mktemp("aws-cpi"), moto_endpoint, env)


@pytest.fixture(scope="module")
def ami(moto_endpoint: str, env: dict[str, Any]) -> str:
    return register_ami(moto_endpoint, env["az"], f"bosh-aws-xen-hvm-ubuntu-jammy-go_agent {uuid.uuid4().hex[:6]}")


@pytest.fixture()
def empty_image(tmp_path: Path) -> str:
    path = tmp_path / "image"
    path.write_bytes(b"")
    return str(path)


def _instances(ec2: Any, run: str) -> list[dict[str, Any]]:
    found = ec2.describe_instances(Filters=[{"Name": "tag:test_run", "Values": [run]}])["Reservations"]
    return [i for r in found for i in r["Instances"]]


def _manual_net(env: dict[str, Any], ip: str) -> dict[str, Any]:
    return {
        "private": {
            "type": "manual",
            "ip": ip,
            "netmask": "255.255.255.0",
            "gateway": env["manual_gw"],
            "dns": [env["dns_recursor_ip"]],
            "default": ["dns", "gateway"],
            "cloud_properties": {"subnet": env["manual_subnet_id"]},
        }
    }


def _no_secrets(cpi: AwsCpi) -> None:
    text = cpi.output()
    for secret in SECRETS:
        assert secret not in text, f"secret {secret!r} leaked in a CPI call's output"


def test_lifecycle_in_the_openstack_order(
    cpi: AwsCpi, env: dict[str, Any], ami: str, moto_endpoint: str, empty_image: str
) -> None:
    ec2 = ec2_client(moto_endpoint)
    run = uuid.uuid4().hex[:8]
    mf = {
        "name": "bosh-aws-xen-hvm-ubuntu-jammy-go_agent",
        "version": "1.1",
        "infrastructure": "aws",
        "ami": {"eu-west-1": "ami-0eu0000000000000a", env["region"]: ami},
    }
    stemcell = cpi.ok("create_stemcell", empty_image, mf, {"tags": {"suite": "aws-lifecycle"}}, api_version=3)
    assert stemcell == f"{ami} light"
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert {"Key": "suite", "Value": "aws-lifecycle"} in image.get("Tags", [])

    agent_id = f"agent-{run}"
    vm_props = {"instance_type": "t3.micro", "ephemeral_disk": {"size": 2048}, "root_disk": {"size": 5000}}
    networks = _manual_net(env, "10.0.4.11")
    vm_cid, nets = cpi.ok("create_vm", agent_id, stemcell, vm_props, networks, [], _env(run))
    try:
        assert nets == networks
        instance = ec2.describe_instances(InstanceIds=[vm_cid])["Reservations"][0]["Instances"][0]
        assert instance["State"]["Name"] == "running"
        assert instance["InstanceType"] == "t3.micro" and instance["ImageId"] == ami
        assert instance["PrivateIpAddress"] == "10.0.4.11" and instance["SubnetId"] == env["manual_subnet_id"]
        assert instance["Placement"]["AvailabilityZone"] == env["az"]
        assert instance["KeyName"] == env["default_key_name"]
        assert [g["GroupId"] for g in instance["NetworkInterfaces"][0]["Groups"]] == env["default_security_groups"]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        assert tags["test_run"] == run and tags["team"] == "stemforge"
        devices = {b["DeviceName"]: b["Ebs"]["VolumeId"] for b in instance["BlockDeviceMappings"]}
        sizes = {
            v["VolumeId"]: (v["Size"], v["VolumeType"])
            for v in ec2.describe_volumes(VolumeIds=list(devices.values()))["Volumes"]
        }
        root = image["RootDeviceName"]  # moto registers its own root mapping (/dev/sda1) whatever it is given
        assert sizes[devices[root]] == (5, "gp3") and sizes[devices["/dev/sdb"]] == (2, "gp3")

        # the agent's HTTP metadata source reads this document from /latest/user-data
        raw = ec2.describe_instance_attribute(InstanceId=vm_cid, Attribute="userData")["UserData"]["Value"]
        settings = json.loads(base64.b64decode(raw))
        assert settings["agent_id"] == agent_id
        assert settings["env"] == _env(run), "env must reach the agent verbatim"
        assert settings["server"]["name"] == settings["vm"]["name"]
        assert settings["dns"] == {"nameserver": [env["dns_recursor_ip"]]}
        assert settings["networks"]["private"]["ip"] == "10.0.4.11" and settings["networks"]["private"]["use_dhcp"]
        assert settings["disks"]["system"] == root and settings["disks"]["ephemeral"] == "/dev/sdb"
        assert settings["mbus"].startswith("nats://") and settings["blobstore"]["provider"] == "dav"

        assert cpi.ok("has_vm", vm_cid) is True
        cpi.ok(
            "set_vm_metadata",
            vm_cid,
            {
                "director": "d",
                "deployment": "dep",
                "job": "web",
                "index": "0",
                "name": "web/7d3a",
                "created_at": "2026-11-23T00:00:00Z",
            },
        )
        tags = {
            t["Key"]: t["Value"]
            for t in ec2.describe_instances(InstanceIds=[vm_cid])["Reservations"][0]["Instances"][0]["Tags"]
        }
        assert tags["Name"] == "web/7d3a" and tags["deployment"] == "dep" and "name" not in tags

        disk_cid = cpi.ok("create_disk", 1500, {}, vm_cid)
        volume = ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]
        assert (volume["Size"], volume["VolumeType"], volume["AvailabilityZone"]) == (2, "gp3", env["az"])
        assert cpi.ok("has_disk", disk_cid) is True
        hint = cpi.ok("attach_disk", vm_cid, disk_cid)
        # t3 is a Nitro type: bosh-aws-cpi's hint is the NVMe by-id path of the volume
        assert hint == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + disk_cid.replace("-", "")
        attachment = ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]["Attachments"][0]
        assert (attachment["InstanceId"], attachment["Device"], attachment["State"]) == (vm_cid, "/dev/sdf", "attached")
        assert cpi.ok("attach_disk", vm_cid, disk_cid) == hint, "attaching twice answers the same hint"
        assert cpi.ok("get_disks", vm_cid) == [disk_cid]
        cpi.ok("reboot_vm", vm_cid)
        cpi.ok("detach_disk", vm_cid, disk_cid)
        assert cpi.ok("get_disks", vm_cid) == []
        assert ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]["State"] == "available"
        error = cpi.error("detach_disk", vm_cid, disk_cid)
        assert error["type"] == "Bosh::Clouds::DiskNotAttached"

        cpi.ok("resize_disk", disk_cid, 4096)
        assert ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]["Size"] == 4
        error = cpi.error("resize_disk", disk_cid, 2048)
        assert error["type"] == "Bosh::Clouds::NotSupported" and "shrink" in error["message"]
        assert cpi.ok("update_disk", disk_cid, 6144, {"type": "gp3", "iops": 4000}) is None
        volume = ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]
        assert volume["Size"] == 6
        cpi.ok("set_disk_metadata", disk_cid, {"deployment": "dep", "instance_id": "7d3a"})
        tags = {t["Key"]: t["Value"] for t in ec2.describe_volumes(VolumeIds=[disk_cid])["Volumes"][0]["Tags"]}
        assert tags == {"deployment": "dep", "instance_id": "7d3a"}

        snap = cpi.ok(
            "snapshot_disk",
            disk_cid,
            {"deployment": "dep", "job": "web", "index": 0, "director_name": "d", "instance_id": "7d3a"},
        )
        snapshot = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]
        stags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
        assert snapshot["VolumeId"] == disk_cid and snapshot["Description"] == "dep/web/0"
        assert stags["Name"] == "dep/web/0" and stags["director"] == "d" and stags["instance_name"] == "web/7d3a"
        cpi.ok("delete_snapshot", snap)
        cpi.ok("delete_snapshot", snap)  # idempotent
        assert not [s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] if s["SnapshotId"] == snap]
        cpi.ok("delete_disk", disk_cid)
        assert cpi.ok("has_disk", disk_cid) is False
        assert cpi.error("delete_disk", disk_cid)["type"] == "Bosh::Clouds::DiskNotFound"
    finally:
        cpi.ok("delete_vm", vm_cid)
    assert cpi.ok("has_vm", vm_cid) is False
    assert (
        ec2.describe_instances(InstanceIds=[vm_cid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
    )
    cpi.ok("delete_stemcell", stemcell)
    assert ec2.describe_images(ImageIds=[ami])["Images"], "a light stemcell's AMI belongs to its publisher"
    _no_secrets(cpi)


def test_failed_create_vm_leaves_nothing(cpi: AwsCpi, env: dict[str, Any], ami: str, moto_endpoint: str) -> None:
    """A failure after the instance exists (a failpoint after each step) terminates it before answering."""
    ec2 = ec2_client(moto_endpoint)
    for step in ("run_instance", "wait_running", "associate_vip"):
        run = uuid.uuid4().hex[:8]
        networks = {
            "default": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}},
            "public": {"type": "vip", "ip": env["bats_eip"]},
        }
        result = cpi.call(
            "create_vm",
            f"agent-{run}",
            f"{ami} light",
            {"instance_type": "t3.nano"},
            networks,
            [],
            _env(run),
            extra_env={"STEMFORGE_FAILPOINTS": f"after:{step}"},
        )
        error = result.error
        assert error["type"] == "Bosh::Clouds::VMCreationFailed" and f"after:{step}" in error["message"]
        made = _instances(ec2, run)
        assert made, "the instance was created before the failpoint"
        assert all(i["State"]["Name"] == "terminated" for i in made), f"{step}: instance left running"
        assert "terminating instance" in result.response["log"]
    _no_secrets(cpi)


def test_vip_network_associates_the_elastic_ip(cpi: AwsCpi, env: dict[str, Any], ami: str, moto_endpoint: str) -> None:
    ec2 = ec2_client(moto_endpoint)
    run = uuid.uuid4().hex[:8]
    networks = {
        "default": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}},
        "public": {"type": "vip", "ip": env["bats_eip"]},
    }
    vm_cid, _ = cpi.ok("create_vm", f"agent-{run}", ami, {"instance_type": "t3.nano"}, networks, [], _env(run))
    try:
        address = ec2.describe_addresses(PublicIps=[env["bats_eip"]])["Addresses"][0]
        assert address.get("InstanceId") == vm_cid
    finally:
        cpi.ok("delete_vm", vm_cid)


@pytest.mark.parametrize(
    ("props", "networks_change", "expected"),
    [
        ({}, None, "'instance_type' is a required property"),
        ({"instance_type": "t3.micro", "instnce_typ": "x"}, None, "unknown key(s) 'instnce_typ'"),
        ({"instance_type": "t3.micro", "ephemeral_disk": {"type": "io1"}}, None, "ephemeral_disk.iops"),
        ({"instance_type": "t3.micro", "root_disk": {"size": "big"}}, None, "'root_disk/size'"),
        ({"instance_type": "t3.micro", "security_groups": ["no-such-group"]}, None, "no-such-group"),
        ({"instance_type": "t3.micro", "availability_zone": "us-east-1z"}, None, "availability_zone"),
        ({"instance_type": "t3.micro"}, {"cloud_properties": {}}, "networks.private.cloud_properties.subnet"),
        ({"instance_type": "t3.micro"}, {"cloud_properties": {"subnet": "subnet-0000000000000dead"}}, "subnet-0000000"),
        ({"instance_type": "t3.micro"}, {"type": "bridge"}, "networks.private.type"),
    ],
)
def test_bad_input_is_named_and_creates_nothing(
    cpi: AwsCpi,
    env: dict[str, Any],
    ami: str,
    moto_endpoint: str,
    props: dict[str, Any],
    networks_change: dict[str, Any] | None,
    expected: str,
) -> None:
    run = uuid.uuid4().hex[:8]
    networks = _manual_net(env, "10.0.4.20")
    if networks_change:
        networks["private"].update(networks_change)
    error = cpi.error("create_vm", f"agent-{run}", ami, props, networks, [], _env(run))
    assert expected in error["message"], error
    assert error["type"].startswith("Bosh::Clouds::")
    assert _instances(ec2_client(moto_endpoint), run) == []
    _no_secrets(cpi)


def test_bad_disk_cloud_properties(cpi: AwsCpi) -> None:
    error = cpi.error("create_disk", 8192, {"type": "io2"}, None)
    assert "iops" in error["message"]
    error = cpi.error("create_disk", 1024, {"typ": "gp3"}, None)
    assert "unknown key(s) 'typ'" in error["message"]
    error = cpi.error("create_disk", 1024, {"type": "st1"}, None)
    assert "125-16384 GiB" in error["message"]


def test_light_stemcell_needs_this_region(cpi: AwsCpi, ami: str, empty_image: str) -> None:
    error = cpi.error("create_stemcell", empty_image, {"ami": {"eu-west-1": ami, "ap-south-1": ami}})
    assert error["type"] == "Bosh::Clouds::CloudError"
    assert "us-east-1" in error["message"] and "ap-south-1, eu-west-1" in error["message"]
    error = cpi.error("create_stemcell", empty_image, {"ami": {"us-east-1": "ami-00000000000000bad"}})
    assert "ami-00000000000000bad" in error["message"] and "does not exist" in error["message"]
    error = cpi.error("create_stemcell", empty_image, {"ami": {"us-east-1": "not-an-ami"}})
    assert "'ami/us-east-1'" in error["message"]


def test_v1_shapes_unknown_cids_and_calculated_properties(cpi: AwsCpi, env: dict[str, Any], ami: str) -> None:
    run = uuid.uuid4().hex[:8]
    props = cpi.ok("calculate_vm_cloud_properties", {"cpu": 2, "ram": 3000, "ephemeral_disk_size": 4096})
    assert props == {"instance_type": "t3.medium", "ephemeral_disk": {"size": 4096}}
    networks = {"default": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}}}
    vm_cid = cpi.ok("create_vm", f"agent-{run}", ami, props, networks, None, {}, api_version=1)
    assert isinstance(vm_cid, str) and vm_cid.startswith("i-")
    try:
        disk = cpi.ok("create_disk", 1024, {}, vm_cid, api_version=1)
        assert cpi.ok("attach_disk", vm_cid, disk, api_version=1) is None
        cpi.ok("detach_disk", vm_cid, disk, api_version=1)
        cpi.ok("delete_disk", disk)
    finally:
        cpi.ok("delete_vm", vm_cid)
    assert cpi.ok("delete_vm", vm_cid) is None, "deleting a terminated VM again is not an error"
    assert cpi.ok("has_vm", "i-0123456789abcdef0") is False
    assert cpi.ok("has_vm", "vm-not-an-instance") is False
    assert cpi.error("delete_vm", "i-0123456789abcdef0")["type"] == "Bosh::Clouds::VMNotFound"
    assert cpi.error("reboot_vm", "i-0123456789abcdef0")["type"] == "Bosh::Clouds::VMNotFound"
    assert cpi.ok("has_disk", "vol-0123456789abcdef0") is False
    assert (
        cpi.error("attach_disk", "i-0123456789abcdef0", "vol-0123456789abcdef0")["type"] == "Bosh::Clouds::VMNotFound"
    )
    assert cpi.error("set_disk_metadata", "vol-0123456789abcdef0", {"a": "b"})["type"] == "Bosh::Clouds::DiskNotFound"
    assert cpi.error("current_vm_id")["type"] == "Bosh::Clouds::NotImplemented"
    error = cpi.error("calculate_vm_cloud_properties", {"cpu": 500, "ram": 1024, "ephemeral_disk_size": 1})
    assert "500 vCPU" in error["message"]


def test_secrets_stay_out_of_debug_logs(cpi: AwsCpi, env: dict[str, Any], ami: str) -> None:
    """At log level debug (botocore would print request bodies and signed headers) nothing secret appears."""
    run = uuid.uuid4().hex[:8]
    networks = {"default": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}}}
    result = cpi.call(
        "create_vm",
        f"agent-{run}",
        ami,
        {"instance_type": "t3.nano"},
        networks,
        [],
        _env(run),
        context={"log_level": "debug"},
    )
    vm_cid = result.result[0]
    cpi.call("delete_vm", vm_cid, context={"log_level": "debug"})
    assert "create_vm" in result.response["log"]  # records go to the log field only (once)
    _no_secrets(cpi)
