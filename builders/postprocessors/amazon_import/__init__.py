"""``amazon-import``: Packer's post-processor that turns a local disk image into an AMI.

Flow (packer-plugin-amazon's ``post-processor/import``): find the artifact file ending ``.<format>`` -> upload it
to ``s3://s3_bucket_name/s3_key_name`` (multipart, progress, cancellable) -> ``ImportImage`` -> poll
``DescribeImportImageTasks`` until the task completes -> with ``ami_name``, "rename" by copying the imported AMI
under that name and destroy the intermediary -> ``tags`` on the AMI and its snapshots -> description and launch
permissions -> (stemforge) copy to ``ami_regions`` in parallel and tag there -> delete the S3 object unless
``skip_clean``.

Options (Packer's names): the access options of ``amazon-ebs`` (``region``, ``access_key``, ``secret_key``,
``token``, ``profile``, ``custom_endpoint_ec2``, ...), ``s3_bucket_name`` (required), ``s3_key_name`` (default
``packer-import-{{timestamp}}.<format>``, rendered when the post-processor runs), ``s3_encryption``
(``AES256``/``aws:kms``), ``s3_encryption_key``, ``skip_clean``, ``tags``, ``ami_name``, ``ami_description``,
``ami_users``, ``ami_groups``, ``ami_org_arns``, ``ami_ou_arns``, ``ami_encrypt``, ``ami_kms_key``,
``imds_support``, ``license_type``, ``role_name``, ``format`` (``ova`` default, ``raw``, ``vmdk``, ``vhd``,
``vhdx``), ``architecture``, ``boot_mode``, ``platform``. stemforge adds ``ami_regions`` /
``ami_copy_parallelism`` (copies with the builder's all-or-nothing engine) and ``custom_endpoint_s3`` (the S3
endpoint; ``custom_endpoint_ec2`` is only for EC2, as in Packer).

Beyond Packer, a failure or an interrupt at any point removes what was made: the import task is cancelled, every
AMI (imported, renamed, copied) is deregistered and its snapshots deleted, and the uploaded object is deleted
(kept only with ``skip_clean``).

The output is an amazon artifact (``AmazonArtifact``: id ``region:ami,...``, ``state["amis"]``), which the
``stemcell`` post-processor turns into a light AWS stemcell.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.builder_types.amazon_ebs import AmazonArtifact, multi_region_id
from builders.builder_types.amazon_ebs.config import known_regions, polling_config, valid_kms_key
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Ec2Error, image_snapshots
from builders.builder_types.amazon_ebs.regions import AmiCopies, CopyTarget, RegionsFailed, run_in_regions, uncancelled
from builders.builder_types.amazon_ebs.steps import render_text
from builders.core import Artifact, BuildError, ConfigError, PostProcessor
from builders.postprocessors import Progress, human_size, validated_options
from stemforge.steps import Cancelled

BUILDER_ID: Final = "packer.post-processor.amazon-import"
FORMATS: Final = ("ova", "raw", "vmdk", "vhd", "vhdx")
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_STRLIST = {"type": "array", "items": {"type": "string"}}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}


class AmazonImportPostProcessor(PostProcessor):
    """Import the build's disk image as an AMI (see the module docstring)."""

    type_name: ClassVar[str] = "amazon-import"
    render_at_runtime: ClassVar[frozenset[str]] = frozenset({"s3_key_name"})
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "access_key": _STR,
            "secret_key": _STR,
            "token": _STR,
            "region": _STR,
            "profile": _STR,
            "shared_credentials_file": _STR,
            "custom_endpoint_ec2": _STR,
            "custom_endpoint_s3": _STR,
            "insecure_skip_tls_verify": _BOOL,
            "skip_region_validation": _BOOL,
            "skip_credential_validation": _BOOL,
            "skip_metadata_api_check": _BOOL,
            "max_retries": {"type": "integer"},
            "aws_polling": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"delay_seconds": {"type": "integer"}, "max_attempts": {"type": "integer"}},
            },
            "s3_bucket_name": _STR,
            "s3_key_name": _STR,
            "s3_encryption": _STR,
            "s3_encryption_key": _STR,
            "skip_clean": _BOOL,
            "tags": _STRMAP,
            "ami_name": _STR,
            "ami_description": _STR,
            "ami_users": _STRLIST,
            "ami_groups": _STRLIST,
            "ami_org_arns": _STRLIST,
            "ami_ou_arns": _STRLIST,
            "ami_encrypt": _BOOL,
            "ami_kms_key": _STR,
            "imds_support": _STR,
            "license_type": _STR,
            "role_name": _STR,
            "format": _STR,
            "architecture": _STR,
            "boot_mode": _STR,
            "platform": _STR,
            "ami_regions": _STRLIST,
            "ami_copy_parallelism": {"type": "integer", "minimum": 1},
        },
    }

    def prepare(self) -> list[str]:
        options = validated_options(self)
        errors: list[str] = []
        fmt = str(options.get("format") or "ova")
        architecture = str(options.get("architecture") or "x86_64")
        boot_mode = str(options.get("boot_mode") or ("uefi" if architecture == "arm64" else "legacy-bios"))
        platform = str(options.get("platform") or "")
        region = str(options.get("region") or "")
        if not options.get("s3_bucket_name"):
            errors.append("s3_bucket_name must be set")
        if not region:
            errors.append("region is required")
        if fmt not in FORMATS:
            errors.append(f"invalid format '{fmt}'. Only 'ova', 'raw', 'vhd', 'vhdx', or 'vmdk' are allowed")
        if platform not in ("", "windows", "linux"):
            errors.append(f"invalid platform '{platform}'. Only 'linux' and 'windows' are allowed")
        if not platform and boot_mode == "uefi":
            errors.append(f"invalid platform '{platform}', 'platform' must be set for 'uefi' image imports")
        encryption = str(options.get("s3_encryption") or "")
        if encryption not in ("", "AES256", "aws:kms"):
            errors.append(f"invalid s3 encryption format '{encryption}'. Only 'AES256' and 'aws:kms' are allowed")
        if boot_mode not in ("legacy-bios", "uefi"):
            errors.append(f"invalid boot mode '{boot_mode}'. Only 'uefi' and 'legacy-bios' are allowed")
        if architecture == "arm64" and boot_mode != "uefi":
            errors.append(f"invalid boot mode '{boot_mode}' for 'arm64' architecture")
        imds = str(options.get("imds_support") or "")
        if imds not in ("", "v2.0"):
            errors.append('The only valid imds_support values are "v2.0" or the empty string')
        kms = str(options.get("ami_kms_key") or "")
        if kms and not valid_kms_key(kms):
            errors.append(f'"{kms}" is not a valid KMS Key Id.')
        if bool(options.get("access_key")) != bool(options.get("secret_key")):
            errors.append("`access_key` and `secret_key` must both be either set or not set.")
        for key in ("custom_endpoint_ec2", "custom_endpoint_s3"):
            value = str(options.get(key) or "")
            if value and not value.startswith(("http://", "https://")):
                errors.append(f"{key}: {value!r} must be an http:// or https:// URL")
        regions = [str(r) for r in options.get("ami_regions") or []]
        if not options.get("skip_region_validation"):
            known = known_regions()
            for where, name in [("region", region)] + [(f"ami_regions[{i}]", r) for i, r in enumerate(regions)]:
                if name and name not in known:
                    errors.append(f"error validating region: {where}: Invalid region: {name}")
        if errors:
            where = f"{self.ctx.build_name}: post-processor {self.type_name}"
            raise ConfigError("\n".join(f"{where}: {e}" for e in errors))
        polling = polling_config(options.get("aws_polling") or {}, errors)
        if errors:
            raise ConfigError("\n".join(f"{self.ctx.build_name}: post-processor {self.type_name}: {e}" for e in errors))
        self.access = AwsAccess(
            region=region,
            access_key=str(options.get("access_key") or ""),
            secret_key=str(options.get("secret_key") or ""),
            token=str(options.get("token") or ""),
            profile=str(options.get("profile") or ""),
            shared_credentials_file=str(options.get("shared_credentials_file") or ""),
            custom_endpoint_ec2=str(options.get("custom_endpoint_ec2") or ""),
            custom_endpoint_s3=str(options.get("custom_endpoint_s3") or ""),
            insecure_skip_tls_verify=bool(options.get("insecure_skip_tls_verify")),
            max_retries=int(options["max_retries"]) if options.get("max_retries") is not None else 8,
            polling=polling,
            cancel=self.ctx.cancel,
            on_retry=self.ctx.ui.message,
        )
        self.options = dict(options, format=fmt, architecture=architecture, boot_mode=boot_mode, platform=platform)
        self.regions = [r for r in dict.fromkeys(regions) if r != region]
        return []

    # ------------------------------------------------------------------------------------------------------ run
    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if not hasattr(self, "access"):
            self.prepare()
        run = _ImportRun(self, artifact)
        try:
            amis = run.run()
        except BaseException as exc:
            run.undo(exc)
            raise
        out = AmazonArtifact(
            BUILDER_ID,
            artifact.build_name,
            artifact.builder_type,
            [],
            multi_region_id(amis),
            {
                "amis": dict(amis),
                "regions": dict(amis),
                "snapshots": dict(run.snapshots),
                "infrastructure": "aws",
                "ami_name": run.name,
                "generated_data": dict(artifact.state.get("generated_data") or {}),
            },
        )
        out.access = self.access
        return out, False


