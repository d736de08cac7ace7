"""The AWS provider's parts in-process: config validation, secret keys, instance-type choice, NVMe hints, tags,
EBS rules, and the heavy stemcell import (S3 upload + ImportSnapshot + RegisterImage).

moto implements neither ImportSnapshot nor DescribeImportSnapshotTasks, so the heavy-stemcell tests put botocore's
``Stubber`` on the EC2 client: it answers with response documents shaped as AWS records them (and checks them,
and the requests, against the EC2 service model), while the S3 upload really goes to the loopback moto server.
"""

from __future__ import annotations

import io
import logging
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from cpi.errors import CloudError, CpiError, NotSupported
from cpi.provider import VmRequest
from cpi.providers.aws import instance_types, tags, volumes
from cpi.providers.aws.config import AwsConfig
from cpi.providers.aws.provider import AWSProvider
from stemforge_base.redaction import Redactor, is_secret_key
from tests.harness.aws import (
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    aws_section,
    ec2_client,
    register_ami,
    s3_client,
)

pytestmark = [pytest.mark.aws]

LOG = logging.getLogger("test.aws")


# -- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (None, "'aws' section"),
        ({}, "'region' is a required property"),
        ({"region": "us-east-1", "regoin": "x", "credentials_source": "env_or_profile"}, "unknown key(s) 'regoin'"),
        ({"region": "us-east-1"}, "needs both 'access_key_id' and 'secret_access_key'"),
        ({"region": "us-east-1", "credentials_source": "env_or_profile", "access_key_id": "a"}, "cannot be combined"),
        ({"region": "us-east-1", "credentials_source": "env_or_profile", "max_retries": -1}, "'max_retries'"),
        ({"region": "Mars", "credentials_source": "env_or_profile"}, "'region'"),
        ({"region": "us-east-1", "credentials_source": "env_or_profile", "endpoint": "ftp://x"}, "'endpoint'"),
    ],
)
def test_config_errors_name_the_field(section: dict[str, Any] | None, expected: str) -> None:
    with pytest.raises(CpiError) as info:
        AwsConfig.from_properties(section)
    assert expected in info.value.message


def test_config_defaults_and_endpoints() -> None:
    cfg = AwsConfig.from_properties(
        {
            "region": "eu-west-1",
            "credentials_source": "env_or_profile",
            "endpoint": "http://127.0.0.1:5000",
            "s3_endpoint": "http://127.0.0.1:9000",
            "images_prefix": "/stemcells",
        }
    )
    assert cfg.endpoint_for("ec2") == "http://127.0.0.1:5000" and cfg.endpoint_for("s3") == "http://127.0.0.1:9000"
    assert cfg.images_prefix == "stemcells/" and cfg.max_retries == 8
    assert SECRET_ACCESS_KEY not in repr(
        AwsConfig.from_properties(
            aws_section(
                "http://127.0.0.1:1",
                {"region": "us-east-1", "default_key_name": "k", "default_security_groups": [], "images_bucket": "bkt"},
            )
        )
    )


def test_the_aws_section_secrets_are_recognised() -> None:
    for key in ("access_key_id", "secret_access_key", "session_token"):
        assert is_secret_key(key), key
    for key in ("default_key_name", "region", "kms_key_arn", "images_bucket"):
        assert not is_secret_key(key), key
    redactor = Redactor()
    redactor.collect(
        {"cloud": {"properties": {"aws": {"secret_access_key": SECRET_ACCESS_KEY, "session_token": SESSION_TOKEN}}}}
    )
    text = redactor.scrub(f"key={SECRET_ACCESS_KEY} token={SESSION_TOKEN}")
    assert SECRET_ACCESS_KEY not in text and SESSION_TOKEN not in text


