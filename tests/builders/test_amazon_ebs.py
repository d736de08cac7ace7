"""The ``amazon-ebs`` builder through ``stemforge build`` (a real subprocess, as users run it) against the loopback
moto server (fixture ``moto_endpoint``), with ``communicator: none``.

Faults are injected on the wire: :class:`Ec2FaultProxy` is a small HTTP proxy on 127.0.0.1 in front of moto that
reads each EC2 request's ``Action`` and the region from its SigV4 credential scope, and for the rules a test sets
answers an AWS error (``OptInRequired``: a region the account may not use), throttles (``RequestLimitExceeded``,
HTTP 503) or holds the request for a while before forwarding it. The build talks to the proxy through
``custom_endpoint_ec2``, exactly as it would talk to EC2.

What is checked in moto after each run, in the build region and all 16 copy regions: no AMI with the build's name,
no snapshot that was not there before, no key pair or security group named ``packer_*`` tagged with the test's id,
no instance of the test that is not terminated.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.harness.aws import LoopbackProxy
from tests.harness.builds import stemforge

pytestmark = pytest.mark.aws

PYTHON = sys.executable
BUILD_REGION = "us-east-1"
REGIONS_16 = [
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "sa-east-1",
]
SECRET = "sEcReT-kEy-never-printed-4242"
ACCESS_KEY = "AKIASTEMFORGETEST01"


# --------------------------------------------------------------------------------------------------- the proxy


@dataclass
class Rule:
    """What to do with requests of ``action`` in ``region``: ``fail`` (AWS error ``code``), ``throttle`` (the
    first ``count`` requests get RequestLimitExceeded) or ``delay`` (hold ``seconds``, then forward)."""

    action: str
    region: str
    kind: str
    code: str = "OptInRequired"
    count: int = 1_000_000
    seconds: float = 0.0
    arrived: threading.Event = field(default_factory=threading.Event)
    hits: int = 0


class Ec2FaultProxy(LoopbackProxy):
    """Injects faults by EC2 action and region (:class:`Rule` s) in front of moto."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, name="ec2-fault-proxy")
        self.rules: list[Rule] = []
        self.forwarded: list[tuple[str, str]] = []
        #: (action, region, form parameters) of every request forwarded
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: (region, AMI id) of every image a CreateImage/CopyImage answer named: what the build made
        self.images: list[tuple[str, str]] = []
        #: requests of each action being handled right now, and the most seen at once
        self.inflight: dict[str, int] = {}
        self.max_inflight: dict[str, int] = {}

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def count(self, action: str) -> int:
        with self.lock:
            return sum(1 for a, _r in self.forwarded if a == action)

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        action = (urllib.parse.parse_qs(body.decode(errors="replace")).get("Action") or [""])[0]
        with self.lock:
            self.inflight[action] = self.inflight.get(action, 0) + 1
            self.max_inflight[action] = max(self.max_inflight.get(action, 0), self.inflight[action])
        try:
            self._handle(handler, body, action)
        finally:
            with self.lock:
                self.inflight[action] -= 1

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes, action: str) -> None:
        auth = handler.headers.get("Authorization", "")
        region = auth.split("Credential=", 1)[1].split("/")[2] if "Credential=" in auth else ""
        for rule in self.rules:
            if rule.action != action or rule.region != region:
                continue
            with self.lock:
                rule.hits += 1
                hit = rule.hits
            rule.arrived.set()
            if rule.kind == "delay":
                time.sleep(rule.seconds)
            elif rule.kind == "fail":
                time.sleep(rule.seconds)
                return self.error(handler, 400, rule.code, f"injected fault: {action} in {region}")
            elif rule.kind == "throttle" and hit <= rule.count:
                return self.error(handler, 503, "RequestLimitExceeded", "Request limit exceeded.")
        status, data = self.forward(handler, body)
        with self.lock:
            self.forwarded.append((action, region))
            form = urllib.parse.parse_qs(body.decode(errors="replace"))
            self.requests.append((action, region, {k: v[0] for k, v in form.items()}))
            if action in ("CreateImage", "CopyImage") and status == 200:
                match = re.search(rb"<imageId>(ami-[0-9a-f]+)</imageId>", data)
                if match:
                    self.images.append((region, match.group(1).decode()))


