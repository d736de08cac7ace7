"""EC2 access for the amazon builders and post-processors: clients per region, every call bounded and retried on
throttling, cancellable polling, and the few AMI operations everything shares.

Contract:

* :class:`AwsAccess` holds Packer's access options (``region``, ``access_key``/``secret_key``/``token`` or
  ``profile``, ``custom_endpoint_ec2``, ``insecure_skip_tls_verify``, ``max_retries``, ``aws_polling``) and
  hands out one client per (service, region), created once under a lock (botocore clients are thread-safe to use,
  sessions are not to create), through :mod:`stemforge_base.aws` (the session/retry/poll layer the CPI's AWS
  provider uses too). botocore's own retries are off: :meth:`AwsAccess.call` retries with tenacity
  (exponential backoff + jitter) on the shared :data:`RETRYABLE_CODES` (``RequestLimitExceeded``, ``Throttling``...),
  429/5xx answers and connection errors, at most ``max_retries`` + 1 attempts, and stops waiting when the build is
  cancelled.
* Secrets (the secret key and the session token, and the access key id as Packer treats it) never appear in an
  error this module raises (:meth:`AwsAccess.redact`) and botocore's wire-level debug logging is kept off.
* :meth:`AwsAccess.wait_for` polls until a condition holds (first check immediately, then every
  ``aws_polling.delay_seconds``), checking the cancel event in between; :class:`Ec2Error` names what and where.
* :func:`image_snapshots` / :meth:`AwsAccess.destroy_image` (deregister, then delete the image's snapshots: an
  EBS snapshot in use by an AMI cannot be deleted before) and :meth:`AwsAccess.find_images`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from builders.core import BuildError
from stemforge_base import aws as base
from stemforge_base.aws import RETRYABLE_CODES, error_code
from stemforge_base.steps import Cancelled

__all__ = ["RETRYABLE_CODES", "AwsAccess", "Ec2Error", "Polling", "error_code", "image_snapshots"]

T = TypeVar("T")
LOG = logging.getLogger("stemforge.builders.amazon")
_SESSION_LOCK: Final = threading.Lock()


class Ec2Error(BuildError):
    """An EC2/S3 call failed (after its retries); the message names the operation, the region and the reason.
    ``code`` is the AWS error code when there is one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Polling:
    """Packer's ``aws_polling``: seconds between checks and how many checks before giving up."""

    delay_seconds: float = 5.0
    max_attempts: int = 720


