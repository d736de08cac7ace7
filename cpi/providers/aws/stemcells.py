"""Stemcells as AMIs.

* Light (``cloud_properties.ami: {region: ami-id}``, empty image): the AMI of this CPI's region, checked to exist,
  answered as ``"<ami-id> light"`` (with ``encrypted: true``, copied encrypted and answered as the copy's id, like
  bosh-aws-cpi). A region missing from the map is a CloudError naming the region and the regions present.
* Heavy (an ``image`` holding ``root.img``, raw): extract ``root.img`` → upload to ``images_bucket`` →
  ``ImportSnapshot`` → wait for the import task → tag the snapshot → ``RegisterImage`` (HVM, ENA, the MF's
  architecture and root device) → wait until available, as steps through the StepRunner. The upload and import
  steps are :mod:`cpi.providers.aws.import_steps`' (shared with the builders' ``amazon-import``); each step's cleanup
  removes exactly what it made (the extracted file and the S3 object always: they are temporary; on failure the
  import task is cancelled, the snapshot deleted, the AMI deregistered).
* v3 ``env.tags`` are applied to the AMI (and, for heavy stemcells, its snapshot). Tagging a light AMI that belongs
  to someone else is not possible; that is logged, not an error.
* delete_stemcell: light → nothing (the AMI belongs to its publisher); otherwise deregister the AMI and delete its
  snapshots; an unknown AMI is not an error.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cpi.errors import CloudError
from cpi.providers.aws import tags as tagging
from cpi.providers.aws.clients import AwsApi, AwsCallError, wait_for
from cpi.providers.aws.config import STEMCELL_CLOUD_PROPERTIES_SCHEMA, AwsConfig, validate
from cpi.providers.aws.import_steps import TASK_FAILED, ImportTask, UploadImage
from stemcells.errors import StemcellError
from stemcells.root_image import open_root_image
from stemforge_base.steps import Step, StepRunner

LIGHT_SUFFIX = " light"
_NOT_FOUND = ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable")
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "arm64", "aarch64": "arm64", "i386": "i386"}
QCOW2_MAGIC = b"QFI\xfb"
_TAG_REFUSED = (
    "UnauthorizedOperation",
    "AuthFailure",
    "InvalidParameterValue",
    "InvalidAMIID.NotFound",
    "OperationNotPermitted",
)


class StemcellManager:
    """create_stemcell / delete_stemcell for the AWS provider."""

    def __init__(self, api: AwsApi, config: AwsConfig, log: logging.Logger) -> None:
        self.api = api
        self.config = config
        self.log = log

    # -- create ------------------------------------------------------------------------------------------------------
    def create(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        props = dict(cloud_properties)
        validate("create_stemcell: cloud_properties", STEMCELL_CLOUD_PROPERTIES_SCHEMA, props)
        if props.get("ami"):
            return self._light(props, tags)
        path = Path(image_path)
        if not path.is_file():
            raise CloudError(f"create_stemcell: image {image_path} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise CloudError(
                "create_stemcell: the image is empty (a light stemcell) but cloud_properties has no "
                "'ami' map of region -> AMI id"
            )
        return self._heavy(path, props, tags)

    def _light(self, props: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        region = self.config.region
        amis: Mapping[str, str] = props["ami"]
        if region not in amis:
            present = ", ".join(sorted(amis)) or "none"
            raise CloudError(f"Stemcell does not contain an AMI in region {region} (regions present: {present})")
        ami_id = amis[region]
        image = self.describe_image(ami_id)
        if image is None:
            raise CloudError(
                f"create_stemcell: AMI {ami_id} (the light stemcell's image for region {region}) "
                f"does not exist in {region}"
            )
        if image.get("State") != "available":
            raise CloudError(f"create_stemcell: AMI {ami_id} in {region} is '{image.get('State')}', not available")
        encrypted = bool(props.get("encrypted", self.config.encrypted))
        if encrypted:
            return self._encrypted_copy(ami_id, props, tags)
        self._tag(ami_id, tags, owned=False)
        self.log.info("create_stemcell: light stemcell, AMI %s in %s", ami_id, region)
        return f"{ami_id}{LIGHT_SUFFIX}"

    def _encrypted_copy(self, ami_id: str, props: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        params: dict[str, Any] = {
            "SourceRegion": self.config.region,
            "SourceImageId": ami_id,
            "Name": f"Copied from SourceAMI {ami_id}"[:128],
            "Encrypted": True,
            "ClientToken": uuid.uuid4().hex,
        }
        kms = props.get("kms_key_arn", self.config.kms_key_arn)
        if kms:
            params["KmsKeyId"] = kms
        copy_id = self.api.ec2_call("copy_image", **params)["ImageId"]
        try:
            self.wait_available(copy_id)
            self._tag(copy_id, tags, owned=True)
        except BaseException:
            self.delete(copy_id)
            raise
        self.log.info("create_stemcell: light stemcell %s copied encrypted as %s", ami_id, copy_id)
        return str(copy_id)

    def _heavy(self, image: Path, props: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        if not self.config.images_bucket:
            raise CloudError(
                "create_stemcell: a heavy stemcell is imported through S3, but aws.images_bucket is not "
                "set in the CPI config"
            )
        host = _CpiImportHost(self)
        key = f"{self.config.images_prefix}{uuid.uuid4()}.raw"
        state: dict[str, Any] = {"image": image, "tags": dict(tags)}
        steps: list[Step] = [
            _ExtractRootImage(),
            UploadImage(host, key),
            ImportTask(host, "snapshot", lambda st: self._import_params(props, st)),
            _TagSnapshot(self, props),
            _RegisterImage(self, props),
        ]
        StepRunner(self.log).run(steps, state)
        return str(state["ami_id"])

    def _import_params(self, props: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
        """ImportSnapshot's parameters: the raw root disk in the images bucket, encryption, the task's tags."""
        cfg = self.config
        params: dict[str, Any] = {
            "Description": f"stemforge stemcell {props.get('name', '')} {props.get('version', '')}".strip(),
            "DiskContainer": {
                "Description": "root.img",
                "Format": "RAW",
                "UserBucket": {"S3Bucket": cfg.images_bucket, "S3Key": state["s3_key"]},
            },
            "ClientToken": uuid.uuid4().hex,
        }
        if cfg.import_role_name:
            params["RoleName"] = cfg.import_role_name
        if bool(props.get("encrypted", cfg.encrypted)):
            params["Encrypted"] = True
            kms = props.get("kms_key_arn", cfg.kms_key_arn)
            if kms:
                params["KmsKeyId"] = kms
        specs = tagging.tag_specifications(["import-snapshot-task"], state["tags"])
        if specs:
            params["TagSpecifications"] = specs
        return params

    # -- helpers -----------------------------------------------------------------------------------------------------
    def describe_image(self, ami_id: str) -> dict[str, Any] | None:
        """The image, or None when it does not exist (deregistered images are not returned by AWS)."""
        try:
            images = self.api.ec2_call("describe_images", ImageIds=[ami_id])["Images"]
        except AwsCallError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        return images[0] if images else None

    def wait_available(self, ami_id: str) -> dict[str, Any]:
        def describe() -> dict[str, Any]:
            return self.describe_image(ami_id) or {"State": "missing"}

        return wait_for(
            describe,
            lambda i: str(i.get("State", "")),
            want={"available"},
            failed={"failed", "invalid", "deregistered", "error", "missing"},
            reason=lambda i: str((i.get("StateReason") or {}).get("Message", "")),
            what=f"AMI {ami_id}",
            timeout=self.config.import_timeout,
            interval=self.config.poll_interval,
            log=self.log,
        )

    def _tag(self, resource_id: str, tags: Mapping[str, str], *, owned: bool) -> None:
        listed = tagging.tag_list(tags)
        if not listed:
            return
        try:
            self.api.ec2_call("create_tags", Resources=[resource_id], Tags=listed)
        except AwsCallError as exc:
            if owned or exc.code not in _TAG_REFUSED:
                raise
            self.log.warning(
                "create_stemcell: could not tag %s (%s); it belongs to its publisher", resource_id, exc.code
            )

    # -- delete ------------------------------------------------------------------------------------------------------
    def delete(self, stemcell_cid: str) -> None:
        if stemcell_cid.endswith(LIGHT_SUFFIX):
            self.log.info("delete_stemcell: %s is light; its AMI belongs to the publisher", stemcell_cid)
            return
        image = self.describe_image(stemcell_cid)
        if image is None:
            self.log.info("delete_stemcell: AMI %s does not exist (already deleted)", stemcell_cid)
            return
        snapshots = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if (m.get("Ebs") or {}).get("SnapshotId")
        ]
        try:
            self.api.ec2_call("deregister_image", ImageId=stemcell_cid)
        except AwsCallError as exc:
            if exc.code not in _NOT_FOUND:
                raise
        for snapshot_id in snapshots:
            delete_snapshot(self.api, snapshot_id, self.log)
        self.log.info("delete_stemcell: deregistered %s and deleted %d snapshot(s)", stemcell_cid, len(snapshots))


class _CpiImportHost:
    """The shared import steps' view of the CPI: AwsApi calls, the CPI log, CloudError, bounded waits."""

    def __init__(self, manager: StemcellManager) -> None:
        self.m = manager
        self.bucket = str(manager.config.images_bucket)

    def say(self, message: str) -> None:
        self.m.log.info("create_stemcell: %s", message)

    def call(self, operation: str, *, service: str = "ec2", **params: Any) -> Any:
        return self.m.api.call(service, operation, **params)

    def upload(self, path: Path, key: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig

        self.say(f"uploading {path.stat().st_size >> 20} MiB to s3://{self.bucket}/{key}")
        try:
            self.m.api.s3.upload_file(
                str(path), self.bucket, key, Config=TransferConfig(multipart_chunksize=64 << 20, max_concurrency=4)
            )
        except S3UploadFailedError as exc:
            raise CloudError(
                f"create_stemcell: uploading the image to s3://{self.bucket}/{key}: {exc}", ok_to_retry=True
            ) from None

    def delete_object(self, key: str) -> None:
        self.m.api.call("s3", "delete_object", Bucket=self.bucket, Key=key)

    def wait_task(self, task_id: str, describe: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        return wait_for(
            describe,
            lambda d: str(d.get("Status", "")),
            want={"completed"},
            failed=TASK_FAILED,
            reason=lambda d: str(d.get("StatusMessage", "")),
            what=f"import task {task_id}",
            timeout=self.m.config.import_timeout,
            interval=self.m.config.poll_interval,
            log=self.m.log,
        )

    def fail(self, message: str) -> Exception:
        return CloudError(f"create_stemcell: {message}")

    def remove_snapshot(self, snapshot_id: str) -> None:
        delete_snapshot(self.m.api, snapshot_id, self.m.log)

    def remove_image(self, image_id: str, snapshot_ids: list[str]) -> None:  # pragma: no cover - ImportImage only
        self.m.delete(image_id)


class _ExtractRootImage(Step):
    """The raw disk inside the director's ``image`` file (a gzipped tar), or the file itself when it is a disk:
    ``state["source"]``. Temporary: the extracted file never outlives the run."""

    name = "extract_root_image"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        image: Path = state["image"]
        with open(image, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] == b"\x1f\x8b":
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
        state["source"] = root
        state["root_bytes"] = Path(root).stat().st_size

    def cleanup(self, state: dict[str, Any]) -> None:
        if "tmpdir" in state:
            remove_tree(state["tmpdir"])


class _TagSnapshot(Step):
    """The imported snapshot gets the director's tags and a Name (nothing to undo: the import's cleanup deletes
    the snapshot)."""

    name = "tag_snapshot"

    def __init__(self, manager: StemcellManager, props: Mapping[str, Any]) -> None:
        self.m = manager
        self.props = props

    def run(self, state: dict[str, Any]) -> None:
        listed = tagging.tag_list({**state["tags"], "Name": f"stemcell {self.props.get('name', '')}"})
        self.m.api.ec2_call("create_tags", Resources=[state["snapshot_id"]], Tags=listed)


class _RegisterImage(Step):
    """RegisterImage from the imported snapshot (HVM, ENA, the MF's architecture and root device), then wait until
    available; cleanup deregisters it."""

    name = "register_image"

    def __init__(self, manager: StemcellManager, props: Mapping[str, Any]) -> None:
        self.m = manager
        self.props = props

    def run(self, state: dict[str, Any]) -> None:
        props = self.props
        root_device = str(props.get("root_device_name") or "/dev/xvda")
        disk_gib = max(1, -(-int(props.get("disk") or 0) // 1024), -(-int(state["root_bytes"]) // (1 << 30)))
        params: dict[str, Any] = {
            "Name": ami_name(props),
            "Description": f"{props.get('name', 'stemcell')} {props.get('version', '')}".strip()[:255],
            "Architecture": architecture(props),
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
        if props.get("boot_mode"):
            params["BootMode"] = props["boot_mode"]
        specs = tagging.tag_specifications(["image"], state["tags"])
        if specs:
            params["TagSpecifications"] = specs
        image_id = self.m.api.ec2_call("register_image", **params)["ImageId"]
        state["ami_id"] = image_id
        self.m.wait_available(image_id)
        self.m.log.info("create_stemcell: registered %s from snapshot %s", image_id, state["snapshot_id"])

    def cleanup(self, state: dict[str, Any]) -> None:
        if "ami_id" in state:
            try:
                self.m.api.ec2_call("deregister_image", ImageId=state["ami_id"])
            except AwsCallError as exc:
                if exc.code != "InvalidAMIID.NotFound":
                    raise


def delete_snapshot(api: AwsApi, snapshot_id: str, log: logging.Logger) -> None:
    """Delete ``snapshot_id``; a missing snapshot is not an error."""
    try:
        api.ec2_call("delete_snapshot", SnapshotId=snapshot_id)
    except AwsCallError as exc:
        if exc.code not in ("InvalidSnapshot.NotFound", "InvalidSnapshotID.Malformed"):
            raise
        log.info("snapshot %s does not exist (already deleted)", snapshot_id)


def architecture(props: Mapping[str, Any]) -> str:
    return _ARCH[str(props.get("architecture", "x86_64"))]


def ami_name(props: Mapping[str, Any]) -> str:
    """A unique AMI name from the MF's name and version, in the characters AWS accepts (3-128)."""
    base = f"{props.get('name', 'stemcell')} {props.get('version', '')}".strip()
    cleaned = re.sub(r"[^A-Za-z0-9()\[\]./\-'@_ ]", "-", base)
    return f"{cleaned[:110]} {uuid.uuid4().hex[:12]}"


def make_tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
