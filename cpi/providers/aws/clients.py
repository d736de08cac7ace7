"""boto3 clients with bounded, retried calls, and bounded waits for resource states.

The session/client construction, the retry codes (:data:`RETRYABLE_CODES`), the retry loop and the poll loop are
:mod:`stemforge_base.aws`'s, the layer the amazon builders use too; this module adds the CPI's configuration, its
log lines and its error type.

Contract:

* Every client gets ``endpoint_url`` from the config (the moto server in tests), the configured connect/read
  timeouts, and botocore's own retries switched off (``total_max_attempts: 1``): :class:`AwsApi.call` is the only
  retry layer, so attempts never multiply.
* :meth:`AwsApi.call` retries throttling (``RequestLimitExceeded``, ``Throttling``, ``ThrottlingException``,
  ``SlowDown``, ...), HTTP 429/5xx and connection/read errors with exponential backoff and full jitter (tenacity),
  bounded by ``max_retries`` attempts *and* ``retry_total_seconds``. Each retry is logged with the operation, the
  error code and the delay; request parameters are never logged (user-data holds the agent's secrets).
* Failures surface as :class:`AwsCallError` (a ``CloudError``) carrying the AWS error code, with ``ok_to_retry`` set
  when the last failure was transient. Callers translate the codes that mean "not found" into the director's types.
* :func:`wait_for` polls a describe function until a state is reached, a failure state is seen or the wait times
  out (CloudError naming the resource, the state wanted and the last state seen).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cpi.errors import CloudError
from cpi.providers.aws.config import AwsConfig
from stemforge_base import aws as base
from stemforge_base.aws import RETRYABLE_CODES, api_name, error_details, is_transient

__all__ = ["RETRYABLE_CODES", "AwsApi", "AwsCallError", "wait_for"]

T = TypeVar("T")


class AwsCallError(CloudError):
    """An AWS API call failed. ``code`` is the AWS error code (``""`` for connection errors)."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None, ok_to_retry: bool = False) -> None:
        super().__init__(message, ok_to_retry=ok_to_retry)
        self.code = code
        self.status = status


class AwsApi:
    """The provider's access to EC2 and S3 (clients created lazily, once per process)."""

    def __init__(self, config: AwsConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        base.quiet_wire_logging(logging.WARNING)

    # -- clients -----------------------------------------------------------------------------------------------------
    def session(self) -> Any:
        if self._session is None:
            cfg = self.config
            if cfg.credentials_source == "static":
                self._session = base.new_session(
                    cfg.region,
                    access_key=cfg.access_key_id or "",
                    secret_key=cfg.secret_access_key or "",
                    token=cfg.session_token or "",
                )
            else:
                self._session = base.new_session(cfg.region)
        return self._session

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (``ec2``, ``s3``): endpoint from the config, bounded timeouts, no
        botocore retries."""
        client = self._clients.get(service)
        if client is None:
            endpoint = self.config.endpoint_for(service)
            client = base.new_client(
                self.session(),
                service,
                endpoint=endpoint,
                connect_timeout=self.config.connect_timeout,
                read_timeout=self.config.read_timeout,
                path_style_s3=bool(endpoint),
                user_agent_extra="stemforge-cpi",
            )
            self._clients[service] = client
        return client

    def set_client(self, service: str, client: Any) -> None:
        """Use ``client`` for ``service`` (tests: a client wrapped in botocore's Stubber)."""
        self._clients[service] = client

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def s3(self) -> Any:
        return self.client("s3")

    # -- calls -------------------------------------------------------------------------------------------------------
    def call(self, service: str, operation: str, **params: Any) -> Any:
        """``client.<operation>(**params)`` retried on transient failures (see the module docstring). Raises
        AwsCallError naming the service, the operation and the AWS error code."""
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        cfg = self.config
        method = getattr(self.client(service), operation)
        pretty = f"{service} {api_name(operation)}"

        def on_retry(attempt: int, exc: BaseException | None, delay: float) -> None:
            code, status, _ = error_details(exc)
            if code.isdigit():  # a bare HTTP error page: botocore uses the status as the code
                code = ""
            what = code or (f"HTTP {status}" if status else type(exc).__name__)
            self.log.warning(
                "%s: %s (attempt %d of %d), retrying in %.2fs", pretty, what, attempt, cfg.max_retries + 1, delay
            )

        retrying = base.retrying(
            attempts=cfg.max_retries + 1,
            within_seconds=cfg.retry_total_seconds,
            wait=base.full_jitter(cfg.retry_base_delay, cfg.retry_max_delay),
            on_retry=on_retry,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return method(**params)
        except ClientError as exc:
            code, status, message = error_details(exc)
            transient = is_transient(exc)
            tail = f" (gave up after {retrying.statistics.get('attempt_number', 1)} attempts)" if transient else ""
            raise AwsCallError(
                f"{pretty}: {code or 'error'}: {message}{tail}", code=code, status=status, ok_to_retry=transient
            ) from None
        except ParamValidationError as exc:
            raise AwsCallError(f"{pretty}: invalid request: {exc}", code="ParamValidation") from None
        except BotoCoreError as exc:
            transient = is_transient(exc)
            tail = f" (gave up after {retrying.statistics.get('attempt_number', 1)} attempts)" if transient else ""
            raise AwsCallError(f"{pretty}: {type(exc).__name__}: {exc}{tail}", ok_to_retry=transient) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def ec2_call(self, operation: str, **params: Any) -> Any:
        return self.call("ec2", operation, **params)


def wait_for(
    describe: Callable[[], T],
    state_of: Callable[[T], str],
    *,
    want: set[str] | frozenset[str],
    what: str,
    timeout: float,
    interval: float,
    log: logging.Logger,
    failed: set[str] | frozenset[str] = frozenset(),
    reason: Callable[[T], str] | None = None,
) -> T:
    """Poll ``describe()`` until ``state_of(result)`` is in ``want``; CloudError when it is in ``failed`` or after
    ``timeout`` seconds. The first poll is immediate; then the interval grows from a fifth of ``interval`` up to
    ``interval`` (AWS is slow to change state, moto is instant). ``describe`` may raise to stop the wait."""
    started = time.monotonic()
    seen: dict[str, Any] = {"state": "", "logged": started}

    def check() -> tuple[T] | None:
        result = describe()
        state = state_of(result)
        if state in want:
            return (result,)
        if state in failed:
            detail = reason(result) if reason else ""
            raise CloudError(
                f"{what}: reached state '{state}' instead of {_states(want)}{': ' + detail if detail else ''}"
            )
        now = time.monotonic()
        if state != seen["state"] or now - float(seen["logged"]) > 30:
            log.info("%s: %s, waiting for %s (%.0fs)", what, state or "unknown", _states(want), now - started)
            seen.update(state=state, logged=now)
        return None

    try:
        done = base.poll(check, interval=interval, first_interval=max(0.05, interval / 5), growth=1.5, timeout=timeout)
    except base.PollTimeout:
        raise CloudError(
            f"{what}: still '{seen['state']}' after {timeout:g}s waiting for {_states(want)}", ok_to_retry=True
        ) from None
    return done[0]


def _states(states: set[str] | frozenset[str]) -> str:
    return " or ".join(f"'{s}'" for s in sorted(states))