class _ImportRun:
    """One import: records everything it makes so :meth:`undo` can remove exactly that."""

    def __init__(self, pp: AmazonImportPostProcessor, artifact: Artifact) -> None:
        self.pp = pp
        self.ctx = pp.ctx
        self.ui = pp.ctx.ui
        self.access = pp.access
        self.options = pp.options
        self.artifact = artifact
        self.region = self.access.region
        self.bucket = str(self.options["s3_bucket_name"])
        self.key = ""
        self.uploaded = False
        self.task_id = ""
        self.task_done = False
        self.amis: dict[str, str] = {}
        self.snapshots: dict[str, list[str]] = {}
        self.intermediary: tuple[str, list[str]] | None = None
        self.copies: AmiCopies | None = None
        self.name = ""

    def data(self) -> dict[str, Any]:
        return dict(self.artifact.state.get("generated_data") or {})

    def run(self) -> dict[str, str]:
        fmt = str(self.options["format"])
        source = next((Path(f) for f in self.artifact.files if str(f).endswith("." + fmt)), None)
        if source is None or not source.is_file():
            raise BuildError(f"No {fmt} image file found in artifact from builder")
        key_template = str(self.options.get("s3_key_name") or f"packer-import-{{{{timestamp}}}}.{fmt}")
        self.key = render_text(self.ctx, key_template, self.data())
        self.upload(source)
        image_id = self.import_image()
        if self.options.get("ami_name"):
            image_id = self.rename(image_id, str(self.options["ami_name"]))
        self.name = str((self.access.describe_image(image_id) or {}).get("Name") or self.options.get("ami_name") or "")
        self.tag_and_share(self.region)
        if self.pp.regions:
            self.copy_to_regions(image_id)
        if not self.options.get("skip_clean"):
            self.delete_object()
        return dict(self.amis)

    # -- S3 ---------------------------------------------------------------------------------------------------
    def upload(self, source: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        size = source.stat().st_size
        self.ui.say(f"Uploading {source} to s3://{self.bucket}/{self.key} ({human_size(size)})")
        extra: dict[str, Any] = {}
        encryption = str(self.options.get("s3_encryption") or "")
        if encryption:
            extra["ServerSideEncryption"] = encryption
            if encryption == "aws:kms" and self.options.get("s3_encryption_key"):
                extra["SSEKMSKeyId"] = str(self.options["s3_encryption_key"])
            elif self.options.get("s3_encryption_key"):
                self.ui.say(f"Ignoring s3_encryption_key because s3_encryption is set to '{encryption}'")
        progress = Progress(self.ctx, f"upload {source.name}", size)
        done = 0
        lock = threading.Lock()

        def callback(count: int) -> None:
            nonlocal done
            if self.ctx.cancel.is_set():
                raise Cancelled("cancelled while uploading the image")
            with lock:
                done += count
                progress(done)

        client = self.access.client("s3")
        self.uploaded = True  # from the first byte on, the object (or a multipart upload) may exist
        started = time.monotonic()
        try:
            client.upload_file(
                str(source),
                self.bucket,
                self.key,
                ExtraArgs=extra or None,
                Callback=callback,
                Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4),
            )
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - s3transfer wraps the cause
            cause = exc.__cause__ or exc
            if isinstance(cause, Cancelled):
                raise cause from None
            raise BuildError(self.access.redact(f"Failed to upload {source}: {exc}")) from None
        self.ui.say(
            f"Completed upload of {source} to s3://{self.bucket}/{self.key} in {time.monotonic() - started:.1f}s"
        )

    def delete_object(self) -> None:
        self.ui.say(f"Deleting import source s3://{self.bucket}/{self.key}")
        uncancelled(self.access).call("delete_object", service="s3", Bucket=self.bucket, Key=self.key)
        self.uploaded = False

    # -- import -----------------------------------------------------------------------------------------------
    def import_image(self) -> str:
        params: dict[str, Any] = {
            "DiskContainers": [
                {"Format": str(self.options["format"]), "UserBucket": {"S3Bucket": self.bucket, "S3Key": self.key}}
            ],
            "Architecture": str(self.options["architecture"]),
            "BootMode": str(self.options["boot_mode"]),
            "Encrypted": bool(self.options.get("ami_encrypt")),
        }
        if self.options.get("platform"):
            params["Platform"] = str(self.options["platform"])
        if self.options.get("ami_encrypt") and self.options.get("ami_kms_key"):
            params["KmsKeyId"] = str(self.options["ami_kms_key"])
        if self.options.get("role_name"):
            params["RoleName"] = str(self.options["role_name"])
        if self.options.get("license_type"):
            self.ui.say(f"Setting license type to '{self.options['license_type']}'")
            params["LicenseType"] = str(self.options["license_type"])
        try:
            answer = self.access.call("import_image", **params)
        except Ec2Error as exc:
            raise BuildError(f"Failed to start import from s3://{self.bucket}/{self.key}: {exc}") from None
        self.task_id = str(answer["ImportTaskId"])
        self.ui.say(f"Started import of s3://{self.bucket}/{self.key}, task id {self.task_id}")
        self.ui.say(f"Waiting for task {self.task_id} to complete (may take a while)")
        last = [""]

        def check() -> dict[str, Any] | None:
            tasks = self.access.call("describe_import_image_tasks", ImportTaskIds=[self.task_id])
            task = (tasks.get("ImportImageTasks") or [{}])[0]
            status = str(task.get("Status") or "")
            line = f"{status} {task.get('Progress', '')}% {task.get('StatusMessage', '')}".strip()
            if line != last[0]:
                self.ui.message(f"{self.task_id}: {line}")
                last[0] = line
            if status == "completed":
                return task
            if status in ("deleted", "deleting"):
                raise BuildError(
                    f"Import task {self.task_id} failed with status message: {task.get('StatusMessage', '')}"
                )
            return None

        task = self.access.wait_for(f"import task {self.task_id}", check)
        self.task_done = True
        image_id = str(task["ImageId"])
        self.amis[self.region] = image_id
        self.snapshots[self.region] = [
            str(d["SnapshotId"]) for d in task.get("SnapshotDetails") or [] if d.get("SnapshotId")
        ]
        self.ui.say(f"Import task {self.task_id} complete: {image_id}")
        return image_id

    def rename(self, image_id: str, name: str) -> str:
        self.ui.say(f"Starting rename of AMI ({image_id})")
        params: dict[str, Any] = {"Name": name, "SourceImageId": image_id, "SourceRegion": self.region}
        if self.options.get("ami_encrypt"):
            params["Encrypted"] = True
            if self.options.get("ami_kms_key"):
                params["KmsKeyId"] = str(self.options["ami_kms_key"])
        self.intermediary = (image_id, self.snapshots.pop(self.region, []))
        self.amis.pop(self.region, None)
        try:
            new_id = str(self.access.call("copy_image", **params)["ImageId"])
        except Ec2Error as exc:
            raise BuildError(f"Error Copying AMI ({image_id}): {exc}") from None
        self.amis[self.region] = new_id
        self.ui.say("Waiting for AMI rename to complete (may take a while)")
        image = self.access.wait_image_available(new_id)
        self.snapshots[self.region] = image_snapshots(image)
        self.ui.say("Destroying intermediary AMI...")
        old, snaps = self.intermediary
        self.access.destroy_image(old, self.region, snaps)
        self.intermediary = None
        self.ui.say("AMI rename completed")
        return new_id

    def tag_and_share(self, region: str) -> None:
        image_id = self.amis[region]
        tags = dict(self.options.get("tags") or {})
        if tags:
            data = {**self.data(), "BuildRegion": region}
            pairs = [
                {"Key": render_text(self.ctx, k, data), "Value": render_text(self.ctx, v, data)}
                for k, v in tags.items()
            ]
            if not self.snapshots.get(region):
                self.snapshots[region] = image_snapshots(self.access.describe_image(image_id, region) or {})
            for snap in self.snapshots.get(region) or []:
                self.ui.message(f"Tagging snapshot {snap}")
            self.ui.message(f"Tagging AMI {image_id} ({region})")
            self.access.call("create_tags", region, Resources=[image_id, *self.snapshots.get(region, [])], Tags=pairs)
        description = str(self.options.get("ami_description") or "")
        if description:
            self.access.call(
                "modify_image_attribute",
                region,
                ImageId=image_id,
                Description={"Value": render_text(self.ctx, description, self.data())},
            )
        launch = (
            [{"UserId": u} for u in self.options.get("ami_users") or []]
            + [{"Group": g} for g in self.options.get("ami_groups") or []]
            + [{"OrganizationArn": a} for a in self.options.get("ami_org_arns") or []]
            + [{"OrganizationalUnitArn": a} for a in self.options.get("ami_ou_arns") or []]
        )
        if launch:
            self.ui.message(f"Modifying launch permissions of {image_id} ({region})")
            self.access.call("modify_image_attribute", region, ImageId=image_id, LaunchPermission={"Add": launch})

    def copy_to_regions(self, image_id: str) -> None:
        encrypted = True if self.options.get("ami_encrypt") else None
        self.copies = AmiCopies(
            self.access,
            self.ui,
            image_id,
            self.region,
            self.name,
            amis=self.amis,
            snapshots=self.snapshots,
            parallel=int(self.options.get("ami_copy_parallelism") or 16),
        )
        try:
            self.copies.copy([CopyTarget(r, encrypted) for r in self.pp.regions])
            run_in_regions(
                self.access,
                self.pp.regions,
                lambda r, _a: self.tag_and_share(r),
                parallel=int(self.options.get("ami_copy_parallelism") or 16),
                what="tagging the copies",
            )
        except RegionsFailed as exc:
            raise BuildError(str(exc)) from None

    # -- failure ------------------------------------------------------------------------------------------------
    def undo(self, exc: BaseException) -> None:
        """Remove everything this import made (unless -on-error=abort, which leaves it and says where)."""
        made = [f"{r}:{i}" for r, i in sorted(self.amis.items())]
        if self.ctx.on_error == "abort":
            left = made + ([f"import task {self.task_id}"] if self.task_id and not self.task_done else [])
            left += [f"s3://{self.bucket}/{self.key}"] if self.uploaded else []
            if left:
                self.ui.error("Leaving in place (-on-error=abort): " + ", ".join(left))
            return
        access = uncancelled(self.access)
        if self.task_id and not self.task_done:
            self.ui.say(f"Cancelling import task {self.task_id}...")
            try:
                access.call(
                    "cancel_import_task",
                    ImportTaskId=self.task_id,
                    CancelReason="stemforge build failed or was interrupted",
                )
            except Ec2Error as exc2:
                self.ui.error(f"Could not cancel import task {self.task_id}: {exc2}")
        if self.copies is not None:
            self.copies.remove_all(keep=(self.region,))
        if self.intermediary is not None:
            self.amis.setdefault(f"{self.region} (intermediary)", self.intermediary[0])
        for label, image_id in sorted(self.amis.items()):
            region = label.split(" ")[0]
            snaps = self.snapshots.get(label) or (
                self.intermediary[1] if self.intermediary and image_id == self.intermediary[0] else []
            )
            self.ui.say(f"Deregistering {image_id} in {region} and deleting its snapshots...")
            try:
                access.destroy_image(image_id, region, snaps)
            except Ec2Error as exc2:
                self.ui.error(f"Could not remove {image_id} in {region}: {exc2}")
        self.amis.clear()
        if self.uploaded:
            if self.options.get("skip_clean"):
                self.ui.say(f"Keeping s3://{self.bucket}/{self.key} (skip_clean)")
            else:
                try:
                    self.delete_object()
                except Ec2Error as exc2:
                    self.ui.error(f"Could not delete s3://{self.bucket}/{self.key}: {exc2}")


PLUGIN = AmazonImportPostProcessor