@dataclass
class AwsAccess:
    """Credentials, endpoint and retry policy for one build; clients per (service, region)."""

    region: str
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    profile: str = ""
    shared_credentials_file: str = ""
    custom_endpoint_ec2: str = ""
    custom_endpoint_s3: str = ""
    insecure_skip_tls_verify: bool = False
    max_retries: int = 8
    polling: Polling = field(default_factory=Polling)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    #: Seconds a single HTTP call may take before it is abandoned (and retried).
    call_timeout: float = 60.0
    #: Connections per client (one per region's worker, plus polling).
    max_pool_connections: int = 20
    on_retry: Callable[[str], None] | None = field(default=None, repr=False)
    _session: Any = field(default=None, init=False, repr=False)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, repr=False)

    # -- clients ------------------------------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        return [s for s in (self.secret_key, self.token, self.access_key) if s and len(s) >= 4]

    def redact(self, text: str) -> str:
        """``text`` with every configured secret replaced by ``<sensitive>``."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "<sensitive>")
        return text

    def session(self) -> Any:
        with _SESSION_LOCK:
            if self._session is None:
                # wire-level debug output carries signed headers; never let it reach a debug log
                base.quiet_wire_logging(logging.INFO, force=False)
                if self.shared_credentials_file:
                    import os

                    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", self.shared_credentials_file)
                try:
                    self._session = base.new_session(
                        self.region,
                        access_key=self.access_key,
                        secret_key=self.secret_key,
                        token=self.token,
                        profile=self.profile,
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. ProfileNotFound
                    raise Ec2Error(f"cannot set up AWS credentials: {self.redact(str(exc))}") from None
            return self._session

    def client(self, service: str, region: str | None = None) -> Any:
        """The (cached) client of ``service`` in ``region`` (default: the build region)."""
        region = region or self.region
        key = (service, region)
        client = self._clients.get(key)
        if client is not None:
            return client
        session = self.session()
        endpoint = {"ec2": self.custom_endpoint_ec2, "s3": self.custom_endpoint_s3}
        with _SESSION_LOCK:
            client = self._clients.get(key)
            if client is None:
                client = base.new_client(
                    session,
                    service,
                    region=region,
                    endpoint=endpoint.get(service) or None,
                    connect_timeout=10,
                    read_timeout=self.call_timeout,
                    verify=not self.insecure_skip_tls_verify,
                    max_pool_connections=self.max_pool_connections,
                )
                self._clients[key] = client
        return client

    def use_client(self, service: str, region: str, client: Any) -> None:
        """Use ``client`` for ``service`` in ``region`` (tests route calls moto lacks to botocore's Stubber)."""
        with _SESSION_LOCK:
            self._clients[(service, region)] = client

    # -- calls --------------------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled("cancelled while waiting to retry an AWS call")

    def call(self, operation: str, region: str | None = None, *, service: str = "ec2", **params: Any) -> Any:
        """``client.<operation>(**params)`` in ``region`` with tenacity retries on throttling/5xx/connection
        errors; Ec2Error (redacted) on failure."""
        region = region or self.region
        client = self.client(service, region)
        method = getattr(client, operation)

        def on_retry(attempt: int, exc: BaseException | None, delay: float) -> None:
            text = (
                f"{region}: {operation} attempt {attempt} failed "
                f"({error_code(exc)} {type(exc).__name__}); retrying in {delay:.1f}s"
            )
            LOG.info("%s", self.redact(text))
            if self.on_retry is not None:
                self.on_retry(self.redact(text))

        retrying = base.retrying(
            attempts=self.max_retries + 1,
            wait=base.exponential_plus_jitter(0.2, 15, 0.2),
            on_retry=on_retry,
            sleep=self._sleep,
            keep_going=lambda: not self.cancel.is_set(),
        )
        try:
            for attempt in retrying:
                with attempt:
                    return method(**params)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - translated, secrets removed
            code = error_code(exc)
            raise Ec2Error(self.redact(f"{operation} in {region} failed: {exc}"), code) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_for(
        self,
        what: str,
        check: Callable[[], T | None],
        *,
        region: str | None = None,
        cancel: threading.Event | None = None,
    ) -> T:
        """Call ``check`` until it returns a value other than None (returned); between checks sleep
        ``polling.delay_seconds``; Cancelled when ``cancel`` (default the build's) is set; Ec2Error after
        ``polling.max_attempts`` checks."""
        stop = cancel or self.cancel

        def cancelled() -> None:
            if stop.is_set():
                raise Cancelled(f"cancelled while waiting for {what}")

        def pause(seconds: float) -> None:
            if stop.wait(seconds):
                raise Cancelled(f"cancelled while waiting for {what}")

        try:
            return base.poll(
                check,
                interval=self.polling.delay_seconds,
                max_checks=max(1, self.polling.max_attempts),
                sleep=pause,
                before_check=cancelled,
            )
        except base.PollTimeout:
            where = f" in {region}" if region else ""
            raise Ec2Error(
                f"timeout waiting for {what}{where} after {self.polling.max_attempts} checks "
                f"{self.polling.delay_seconds:g}s apart"
            ) from None

    # -- images -------------------------------------------------------------------------------------------
    def describe_image(self, image_id: str, region: str | None = None) -> dict[str, Any] | None:
        try:
            images = self.call("describe_images", region, ImageIds=[image_id]).get("Images") or []
        except Ec2Error as exc:
            if exc.code in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                return None
            raise
        return images[0] if images else None

    def wait_image_available(
        self, image_id: str, region: str | None = None, cancel: threading.Event | None = None
    ) -> dict[str, Any]:
        """Poll until the AMI is ``available``; Ec2Error if it becomes ``failed``/``error``/``deregistered``."""
        region = region or self.region

        def check() -> dict[str, Any] | None:
            image = self.describe_image(image_id, region)
            state = (image or {}).get("State", "")
            if state == "available":
                return image
            if state in ("failed", "error", "deregistered", "invalid"):
                reason = ((image or {}).get("StateReason") or {}).get("Message") or state
                raise Ec2Error(f"AMI {image_id} in {region} is {state}: {reason}")
            return None

        return self.wait_for(f"AMI {image_id} to become available", check, region=region, cancel=cancel)

    def find_images(self, name: str, region: str | None = None) -> list[dict[str, Any]]:
        """This account's AMIs named ``name`` in ``region``."""
        answer = self.call("describe_images", region, Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
        return [i for i in answer.get("Images") or [] if i.get("Name") == name]

    def destroy_image(self, image_id: str, region: str | None = None, snapshots: list[str] | None = None) -> list[str]:
        """Deregister ``image_id`` and delete its EBS snapshots (those of its block device mappings, plus
        ``snapshots``); an image or snapshot already gone is fine. Returns the snapshot ids deleted."""
        region = region or self.region
        image = self.describe_image(image_id, region)
        snaps = list(dict.fromkeys([*(image_snapshots(image) if image else []), *(snapshots or [])]))
        if image is not None:
            try:
                self.call("deregister_image", region, ImageId=image_id)
            except Ec2Error as exc:
                if exc.code not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                    raise
        deleted = []
        for snap in snaps:
            try:
                self.call("delete_snapshot", region, SnapshotId=snap)
                deleted.append(snap)
            except Ec2Error as exc:
                if exc.code != "InvalidSnapshot.NotFound":
                    raise
        return deleted


def image_snapshots(image: Mapping[str, Any]) -> list[str]:
    """The EBS snapshot ids of an image's block device mappings."""
    out = []
    for mapping in image.get("BlockDeviceMappings") or []:
        snap = (mapping.get("Ebs") or {}).get("SnapshotId")
        if snap:
            out.append(str(snap))
    return out


def elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f}s"
