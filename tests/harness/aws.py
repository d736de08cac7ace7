"""Helpers for the AWS CPI tests (no tests here): the test environment, a director-style CPI runner, a test AMI,
and a loopback fault-injecting proxy in front of the moto server.

* :func:`aws_env` yields the flat environment metadata (vpc_id, region, az, subnet_id, manual_subnet_id, ...,
  default_security_groups, default_key_name, images_bucket). It uses TERRAFORM's ``tests/harness/terraform.py``
  ``aws_environment`` when that module exists, else builds the same objects with boto3 (and removes them after).
* :class:`AwsCpi` writes a CPI config for the moto endpoint and runs every call through ``bin/cpi`` (the wrapper
  the director runs) as a subprocess with the director's stripped environment.
* :class:`FaultProxy` forwards HTTP to moto and answers an error (EC2 ``RequestLimitExceeded`` 503, a bare 503, or
  any code/status) for the first N requests of a given EC2 action, counting every request per action.
* :class:`LoopbackProxy` is the proxy itself (forwarding, EC2 error answers); the amazon-ebs tests' region-aware
  proxy builds on it too.

Everything is on 127.0.0.1 (the network rule); every process and thread started here is stopped by its owner.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from stemforge_base.cpi_client import build_request
from tests.harness.libvirt import CpiResult, run_wrapper

REGION = "us-east-1"
#: Credentials for the CPI config: moto accepts anything; unique strings let the tests prove they never leak.
ACCESS_KEY_ID = "AKIASTEMFORGETESTKEY1"
SECRET_ACCESS_KEY = "aws-SECRET-access-key-7f3e9a1c"
SESSION_TOKEN = "aws-SESSION-token-0b5d2e8f"


def ec2_client(endpoint: str, region: str = REGION) -> Any:
    import boto3

    return boto3.client(
        "ec2", endpoint_url=endpoint, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def s3_client(endpoint: str, region: str = REGION) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}),
    )


# -- environment ---------------------------------------------------------------------------------------------------


def _terraform_environment() -> Any:
    try:
        from tests.harness.terraform import aws_environment
    except ImportError:
        return None
    return aws_environment


@contextlib.contextmanager
def aws_env(endpoint: str, workdir: Path, prefix: str) -> Iterator[dict[str, Any]]:
    """The test environment's flat metadata (see the module docstring)."""
    terraform_env = _terraform_environment()
    if terraform_env is not None:
        with terraform_env(endpoint, workdir, prefix) as metadata:
            yield dict(metadata)
        return
    with local_environment(endpoint, prefix) as metadata:
        yield metadata


@contextlib.contextmanager
def local_environment(endpoint: str, prefix: str, region: str = REGION) -> Iterator[dict[str, Any]]:
    """The objects terraform/aws makes (VPC 10.0.0.0/16, default/backup/manual subnets, an allow-all security
    group, a key pair, two Elastic IPs, the images bucket), built with boto3 and removed afterwards."""
    ec2 = ec2_client(endpoint, region)
    s3 = s3_client(endpoint, region)
    zones = sorted(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"])
    az, backup_az = zones[0], zones[1] if len(zones) > 1 else zones[0]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": prefix}])
    default = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
    backup = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.2.0/24", AvailabilityZone=backup_az)["Subnet"]["SubnetId"]
    manual = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.4.0/24", AvailabilityZone=az)["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"{prefix}-allow-all", Description="allow all", VpcId=vpc)["GroupId"]
    key_name = f"{prefix}-director"
    ec2.create_key_pair(KeyName=key_name)
    eips = [ec2.allocate_address(Domain="vpc") for _ in range(2)]
    bucket = f"{prefix}-images"
    # outside us-east-1 S3 wants the location constraint (moto enforces it like AWS)
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **location)
    metadata = {
        "vpc_id": vpc,
        "region": region,
        "az": az,
        "backup_az": backup_az,
        "subnet_id": default,
        "backup_subnet_id": backup,
        "manual_subnet_id": manual,
        "internal_cidr": "10.0.0.0/16",
        "manual_cidr": "10.0.4.0/24",
        "internal_gw": "10.0.0.1",
        "manual_gw": "10.0.4.1",
        "dns_recursor_ip": "10.0.0.2",
        "internal_ip": "10.0.0.6",
        "reserved_range": "10.0.0.2-10.0.0.9",
        "static_range": "10.0.0.10-10.0.0.30",
        "manual_reserved_range": "10.0.4.1-10.0.4.9",
        "manual_static_range": "10.0.4.10-10.0.4.30",
        "default_security_groups": [group],
        "default_key_name": key_name,
        "external_ip": eips[0]["PublicIp"],
        "bats_eip": eips[1]["PublicIp"],
        "images_bucket": bucket,
    }
    try:
        yield metadata
    finally:
        with contextlib.suppress(Exception):
            for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
            s3.delete_bucket(Bucket=bucket)
        for eip in eips:
            with contextlib.suppress(Exception):
                ec2.release_address(AllocationId=eip["AllocationId"])
        with contextlib.suppress(Exception):
            ec2.delete_key_pair(KeyName=key_name)
        for call in (
            lambda: ec2.delete_security_group(GroupId=group),
            *(lambda s=s: ec2.delete_subnet(SubnetId=s) for s in (default, backup, manual)),
            lambda: ec2.delete_vpc(VpcId=vpc),
        ):
            with contextlib.suppress(Exception):
                call()


