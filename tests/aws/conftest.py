"""Fixtures shared by the AWS CPI tests (all against the loopback moto server of ``moto_endpoint``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.aws import FaultProxy, local_environment


@pytest.fixture(scope="module")
def env(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """The module's AWS environment (VPC, subnets, security group, key pair, images bucket) made with boto3 in moto,
    removed afterwards. ``test_aws_cpi_lifecycle.py`` overrides it with the Terraform-made one."""
    with local_environment(moto_endpoint, f"s{uuid.uuid4().hex[:7]}") as metadata:
        yield metadata


@pytest.fixture(scope="module")
def proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """The fault-injecting proxy in front of the module's moto server."""
    with FaultProxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def clean_proxy(proxy: FaultProxy) -> Iterator[None]:
    """No faults armed and no counts before and after the test (modules that share one proxy use it for every test:
    ``pytestmark = pytest.mark.usefixtures("clean_proxy")``)."""
    proxy.reset()
    yield
    proxy.reset()
