"""The one AWS session/client, retry and polling layer under the CPI's AWS provider and the amazon builders.

Contract:

* :func:`new_session` / :func:`new_client`: a boto3 session from static keys, a profile or the default chain, and
  clients with botocore's own retries switched off (``total_max_attempts: 1``), bounded connect/read timeouts and an
  optional endpoint (the moto server in tests). :func:`retrying` is then the only retry layer: attempts never
  multiply.
* :data:`RETRYABLE_CODES` / :func:`is_transient`: what is worth another attempt: the throttling and transient error
  codes below, HTTP 429 and 5xx, and connection/read failures. Never a client error such as a bad parameter.
* :func:`retrying`: a tenacity ``Retrying`` bounded by attempts (and optionally by total seconds), retrying only
  :func:`is_transient` failures, with the caller's backoff, sleep (cancellable) and retry callback; it re-raises the
  last failure for the caller to translate into its own error type.
* :func:`poll`: call ``check`` until it returns a value other than None, bounded by seconds and/or a number of
  checks, with a growing or fixed interval and a caller-supplied (cancellable) sleep; :class:`PollTimeout` when the
  bound is reached, for the caller to translate.
* :func:`quiet_wire_logging`: botocore/urllib3 debug output carries request bodies and signed headers (user-data
  with the agent's secrets, base64, which no redactor recognises): keep those loggers above DEBUG.

boto3, botocore and tenacity are imported inside the functions: importing this module stays cheap (the CPI's
``info`` path) and needs none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState, Retrying
    from tenacity.wait import wait_base

T = TypeVar("T")

#: Error codes worth another attempt, in EC2 and S3. botocore's own retry tables are the source:
#: ``botocore/retries/standard.py`` (standard mode) ``ThrottledRetryableChecker._THROTTLED_ERROR_CODES`` and
#: ``TransientRetryableChecker._TRANSIENT_ERROR_CODES``, and the legacy ``botocore/data/_retry.json`` policies
#: (``general``: ``Throttling``, ``ThrottlingException``, ``ThrottledException``, ``RequestThrottledException``;
#: ``ec2``: ``RequestLimitExceeded`` and ``EC2ThrottledException``; ``s3``: ``RequestTimeout``). The server-side
#: failure codes are the ones AWS's error references document as "retry the request" (EC2 ``InternalError``,
#: ``Unavailable``; S3 ``InternalError``, ``ServiceUnavailable``, ``SlowDown``); 5xx answers are retried by status
#: anyway (``_retry.json`` ``general_server_error``/``service_unavailable``/``bad_gateway``/``gateway_timeout``)
#: but an answer's status is not always kept by what raised it.
#: This one set is used by the CPI (cpi/providers/aws/clients.py) and the builders (amazon_ebs/ec2.py).
RETRYABLE_CODES: Final = frozenset(
    {
        # throttling (standard.py _THROTTLED_ERROR_CODES; _retry.json general + ec2)
        "RequestLimitExceeded",  # EC2's throttle (_retry.json ec2.request_limit_exceeded)
        "EC2ThrottledException",  # _retry.json ec2.ec2_throttled_exception
        "Throttling",  # _retry.json general.throttling
        "ThrottlingException",  # _retry.json general.throttling_exception
        "ThrottledException",  # _retry.json general.throttled_exception
        "RequestThrottledException",  # _retry.json general.request_throttled_exception
        "RequestThrottled",  # standard.py _THROTTLED_ERROR_CODES
        "TooManyRequestsException",  # standard.py _THROTTLED_ERROR_CODES
        "BandwidthLimitExceeded",  # standard.py _THROTTLED_ERROR_CODES
        "SlowDown",  # S3's throttle (standard.py _THROTTLED_ERROR_CODES)
        "PriorRequestNotComplete",  # standard.py: both throttled and transient
        # transient (standard.py _TRANSIENT_ERROR_CODES; _retry.json s3.timeouts)
        "RequestTimeout",
        "RequestTimeoutException",
        # the service's own transient failures (5xx codes, sometimes surfaced without their status)
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
    }
)
#: Loggers that print request bodies and signed headers at DEBUG.
WIRE_LOGGERS: Final = ("botocore", "boto3", "urllib3", "s3transfer")


def error_details(exc: BaseException | None) -> tuple[str, int | None, str]:
    """``(code, http_status, message)`` of a botocore ClientError; ``("", None, str(exc))`` otherwise."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return (
            str(error.get("Code") or ""),
            status if isinstance(status, int) else None,
            str(error.get("Message") or ""),
        )
    return "", None, "" if exc is None else str(exc)


def error_code(exc: BaseException | None) -> str:
    """The AWS error code of a botocore ClientError (``""`` for anything else)."""
    return error_details(exc)[0]


def is_transient(exc: BaseException) -> bool:
    """True for :data:`RETRYABLE_CODES`, HTTP 429/5xx and connection/read errors: worth another attempt."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError
    from botocore.parsers import ResponseParserError

    code, status, _ = error_details(exc)
    if code in RETRYABLE_CODES or (status is not None and (status == 429 or status >= 500)):
        return True
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError are ConnectionErrors;
    # a proxy or load balancer answering an HTML error page shows up as a ResponseParserError
    return isinstance(exc, BotoConnectionError | HTTPClientError | ResponseParserError)


def api_name(operation: str) -> str:
    """``run_instances`` -> ``RunInstances`` (the name AWS documents)."""
    return "".join(part.capitalize() for part in operation.split("_"))


# -- sessions and clients --------------------------------------------------------------------------------------------
def quiet_wire_logging(level: int = logging.WARNING, *, force: bool = True) -> None:
    """Keep the wire-level loggers at ``level`` or above (``force=False``: only raise a level that is lower or
    unset)."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if force or logger.level == logging.NOTSET or logger.level < level:
            logger.setLevel(level)


