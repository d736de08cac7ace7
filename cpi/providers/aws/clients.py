"""boto3 clients with bounded, retried calls, and bounded waits for resource states.

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

T = TypeVar("T")

#: Error codes that mean "slow down" or "try again" across EC2 and S3.
TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "ServiceUnavailableException",
        "BandwidthLimitExceeded",
    }
)
#: Loggers that would print request bodies and signed headers at DEBUG (user-data is base64 there: the redactor
#: could not recognise the agent's secrets in it). They stay at WARNING whatever the CPI's log level.
_NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


class AwsCallError(CloudError):
    """An AWS API call failed. ``code`` is the AWS error code (``""`` for connection errors)."""

    def __init__(self, message: str, *, code: str = "", status: int | None = None, ok_to_retry: bool = False) -> None:
        super().__init__(message, ok_to_retry=ok_to_retry)
        self.code = code
        self.status = status


def error_code(exc: BaseException) -> tuple[str, int | None, str]:
    """``(code, http_status, message)`` of a botocore ClientError; ``("", None, str(exc))`` otherwise."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return (
            str(error.get("Code") or ""),
            status if isinstance(status, int) else None,
            str(error.get("Message") or ""),
        )
    return "", None, str(exc)


def is_transient(exc: BaseException) -> bool:
    """True for throttling, HTTP 429/5xx and connection/read errors: worth another attempt."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    from botocore.parsers import ResponseParserError

    if isinstance(exc, ClientError):
        code, status, _ = error_code(exc)
        return code in TRANSIENT_CODES or (status is not None and (status == 429 or status >= 500))
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError are ConnectionErrors;
    # a proxy or load balancer answering an HTML error page shows up as a ResponseParserError
    return isinstance(exc, ConnectionError | HTTPClientError | ResponseParserError)


class AwsApi:
    """The provider's access to EC2 and S3 (clients created lazily, once per process)."""

    def __init__(self, config: AwsConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    # -- clients -----------------------------------------------------------------------------------------------------
    def session(self) -> Any:
        if self._session is None:
            import boto3

            cfg = self.config
            if cfg.credentials_source == "static":
                self._session = boto3.session.Session(
                    aws_access_key_id=cfg.access_key_id,
                    aws_secret_access_key=cfg.secret_access_key,
                    aws_session_token=cfg.session_token,
                    region_name=cfg.region,
                )
            else:
                self._session = boto3.session.Session(region_name=cfg.region)
        return self._session

    def client(self, service: str) -> Any:
        """The boto3 client for ``service`` (``ec2``, ``s3``): endpoint from the config, bounded timeouts, no
        botocore retries."""
        client = self._clients.get(service)
        if client is None:
            from botocore.config import Config

            endpoint = self.config.endpoint_for(service)
            options: dict[str, Any] = {
                "connect_timeout": self.config.connect_timeout,
                "read_timeout": self.config.read_timeout,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
                "user_agent_extra": "stemforge-cpi",
            }
            if service == "s3" and endpoint:
                options["s3"] = {"addressing_style": "path"}
            client = self.session().client(service, endpoint_url=endpoint, config=Config(**options))
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
        from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay
        from tenacity.wait import wait_random_exponential

        cfg = self.config
        method = getattr(self.client(service), operation)
        pretty = f"{service} {_api_name(operation)}"

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            code, status, _ = error_code(exc) if exc else ("", None, "")
            if code.isdigit():  # a bare HTTP error page: botocore uses the status as the code
                code = ""
            what = code or (f"HTTP {status}" if status else type(exc).__name__)
            delay = state.next_action.sleep if state.next_action else 0.0
            self.log.warning(
                "%s: %s (attempt %d of %d), retrying in %.2fs",
                pretty,
                what,
                state.attempt_number,
                cfg.max_retries + 1,
                delay,
            )

        retrying = Retrying(
            stop=stop_after_attempt(cfg.max_retries + 1) | stop_before_delay(cfg.retry_total_seconds),
            wait=wait_random_exponential(multiplier=cfg.retry_base_delay, max=cfg.retry_max_delay),
            retry=retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return method(**params)
        except ClientError as exc:
            code, status, message = error_code(exc)
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


def _api_name(operation: str) -> str:
    """``run_instances`` -> ``RunInstances`` (the name AWS documents)."""
    return "".join(part.capitalize() for part in operation.split("_"))


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
    delay = max(0.05, interval / 5)
    last = ""
    logged = started
    while True:
        result = describe()
        state = state_of(result)
        if state in want:
            return result
        if state in failed:
            detail = reason(result) if reason else ""
            raise CloudError(
                f"{what}: reached state '{state}' instead of {_states(want)}{': ' + detail if detail else ''}"
            )
        now = time.monotonic()
        if state != last or now - logged > 30:
            log.info("%s: %s, waiting for %s (%.0fs)", what, state or "unknown", _states(want), now - started)
            last, logged = state, now
        if now - started > timeout:
            raise CloudError(
                f"{what}: still '{state}' after {timeout:g}s waiting for {_states(want)}", ok_to_retry=True
            )
        time.sleep(min(delay, max(0.0, timeout - (now - started)) + 0.01))
        delay = min(interval, delay * 1.5)


def _states(states: set[str] | frozenset[str]) -> str:
    return " or ".join(f"'{s}'" for s in sorted(states))
