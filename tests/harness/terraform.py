"""The AWS test environment made by Terraform (terraform/aws) against a loopback moto server, for tests.

``aws_environment(endpoint, workdir, prefix)`` runs ``stemforge env up`` (the :class:`terraform.env.Environment`
API) into ``workdir/prefix``, yields the flat metadata dict (vpc_id, region, az, subnet_id, manual_subnet_id,
internal_cidr, internal_gw, reserved_range, static_range, default_security_groups, default_key_name,
images_bucket, blobstore_bucket, ... as written to ``environment/metadata``) and always destroys the environment on
the way out, whatever happened inside. Progress lines go to stderr (pytest shows them for a failed test).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from terraform.env import Environment, EnvironmentSpec

#: Credentials used when the process has none (moto accepts any).
DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing-secret"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def aws_environment(
    endpoint: str,
    workdir: Path,
    prefix: str,
    *,
    region: str = "us-east-1",
    load_balancers: bool = False,
    sink: Callable[[str], None] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> Iterator[dict[str, Any]]:
    """Make the environment ``prefix`` against ``endpoint`` (a loopback moto URL) in ``workdir/prefix``, yield its
    metadata, destroy it afterwards (also when ``up`` or the body failed). ``env`` is the environment Terraform runs
    with (default: this process's); ``sink`` receives progress lines (default: stderr). ``load_balancers``: also make
    the application load balancer (off by default: against moto its creation waits about a minute)."""
    base = dict(os.environ if env is None else env)
    spec = EnvironmentSpec(
        name=prefix,
        region=region,
        endpoint=endpoint,
        access_key=base.get("AWS_ACCESS_KEY_ID") or DUMMY_ACCESS_KEY,
        secret_key=base.get("AWS_SECRET_ACCESS_KEY") or DUMMY_SECRET_KEY,
        load_balancers=load_balancers,
    )
    environment = Environment(Path(workdir) / prefix, sink=sink or _stderr, env=base, timeout=timeout)
    try:
        yield environment.up(spec)
    finally:
        environment.down()