def new_session(
    region: str | None,
    *,
    access_key: str = "",
    secret_key: str = "",
    token: str = "",
    profile: str = "",
) -> Any:
    """A boto3 session: static keys when given, else ``profile``, else boto3's default credential chain."""
    import boto3

    kwargs: dict[str, Any] = {"region_name": region}
    if access_key or secret_key:
        kwargs.update(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, aws_session_token=token or None
        )
    elif profile:
        kwargs["profile_name"] = profile
    return boto3.session.Session(**kwargs)


def new_client(
    session: Any,
    service: str,
    *,
    region: str | None = None,
    endpoint: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    verify: bool = True,
    max_pool_connections: int | None = None,
    path_style_s3: bool = True,
    user_agent_extra: str | None = None,
) -> Any:
    """``session.client(service)`` with botocore's retries off (see the module docstring); ``path_style_s3`` uses
    path-style S3 addressing (needed for a custom endpoint such as moto's)."""
    from botocore.config import Config

    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"total_max_attempts": 1, "mode": "standard"},
    }
    if max_pool_connections is not None:
        options["max_pool_connections"] = max_pool_connections
    if user_agent_extra:
        options["user_agent_extra"] = user_agent_extra
    if service == "s3" and path_style_s3:
        options["s3"] = {"addressing_style": "path"}
    kwargs: dict[str, Any] = {"endpoint_url": endpoint or None, "config": Config(**options)}
    if region is not None:
        kwargs["region_name"] = region
    if not verify:
        kwargs["verify"] = False
    return session.client(service, **kwargs)


# -- retries ---------------------------------------------------------------------------------------------------------
def full_jitter(base: float, cap: float) -> wait_base:
    """Exponential backoff with full jitter (AWS's recommendation): a random delay in ``[0, min(cap, base*2^n)]``."""
    from tenacity.wait import wait_random_exponential

    return wait_random_exponential(multiplier=base, max=cap)


def exponential_plus_jitter(base: float, cap: float, jitter: float) -> wait_base:
    """``min(cap, base*2^n)`` plus a random ``[0, jitter]``."""
    from tenacity.wait import wait_exponential, wait_random

    return wait_exponential(multiplier=base, max=cap) + wait_random(0, jitter)


def retrying(
    *,
    attempts: int,
    wait: wait_base,
    within_seconds: float | None = None,
    on_retry: Callable[[int, BaseException | None, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` for one AWS call: at most ``attempts`` attempts (and no retry that would start after
    ``within_seconds``), only for :func:`is_transient` failures while ``keep_going()`` holds; ``on_retry(attempt
    number, failure, delay)`` before each sleep; ``sleep`` may raise to cancel. The last failure is re-raised.

    Use as ``for attempt in r: with attempt: return call()``; ``r.statistics["attempt_number"]`` tells how many
    attempts were made."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay

    stop: Any = stop_after_attempt(max(1, attempts))
    if within_seconds is not None:
        stop = stop | stop_before_delay(within_seconds)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            exc = state.outcome.exception() if state.outcome else None
            on_retry(state.attempt_number, exc, state.next_action.sleep if state.next_action else 0.0)

    def should_retry(exc: BaseException) -> bool:
        return is_transient(exc) and (keep_going is None or keep_going())

    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return Retrying(
        stop=stop, wait=wait, retry=retry_if_exception(should_retry), before_sleep=before_sleep, reraise=True, **kwargs
    )


# -- polling ---------------------------------------------------------------------------------------------------------
class PollTimeout(Exception):
    """:func:`poll` reached its bound; ``checks`` made over ``seconds``."""

    def __init__(self, checks: int, seconds: float) -> None:
        super().__init__(f"gave up after {checks} checks in {seconds:.1f}s")
        self.checks = checks
        self.seconds = seconds


def poll(
    check: Callable[[], T | None],
    *,
    interval: float,
    first_interval: float | None = None,
    growth: float = 1.0,
    timeout: float | None = None,
    max_checks: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    before_check: Callable[[], None] | None = None,
) -> T:
    """Call ``check()`` until it returns a value other than None (returned). The first check is immediate; the
    pause starts at ``first_interval`` (default ``interval``) and grows by ``growth`` up to ``interval``.
    :class:`PollTimeout` after ``max_checks`` checks or once more than ``timeout`` seconds have passed (the last
    pause is shortened to end at the deadline). ``check``, ``before_check`` and ``sleep`` may raise to stop the
    wait (a failure state, a cancelled run)."""
    started = time.monotonic()
    delay = interval if first_interval is None else first_interval
    checks = 0
    while True:
        if before_check is not None:
            before_check()
        value = check()
        checks += 1
        if value is not None:
            return value
        elapsed = time.monotonic() - started
        if (max_checks is not None and checks >= max_checks) or (timeout is not None and elapsed > timeout):
            raise PollTimeout(checks, elapsed)
        pause = delay if timeout is None else min(delay, max(0.0, timeout - elapsed) + 0.01)
        sleep(pause)
        delay = min(interval, delay * growth)
