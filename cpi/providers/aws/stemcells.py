"""Stemcells as AMIs.

* Light (``cloud_properties.ami: {region: ami-id}``, empty image): the AMI of this CPI's region, checked to exist,
  answered as ``"<ami-id> light"`` (with ``encrypted: true``, copied encrypted and answered as the copy's id, like
  bosh-aws-cpi). A region missing from the map is a CloudError naming the region and the regions present.
* Heavy (an ``image`` holding ``root.img``, raw): upload to ``images_bucket`` → ``ImportSnapshot`` → wait for the
  import task → ``RegisterImage`` (HVM, ENA, the MF's architecture and root device) → wait until available. Each
  step's cleanup removes exactly what it made (the S3 object always: it is temporary; on failure the import task is
  cancelled, the snapshot deleted, the AMI deregistered).
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cpi.errors import CloudError
from cpi.providers.aws import tags as tagging
from cpi.providers.aws.clients import AwsApi, AwsCallError, wait_for
from cpi.providers.aws.config import STEMCELL_CLOUD_PROPERTIES_SCHEMA, AwsConfig, validate
from stemforge.steps import StepRunner

LIGHT_SUFFIX = " light"
_NOT_FOUND = ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable")
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "arm64", "aarch64": "arm64", "i386": "i386"}
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
        from cpi.providers.aws import import_steps

        state: dict[str, Any] = {"image": image, "tags": dict(tags)}
        runner = StepRunner(self.log)
        runner.run(import_steps.steps(self, props), state)
        return str(state["image_id"])

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
