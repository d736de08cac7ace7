"""A heavy stemcell's import as Packer-style steps: extract ``root.img`` → upload to S3 → ImportSnapshot → wait for
the task → RegisterImage → wait until available. Each step records what it made in the state dict; its cleanup
removes exactly that. The extracted file and the S3 object are temporary (removed on success too).

This path is for real AWS: moto implements neither ImportSnapshot nor DescribeImportSnapshotTasks, so the tests
drive it with botocore's Stubber answering the recorded response shapes (the S3 upload goes to the moto server).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cpi.errors import CloudError
from cpi.providers.aws import tags as tagging
from cpi.providers.aws.clients import AwsCallError, wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cpi.providers.aws.stemcells import StemcellManager

QCOW2_MAGIC = b"QFI\xfb"


class _Step:
    name = ""
    temporary = False

    def __init__(self, manager: StemcellManager, props: Mapping[str, Any]) -> None:
        self.m = manager
        self.props = props

    def run(self, state: dict[str, Any]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def cleanup(self, state: dict[str, Any]) -> None:
        """Nothing to remove unless overridden."""


class ExtractRootImage(_Step):
    """The raw disk inside the director's ``image`` file (a gzipped tar), or the file itself when it is a disk."""

    name = "extract_root_image"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        from cpi.providers.aws.stemcells import make_tempdir

        image: Path = state["image"]
        with open(image, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] == b"\x1f\x8b":
            from stemcells.errors import StemcellError
            from stemcells.tarball import open_root_image

            state["tmpdir"] = tmp = make_tempdir("stemforge-aws-stemcell-")
            try:
                root = open_root_image(image, tmp / "root")
            except StemcellError as exc:
                raise CloudError(f"create_stemcell: {exc}") from None
            with open(root, "rb") as fh:
                magic = fh.read(4)
        else:
            root = image
        if magic == QCOW2_MAGIC:
            raise CloudError(
                "create_stemcell: the stemcell's root image is qcow2; AWS imports raw images (aws-raw stemcells)"
            )
        state["root_image"] = root
        state["root_bytes"] = Path(root).stat().st_size

    def cleanup(self, state: dict[str, Any]) -> None:
        from cpi.providers.aws.stemcells import remove_tree

        if "tmpdir" in state:
            remove_tree(state["tmpdir"])


class UploadImage(_Step):
    name = "upload_image"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.m.config
        key = f"{cfg.images_prefix}{uuid.uuid4()}.raw"
        state["s3_key"] = key
        self.m.log.info(
            "create_stemcell: uploading %d MiB to s3://%s/%s", state["root_bytes"] >> 20, cfg.images_bucket, key
        )
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        try:
            self.m.api.s3.upload_file(
                str(state["root_image"]),
                cfg.images_bucket,
                key,
                Config=TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4),
            )
        except S3UploadFailedError as exc:
            raise CloudError(
                f"create_stemcell: uploading the image to s3://{cfg.images_bucket}/{key}: {exc}", ok_to_retry=True
            ) from None

    def cleanup(self, state: dict[str, Any]) -> None:
        if "s3_key" in state:
            self.m.api.call("s3", "delete_object", Bucket=self.m.config.images_bucket, Key=state["s3_key"])