# -- pure helpers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"cpu": 1, "ram": 512}, "t3.nano"),
        ({"cpu": 2, "ram": 1024}, "t3.micro"),
        ({"cpu": 2, "ram": 4096}, "t3.medium"),
        ({"cpu": 4, "ram": 8192}, "c5.xlarge"),
        ({"cpu": 3, "ram": 100}, "c5.xlarge"),
        ({"cpu": 8, "ram": 65536}, "r5.2xlarge"),
        ({"cpu": 2, "ram": 600 * 1024}, "r5.24xlarge"),
    ],
)
def test_smallest_instance_type(resources: dict[str, int], expected: str) -> None:
    assert instance_types.smallest_for(resources).name == expected


def test_no_instance_type_fits() -> None:
    with pytest.raises(CloudError, match="no known instance type has 128 vCPU"):
        instance_types.smallest_for({"cpu": 128, "ram": 1024})


@pytest.mark.parametrize(
    ("instance_type", "nvme"),
    [
        ("t2.micro", False),
        ("m4.large", False),
        ("i3.large", False),
        ("c4.xlarge", False),
        ("t3.micro", True),
        ("c5d.large", True),
        ("i3en.large", True),
        ("m6i.large", True),
        ("t4g.small", True),
        ("z1d.large", True),
        (None, False),
    ],
)
def test_nvme_families(instance_type: str | None, nvme: bool) -> None:
    assert instance_types.uses_nvme(instance_type) is nvme
    hint = instance_types.device_hint("/dev/sdf", instance_type, "vol-0abc")
    assert hint == ("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc" if nvme else "/dev/sdf")


def test_tags_follow_bosh_aws_cpi() -> None:
    assert tags.vm_name_tags({"name": "web/1", "job": "web"}) == {"Name": "web/1", "job": "web"}
    assert tags.vm_name_tags({"job": "web", "index": "2"})["Name"] == "web/2"
    assert tags.vm_name_tags({"compiling": "pkg"})["Name"] == "compiling/pkg"
    listed = tags.tag_list({"k" * 200: "v" * 300, "aws:reserved": "x", "none": None, "flag": True})
    assert listed == [{"Key": "flag", "Value": "true"}, {"Key": "k" * 127, "Value": "v" * 255}]
    assert tags.tag_specifications(["instance"], {}) == []
    name, snap = tags.snapshot_tags(
        {"deployment": "d", "job": "j", "index": 1, "director_name": "dir", "instance_id": "abc"}, "/dev/sdf"
    )
    assert name == "d/j/1/sdf"
    assert snap == {
        "deployment": "d",
        "instance_id": "abc",
        "device": "/dev/sdf",
        "director": "dir",
        "instance_index": "1",
        "instance_name": "j/abc",
        "Name": "d/j/1/sdf",
    }


def test_ebs_rules_name_the_field() -> None:
    assert volumes.gib(1) == 1 and volumes.gib(1024) == 1 and volumes.gib(1025) == 2
    params = volumes.ebs_params({}, what="x", size_mib=1500, encrypted=True, kms_key_arn="arn:k")
    assert params == {"VolumeType": "gp3", "Size": 2, "Encrypted": True, "KmsKeyId": "arn:k"}
    with pytest.raises(CloudError, match=r"x.iops: a io1 volume needs 'iops'"):
        volumes.ebs_params({"type": "io1"}, what="x", size_mib=8192, encrypted=False, kms_key_arn=None)
    with pytest.raises(CloudError, match=r"x.throughput: only gp3"):
        volumes.ebs_params(
            {"type": "gp2", "throughput": 200}, what="x", size_mib=None, encrypted=False, kms_key_arn=None
        )
    with pytest.raises(CloudError, match=r"x.iops: only gp3, io1 and io2"):
        volumes.ebs_params({"type": "st1", "iops": 200}, what="x", size_mib=None, encrypted=False, kms_key_arn=None)


# -- against moto, in-process ------------------------------------------------------------------------------------


def _provider(endpoint: str, env: dict[str, Any], **overrides: Any) -> AWSProvider:
    return AWSProvider(
        {"aws": aws_section(endpoint, env, **overrides), "agent": {"mbus": "nats://127.0.0.1:4222"}}, LOG
    )


