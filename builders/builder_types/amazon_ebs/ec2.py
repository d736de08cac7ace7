"""EC2 access for the amazon builders and post-processors: clients per region, every call bounded and retried on
throttling, cancellable polling, and the few AMI operations everything shares.

Contract:

* :class:`AwsAccess` holds Packer's access options (``region``, ``access_key``/``secret_key``/``token`` or
  ``profile``, ``custom_endpoint_ec2``, ``insecure_skip_tls_verify``, ``max_retries``, ``aws_polling``) and
  hands out one client per (service, region), created once under a lock (botocore clients are thread-safe to use,
  sessions are not to create). botocore's own retries are off: :meth:`AwsAccess.call` retries with tenacity
  (exponential backoff + jitter) on throttling (``RequestLimitExceeded``, ``Throttling``...), 5xx answers and
  connection errors, at most ``max_retries`` + 1 attempts, and stops waiting when the build is cancelled.
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

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from builders.core import BuildError
from stemforge.steps import Cancelled

T = TypeVar("T")
LOG = logging.getLogger("stemforge.builders.amazon")

#: Error codes worth retrying: throttling and the service's own transient failures.
RETRYABLE_CODES: Final = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
_SESSION_LOCK: Final = threading.Lock()


class Ec2Error(BuildError):
    """An EC2/S3 call failed (after its retries); the message names the operation, the region and the reason.
    ``code`` is the AWS error code when there is one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        return int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return 0


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection-level failures (never a client error such as a bad parameter)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ReadTimeoutError

    if isinstance(exc, BotoConnectionError | HTTPClientError | ReadTimeoutError):
        return True
    return error_code(exc) in RETRYABLE_CODES or _status(exc) >= 500


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
                import boto3

                for name in ("botocore", "boto3", "urllib3", "s3transfer"):
                    # wire-level debug output carries signed headers; never let it reach a debug log
                    logger = logging.getLogger(name)
                    if logger.level == logging.NOTSET or logger.level < logging.INFO:
                        logger.setLevel(logging.INFO)
                kwargs: dict[str, Any] = {"region_name": self.region}
                if self.access_key or self.secret_key:
                    kwargs.update(
                        aws_access_key_id=self.access_key,
                        aws_secret_access_key=self.secret_key,
                        aws_session_token=self.token or None,
                    )
                elif self.profile:
                    kwargs["profile_name"] = self.profile
                if self.shared_credentials_file:
                    import os

                    os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", self.shared_credentials_file)
                try:
                    self._session = boto3.session.Session(**kwargs)
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
        from botocore.config import Config

        endpoint = {"ec2": self.custom_endpoint_ec2, "s3": self.custom_endpoint_s3}
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=10,
            read_timeout=self.call_timeout,
            max_pool_connections=self.max_pool_connections,
            s3={"addressing_style": "path"} if service == "s3" else None,
        )
        with _SESSION_LOCK:
            client = self._clients.get(key)
            if client is None:
                client = session.client(
                    service,
                    region_name=region,
                    endpoint_url=endpoint.get(service) or None,
                    verify=not self.insecure_skip_tls_verify,
                    config=config,
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

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            text = (
                f"{region}: {operation} attempt {state.attempt_number} failed "
                f"({error_code(exc) if exc else ''} {type(exc).__name__}); retrying in {delay:.1f}s"
            )
            LOG.info("%s", self.redact(text))
            if self.on_retry is not None:
                self.on_retry(self.redact(text))

        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.max_retries + 1)),
            wait=wait_exponential(multiplier=0.2, max=15) + wait_random(0, 0.2),
            retry=retry_if_exception(lambda e: is_retryable(e) and not self.cancel.is_set()),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
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
        for _ in range(max(1, self.polling.max_attempts)):
            if stop.is_set():
                raise Cancelled(f"cancelled while waiting for {what}")
            value = check()
            if value is not None:
                return value
            if stop.wait(self.polling.delay_seconds):
                raise Cancelled(f"cancelled while waiting for {what}")
        where = f" in {region}" if region else ""
        raise Ec2Error(
            f"timeout waiting for {what}{where} after {self.polling.max_attempts} checks "
            f"{self.polling.delay_seconds:g}s apart"
        )

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
