"""The ``amazon-import`` post-processor against the loopback moto server (fixture ``moto_endpoint``).

What runs for real in moto: the S3 bucket, the multipart upload of the image and the deletion of the import source;
CopyImage (the rename and the copies to ``ami_regions``), DescribeImages, CreateTags, ModifyImageAttribute,
DeregisterImage and DeleteSnapshot (every cleanup).

What moto does NOT implement: the VM Import API. moto's server answers ImportImage, DescribeImportImageTasks and
CancelImportTask with HTTP 500 "not implemented" (``test_moto_lacks_the_vm_import_api`` proves it on this moto).
Those three calls therefore go to a botocore ``Stubber`` answering with the response shapes of the EC2 API
reference's examples (recorded below; the Stubber checks every request against botocore's service model and every
answer against the operation's output shape). The AMI the stubbed task reports as imported is first registered in
moto with RegisterImage (the snapshot of a volume, as an import leaves it), so everything after the import --
rename, tags, permissions, copies, cleanup -- happens in moto.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from builders.core import Artifact, BuildContext, BuildError, ConfigError
from builders.postprocessors.amazon_import import AmazonImportPostProcessor
from builders.postprocessors.stemcell import StemcellPostProcessor
from stemcells.tarball import read_stemcell
from stemforge_base.steps import Cancelled
from tests.harness.recording_ui import RecordingUi

pytestmark = pytest.mark.aws

REGION = "us-east-1"
STUBBED = frozenset({"import_image", "describe_import_image_tasks", "cancel_import_task"})


class Routed:
    """An EC2 client that sends the VM Import calls to a stubbed client and everything else to moto."""

    def __init__(self, real: Any, stubbed: Any) -> None:
        self.real = real
        self.stubbed = stubbed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stubbed if name in STUBBED else self.real, name)


def client(endpoint: str, service: str, region: str = REGION) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


def registered_import(endpoint: str, name: str) -> tuple[str, str]:
    """What a finished import leaves in the account: a snapshot and an AMI registered from it."""
    ec2 = client(endpoint, "ec2")
    volume = ec2.create_volume(Size=1, AvailabilityZone=f"{REGION}a")["VolumeId"]
    snap = ec2.create_snapshot(VolumeId=volume, Description=f"Created by AWS-VMImport service for {name}")
    ec2.delete_volume(VolumeId=volume)
    image = ec2.register_image(
        Name=name,
        Architecture="x86_64",
        RootDeviceName="/dev/sda1",
        VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap["SnapshotId"]}}],
    )
    return image["ImageId"], snap["SnapshotId"]


# Response shapes from the EC2 API reference (ImportImage / DescribeImportImageTasks examples).
def import_started(task: str, bucket: str, key: str) -> dict[str, Any]:
    return {
        "Architecture": "x86_64",
        "ImportTaskId": task,
        "LicenseType": "BYOL",
        "Platform": "Linux",
        "Progress": "2",
        "Status": "active",
        "StatusMessage": "pending",
        "SnapshotDetails": [{"DiskImageSize": 0.0, "Format": "RAW", "UserBucket": {"S3Bucket": bucket, "S3Key": key}}],
    }


def task_active(task: str) -> dict[str, Any]:
    return {
        "ImportImageTasks": [
            {
                "ImportTaskId": task,
                "Architecture": "x86_64",
                "LicenseType": "BYOL",
                "Platform": "Linux",
                "Progress": "28",
                "Status": "active",
                "StatusMessage": "converting",
                "SnapshotDetails": [{"DiskImageSize": 1050624.0, "Format": "RAW", "Status": "active"}],
            }
        ]
    }


def task_completed(task: str, image: str, snap: str) -> dict[str, Any]:
    return {
        "ImportImageTasks": [
            {
                "ImportTaskId": task,
                "Architecture": "x86_64",
                "BootMode": "legacy-bios",
                "ImageId": image,
                "LicenseType": "BYOL",
                "Platform": "Linux",
                "Status": "completed",
                "SnapshotDetails": [
                    {
                        "DeviceName": "/dev/sda1",
                        "DiskImageSize": 1050624.0,
                        "Format": "RAW",
                        "SnapshotId": snap,
                        "Status": "completed",
                    }
                ],
            }
        ]
    }


def task_deleted(task: str) -> dict[str, Any]:
    return {
        "ImportImageTasks": [
            {
                "ImportTaskId": task,
                "Status": "deleted",
                "StatusMessage": "ClientError: No valid partitions. Not a valid volume.",
            }
        ]
    }


@pytest.fixture
def setup(tmp_path: Path, moto_endpoint: str) -> dict[str, Any]:
    bucket = f"imports-{uuid.uuid4().hex[:8]}"
    client(moto_endpoint, "s3").create_bucket(Bucket=bucket)
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\xeb\x63\x90" + bytes(range(256)) * 4100 + b"\x55\xaa")
    ui = RecordingUi()
    ctx = BuildContext("img", "qemu", ui, threading.Event(), tmp_path, str(uuid.uuid4()))
    return {"bucket": bucket, "image": image, "ui": ui, "ctx": ctx, "tmp": tmp_path}


def make_pp(setup: dict[str, Any], endpoint: str, **options: Any) -> tuple[AmazonImportPostProcessor, Stubber]:
    config = {
        "region": REGION,
        "custom_endpoint_ec2": endpoint,
        "custom_endpoint_s3": endpoint,
        "access_key": "testing",
        "secret_key": "testing-secret",
        "s3_bucket_name": setup["bucket"],
        "format": "raw",
        "platform": "linux",
        "license_type": "BYOL",
        "role_name": "vmimport",
        "aws_polling": {"delay_seconds": 1, "max_attempts": 30},
        **options,
    }
    pp = AmazonImportPostProcessor(config, setup["ctx"])
    pp.prepare()
    stubbed = client(endpoint, "ec2")
    stubber = Stubber(stubbed)
    stubber.activate()
    pp.access.use_client("ec2", REGION, Routed(pp.access.client("ec2"), stubbed))
    return pp, stubber


def expect_import(stubber: Stubber, task: str, bucket: str) -> None:
    stubber.add_response(
        "import_image",
        import_started(task, bucket, "k"),
        {
            "DiskContainers": [{"Format": "raw", "UserBucket": {"S3Bucket": bucket, "S3Key": ANY}}],
            "Architecture": "x86_64",
            "BootMode": "legacy-bios",
            "Encrypted": False,
            "Platform": "linux",
            "RoleName": "vmimport",
            "LicenseType": "BYOL",
        },
    )


def object_exists(endpoint: str, bucket: str) -> list[str]:
    return [o["Key"] for o in client(endpoint, "s3").list_objects_v2(Bucket=bucket).get("Contents") or []]


def test_moto_lacks_the_vm_import_api(moto_endpoint: str) -> None:
    """Why the import calls are stubbed: this moto answers them with 500 (not implemented)."""
    ec2 = boto3.session.Session().client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
        config=boto3.session.Config(retries={"total_max_attempts": 1}),
    )
    with pytest.raises(Exception) as caught:
        ec2.describe_import_image_tasks()
    assert "500" in str(caught.value) or "Internal" in str(caught.value) or "parse" in str(caught.value)


def test_import_rename_tag_copy_and_clean(setup: dict[str, Any], moto_endpoint: str) -> None:
    name = f"imported-{uuid.uuid4().hex[:8]}"
    raw_ami, raw_snap = registered_import(moto_endpoint, f"import-ami-{uuid.uuid4().hex[:8]}")
    pp, stubber = make_pp(
        setup,
        moto_endpoint,
        ami_name=name,
        ami_description="from {{ .BuildRegion }}",
        tags={"Name": name, "Region": "{{ .BuildRegion }}"},
        ami_users=["111122223333"],
        ami_regions=["eu-west-1", "ap-south-1"],
        s3_key_name="uploads/{{timestamp}}.raw",
    )
    task = "import-ami-0123456789abcdef0"
    expect_import(stubber, task, setup["bucket"])
    stubber.add_response("describe_import_image_tasks", task_active(task), {"ImportTaskIds": [task]})
    stubber.add_response(
        "describe_import_image_tasks", task_completed(task, raw_ami, raw_snap), {"ImportTaskIds": [task]}
    )
    seen_objects: list[list[str]] = []
    ui: RecordingUi = setup["ui"]
    ui.on_line = lambda line: (
        seen_objects.append(object_exists(moto_endpoint, setup["bucket"])) if "Started import" in line else None
    )
    out, keep = pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], str(setup["image"])))
    stubber.assert_no_pending_responses()
    assert keep is False
    assert seen_objects and seen_objects[0][0].startswith("uploads/") and seen_objects[0][0].endswith(".raw")
    assert object_exists(moto_endpoint, setup["bucket"]) == [], "the import source is deleted (skip_clean false)"
    amis = out.state["amis"]
    assert sorted(amis) == ["ap-south-1", "eu-west-1", REGION]
    assert out.artifact_id == ",".join(sorted(f"{r}:{i}" for r, i in amis.items()))
    assert raw_ami not in amis.values()
    ec2 = client(moto_endpoint, "ec2")
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [raw_ami]}])["Images"] == [], (
        "the intermediary AMI is deregistered"
    )
    assert ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [raw_snap]}])["Snapshots"] == []
    for region, ami in amis.items():
        image = client(moto_endpoint, "ec2", region).describe_images(ImageIds=[ami])["Images"][0]
        assert image["Name"] == name and image["State"] == "available"
        tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}
        assert tags == {"Name": name, "Region": region}
    # a light AWS stemcell straight from the import
    stemcell, kept = StemcellPostProcessor(
        {"version": "7", "os": "ubuntu-jammy", "output_directory": str(setup["tmp"] / "sc")}, setup["ctx"]
    ).post_process(out)
    assert kept is True
    manifest = read_stemcell(stemcell.files[0]).manifest
    assert manifest.cloud_properties["ami"] == amis and manifest.stemcell_formats == ["aws-light"]
    out.destroy()
    for region, ami in amis.items():
        assert (
            client(moto_endpoint, "ec2", region).describe_images(Filters=[{"Name": "image-id", "Values": [ami]}])[
                "Images"
            ]
            == []
        )


def test_failed_import_removes_the_upload(setup: dict[str, Any], moto_endpoint: str) -> None:
    pp, stubber = make_pp(setup, moto_endpoint, ami_name="never-made")
    task = "import-ami-0fedcba9876543210"
    expect_import(stubber, task, setup["bucket"])
    stubber.add_response("describe_import_image_tasks", task_deleted(task), {"ImportTaskIds": [task]})
    with pytest.raises(
        BuildError, match=f"Import task {task} failed with status message: ClientError: No valid partitions"
    ):
        pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], "id"))
    stubber.assert_no_pending_responses()
    assert object_exists(moto_endpoint, setup["bucket"]) == []
    assert any("Deleting import source" in line for line in setup["ui"].lines)


def test_interrupt_while_importing_cancels_the_task_and_cleans(setup: dict[str, Any], moto_endpoint: str) -> None:
    pp, stubber = make_pp(setup, moto_endpoint)
    task = "import-ami-0aaaabbbbccccdddd"
    expect_import(stubber, task, setup["bucket"])
    stubber.add_response("describe_import_image_tasks", task_active(task), {"ImportTaskIds": [task]})
    stubber.add_response(
        "cancel_import_task",
        {"ImportTaskId": task, "PreviousState": "active", "State": "deleting"},
        {"ImportTaskId": task, "CancelReason": ANY},
    )
    ctx: BuildContext = setup["ctx"]
    setup["ui"].on_line = lambda line: ctx.cancel.set() if "converting" in line else None
    with pytest.raises(Cancelled):
        pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], "id"))
    stubber.assert_no_pending_responses()
    assert object_exists(moto_endpoint, setup["bucket"]) == []
    assert any(f"Cancelling import task {task}" in line for line in setup["ui"].lines)


def test_skip_clean_keeps_the_import_source(setup: dict[str, Any], moto_endpoint: str) -> None:
    raw_ami, raw_snap = registered_import(moto_endpoint, f"import-ami-{uuid.uuid4().hex[:8]}")
    pp, stubber = make_pp(setup, moto_endpoint, skip_clean=True, s3_key_name="keep/me.raw")
    task = "import-ami-0123401234012340a"
    expect_import(stubber, task, setup["bucket"])
    stubber.add_response(
        "describe_import_image_tasks", task_completed(task, raw_ami, raw_snap), {"ImportTaskIds": [task]}
    )
    out, _ = pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], "id"))
    assert out.state["amis"] == {REGION: raw_ami}
    assert object_exists(moto_endpoint, setup["bucket"]) == ["keep/me.raw"]
    out.destroy()


def test_refused_import_is_reported_in_packers_words_and_cleans(setup: dict[str, Any], moto_endpoint: str) -> None:
    pp, stubber = make_pp(setup, moto_endpoint)
    stubber.add_client_error("import_image", "InvalidParameter", "The service role vmimport does not exist")
    with pytest.raises(BuildError, match=f"Failed to start import from s3://{setup['bucket']}/.*vmimport does not"):
        pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], "id"))
    stubber.assert_no_pending_responses()
    assert object_exists(moto_endpoint, setup["bucket"]) == []


def test_failure_after_the_shared_import_steps_removes_the_ami_and_the_upload(
    setup: dict[str, Any], moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload and import are the CPI's heavy-stemcell steps (cpi.providers.aws.import_steps) run through the
    StepRunner: a failpoint right after the import step unwinds their cleanups (the imported AMI and its snapshot
    are removed, then the S3 object)."""
    from cpi.providers.aws import import_steps
    from stemforge_base.steps import FAILPOINTS_ENV, FailpointError

    raw_ami, raw_snap = registered_import(moto_endpoint, f"import-ami-{uuid.uuid4().hex[:8]}")
    pp, stubber = make_pp(setup, moto_endpoint)
    task = "import-ami-0bbbbccccddddeeee"
    expect_import(stubber, task, setup["bucket"])
    stubber.add_response(
        "describe_import_image_tasks", task_completed(task, raw_ami, raw_snap), {"ImportTaskIds": [task]}
    )
    ran: list[str] = []
    original = import_steps.ImportTask.run

    def recording_run(self: import_steps.ImportTask, state: dict[str, Any]) -> None:
        ran.append(self.name)
        original(self, state)

    monkeypatch.setattr(import_steps.ImportTask, "run", recording_run)
    monkeypatch.setenv(FAILPOINTS_ENV, "after:import_image")
    with pytest.raises(FailpointError):
        pp.post_process(Artifact("x", "img", "qemu", [setup["image"]], "id"))
    stubber.assert_no_pending_responses()
    assert ran == ["import_image"], "the post-processor runs the shared import step"
    ec2 = client(moto_endpoint, "ec2")
    assert ec2.describe_images(Filters=[{"Name": "image-id", "Values": [raw_ami]}])["Images"] == []
    assert ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [raw_snap]}])["Snapshots"] == []
    assert object_exists(moto_endpoint, setup["bucket"]) == []
    lines = setup["ui"].lines
    assert any(f"Deregistering {raw_ami}" in line for line in lines)
    assert any("Deleting import source" in line for line in lines)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "qcow2"}, "invalid format 'qcow2'. Only 'ova', 'raw', 'vhd', 'vhdx', or 'vmdk' are allowed"),
        ({"boot_mode": "uefi", "platform": ""}, "'platform' must be set for 'uefi' image imports"),
        ({"architecture": "arm64", "boot_mode": "legacy-bios"}, "invalid boot mode 'legacy-bios' for 'arm64'"),
        ({"s3_bucket_name": ""}, "s3_bucket_name must be set"),
        ({"s3_encryption": "rot13"}, "invalid s3 encryption format 'rot13'"),
        ({"ami_regions": ["atlantis-1"]}, "ami_regions[0]: Invalid region: atlantis-1"),
        ({"s3_bucket": "x"}, "unknown configuration key: 's3_bucket'"),
    ],
)
def test_options_errors_name_the_key(setup: dict[str, Any], options: dict[str, Any], message: str) -> None:
    config = {"region": REGION, "s3_bucket_name": "b", "format": "raw", **options}
    with pytest.raises(ConfigError) as caught:
        AmazonImportPostProcessor(config, setup["ctx"]).prepare()
    assert message in str(caught.value)


def test_template_validation_names_the_key(tmp_path: Path) -> None:
    """The post-processor's option errors through ``stemforge validate``, in a template as users write it."""
    import json
    import subprocess
    import sys

    image = tmp_path / "disk.raw"
    doc = {
        "builders": [{"type": "file", "target": str(image), "content": "x"}],
        "post-processors": [
            {
                "type": "amazon-import",
                "region": REGION,
                "s3_bucket_name": "b",
                "format": "qcow2",
                "s3_bucket": "typo",
                "secret_key": "IMPORT-SECRET-9",
                "access_key": "AKIAIMPORT",
            }
        ],
    }
    path = tmp_path / "import.json"
    path.write_text(json.dumps(doc))
    result = subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "validate", str(path)],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "unknown configuration key: 's3_bucket'" in out
    assert "IMPORT-SECRET-9" not in out