def test_delete_heavy_stemcell_deregisters_and_deletes_snapshots(moto_endpoint: str, env: dict[str, Any]) -> None:
    ec2 = ec2_client(moto_endpoint)
    ami = register_ami(moto_endpoint, env["az"], f"heavy {uuid.uuid4().hex[:6]}")
    snapshots = [
        m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"]
    ]
    provider = _provider(moto_endpoint, env)
    provider.delete_stemcell(ami)
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [ami]}])["Images"] == []
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not left & set(snapshots)
    provider.delete_stemcell(ami)  # idempotent
    provider.delete_stemcell(f"{ami} light")  # light: nothing to do


def test_user_data_over_the_ec2_limit_is_refused_before_anything_exists(
    moto_endpoint: str, env: dict[str, Any]
) -> None:
    ami = register_ami(moto_endpoint, env["az"], f"ud {uuid.uuid4().hex[:6]}")
    run = uuid.uuid4().hex[:8]
    networks = {"n": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}}}
    with pytest.raises(CloudError, match="EC2 user-data holds at most 16384"):
        _provider(moto_endpoint, env).create_vm(VmRequest(
            f"agent-{run}",
            ami,
            {"instance_type": "t3.nano"},
            networks,
            [],
            {"bosh": {"tags": {"test_run": run}, "blob": "x" * 20000}},
        ))
    found = ec2_client(moto_endpoint).describe_instances(Filters=[{"Name": "tag:test_run", "Values": [run]}])
    assert found["Reservations"] == []


def test_update_disk_refuses_what_cannot_change_in_place(moto_endpoint: str, env: dict[str, Any]) -> None:
    provider = _provider(moto_endpoint, env)
    disk = provider.create_disk(2048, {}, None)
    try:
        with pytest.raises(NotSupported, match="shrinking"):
            provider.update_disk(disk, 1024, {})
        with pytest.raises(NotSupported, match="encryption"):
            provider.update_disk(disk, 2048, {"encrypted": True})
        assert provider.update_disk(disk, 2048, {}) is None
        assert provider.update_disk(disk, 3072, {"type": "gp2"}) is None
        volume = ec2_client(moto_endpoint).describe_volumes(VolumeIds=[disk])["Volumes"][0]
        assert (volume["Size"], volume["VolumeType"]) == (3, "gp2")
    finally:
        provider.delete_disk(disk)


# -- heavy stemcells: S3 (moto) + EC2 import (Stubber) -------------------------------------------------------------


def _stemcell_image(tmp_path: Path, payload: bytes) -> Path:
    image = tmp_path / "image"
    with tarfile.open(image, "w:gz") as tar:
        info = tarfile.TarInfo("root.img")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return image


MF = {
    "name": "bosh-aws-xen-hvm-ubuntu-jammy-go_agent",
    "version": "1.42",
    "infrastructure": "aws",
    "architecture": "x86_64",
    "root_device_name": "/dev/xvda",
    "disk": 5120,
    "hypervisor": "xen",
}
TASK = "import-snap-0f1e2d3c4b5a69788"
SNAP = "snap-0a1b2c3d4e5f60718"
AMI = "ami-0a1b2c3d4e5f60718"


def _bucket_keys(moto_endpoint: str, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_client(moto_endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])]


def _stubbed(provider: AWSProvider) -> Any:
    from botocore.stub import Stubber

    client = provider.api.client("ec2")
    stubber = Stubber(client)
    provider.api.set_client("ec2", client)
    return stubber


def _task(status: str, **extra: Any) -> dict[str, Any]:
    """A DescribeImportSnapshotTasks entry as AWS records it."""
    return {
        "ImportTaskId": TASK,
        "Description": "stemforge stemcell",
        "SnapshotTaskDetail": {
            "DiskImageSize": 1048576.0,
            "Format": "RAW",
            "Status": status,
            "UserBucket": {"S3Bucket": "b", "S3Key": "k"},
            **extra,
        },
    }