# ------------------------------------------------------------------------------------------------- helpers


def ec2(endpoint: str, region: str) -> Any:
    import boto3

    return boto3.session.Session().client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


@pytest.fixture(scope="module")
def clients(moto_endpoint: str) -> dict[str, Any]:
    """One boto3 client per region, straight to moto (never through the proxy); every region's moto backend
    is warmed up once (moto loads its default AMIs per region on first use)."""
    regions = [BUILD_REGION, *REGIONS_16]
    out = {r: ec2(moto_endpoint, r) for r in regions}
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda r: out[r].describe_regions(), regions))
    return out


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[Ec2FaultProxy]:
    with Ec2FaultProxy(moto_endpoint) as p:
        yield p


def leftovers(clients: Mapping[str, Any], ami_name: str, test_id: str, proxy: Ec2FaultProxy) -> list[str]:
    """Everything the build may have left behind, as readable lines (empty when clean): AMIs named ``ami_name``
    in any region, snapshots of any AMI the build made (moto describes a snapshot made for an AMI as "... for
    ami-..." / "... for AMI ami-..."; the proxy saw every CreateImage/CopyImage answer), and in the build region
    the test's key pairs, security groups and instances that are not terminated."""
    tag = [{"Name": "tag:stemforge-test", "Values": [test_id]}]
    made: dict[str, list[str]] = {}
    for region, image in proxy.images:
        made.setdefault(region, []).append(image)

    def one(region: str) -> list[str]:
        c = clients[region]
        out = [
            f"{region}: AMI {i['ImageId']}"
            for i in c.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [ami_name]}])["Images"]
        ]
        if made.get(region):
            snaps = c.describe_snapshots(
                OwnerIds=["self"], Filters=[{"Name": "description", "Values": [f"*{image}" for image in made[region]]}]
            )["Snapshots"]
            out += [f"{region}: snapshot {s['SnapshotId']} ({s.get('Description')})" for s in snaps]
        if region == BUILD_REGION:
            out += [f"{region}: key pair {k['KeyName']}" for k in c.describe_key_pairs(Filters=tag)["KeyPairs"]]
            out += [
                f"{region}: security group {g['GroupId']}"
                for g in c.describe_security_groups(Filters=tag)["SecurityGroups"]
            ]
            out += [
                f"{region}: instance {i['InstanceId']} {i['State']['Name']}"
                for r in c.describe_instances(Filters=tag)["Reservations"]
                for i in r["Instances"]
                if i["State"]["Name"] != "terminated"
            ]
        return out

    with ThreadPoolExecutor(4) as pool:
        return [line for lines in pool.map(one, list(clients)) for line in lines]


def template(
    tmp_path: Path,
    endpoint: str,
    test_id: str,
    *,
    regions: Sequence[str] = REGIONS_16,
    extra: Mapping[str, Any] | None = None,
    post: Any = None,
) -> Path:
    builder: dict[str, Any] = {
        "type": "amazon-ebs",
        "region": BUILD_REGION,
        "custom_endpoint_ec2": endpoint,
        "access_key": "{{user `aws_access_key`}}",
        "secret_key": "{{user `aws_secret_key`}}",
        "source_ami_filter": {
            "filters": {"name": "ubuntu/images/*", "root-device-type": "ebs"},
            "owners": ["099720109477"],
            "most_recent": True,
        },
        "instance_type": "t3.micro",
        "communicator": "none",
        "ami_name": f"stemforge-{test_id} {{{{timestamp}}}}",
        "ami_description": "built from {{ .SourceAMIName }}",
        "ami_regions": list(regions),
        "tags": {
            "OS_Version": "Ubuntu",
            "Base_AMI_Name": "{{ .SourceAMIName }}",
            "Region": "{{ .BuildRegion }}",
            "stemforge-test": test_id,
        },
        "snapshot_tags": {"kind": "root"},
        "run_tags": {"stemforge-test": test_id},
        "aws_polling": {"delay_seconds": 1, "max_attempts": 120},
    }
    builder.update(extra or {})
    doc: dict[str, Any] = {
        "variables": {"aws_access_key": ACCESS_KEY, "aws_secret_key": SECRET},
        "builders": [builder],
        "provisioners": [{"type": "shell-local", "inline": ["echo provisioned by {{build_name}}"]}],
    }
    if post is not None:
        doc["post-processors"] = post
    path = tmp_path / "ami.json"
    path.write_text(json.dumps(doc, indent=2))
    return path