def moto_amazon_ebs(endpoint: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """An ``amazon-ebs`` builder for the loopback moto server at ``endpoint``: us-east-1, moto's test credentials, the
    newest Canonical Ubuntu AMI moto ships, t3.micro; ``options`` add to these or replace them."""
    return {
        "type": "amazon-ebs",
        "region": "us-east-1",
        "custom_endpoint_ec2": endpoint,
        "access_key": "testing",
        "secret_key": "testing-secret",
        "source_ami_filter": {"filters": {"name": "ubuntu/images/*"}, "owners": ["099720109477"], "most_recent": True},
        "instance_type": "t3.micro",
        **options,
    }


def register_ami(endpoint: str, az: str, name: str, tags: Mapping[str, str] | None = None, region: str = REGION) -> str:
    """An AMI as the AMI builder leaves one: a snapshot of a volume, registered HVM with a root device."""
    ec2 = ec2_client(endpoint, region)
    volume = ec2.create_volume(Size=3, AvailabilityZone=az, VolumeType="gp3")["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    params: dict[str, Any] = {
        "Name": name,
        "Architecture": "x86_64",
        "RootDeviceName": "/dev/xvda",
        "VirtualizationType": "hvm",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot, "VolumeType": "gp3"}}],
    }
    if tags:
        params["TagSpecifications"] = [
            {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    return str(ec2.register_image(**params)["ImageId"])


# -- the CPI as the director runs it ------------------------------------------------------------------------------


@dataclass
class AwsCpi:
    """A CPI config pointing at ``endpoint`` (moto, or the fault proxy in front of it) and its ``bin/cpi``."""

    root: Path
    config_path: Path
    wrapper: Path
    env: dict[str, Any]
    director_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    results: list[CpiResult] = field(default_factory=list)

    def request(
        self, method: str, *arguments: Any, api_version: int | None = 2, context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_request(method, arguments, director_uuid=self.director_uuid, api_version=api_version,
                             context=context)

    def call(
        self,
        method: str,
        *arguments: Any,
        api_version: int | None = 2,
        extra_env: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
        timeout: float = 300,
    ) -> CpiResult:
        result = run_wrapper(self.wrapper, self.request(method, *arguments, api_version=api_version, context=context),
                             extra_env=extra_env, timeout=timeout)
        self.results.append(result)
        return result

    def ok(self, method: str, *arguments: Any, api_version: int | None = 2, **kwargs: Any) -> Any:
        return self.call(method, *arguments, api_version=api_version, **kwargs).result

    def error(self, method: str, *arguments: Any, api_version: int | None = 2, **kwargs: Any) -> dict[str, Any]:
        return self.call(method, *arguments, api_version=api_version, **kwargs).error

    def output(self) -> str:
        """Everything every call wrote (stdout responses and stderr), for leak checks."""
        return "".join(r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace") for r in self.results)


def aws_section(endpoint: str, env: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "region": env["region"],
        "endpoint": endpoint,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "session_token": SESSION_TOKEN,
        "default_key_name": env["default_key_name"],
        "default_security_groups": list(env["default_security_groups"]),
        "images_bucket": env["images_bucket"],
        "max_retries": 6,
        "retry_base_delay": 0.05,
        "retry_max_delay": 0.4,
        "retry_total_seconds": 30,
        "connect_timeout": 5,
        "read_timeout": 30,
        "wait_timeout": 60,
        "poll_interval": 0.2,
    }
    section.update(overrides)
    return section


def make_cpi(root: Path, endpoint: str, env: Mapping[str, Any], **aws_overrides: Any) -> AwsCpi:
    from cpi.wrapper import write_wrapper

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "cloud": {
            "plugin": "aws",
            "properties": {
                "aws": aws_section(endpoint, env, **aws_overrides),
                "agent": {
                    "mbus": "nats://nats:mbus-SECRET-pw@10.0.0.6:4222",
                    "ntp": ["169.254.169.123"],
                    "blobstore": {
                        "provider": "dav",
                        "options": {"endpoint": "http://10.0.0.6:25250", "password": "blobstore-SECRET-pw"},
                    },
                },
            },
        }
    }
    config_path = root / "cpi.json"
    config_path.write_text(json.dumps(config))
    wrapper = write_wrapper(config_path, root / "job")
    return AwsCpi(root=root, config_path=config_path, wrapper=wrapper, env=dict(env))


# -- fault injection ----------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """Answer the next ``count`` requests of ``action`` with ``status`` and an EC2 error ``code`` (no body when
    ``code`` is empty: a bare proxy error page)."""

    count: int
    status: int = 503
    code: str = "RequestLimitExceeded"
    message: str = "injected by the test proxy"


class LoopbackProxy:
    """A loopback HTTP proxy in front of ``upstream`` (the moto server), run as a context manager: every request
    goes to :meth:`handle`, which answers it with :meth:`error` or passes it on with :meth:`forward`."""

    def __init__(self, upstream: str, name: str = "proxy") -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy.handle(self, self.rfile.read(length) if length else b"")

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Answer one request (the default passes it on)."""
        self.forward(handler, body)

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
        """Send the request upstream and its answer back (the answer's own Server/Date give way to ours)."""
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=timeout)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "host")}
            headers["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            upstream = conn.getresponse()
            data = upstream.read()
            handler.send_response(upstream.status)
            for key, value in upstream.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                    handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return upstream.status, data
        finally:
            conn.close()

    @staticmethod
    def error(handler: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        """Answer ``status`` with an EC2 error document for ``code`` (no body when ``code`` is empty)."""
        data = b""
        if code:
            data = (
                f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
            ).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/xml" if data else "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class FaultProxy(LoopbackProxy):
    """Injects :class:`Fault` s by EC2 action and counts every request per action (``seen``) and every injected
    failure (``injected``)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, name="fault-proxy")
        self.faults: dict[str, Fault] = {}
        self.seen: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        fault = self.take(self.action_of(handler.command, handler.path, body))
        if fault is None:
            self.forward(handler, body, timeout=60)
        else:
            self.error(handler, fault.status, fault.code, fault.message)

    @staticmethod
    def action_of(method: str, path: str, body: bytes) -> str:
        if method == "POST" and body:
            values = parse_qs(body.decode(errors="replace")).get("Action")
            if values:
                return values[0]
        return f"{method} {urlsplit(path).path}"

    def take(self, action: str) -> Fault | None:
        with self.lock:
            self.seen[action] += 1
            fault = self.faults.get(action)
            if fault is None or fault.count <= 0:
                return None
            fault.count -= 1
            self.injected[action] += 1
            return Fault(1, fault.status, fault.code, fault.message)

    def inject(
        self,
        action: str,
        count: int,
        status: int = 503,
        code: str = "RequestLimitExceeded",
        message: str = "injected by the test proxy",
    ) -> None:
        with self.lock:
            self.faults[action] = Fault(count, status, code, message)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.seen.clear()
            self.injected.clear()