def test_heavy_stemcell_is_imported_and_registered(moto_endpoint: str, env: dict[str, Any], tmp_path: Path) -> None:
    from botocore.stub import ANY

    provider = _provider(moto_endpoint, env, images_prefix="stemcells")
    stubber = _stubbed(provider)
    payload = b"\x00" * 4096 + b"stemforge-root" * 1000
    stubber.add_response(
        "import_snapshot",
        {"ImportTaskId": TASK, "SnapshotTaskDetail": {"Status": "active", "Format": "RAW", "Progress": "0"}},
        {
            "Description": ANY,
            "ClientToken": ANY,
            "DiskContainer": {
                "Description": "root.img",
                "Format": "RAW",
                "UserBucket": {"S3Bucket": env["images_bucket"], "S3Key": ANY},
            },
            "TagSpecifications": [
                {"ResourceType": "import-snapshot-task", "Tags": [{"Key": "director", "Value": "d1"}]}
            ],
        },
    )
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {"ImportSnapshotTasks": [_task("active", Progress="42", StatusMessage="converting")]},
        {"ImportTaskIds": [TASK]},
    )
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {"ImportSnapshotTasks": [_task("completed", SnapshotId=SNAP, Progress="100")]},
        {"ImportTaskIds": [TASK]},
    )
    stubber.add_response("create_tags", {}, {"Resources": [SNAP], "Tags": ANY})
    stubber.add_response(
        "register_image",
        {"ImageId": AMI},
        {
            "Name": ANY,
            "Description": "bosh-aws-xen-hvm-ubuntu-jammy-go_agent 1.42",
            "Architecture": "x86_64",
            "RootDeviceName": "/dev/xvda",
            "VirtualizationType": "hvm",
            "EnaSupport": True,
            "SriovNetSupport": "simple",
            "BlockDeviceMappings": [
                {
                    "DeviceName": "/dev/xvda",
                    "Ebs": {"SnapshotId": SNAP, "VolumeSize": 5, "VolumeType": "gp3", "DeleteOnTermination": True},
                }
            ],
            "TagSpecifications": [{"ResourceType": "image", "Tags": [{"Key": "director", "Value": "d1"}]}],
        },
    )
    stubber.add_response(
        "describe_images",
        {"Images": [{"ImageId": AMI, "State": "available", "RootDeviceName": "/dev/xvda"}]},
        {"ImageIds": [AMI]},
    )
    with stubber:
        cid = provider.create_stemcell(str(_stemcell_image(tmp_path, payload)), MF, {"director": "d1"})
    stubber.assert_no_pending_responses()
    assert cid == AMI
    assert _bucket_keys(moto_endpoint, env["images_bucket"]) == [], "the uploaded image is temporary"


def test_failed_import_cleans_up(moto_endpoint: str, env: dict[str, Any], tmp_path: Path) -> None:
    from botocore.stub import ANY

    provider = _provider(moto_endpoint, env)
    stubber = _stubbed(provider)
    stubber.add_response("import_snapshot", {"ImportTaskId": TASK}, None)
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {
            "ImportSnapshotTasks": [
                _task(
                    "deleted", StatusMessage="ClientError: Disk validation failed [Unsupported specified file format]"
                )
            ]
        },
        {"ImportTaskIds": [TASK]},
    )
    stubber.add_client_error(
        "cancel_import_task",
        "IncorrectState",
        "The import task is already deleted",
        expected_params={"ImportTaskId": TASK, "CancelReason": ANY},
    )
    with stubber, pytest.raises(CloudError, match="Disk validation failed"):
        provider.create_stemcell(str(_stemcell_image(tmp_path, b"x" * 1000)), MF, {})
    stubber.assert_no_pending_responses()
    assert _bucket_keys(moto_endpoint, env["images_bucket"]) == []


