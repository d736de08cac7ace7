"""The heavy-image import into EC2 as Packer-style steps, one implementation for the CPI's ``create_stemcell`` and
the builders' ``amazon-import`` post-processor, both run through :class:`stemforge_base.steps.StepRunner`:

* :class:`UploadImage` puts the local disk image into S3; its cleanup deletes the object. It is ``temporary`` (the
  object is removed on success too) unless the caller keeps it (Packer's ``skip_clean``: then it is kept on
  failure too, and said so).
* :class:`ImportTask` starts the VM Import task (``ImportSnapshot`` for the CPI, which registers the AMI itself;
  ``ImportImage`` for Packer's post-processor), waits for it through the host (each keeps its own wait bounds and
  messages) and records what it made (``snapshot_id``, or ``image_id`` + ``snapshot_ids``). Its cleanup cancels a
  task that has not completed, or removes what a completed one made (the snapshot; the AMI and its snapshots).

What differs between the two callers is behind :class:`ImportHost`: how a call is made and retried (the CPI's
``AwsApi`` or the builders' ``AwsAccess``, both on :mod:`stemforge_base.aws`), how the upload shows progress, how
a wait is bounded and cancelled, where messages go, and the error types. Each step records in the run's ``state``
exactly what it created, so its cleanup removes exactly that.

VM Import is real-AWS only: moto implements neither ImportSnapshot/ImportImage nor their Describe calls, so the
tests drive those with botocore's Stubber answering the recorded response shapes (the S3 upload goes to moto).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from stemforge_base.steps import Step

#: Task states after which the task will never complete (DescribeImportSnapshotTasks / DescribeImportImageTasks).
TASK_FAILED = frozenset({"deleting", "deleted", "error"})
CANCEL_REASON = "stemforge import failed or was interrupted"


class ImportHost(Protocol):
    """What the import steps need from the CPI or the post-processor."""

    bucket: str

    def say(self, message: str) -> None:
        """Report progress (the CPI's log, the build's UI)."""

    def call(self, operation: str, *, service: str = "ec2", **params: Any) -> Any:
        """One retried AWS call; failures raise an exception with the AWS error ``code``."""

    def upload(self, path: Path, key: str) -> None:
        """Upload ``path`` to ``s3://bucket/key`` (multipart; progress and cancellation are the host's)."""

    def delete_object(self, key: str) -> None:
        """Delete ``s3://bucket/key`` (also after the run was cancelled)."""

    def wait_task(self, task_id: str, describe: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        """Poll ``describe()`` (the task's detail) until its ``Status`` is ``completed`` (returned); raise when it
        reaches one of :data:`TASK_FAILED` or the wait's bound."""

    def fail(self, message: str) -> Exception:
        """The host's error type (CloudError, BuildError) for ``message``."""

    def remove_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot the import made (gone already is fine)."""

    def remove_image(self, image_id: str, snapshot_ids: list[str]) -> None:
        """Deregister an AMI the import made and delete its snapshots (gone already is fine)."""


class UploadImage(Step):
    """``state["source"]`` → ``s3://<bucket>/<key>``; records ``state["s3_key"]`` before the first byte."""

    name = "upload_image"

    def __init__(self, host: ImportHost, key: str, *, keep: bool = False) -> None:
        self.host = host
        self.key = key
        self.keep = keep
        self.temporary = not keep

    def run(self, state: dict[str, Any]) -> None:
        state["s3_key"] = self.key  # from the first byte on, the object (or a multipart upload) may exist
        self.host.upload(Path(state["source"]), self.key)

    def cleanup(self, state: dict[str, Any]) -> None:
        key = state.get("s3_key")
        if not key:
            return
        if self.keep:
            self.host.say(f"Keeping s3://{self.host.bucket}/{key} (skip_clean)")
            return
        self.host.delete_object(key)
        state.pop("s3_key", None)


class ImportTask(Step):
    """Start the import of ``s3://<bucket>/<state["s3_key"]>`` and wait for it.

    ``kind`` is ``"snapshot"`` (ImportSnapshot: records ``state["snapshot_id"]``) or ``"image"`` (ImportImage:
    records ``state["image_id"]`` and ``state["snapshot_ids"]``). ``params(state)`` gives the start call's
    parameters."""

    def __init__(self, host: ImportHost, kind: str, params: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        if kind not in ("snapshot", "image"):
            raise ValueError(f"import kind must be 'snapshot' or 'image', not {kind!r}")
        self.host = host
        self.kind = kind
        self.params = params
        self.name = f"import_{kind}"

    def run(self, state: dict[str, Any]) -> None:
        answer = self.host.call(f"import_{self.kind}", **self.params(state))
        task_id = str(answer["ImportTaskId"])
        state["import_task_id"] = task_id
        self.host.say(f"Started import of s3://{self.host.bucket}/{state['s3_key']}, task id {task_id}")
        task = self.host.wait_task(task_id, lambda: self.describe(task_id))
        state["import_task_done"] = True
        if self.kind == "snapshot":
            snapshot_id = task.get("SnapshotId")
            if not snapshot_id:
                raise self.host.fail(f"import task {task_id} completed without a snapshot id")
            state["snapshot_id"] = str(snapshot_id)
        else:
            state["image_id"] = str(task["ImageId"])
            state["snapshot_ids"] = [
                str(d["SnapshotId"]) for d in task.get("SnapshotDetails") or [] if d.get("SnapshotId")
            ]

    def describe(self, task_id: str) -> dict[str, Any]:
        """The task's detail: a snapshot task's ``SnapshotTaskDetail``, an image task itself."""
        if self.kind == "snapshot":
            tasks = self.host.call("describe_import_snapshot_tasks", ImportTaskIds=[task_id])
            found = tasks.get("ImportSnapshotTasks") or [{}]
            return dict(found[0].get("SnapshotTaskDetail") or {})
        tasks = self.host.call("describe_import_image_tasks", ImportTaskIds=[task_id])
        return dict((tasks.get("ImportImageTasks") or [{}])[0])

    def cleanup(self, state: dict[str, Any]) -> None:
        task_id = state.get("import_task_id")
        if not task_id:
            return
        if not state.get("import_task_done"):
            self.host.say(f"Cancelling import task {task_id}...")
            try:
                self.host.call("cancel_import_task", ImportTaskId=task_id, CancelReason=CANCEL_REASON)
            except Exception as exc:  # noqa: BLE001 - a finished task cannot be cancelled: nothing left to stop
                self.host.say(f"import task {task_id}: not cancelled ({getattr(exc, 'code', '') or exc})")
            return
        if "snapshot_id" in state:
            self.host.remove_snapshot(state.pop("snapshot_id"))
        elif "image_id" in state:
            self.host.remove_image(state.pop("image_id"), list(state.pop("snapshot_ids", [])))