def ami_name_in(output: str, test_id: str) -> str:
    for line in output.splitlines():
        if "Prevalidating AMI Name: " in line:
            return line.split("Prevalidating AMI Name: ", 1)[1].strip()
    raise AssertionError(f"no AMI name in the output:\n{output}")


# ---------------------------------------------------------------------------------------------------- tests


def test_16_regions_in_parallel_manifest_lists_all_sorted(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    manifest = tmp_path / "packer-manifest.json"
    devices = {
        "launch_block_device_mappings": [
            {"device_name": "/dev/sda1", "volume_size": 20, "volume_type": "gp3", "delete_on_termination": True}
        ],
        "ami_block_device_mappings": [{"device_name": "/dev/sdb", "virtual_name": "ephemeral0"}],
    }
    for region in REGIONS_16:  # each copy answered after 0.5 s: in parallel they overlap, in series they would not
        proxy.add(Rule("CopyImage", region, "delay", seconds=0.5))
    path = template(tmp_path, proxy.url, test_id, extra=devices, post=[{"type": "manifest", "output": str(manifest)}])
    log = tmp_path / "debug.log"
    result = stemforge(["build", str(path)], tmp_path, env={"STEMFORGE_LOG_PATH": str(log)})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert SECRET not in out and SECRET not in log.read_text()
    assert ACCESS_KEY not in log.read_text()
    name = ami_name_in(out, test_id)
    assert name.startswith(f"stemforge-{test_id} ") and name.split()[-1].isdigit(), "{{timestamp}} rendered"
    assert "provisioned by amazon-ebs" in out
    assert "Copying/Encrypting AMI" in out and "Copied ami-" in out and "to 16 region(s)" in out
    assert proxy.max_inflight["CopyImage"] >= 8, proxy.max_inflight  # 16 at once unless this machine is swamped
    for line in (
        "Creating temporary keypair: packer_",
        "Deleting temporary keypair...",
        "Creating temporary security group for this instance: packer_",
        "Deleting temporary security group",
        "Terminating the source AWS instance...",
    ):
        assert line in out, line

    # what the instance was launched with (as EC2 received it)
    run = [params for action, _r, params in proxy.requests if action == "RunInstances"][0]
    assert run["InstanceInitiatedShutdownBehavior"] == "stop" and run["InstanceType"] == "t3.micro"
    assert run["KeyName"].startswith("packer_") and run["SecurityGroupId.1"].startswith("sg-")
    assert run["BlockDeviceMapping.1.DeviceName"] == "/dev/sda1"
    assert run["BlockDeviceMapping.1.Ebs.VolumeSize"] == "20" and run["BlockDeviceMapping.1.Ebs.VolumeType"] == "gp3"
    assert {run["TagSpecification.1.Tag.1.Key"], run["TagSpecification.1.Tag.2.Key"]} == {"Name", "stemforge-test"}
    create = [params for action, _r, params in proxy.requests if action == "CreateImage"][0]
    assert create["BlockDeviceMapping.1.DeviceName"] == "/dev/sdb"
    assert create["BlockDeviceMapping.1.VirtualName"] == "ephemeral0"
    assert create["Description"].startswith("built from ubuntu/images/")

    data = json.loads(manifest.read_text())
    build = data["builds"][0]
    pairs = build["artifact_id"].split(",")
    assert pairs == sorted(pairs) and len(pairs) == 17
    amis = dict(p.split(":", 1) for p in pairs)
    assert sorted(amis) == sorted([BUILD_REGION, *REGIONS_16])
    assert build["builder_type"] == "amazon-ebs" and build["files"] in (None, [])

    # every region has its AMI, available, named, described, tagged (per region), its snapshots tagged too
    def check(region: str) -> None:
        c = clients[region]
        image = c.describe_images(ImageIds=[amis[region]])["Images"][0]
        assert image["State"] == "available" and image["Name"] == name
        tags = {t["Key"]: t["Value"] for t in image.get("Tags") or []}
        assert tags["Region"] == region and tags["stemforge-test"] == test_id
        assert tags["Base_AMI_Name"].startswith("ubuntu/images/")
        snaps = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
        assert snaps
        for snap in c.describe_snapshots(SnapshotIds=snaps)["Snapshots"]:
            stags = {t["Key"]: t["Value"] for t in snap.get("Tags") or []}
            assert stags.get("kind") == "root" and stags.get("OS_Version") == "Ubuntu"

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(check, sorted(amis)))
    # the temporary key pair, security group and instance are gone; only the AMIs (and their snapshots) stay
    left = leftovers(clients, name, test_id, proxy)
    assert all(": AMI ami-" in line or ": snapshot snap-" in line for line in left), left
    assert len([line for line in left if ": AMI ami-" in line]) == 17
    assert len(proxy.images) == 17 and {r for r, _i in proxy.images} == {BUILD_REGION, *REGIONS_16}