def test_failed_registration_deletes_the_snapshot(moto_endpoint: str, env: dict[str, Any], tmp_path: Path) -> None:
    provider = _provider(moto_endpoint, env)
    stubber = _stubbed(provider)
    stubber.add_response("import_snapshot", {"ImportTaskId": TASK}, None)
    stubber.add_response(
        "describe_import_snapshot_tasks",
        {"ImportSnapshotTasks": [_task("completed", SnapshotId=SNAP)]},
        {"ImportTaskIds": [TASK]},
    )
    stubber.add_response("create_tags", {}, None)
    stubber.add_client_error("register_image", "InvalidParameterValue", "Invalid root device name")
    stubber.add_response("delete_snapshot", {}, {"SnapshotId": SNAP})
    with stubber, pytest.raises(CloudError, match="RegisterImage: InvalidParameterValue"):
        provider.create_stemcell(str(_stemcell_image(tmp_path, b"y" * 1000)), MF, {})
    stubber.assert_no_pending_responses()
    assert _bucket_keys(moto_endpoint, env["images_bucket"]) == []


def test_heavy_stemcell_needs_a_raw_image_and_a_bucket(moto_endpoint: str, env: dict[str, Any], tmp_path: Path) -> None:
    qcow2 = _stemcell_image(tmp_path, b"QFI\xfb" + b"\x00" * 508)
    with pytest.raises(CloudError, match="qcow2"):
        _provider(moto_endpoint, env).create_stemcell(str(qcow2), MF, {})
    section = aws_section(moto_endpoint, env)
    section.pop("images_bucket")
    provider = AWSProvider({"aws": section}, LOG)
    with pytest.raises(CloudError, match="aws.images_bucket"):
        provider.create_stemcell(str(qcow2), MF, {})
    assert _bucket_keys(moto_endpoint, env["images_bucket"]) == []


def test_create_vm_refuses_disks_in_another_zone(moto_endpoint: str, env: dict[str, Any]) -> None:
    """disk_cids are a placement hint: a VM whose subnet is in another zone than its disks cannot use them."""
    provider = _provider(moto_endpoint, env, default_availability_zone=env["backup_az"])
    ami = register_ami(moto_endpoint, env["az"], f"loc {uuid.uuid4().hex[:6]}")
    disk = provider.create_disk(1024, {}, None)
    run = uuid.uuid4().hex[:8]
    try:
        networks = {"n": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}}}
        with pytest.raises(CloudError, match=f"disk {disk} is in {env['backup_az']}"):
            provider.create_vm(VmRequest(
                f"agent-{run}",
                ami,
                {"instance_type": "t3.nano"},
                networks,
                [disk],
                {"bosh": {"tags": {"test_run": run}}},
            ))
        found = ec2_client(moto_endpoint).describe_instances(Filters=[{"Name": "tag:test_run", "Values": [run]}])
        assert found["Reservations"] == []
    finally:
        provider.delete_disk(disk)


def test_encrypted_light_stemcell_is_copied_and_deleted(
    moto_endpoint: str, env: dict[str, Any], tmp_path: Path
) -> None:
    """``encrypted: true`` copies the region's AMI encrypted (as bosh-aws-cpi); the copy is the CPI's to delete."""
    ec2 = ec2_client(moto_endpoint)
    ami = register_ami(moto_endpoint, env["az"], f"enc {uuid.uuid4().hex[:6]}")
    provider = _provider(moto_endpoint, env)
    image = tmp_path / "image"
    image.write_bytes(b"")
    cid = provider.create_stemcell(str(image), {"ami": {"us-east-1": ami}, "encrypted": True}, {"owner": "t"})
    assert cid.startswith("ami-") and cid != ami and not cid.endswith(" light")
    copy = ec2.describe_images(ImageIds=[cid])["Images"][0]
    assert copy["State"] == "available" and {"Key": "owner", "Value": "t"} in copy.get("Tags", [])
    provider.delete_stemcell(cid)
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [cid]}])["Images"] == []
    assert ec2.describe_images(ImageIds=[ami])["Images"], "the published AMI stays"