class ImportSnapshot(_Step):
    name = "import_snapshot"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.m.config
        params: dict[str, Any] = {
            "Description": f"stemforge stemcell {self.props.get('name', '')} {self.props.get('version', '')}".strip(),
            "DiskContainer": {
                "Description": "root.img",
                "Format": "RAW",
                "UserBucket": {"S3Bucket": cfg.images_bucket, "S3Key": state["s3_key"]},
            },
            "ClientToken": uuid.uuid4().hex,
        }
        if cfg.import_role_name:
            params["RoleName"] = cfg.import_role_name
        encrypted = bool(self.props.get("encrypted", cfg.encrypted))
        if encrypted:
            params["Encrypted"] = True
            kms = self.props.get("kms_key_arn", cfg.kms_key_arn)
            if kms:
                params["KmsKeyId"] = kms
        specs = tagging.tag_specifications(["import-snapshot-task"], state["tags"])
        if specs:
            params["TagSpecifications"] = specs
        task_id = self.m.api.ec2_call("import_snapshot", **params)["ImportTaskId"]
        state["import_task_id"] = task_id
        self.m.log.info("create_stemcell: import task %s started", task_id)

        def describe() -> dict[str, Any]:
            tasks = self.m.api.ec2_call("describe_import_snapshot_tasks", ImportTaskIds=[task_id])
            found = tasks.get("ImportSnapshotTasks") or [{}]
            return dict(found[0].get("SnapshotTaskDetail") or {})

        detail = wait_for(
            describe,
            lambda d: str(d.get("Status", "")),
            want={"completed"},
            failed={"deleting", "deleted", "error"},
            reason=lambda d: str(d.get("StatusMessage", "")),
            what=f"import task {task_id}",
            timeout=cfg.import_timeout,
            interval=cfg.poll_interval,
            log=self.m.log,
        )
        snapshot_id = detail.get("SnapshotId")
        if not snapshot_id:
            raise CloudError(f"create_stemcell: import task {task_id} completed without a snapshot id")
        state["snapshot_id"] = snapshot_id
        listed = tagging.tag_list({**state["tags"], "Name": f"stemcell {self.props.get('name', '')}"})
        self.m.api.ec2_call("create_tags", Resources=[snapshot_id], Tags=listed)

    def cleanup(self, state: dict[str, Any]) -> None:
        from cpi.providers.aws.stemcells import delete_snapshot

        if "snapshot_id" in state:
            delete_snapshot(self.m.api, state["snapshot_id"], self.m.log)
        elif "import_task_id" in state:
            try:
                self.m.api.ec2_call(
                    "cancel_import_task",
                    ImportTaskId=state["import_task_id"],
                    CancelReason="stemforge create_stemcell failed",
                )
            except AwsCallError as exc:  # a finished task cannot be cancelled: nothing left to stop
                self.m.log.info("import task %s: not cancelled (%s)", state["import_task_id"], exc.code)


class RegisterImage(_Step):
    name = "register_image"

    def run(self, state: dict[str, Any]) -> None:
        from cpi.providers.aws.stemcells import ami_name, architecture

        root_device = str(self.props.get("root_device_name") or "/dev/xvda")
        disk_gib = max(1, -(-int(self.props.get("disk") or 0) // 1024), -(-int(state["root_bytes"]) // (1 << 30)))
        params: dict[str, Any] = {
            "Name": ami_name(self.props),
            "Description": f"{self.props.get('name', 'stemcell')} {self.props.get('version', '')}".strip()[:255],
            "Architecture": architecture(self.props),
            "RootDeviceName": root_device,
            "VirtualizationType": "hvm",
            "EnaSupport": True,
            "SriovNetSupport": "simple",
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "SnapshotId": state["snapshot_id"],
                        "VolumeSize": disk_gib,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
        }
        if self.props.get("boot_mode"):
            params["BootMode"] = self.props["boot_mode"]
        specs = tagging.tag_specifications(["image"], state["tags"])
        if specs:
            params["TagSpecifications"] = specs
        image_id = self.m.api.ec2_call("register_image", **params)["ImageId"]
        state["image_id"] = image_id
        self.m.wait_available(image_id)
        self.m.log.info("create_stemcell: registered %s from snapshot %s", image_id, state["snapshot_id"])

    def cleanup(self, state: dict[str, Any]) -> None:
        if "image_id" in state:
            try:
                self.m.api.ec2_call("deregister_image", ImageId=state["image_id"])
            except AwsCallError as exc:
                if exc.code != "InvalidAMIID.NotFound":
                    raise


def steps(manager: StemcellManager, props: Mapping[str, Any]) -> list[_Step]:
    return [cls(manager, props) for cls in (ExtractRootImage, UploadImage, ImportSnapshot, RegisterImage)]
