"""The CPI's AWS provider and the amazon builders share one session/retry/poll layer (``stemforge_base.aws``): one
retry-code set, and a throttled call is retried the same way in both paths. Errors are injected by the loopback
fault proxy in front of the moto server (it counts every request, so the attempts are measured, not assumed)."""

from __future__ import annotations

import logging
import threading

import pytest

from builders.builder_types.amazon_ebs import ec2 as builder_ec2
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Ec2Error, Polling
from cpi.errors import CloudError
from cpi.providers.aws import clients as cpi_clients
from cpi.providers.aws.clients import AwsApi, AwsCallError, wait_for
from cpi.providers.aws.config import AwsConfig
from stemforge_base import aws as base
from stemforge_base.steps import Cancelled
from tests.harness.aws import FaultProxy

pytestmark = [pytest.mark.aws, pytest.mark.usefixtures("clean_proxy")]

REGION = "us-east-1"
#: Codes the builders' own list lacked before the layers were merged (answered with HTTP 400, so only the code can
#: make them retryable), and one that must never be retried.
ONCE_CPI_ONLY = ("RequestThrottledException", "BandwidthLimitExceeded", "ServiceUnavailableException")


def _cpi_api(proxy: FaultProxy) -> AwsApi:
    config = AwsConfig.from_properties(
        {
            "region": REGION,
            "endpoint": proxy.url,
            "access_key_id": "testing",
            "secret_access_key": "testing-secret",
            "max_retries": 3,
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.05,
        }
    )
    return AwsApi(config, logging.getLogger("test.aws.cpi"))


def _builder_access(proxy: FaultProxy, **kwargs: object) -> AwsAccess:
    return AwsAccess(
        region=REGION,
        access_key="testing",
        secret_key="testing-secret",
        custom_endpoint_ec2=proxy.url,
        max_retries=3,
        **kwargs,  # type: ignore[arg-type]
    )


def test_one_retry_code_set_shared_by_cpi_and_builders() -> None:
    assert cpi_clients.RETRYABLE_CODES is base.RETRYABLE_CODES
    assert builder_ec2.RETRYABLE_CODES is base.RETRYABLE_CODES
    # the union of the two lists that had drifted apart (18 vs 15 codes)
    assert {"RequestLimitExceeded", "EC2ThrottledException", "SlowDown", "RequestThrottled"} <= base.RETRYABLE_CODES
    assert set(ONCE_CPI_ONLY) <= base.RETRYABLE_CODES
    assert "InvalidParameterValue" not in base.RETRYABLE_CODES


@pytest.mark.parametrize("code", ["RequestLimitExceeded", *ONCE_CPI_ONLY])
def test_throttled_call_is_retried_in_both_paths(proxy: FaultProxy, code: str) -> None:
    api = _cpi_api(proxy)
    proxy.inject("DescribeRegions", 2, 400, code)
    assert api.ec2_call("describe_regions")["Regions"]
    assert proxy.injected["DescribeRegions"] == 2 and proxy.seen["DescribeRegions"] == 3

    proxy.reset()
    retries: list[str] = []
    access = _builder_access(proxy, on_retry=retries.append)
    proxy.inject("DescribeRegions", 2, 400, code)
    assert access.call("describe_regions")["Regions"]
    assert proxy.injected["DescribeRegions"] == 2 and proxy.seen["DescribeRegions"] == 3
    assert len(retries) == 2 and all(code in line for line in retries)


def test_attempts_bounded_and_client_errors_not_retried_in_both_paths(proxy: FaultProxy) -> None:
    api = _cpi_api(proxy)
    access = _builder_access(proxy)
    proxy.inject("DescribeRegions", 100, 503, "RequestLimitExceeded")
    with pytest.raises(AwsCallError) as cpi_error:
        api.ec2_call("describe_regions")
    assert cpi_error.value.ok_to_retry and "gave up after 4 attempts" in str(cpi_error.value)
    with pytest.raises(Ec2Error) as builder_error:
        access.call("describe_regions")
    assert builder_error.value.code == "RequestLimitExceeded"
    assert proxy.seen["DescribeRegions"] == 8  # 4 + 4: botocore's own retries are off in both

    proxy.reset()
    proxy.inject("DescribeRegions", 100, 400, "InvalidParameterValue")
    with pytest.raises(AwsCallError) as cpi_error:
        api.ec2_call("describe_regions")
    assert cpi_error.value.code == "InvalidParameterValue" and not cpi_error.value.ok_to_retry
    with pytest.raises(Ec2Error):
        access.call("describe_regions")
    assert proxy.seen["DescribeRegions"] == 2


def test_shared_poll_bounds_both_waits() -> None:
    """The CPI's wait (seconds, growing interval) and the builders' wait (checks, cancellable) are one loop."""
    states = iter(["pending", "pending", "available"])
    assert wait_for(
        lambda: {"State": next(states)},
        lambda d: d["State"],
        want={"available"},
        what="image ami-1",
        timeout=5,
        interval=0.05,
        log=logging.getLogger("test.aws.cpi"),
    ) == {"State": "available"}
    with pytest.raises(CloudError, match="still 'pending' after 0.2s"):
        wait_for(
            lambda: "pending",
            lambda s: s,
            want={"available"},
            what="image ami-2",
            timeout=0.2,
            interval=0.05,
            log=logging.getLogger("test.aws.cpi"),
        )

    checks: list[int] = []
    access = AwsAccess(region=REGION, polling=Polling(delay_seconds=0.01, max_attempts=3))
    with pytest.raises(Ec2Error, match="after 3 checks"):
        access.wait_for("nothing", lambda: checks.append(1))
    assert len(checks) == 3
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        access.wait_for("anything", lambda: None, cancel=cancel)
