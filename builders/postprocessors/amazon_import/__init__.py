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

The upload and the import task are the steps of :mod:`cpi.providers.aws.import_steps` (the same implementation
as the CPI's heavy-stemcell import); rename, publish (tags, description, launch permissions) and the region copies
are this module's steps; all run through :class:`stemforge_base.steps.StepRunner`. Beyond Packer, a failure or an
interrupt at any point removes what was made (each step's cleanup, in reverse): the copies are removed, the import
task is cancelled, every AMI (imported, renamed) is deregistered and its snapshots deleted, and the uploaded
object is deleted (kept only with ``skip_clean``). ``-on-error=abort`` leaves everything and says what.

The output is an amazon artifact (``AmazonArtifact``: id ``region:ami,...``, ``state["amis"]``), which the
``stemcell`` post-processor turns into a light AWS stemcell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.builder_types import _sdk_options as sdk
from builders.builder_types.amazon_ebs import AmazonArtifact, multi_region_id
from builders.builder_types.amazon_ebs.config import ACCESS_OPTIONS, known_regions, polling_config, valid_kms_key
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Ec2Error, image_snapshots
from builders.builder_types.amazon_ebs.regions import AmiCopies, CopyTarget, RegionsFailed, run_in_regions, uncancelled
from builders.builder_types.amazon_ebs.template_data import render_text
from builders.core import Artifact, BuildError, ConfigError, PostProcessor
from builders.postprocessors import Progress, human_size, validated_options
from builders.registry import closed_object
from cpi.providers.aws.import_steps import TASK_FAILED, ImportTask, UploadImage
from stemforge_base.steps import Cancelled, FunctionStep, Step, StepRunner

LOG = logging.getLogger("stemforge.builders.amazon_import")
BUILDER_ID: Final = "packer.post-processor.amazon-import"
FORMATS: Final = ("ova", "raw", "vmdk", "vhd", "vhdx")


class AmazonImportPostProcessor(PostProcessor):
    """Import the build's disk image as an AMI (see the module docstring)."""

    type_name: ClassVar[str] = "amazon-import"
    render_at_runtime: ClassVar[frozenset[str]] = frozenset({"s3_key_name"})
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            **ACCESS_OPTIONS,
            "custom_endpoint_s3": sdk.STR,
            "s3_bucket_name": sdk.STR,
            "s3_key_name": sdk.STR,
            "s3_encryption": sdk.STR,
            "s3_encryption_key": sdk.STR,
            "skip_clean": sdk.BOOL,
            "tags": sdk.STRMAP,
            "ami_name": sdk.STR,
            "ami_description": sdk.STR,
            "ami_users": sdk.STRLIST,
            "ami_groups": sdk.STRLIST,
            "ami_org_arns": sdk.STRLIST,
            "ami_ou_arns": sdk.STRLIST,
            "ami_encrypt": sdk.BOOL,
            "ami_kms_key": sdk.STR,
            "imds_support": sdk.STR,
            "license_type": sdk.STR,
            "role_name": sdk.STR,
            "format": sdk.STR,
            "architecture": sdk.STR,
            "boot_mode": sdk.STR,
            "platform": sdk.STR,
            "ami_regions": sdk.STRLIST,
            "ami_copy_parallelism": {"type": "integer", "minimum": 1},
        })

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
        amis = run.run()
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
    """One import: the host of the shared import steps and this post-processor's own steps; every step records
    what it makes in the run's state (and ``amis``/``snapshots``) so its cleanup removes exactly that."""

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
        self.amis: dict[str, str] = {}
        self.snapshots: dict[str, list[str]] = {}
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
        state: dict[str, Any] = {"source": source}
        steps: list[Step] = [
            UploadImage(self, self.key, keep=bool(self.options.get("skip_clean"))),
            ImportTask(self, "image", lambda _state: self.import_params()),
            FunctionStep("rename_image", self.rename, self.remove_renamed),
            FunctionStep("publish_image", self.publish),
            FunctionStep("copy_to_regions", self.copy_to_regions, self.remove_copies),
        ]
        runner = StepRunner(LOG, cleanup_on_failure=self.ctx.on_error != "abort")
        try:
            runner.run(steps, state)
        except BaseException:
            if self.ctx.on_error == "abort":
                self.left_in_place(state)
            raise
        return dict(self.amis)

    # -- S3 ---------------------------------------------------------------------------------------------------
    # -- the import steps' host (cpi.providers.aws.import_steps.ImportHost) ----------------------------------
    def say(self, message: str) -> None:
        self.ui.say(message)

    def call(self, operation: str, *, service: str = "ec2", **params: Any) -> Any:
        # once the build is cancelled, a call is a cleanup's: it keeps retrying
        access = uncancelled(self.access) if self.ctx.cancel.is_set() else self.access
        try:
            return access.call(operation, service=service, **params)
        except Ec2Error as exc:
            if operation != "import_image":
                raise
            # Packer's wording for a refused ImportImage
            raise BuildError(f"Failed to start import from s3://{self.bucket}/{self.key}: {exc}") from None

    def fail(self, message: str) -> Exception:
        return BuildError(message)

    def remove_snapshot(self, snapshot_id: str) -> None:  # pragma: no cover - ImportSnapshot only
        uncancelled(self.access).call("delete_snapshot", SnapshotId=snapshot_id)

    def remove_image(self, image_id: str, snapshot_ids: list[str]) -> None:
        self.ui.say(f"Deregistering {image_id} in {self.region} and deleting its snapshots...")
        try:
            uncancelled(self.access).destroy_image(image_id, self.region, snapshot_ids)
        except Ec2Error as exc:
            self.ui.error(f"Could not remove {image_id} in {self.region}: {exc}")
        self.amis.pop(self.region, None)

    def upload(self, source: Path, key: str) -> None:
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

    def delete_object(self, key: str) -> None:
        self.ui.say(f"Deleting import source s3://{self.bucket}/{key}")
        try:
            uncancelled(self.access).call("delete_object", service="s3", Bucket=self.bucket, Key=key)
        except Ec2Error as exc:
            self.ui.error(f"Could not delete s3://{self.bucket}/{key}: {exc}")
            raise

    # -- import -----------------------------------------------------------------------------------------------
    def import_params(self) -> dict[str, Any]:
        """ImportImage's parameters (Packer's options)."""
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
        return params

    def wait_task(self, task_id: str, describe: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        self.ui.say(f"Waiting for task {task_id} to complete (may take a while)")
        last = [""]

        def check() -> Mapping[str, Any] | None:
            task = describe()
            status = str(task.get("Status") or "")
            line = f"{status} {task.get('Progress', '')}% {task.get('StatusMessage', '')}".strip()
            if line != last[0]:
                self.ui.message(f"{task_id}: {line}")
                last[0] = line
            if status == "completed":
                return task
            if status in TASK_FAILED:
                raise BuildError(f"Import task {task_id} failed with status message: {task.get('StatusMessage', '')}")
            return None

        task = self.access.wait_for(f"import task {task_id}", check)
        self.ui.say(f"Import task {task_id} complete: {task.get('ImageId', '')}")
        return task

    # -- this post-processor's steps ------------------------------------------------------------------------------
    def rename(self, state: dict[str, Any]) -> None:
        """With ``ami_name``: copy the imported AMI under that name, then destroy the intermediary (Packer's
        "rename"). ``state["image_id"]``/``["snapshot_ids"]`` then name the renamed AMI."""
        name = str(self.options.get("ami_name") or "")
        if not name:
            return
        image_id = str(state["image_id"])
        self.ui.say(f"Starting rename of AMI ({image_id})")
        params: dict[str, Any] = {"Name": name, "SourceImageId": image_id, "SourceRegion": self.region}
        if self.options.get("ami_encrypt"):
            params["Encrypted"] = True
            if self.options.get("ami_kms_key"):
                params["KmsKeyId"] = str(self.options["ami_kms_key"])
        try:
            new_id = str(self.access.call("copy_image", **params)["ImageId"])
        except Ec2Error as exc:
            raise BuildError(f"Error Copying AMI ({image_id}): {exc}") from None
        state["renamed_id"] = new_id
        self.ui.say("Waiting for AMI rename to complete (may take a while)")
        image = self.access.wait_image_available(new_id)
        self.ui.say("Destroying intermediary AMI...")
        self.access.destroy_image(image_id, self.region, list(state.get("snapshot_ids") or []))
        state["image_id"], state["snapshot_ids"] = new_id, image_snapshots(image)
        del state["renamed_id"]
        self.ui.say("AMI rename completed")

    def remove_renamed(self, state: dict[str, Any]) -> None:
        """A rename copy made but not yet taken over (the import's cleanup removes the AMI it records)."""
        if "renamed_id" in state:
            self.remove_image(str(state.pop("renamed_id")), [])

    def publish(self, state: dict[str, Any]) -> None:
        """The build region's AMI: its name, tags, description and launch permissions."""
        image_id = str(state["image_id"])
        self.amis[self.region] = image_id
        self.snapshots[self.region] = list(state.get("snapshot_ids") or [])
        self.name = str((self.access.describe_image(image_id) or {}).get("Name") or self.options.get("ami_name") or "")
        self.tag_and_share(self.region)

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

    def copy_to_regions(self, state: dict[str, Any]) -> None:
        if not self.pp.regions:
            return
        image_id = str(state["image_id"])
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

    def remove_copies(self, state: dict[str, Any]) -> None:
        if self.copies is not None:
            self.copies.remove_all(keep=(self.region,))

    # -- failure ------------------------------------------------------------------------------------------------
    def left_in_place(self, state: Mapping[str, Any]) -> None:
        """-on-error=abort: say what the failed import leaves behind."""
        made = [f"{r}:{i}" for r, i in sorted(self.amis.items())]
        for key in ("image_id", "renamed_id"):
            if state.get(key) and state[key] not in self.amis.values():
                made.append(f"{self.region}:{state[key]}")
        if state.get("import_task_id") and not state.get("import_task_done"):
            made.append(f"import task {state['import_task_id']}")
        if state.get("s3_key"):
            made.append(f"s3://{self.bucket}/{state['s3_key']}")
        if made:
            self.ui.error("Leaving in place (-on-error=abort): " + ", ".join(made))


PLUGIN = AmazonImportPostProcessor