def test_fault_in_one_region_rolls_back_every_region(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    # eu-west-3 refuses the copy, after the other 15 copies had time to complete
    proxy.add(Rule("CopyImage", "eu-west-3", "fail", code="OptInRequired", seconds=2.0))
    path = template(tmp_path, proxy.url, test_id)
    result = stemforge(["build", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert SECRET not in out
    assert "Error Copying AMI" in out and "eu-west-3" in out and "OptInRequired" in out
    assert out.count("available after") == 15, "the other 15 copies were made before the fault"
    # 15 copies removed, and eu-west-3 searched by name (its CopyImage was sent: a copy could exist)
    assert "Deregistering the AMI copies and deleting their snapshots in 16 region(s)" in out
    assert "eu-west-3: removed nothing (no copy was made)" in out
    assert out.count("(snapshots: snap-") == 16, "15 copies and the build region's AMI, each with its snapshot"
    assert "Terminating the source AWS instance..." in out and "Deleting temporary keypair..." in out
    name = ami_name_in(out, test_id)
    assert leftovers(clients, name, test_id, proxy) == []


def test_throttled_copies_are_retried(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    for region in ("ap-south-1", "sa-east-1"):
        proxy.add(Rule("CopyImage", region, "throttle", count=2))
    proxy.add(Rule("CreateTags", "eu-north-1", "throttle", count=1))
    for region in REGIONS_16[:4]:
        proxy.add(Rule("CopyImage", region, "delay", seconds=0.3))
    path = template(
        tmp_path,
        proxy.url,
        test_id,
        regions=REGIONS_16[:4] + ["ap-south-1", "sa-east-1", "eu-north-1"],
        extra={"ami_copy_parallelism": 3},
    )
    result = stemforge(["build", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count("copy_image attempt") == 4 and "RequestLimitExceeded" in out
    assert "eu-north-1: create_tags attempt 1 failed" in out
    assert proxy.count("CopyImage") == 7
    assert 2 <= proxy.max_inflight["CopyImage"] <= 3, proxy.max_inflight  # the pool is bounded


def test_sigint_mid_copy_removes_everything(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    held = proxy.add(Rule("CopyImage", "ap-southeast-2", "delay", seconds=6.0))
    path = template(tmp_path, proxy.url, test_id)
    env = {**os.environ}
    env.pop("STEMFORGE_FAILPOINTS", None)
    proc = subprocess.Popen(
        [PYTHON, "-m", "stemforge.cli", "build", str(path)],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert held.arrived.wait(180), "the held copy request never arrived"
        deadline = time.monotonic() + 60
        while proxy.count("CopyImage") < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.count("CopyImage") == 15, "the other copies completed while one is held"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out
    assert "Cleanly cancelled builds after being interrupted." in out
    assert "Deregistering the AMI copies and deleting their snapshots in 16 region(s)" in out, out
    name = ami_name_in(out, test_id)
    assert leftovers(clients, name, test_id, proxy) == []


def test_abort_leaves_copies_and_says_where(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    """-on-error=abort is for debugging: nothing is removed and the output lists what was left."""
    test_id = uuid.uuid4().hex[:10]
    proxy.add(Rule("CopyImage", "us-west-1", "fail", seconds=1.0))
    path = template(tmp_path, proxy.url, test_id, regions=["us-east-2", "us-west-1"])
    result = stemforge(["build", "-on-error=abort", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Leaving the AMIs made so far in place (-on-error=abort): " in out
    name = ami_name_in(out, test_id)
    left = [
        i["ImageId"]
        for i in clients["us-east-2"].describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
            "Images"
        ]
    ]
    assert len(left) == 1 and f"us-east-2:{left[0]}" in out
    # clean up what abort left (the test's own hygiene)
    for region in (BUILD_REGION, "us-east-2"):
        for image in clients[region].describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])[
            "Images"
        ]:
            clients[region].deregister_image(ImageId=image["ImageId"])
    tag = [{"Name": "tag:stemforge-test", "Values": [test_id]}]
    c = clients[BUILD_REGION]
    ids = [i["InstanceId"] for r in c.describe_instances(Filters=tag)["Reservations"] for i in r["Instances"]]
    if ids:
        c.terminate_instances(InstanceIds=ids)
    for key in c.describe_key_pairs(Filters=tag)["KeyPairs"]:
        c.delete_key_pair(KeyName=key["KeyName"])
    with contextlib.suppress(Exception):
        for group in c.describe_security_groups(Filters=tag)["SecurityGroups"]:
            c.delete_security_group(GroupId=group["GroupId"])


FAILPOINT_STEPS = [
    "pre_validate",
    "key_pair",
    "security_group",
    "run_instance",
    "provision",
    "stop_instance",
    "modify_instance",
    "create_ami",
    "ami_region_copy",
    "modify_ami_attributes",
    "create_tags",
]


@pytest.mark.parametrize("step", FAILPOINT_STEPS)
def test_failpoint_after_each_step_leaves_nothing(
    step: str, tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    """A failure right after any step (the runner's failpoint) unwinds every cleanup: no AMI or snapshot in any
    region, no key pair, security group or running instance -- even after the last step."""
    test_id = uuid.uuid4().hex[:10]
    path = template(
        tmp_path, proxy.url, test_id, regions=["eu-west-1", "sa-east-1"], extra={"ami_users": ["111122223333"]}
    )
    result = stemforge(["build", str(path)], tmp_path, env={"STEMFORGE_FAILPOINTS": f"after:{step}"})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"failpoint after:{step} fired" in out
    if FAILPOINT_STEPS.index(step) >= FAILPOINT_STEPS.index("create_ami"):
        assert "Deregistering the AMI ami-" in out
    if FAILPOINT_STEPS.index(step) >= FAILPOINT_STEPS.index("ami_region_copy"):
        assert "Deregistering the AMI copies and deleting their snapshots in 2 region(s)" in out
    assert leftovers(clients, ami_name_in(out, test_id), test_id, proxy) == []


# ------------------------------------------------------------------------------------------------ validation

VALIDATION_CASES = [
    (
        {
            "region_kms_key_ids": {"us-east-2": "alias/images"},
            "encrypt_boot": True,
            "ami_regions": ["us-east-2", "eu-west-1"],
        },
        "Region eu-west-1 is in ami_regions but not in region_kms_key_ids",
    ),
    (
        {
            "region_kms_key_ids": {"us-east-2": "alias/a", "eu-west-9": "alias/b"},
            "encrypt_boot": True,
            "ami_regions": ["us-east-2"],
        },
        "Region eu-west-9 is in region_kms_key_ids but not in ami_regions",
    ),
    (
        {"region_kms_key_ids": {"us-east-2": "alias/a"}, "ami_regions": ["us-east-2"]},
        "If you have set either region_kms_key_ids or kms_key_id, encrypt_boot must also be true.",
    ),
    ({"kms_key_id": "not a key!", "encrypt_boot": True}, '"not a key!" is not a valid KMS Key Id.'),
    ({"ami_users": ["111122223333"], "encrypt_boot": True}, "Cannot share AMI encrypted with default KMS key"),
    (
        {
            "ami_users": ["111122223333"],
            "encrypt_boot": True,
            "ami_regions": ["us-east-2"],
            "region_kms_key_ids": {"us-east-2": ""},
        },
        "Cannot share AMI encrypted with default KMS key for other regions",
    ),
    ({"ami_regions": ["us-east-2", "mars-north-1"]}, "ami_regions[1]: Invalid region: mars-north-1"),
    ({"ami_name": "x"}, "ami_name must be between 3 and 128 characters long"),
    ({"ami_name": "bad*name"}, "AMIName should only contain alphanumeric characters"),
    ({"ami_nmae": "typo"}, "unknown configuration key: 'ami_nmae' (did you mean 'ami_name'?)"),
    ({"shutdown_behavior": "hibernate"}, "shutdown_behavior only accepts 'stop' or 'terminate' values."),
    ({"source_ami_filter": {"filters": {"name": "x"}}}, "For security reasons, you must declare an owner."),
    ({"spot_price": "auto"}, "spot_price: not supported by stemforge: spot instances are not supported"),
    ({"communicator": "ssh"}, "An ssh_username must be specified"),
    ({"encrypt_boot": "maybe"}, "'encrypt_boot' expected type 'boolean', got unconvertible type 'string'"),
]


@pytest.mark.parametrize(("extra", "message"), VALIDATION_CASES, ids=[m[:40] for _e, m in VALIDATION_CASES])
def test_option_errors_name_the_key(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    path = template(tmp_path, "http://127.0.0.1:9", "validate", regions=[], extra=extra)
    result = stemforge(["validate", str(path)], tmp_path, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert message in out, out
    assert SECRET not in out


def test_valid_kms_rules_and_clean_resource_name_validate(tmp_path: Path) -> None:
    extra = {
        "encrypt_boot": True,
        "kms_key_id": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "region_kms_key_ids": {
            "us-east-2": "alias/east2",
            "eu-west-1": "mrk-1234abcd12ab34cd56ef1234567890ab",
            "us-east-1": "alias/east1",
        },
        "ami_name": "{{ `Stemforge Ubuntu: 22.04 (jammy)` | clean_resource_name }}-{{timestamp}}",
    }
    path = template(
        tmp_path, "http://127.0.0.1:9", "validate", regions=["us-east-2", "eu-west-1", "us-east-1"], extra=extra
    )
    result = stemforge(["validate", str(path)], tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_name_taken_in_a_copy_region_fails_before_any_ami(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    """Packer checks the name only in the build region; stemforge checks every ami_region too (in the background
    while the instance runs) and stops before creating any AMI."""
    test_id = uuid.uuid4().hex[:10]
    name = f"stemforge-{test_id}-taken"
    taken = clients["eu-west-2"].register_image(Name=name, RootDeviceName="/dev/sda1", VirtualizationType="hvm")
    try:
        path = template(tmp_path, proxy.url, test_id, regions=["us-east-2", "eu-west-2"], extra={"ami_name": name})
        result = stemforge(["build", str(path)], tmp_path)
        out = result.stdout + result.stderr
        assert result.returncode == 1, out
        assert f"Error: AMI Name: '{name}' is used by an existing AMI: {taken['ImageId']} (eu-west-2)" in out
        assert proxy.count("CreateImage") == 0 and proxy.count("CopyImage") == 0
        left = leftovers(clients, name, test_id, proxy)
        assert left == [f"eu-west-2: AMI {taken['ImageId']}"], left
    finally:
        image = clients["eu-west-2"].describe_images(ImageIds=[taken["ImageId"]])["Images"][0]
        clients["eu-west-2"].deregister_image(ImageId=taken["ImageId"])
        for mapping in image["BlockDeviceMappings"]:
            clients["eu-west-2"].delete_snapshot(SnapshotId=mapping["Ebs"]["SnapshotId"])


def test_encrypt_boot_with_region_kms_key_ids(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    """Packer's encryption flow: the AMI made from the instance is an intermediary; it is copied encrypted into the
    build region (kms_key_id) and every ami_region (its region_kms_key_ids entry, "" = the region's default key),
    then removed with its snapshots."""
    test_id = uuid.uuid4().hex[:10]
    keys = {"us-east-2": "alias/east-2-images", "eu-west-1": ""}
    extra = {
        "encrypt_boot": True,
        "kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "region_kms_key_ids": keys,
    }
    path = template(tmp_path, proxy.url, test_id, regions=list(keys), extra=extra)
    result = stemforge(["build", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    copies = {region: params for action, region, params in proxy.requests if action == "CopyImage"}
    assert sorted(copies) == sorted([BUILD_REGION, *keys])
    assert all(p["Encrypted"] == "true" for p in copies.values())
    assert copies[BUILD_REGION]["KmsKeyId"] == extra["kms_key_id"]
    assert copies["us-east-2"]["KmsKeyId"] == "alias/east-2-images"
    assert "KmsKeyId" not in copies["eu-west-1"]
    intermediary = [i for r, i in proxy.images if r == BUILD_REGION][0]
    assert all(p["SourceImageId"] == intermediary for p in copies.values())
    assert "Deregistering the intermediary AMI" in out
    name = ami_name_in(out, test_id)
    left = leftovers(clients, name, test_id, proxy)
    amis = [line for line in left if ": AMI ami-" in line]
    assert len(amis) == 3 and not any(intermediary in line for line in left), left
    for line in amis:
        region, _, ami = line.replace(": AMI ", " ").partition(" ")
        clients[region].deregister_image(ImageId=ami)


def test_skip_save_build_region_keeps_only_the_copies(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    manifest = tmp_path / "m.json"
    path = template(
        tmp_path,
        proxy.url,
        test_id,
        regions=["eu-west-1", "ap-south-1"],
        extra={
            "skip_save_build_region": True,
            "ena_support": True,
            "sriov_support": True,
            "ami_users": ["111122223333"],
            "ami_groups": ["all"],
        },
        post=[{"type": "manifest", "output": str(manifest)}],
    )
    result = stemforge(["build", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    modify = [params for action, _r, params in proxy.requests if action == "ModifyInstanceAttribute"]
    assert {"EnaSupport.Value": "true"}.items() <= modify[-1].items(), modify
    assert any(p.get("SriovNetSupport.Value") == "simple" for p in modify), modify
    assert "Enabling Enhanced Networking (ENA)..." in out
    artifact_id = json.loads(manifest.read_text())["builds"][0]["artifact_id"]
    assert [p.split(":")[0] for p in artifact_id.split(",")] == ["ap-south-1", "eu-west-1"]
    name = ami_name_in(out, test_id)
    assert (
        clients[BUILD_REGION].describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
        == []
    )
    for pair in artifact_id.split(","):
        region, ami = pair.split(":")
        permissions = clients[region].describe_image_attribute(ImageId=ami, Attribute="launchPermission")
        assert {"UserId": "111122223333"} in permissions["LaunchPermissions"]
        assert {"Group": "all"} in permissions["LaunchPermissions"]
        clients[region].deregister_image(ImageId=ami)


def test_force_deregister_replaces_existing_amis_and_snapshots(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    test_id = uuid.uuid4().hex[:10]
    name = f"stemforge-{test_id}-fixed"
    old: dict[str, tuple[str, str]] = {}
    for region in (BUILD_REGION, "us-west-2"):
        c = clients[region]
        zone = c.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
        volume = c.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
        snap = c.create_snapshot(VolumeId=volume)["SnapshotId"]
        c.delete_volume(VolumeId=volume)
        image = c.register_image(
            Name=name,
            RootDeviceName="/dev/sda1",
            VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": snap}}],
        )["ImageId"]
        c.delete_snapshot(SnapshotId=snap)
        # (moto gives every registered image a snapshot of its own and reports that one)
        described = c.describe_images(ImageIds=[image])["Images"][0]
        old[region] = (image, described["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"])
    extra = {"ami_name": name, "force_deregister": True, "force_delete_snapshot": True}
    path = template(tmp_path, proxy.url, test_id, regions=["us-west-2"], extra=extra)
    result = stemforge(["build", str(path)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for region, (image, snap) in old.items():
        c = clients[region]
        assert f"Deregistered AMI id: {image} ({region})" in out and f"Deleted snapshot: {snap} ({region})" in out
        assert c.describe_images(Filters=[{"Name": "image-id", "Values": [image]}])["Images"] == []
        assert c.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [snap]}])["Snapshots"] == []
        new = c.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
        assert len(new) == 1
        c.deregister_image(ImageId=new[0]["ImageId"])


def test_given_vpc_subnet_and_security_groups_are_used(
    tmp_path: Path, moto_endpoint: str, clients: dict[str, Any], proxy: Ec2FaultProxy
) -> None:
    """With subnet_id and security_group_ids no temporary security group is made; the instance runs there."""
    test_id = uuid.uuid4().hex[:10]
    c = clients[BUILD_REGION]
    vpc = c.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = c.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    group = c.create_security_group(GroupName=f"build-{test_id}", Description="builds", VpcId=vpc)["GroupId"]
    try:
        extra = {"vpc_id": vpc, "subnet_id": subnet, "security_group_ids": [group]}
        path = template(tmp_path, proxy.url, test_id, regions=[], extra=extra)
        result = stemforge(["build", str(path)], tmp_path)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        assert f"Using specified security groups: {group}" in out
        assert "Creating temporary security group" not in out
        run = [params for action, _r, params in proxy.requests if action == "RunInstances"][0]
        assert run["SubnetId"] == subnet and run["SecurityGroupId.1"] == group
        assert c.describe_security_groups(GroupIds=[group])["SecurityGroups"], "a given group is never deleted"
        name = ami_name_in(out, test_id)
        for image in c.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]:
            c.deregister_image(ImageId=image["ImageId"])
        # a subnet that is not in vpc_id is refused before anything is made
        other = c.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
        path = template(tmp_path, proxy.url, test_id, regions=[], extra={**extra, "vpc_id": other})
        result = stemforge(["build", str(path)], tmp_path)
        assert result.returncode == 1
        assert f"subnet_id {subnet} is in {vpc}, not in vpc_id {other}" in result.stdout + result.stderr
        c.delete_vpc(VpcId=other)
    finally:
        c.delete_security_group(GroupId=group)
        c.delete_subnet(SubnetId=subnet)
        c.delete_vpc(VpcId=vpc)
