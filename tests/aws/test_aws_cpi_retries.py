"""Throttling and 5xx injected between the CPI and the moto server (a loopback proxy that answers errors for the
first N requests of an EC2 action) prove that every call is retried with backoff, that attempts are bounded by
``max_retries`` and by ``retry_total_seconds``, that botocore's own retries do not multiply them (the proxy counts
every request), and that errors that are not transient are not retried. All through ``bin/cpi``."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.harness.aws import AwsCpi, FaultProxy, ec2_client, make_cpi, register_ami

pytestmark = [pytest.mark.aws, pytest.mark.usefixtures("clean_proxy")]

MAX_RETRIES = 4


@pytest.fixture(scope="module")
def ami(moto_endpoint: str, env: dict[str, Any]) -> str:
    return register_ami(moto_endpoint, env["az"], f"retry-stemcell {uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def cpi(proxy: FaultProxy, env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> AwsCpi:
    return make_cpi(
        tmp_path_factory.mktemp("aws-cpi-retries"),
        proxy.url,
        env,
        max_retries=MAX_RETRIES,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
    )


def _vm_args(env: dict[str, Any], ami: str, run: str) -> tuple[Any, ...]:
    networks = {"default": {"type": "dynamic", "cloud_properties": {"subnet": env["subnet_id"]}}}
    return (f"agent-{run}", ami, {"instance_type": "t3.nano"}, networks, [], {"bosh": {"tags": {"test_run": run}}})


def _instances(moto_endpoint: str, run: str) -> list[dict[str, Any]]:
    found = ec2_client(moto_endpoint).describe_instances(Filters=[{"Name": "tag:test_run", "Values": [run]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def test_throttling_and_5xx_are_retried(
    cpi: AwsCpi, proxy: FaultProxy, env: dict[str, Any], ami: str, moto_endpoint: str
) -> None:
    run = uuid.uuid4().hex[:8]
    proxy.inject("RunInstances", 3, 503, "RequestLimitExceeded")
    proxy.inject("DescribeImages", 1, 400, "Throttling")
    proxy.inject("DescribeSubnets", 2, 500, "InternalError")
    result = cpi.call("create_vm", *_vm_args(env, ami, run))
    vm_cid = result.result[0]
    assert proxy.injected == {"RunInstances": 3, "DescribeImages": 1, "DescribeSubnets": 2}
    assert proxy.seen["RunInstances"] == 4 and proxy.seen["DescribeSubnets"] == 3 and proxy.seen["DescribeImages"] == 2
    log = result.response["log"]
    assert log.count("ec2 RunInstances: RequestLimitExceeded (attempt") == 3
    assert "ec2 DescribeSubnets: InternalError (attempt 1 of 5), retrying in" in log
    assert [i["State"]["Name"] for i in _instances(moto_endpoint, run)] == ["running"], "exactly one instance"

    # a bare 503 (a load balancer's error page, no AWS error document) is retried too
    proxy.inject("TerminateInstances", 2, 503, "")
    proxy.inject("DescribeInstances", 1, 503, "RequestLimitExceeded")
    result = cpi.call("delete_vm", vm_cid)
    assert result.response["error"] is None, result.response["error"]
    assert proxy.seen["TerminateInstances"] == 3
    assert "ec2 TerminateInstances: HTTP 503 (attempt 1 of 5)" in result.response["log"]
    assert [i["State"]["Name"] for i in _instances(moto_endpoint, run)] == ["terminated"]


def test_attempts_are_bounded_and_not_multiplied(
    cpi: AwsCpi, proxy: FaultProxy, env: dict[str, Any], ami: str, moto_endpoint: str
) -> None:
    """1 + max_retries requests reach the proxy, no more: botocore's own retries are off."""
    run = uuid.uuid4().hex[:8]
    proxy.inject("RunInstances", 1000, 503, "RequestLimitExceeded")
    error = cpi.error("create_vm", *_vm_args(env, ami, run))
    assert error["type"] == "Bosh::Clouds::VMCreationFailed" and error["ok_to_retry"] is True
    assert (
        "RequestLimitExceeded" in error["message"] and f"gave up after {MAX_RETRIES + 1} attempts" in error["message"]
    )
    assert proxy.seen["RunInstances"] == MAX_RETRIES + 1
    assert _instances(moto_endpoint, run) == []


def test_total_retry_time_is_bounded(
    proxy: FaultProxy, env: dict[str, Any], ami: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With many retries allowed but a short ``retry_total_seconds``, the time bound stops the attempts first."""
    cpi = make_cpi(
        tmp_path_factory.mktemp("aws-cpi-deadline"),
        proxy.url,
        env,
        max_retries=30,
        retry_base_delay=0.4,
        retry_max_delay=0.8,
        retry_total_seconds=2,
    )
    proxy.inject("DescribeImages", 1000, 503, "RequestLimitExceeded")
    error = cpi.error("create_vm", *_vm_args(env, ami, uuid.uuid4().hex[:8]))
    assert error["ok_to_retry"] is True and "RequestLimitExceeded" in error["message"]
    assert 2 <= proxy.seen["DescribeImages"] < 31


def test_errors_that_are_not_transient_are_not_retried(
    cpi: AwsCpi, proxy: FaultProxy, env: dict[str, Any], ami: str, moto_endpoint: str
) -> None:
    run = uuid.uuid4().hex[:8]
    proxy.inject("RunInstances", 1, 400, "InvalidParameterValue")
    error = cpi.error("create_vm", *_vm_args(env, ami, run))
    assert error["type"] == "Bosh::Clouds::VMCreationFailed" and error["ok_to_retry"] is False
    assert "InvalidParameterValue" in error["message"]
    assert proxy.seen["RunInstances"] == 1
    proxy.inject("RunInstances", 1, 400, "InsufficientInstanceCapacity")
    error = cpi.error("create_vm", *_vm_args(env, ami, run))
    assert error["ok_to_retry"] is True, "the director retries create_vm when capacity may come back"
    assert _instances(moto_endpoint, run) == []


def test_a_device_name_taken_meanwhile_moves_to_the_next(
    cpi: AwsCpi, proxy: FaultProxy, env: dict[str, Any], ami: str, moto_endpoint: str
) -> None:
    """A concurrent attach_disk took /dev/sdf between our look and our AttachVolume: the next name is used."""
    run = uuid.uuid4().hex[:8]
    vm_cid, _ = cpi.ok("create_vm", *_vm_args(env, ami, run))
    try:
        disk = cpi.ok("create_disk", 1024, {}, vm_cid)
        proxy.inject(
            "AttachVolume",
            1,
            400,
            "InvalidParameterValue",
            "Invalid value '/dev/sdf' for unixDevice. Attachment point /dev/sdf is already in use",
        )
        cpi.ok("attach_disk", vm_cid, disk)
        attachment = ec2_client(moto_endpoint).describe_volumes(VolumeIds=[disk])["Volumes"][0]["Attachments"][0]
        assert attachment["Device"] == "/dev/sdg" and proxy.seen["AttachVolume"] == 2
        cpi.ok("detach_disk", vm_cid, disk)
        cpi.ok("delete_disk", disk)
    finally:
        cpi.ok("delete_vm", vm_cid)
