"""The AWS test environment (terraform/aws) made and destroyed by the real terraform and hashicorp/aws provider
against the loopback moto server: metadata checked against moto, nothing left after destroy, a failed ``up``
rolled back, ``stemforge env`` end to end, and Terraform's own debug log proving every request went to loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from terraform.env import Environment, EnvironmentError, EnvironmentSpec
from tests.harness.terraform import aws_environment

pytestmark = [pytest.mark.terraform, pytest.mark.aws]

REGION = "us-east-1"
REQUIRED_KEYS = {
    "vpc_id",
    "region",
    "az",
    "subnet_id",
    "manual_subnet_id",
    "internal_cidr",
    "internal_gw",
    "reserved_range",
    "static_range",
    "default_security_groups",
    "default_key_name",
    "images_bucket",
    "blobstore_bucket",
    "dns_recursor_ip",
    "internal_ip",
    "network_static_ip_1",
    "network_static_ip_2",
    "external_ip",
    "bats_eip",
    "manual_cidr",
    "manual_gw",
    "manual_static_range",
}


def clients(endpoint: str) -> tuple[Any, Any]:
    kw = {
        "endpoint_url": endpoint,
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing-secret",
    }
    return boto3.client("ec2", **kw), boto3.client("s3", **kw)


def leftovers(endpoint: str, prefix: str) -> list[str]:
    """Everything in moto that the environment ``prefix`` makes (by its tag or its name); KMS keys count until they
    are scheduled for deletion and VPC endpoints until they are deleted (AWS lists both for a while)."""
    ec2, s3 = clients(endpoint)
    kw = {
        "endpoint_url": endpoint,
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing-secret",
    }
    iam, kms, elbv2 = (boto3.client(name, **kw) for name in ("iam", "kms", "elbv2"))
    tag = [{"Name": "tag:stemforge-env", "Values": [prefix]}]
    found = [v["VpcId"] for v in ec2.describe_vpcs(Filters=tag)["Vpcs"]]
    found += [s["SubnetId"] for s in ec2.describe_subnets(Filters=tag)["Subnets"]]
    found += [
        g["GroupId"]
        for g in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"allow_all-{prefix}"]}])[
            "SecurityGroups"
        ]
    ]
    found += [g["InternetGatewayId"] for g in ec2.describe_internet_gateways(Filters=tag)["InternetGateways"]]
    found += [r["RouteTableId"] for r in ec2.describe_route_tables(Filters=tag)["RouteTables"]]
    found += [a["AllocationId"] for a in ec2.describe_addresses(Filters=tag)["Addresses"]]
    found += [
        e["VpcEndpointId"]
        for e in ec2.describe_vpc_endpoints(Filters=tag)["VpcEndpoints"]
        if e["State"].lower() != "deleted"
    ]  # AWS (and moto) list deleted endpoints for a while
    found += [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"] == prefix]
    found += [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(prefix + "-")]
    found += [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(prefix)]
    found += [
        p["InstanceProfileName"]
        for p in iam.list_instance_profiles()["InstanceProfiles"]
        if p["InstanceProfileName"].startswith(prefix)
    ]
    for key in kms.list_keys()["Keys"]:
        meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        if meta.get("Description") == f"{prefix}-kms-key" and meta["KeyState"] != "PendingDeletion":
            found.append(meta["Arn"])
    found += [
        lb["LoadBalancerArn"]
        for lb in elbv2.describe_load_balancers()["LoadBalancers"]
        if lb["LoadBalancerName"].startswith(prefix + "-")
    ]
    found += [
        tg["TargetGroupArn"]
        for tg in elbv2.describe_target_groups()["TargetGroups"]
        if tg["TargetGroupName"].startswith(prefix + "-")
    ]
    return found


def resource_counts(lines: list[str]) -> tuple[int, int]:
    """(resources added by the last apply, resources destroyed by the last destroy) from progress lines."""
    added = [int(m.group(1)) for line in lines if (m := re.search(r"Apply complete! Resources: (\d+) added", line))]
    gone = [
        int(m.group(1)) for line in lines if (m := re.search(r"Destroy complete! Resources: (\d+) destroyed", line))
    ]
    return (added[-1] if added else -1), (gone[-1] if gone else -1)


def first_last(iprange: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    first, last = iprange.split("-")
    return ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)


def check_against_moto(endpoint: str, prefix: str, md: dict[str, Any]) -> None:
    ec2, s3 = clients(endpoint)
    assert set(md) >= REQUIRED_KEYS, REQUIRED_KEYS - set(md)
    assert md["region"] == REGION
    vpc = ec2.describe_vpcs(VpcIds=[md["vpc_id"]])["Vpcs"][0]
    assert vpc["CidrBlock"] == md["internal_cidr"]
    assert {"Key": "stemforge-env", "Value": prefix} in vpc["Tags"]
    net = ipaddress.IPv4Network(md["internal_cidr"])
    assert ipaddress.IPv4Address(md["internal_gw"]) == net.network_address + 1
    for key in ("reserved_range", "static_range"):
        lo, hi = first_last(md[key])
        assert lo in net and hi in net and lo <= hi
    assert first_last(md["reserved_range"])[1] < first_last(md["static_range"])[0]
    subnets = {
        s["SubnetId"]: s for s in ec2.describe_subnets(SubnetIds=[md["subnet_id"], md["manual_subnet_id"]])["Subnets"]
    }
    dynamic, manual = subnets[md["subnet_id"]], subnets[md["manual_subnet_id"]]
    assert md["subnet_id"] != md["manual_subnet_id"]
    for subnet in (dynamic, manual):
        assert subnet["VpcId"] == md["vpc_id"] and subnet["AvailabilityZone"] == md["az"]
        assert ipaddress.IPv4Network(subnet["CidrBlock"]).subnet_of(net)
    assert manual["CidrBlock"] == md["manual_cidr"]
    assert ipaddress.IPv4Address(md["manual_gw"]) == ipaddress.IPv4Network(md["manual_cidr"]).network_address + 1
    lo, hi = first_last(md["manual_static_range"])
    assert lo in ipaddress.IPv4Network(md["manual_cidr"]) and hi in ipaddress.IPv4Network(md["manual_cidr"])
    for address in (md["network_static_ip_1"], md["network_static_ip_2"]):
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(dynamic["CidrBlock"])
    groups = ec2.describe_security_groups(GroupIds=md["default_security_groups"])["SecurityGroups"]
    assert [g["VpcId"] for g in groups] == [md["vpc_id"]]
    assert groups[0]["GroupName"] == f"allow_all-{prefix}"
    assert ec2.describe_key_pairs(KeyNames=[md["default_key_name"]])["KeyPairs"][0]["KeyName"] == prefix
    addresses = ec2.describe_addresses(PublicIps=[md["external_ip"], md["bats_eip"]])["Addresses"]
    assert len(addresses) == 2
    for bucket in (md["images_bucket"], md["blobstore_bucket"]):
        s3.head_bucket(Bucket=bucket)
        assert bucket.startswith(prefix + "-")
    kw = {
        "endpoint_url": endpoint,
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing-secret",
    }
    iam, kms = boto3.client("iam", **kw), boto3.client("kms", **kw)
    profile = iam.get_instance_profile(InstanceProfileName=md["iam_instance_profile"])["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] and profile["Roles"][0]["RoleName"].startswith(prefix)
    assert kms.describe_key(KeyId=md["aws_kms_key_arn"])["KeyMetadata"]["KeyState"] == "Enabled"


def request_hosts(log: str) -> list[str]:
    """Hosts of every HTTP request the AWS provider logged (TF_LOG=DEBUG: 'HTTP Request Sent' with http.url)."""
    return re.findall(r"http\.url=https?://([^/:\s\"]+)", log)


def test_environment_up_converge_metadata_down_against_moto(moto_endpoint: str, tmp_path: Path) -> None:
    prefix = "sf-tf-life"
    tf_log = tmp_path / "terraform-debug.log"
    env = {**os.environ, "TF_LOG": "DEBUG", "TF_LOG_PATH": str(tf_log)}
    lines: list[str] = []
    with aws_environment(moto_endpoint, tmp_path, prefix, env=env, sink=lines.append, load_balancers=True) as md:
        check_against_moto(moto_endpoint, prefix, md)
        elbv2 = boto3.client("elbv2", endpoint_url=moto_endpoint, region_name=REGION)
        alb = elbv2.describe_load_balancers(LoadBalancerArns=[md["alb"]])["LoadBalancers"][0]
        assert alb["VpcId"] == md["vpc_id"] and alb["Type"] == "application"
        assert elbv2.describe_target_groups(Names=[md["alb_target_group"]])["TargetGroups"][0]["VpcId"] == md["vpc_id"]
        directory = tmp_path / prefix
        assert json.loads((directory / "environment" / "metadata").read_text()) == md
        assert (directory / "environment" / "default_key.pem").stat().st_mode & 0o077 == 0
        assert (directory / "terraform" / "terraform.tfvars.json").stat().st_mode & 0o077 == 0
        assert Environment(directory, env=env).metadata() == md
        assert sorted(leftovers(moto_endpoint, prefix))  # the environment is there...
        # a second up over the live environment converges: nothing changes, same metadata
        again: list[str] = []
        spec = EnvironmentSpec(name=prefix, endpoint=moto_endpoint, load_balancers=True)
        assert Environment(directory, env=env, sink=again.append).up(spec) == md
        assert any("Apply complete! Resources: 0 added, 0 changed, 0 destroyed" in line for line in again)
        out = subprocess.run(
            [sys.executable, "-m", "stemforge.cli", "env", "metadata", prefix],
            env={**env, "STEMFORGE_ENV_ROOT": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(out.stdout) == md
    assert leftovers(moto_endpoint, prefix) == []  # ...and gone afterwards
    assert not (tmp_path / prefix).exists()
    added, destroyed = resource_counts(lines)
    assert added >= 20 and destroyed == added
    assert all(re.match(r"env sf-tf-life: \[ *\d+\.\d+s\] ", line) for line in lines)

    log = tf_log.read_text()
    hosts = request_hosts(log)
    assert len(hosts) > 50  # every create, read and delete went through the log...
    assert set(hosts) == {"127.0.0.1"}  # ...and to loopback only
    assert "Explicit provider installation configuration is set" in log
    assert not re.search(r"\b(GET|HEAD|POST)\s+https?://(?!127\.0\.0\.1)", log)  # no registry or checkpoint request
    assert "Checkpoint disabled" in log


def test_failed_up_destroys_what_it_made(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "sf-tf-fail"
    monkeypatch.setenv("STEMFORGE_FAILPOINTS", "after:apply")  # everything is made, then the run fails
    lines: list[str] = []
    environment = Environment(tmp_path / prefix, sink=lines.append)
    spec = EnvironmentSpec(name=prefix, endpoint=moto_endpoint, load_balancers=False)
    with pytest.raises(EnvironmentError, match="what it made was destroyed"):
        environment.up(spec)
    added, destroyed = resource_counts(lines)
    assert added > 0 and destroyed == added
    assert leftovers(moto_endpoint, prefix) == []
    assert not (tmp_path / prefix).exists()


def test_stemforge_env_cli_keep_on_failure_down_is_idempotent_and_logs_are_redacted(
    moto_endpoint: str, tmp_path: Path
) -> None:
    prefix = "sf-tf-cli"
    # not AKIA-shaped: the provider masks those itself, this one only our redaction hides
    access_key, secret_key = "sf-test-access-key-0123", "sf-secret/tf+cli=0123456789abcdef"
    env = {
        **os.environ,
        "STEMFORGE_ENV_ROOT": str(tmp_path / "envs"),
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "TF_LOG": "DEBUG",
        "STEMFORGE_FAILPOINTS": "after:apply",
    }
    env.pop("TF_LOG_PATH", None)

    def stemforge(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stemforge.cli", "env", *args],
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    up = stemforge("up", prefix, "--endpoint", moto_endpoint, "--keep-on-failure", "--no-load-balancers")
    assert up.returncode == 1, up.stderr[-3000:]
    assert f"kept in {tmp_path / 'envs' / prefix}" in up.stderr and f"stemforge env down {prefix}" in up.stderr
    # TF_LOG=DEBUG on stderr holds the SigV4 credential scope (the access key) of every request: all redacted
    assert "Credential=<redacted>/" in up.stderr
    assert access_key not in up.stderr and secret_key not in up.stderr and access_key not in up.stdout
    assert leftovers(moto_endpoint, prefix)  # kept for debugging

    meta = stemforge("metadata", prefix)
    assert meta.returncode == 1 and "no metadata" in meta.stderr

    down = stemforge("down", prefix, extra={"TF_LOG": ""})
    assert down.returncode == 0, down.stderr[-3000:]
    added, _ = resource_counts(up.stderr.splitlines())
    assert resource_counts(down.stderr.splitlines())[1] == added > 0
    assert leftovers(moto_endpoint, prefix) == []
    assert not (tmp_path / "envs" / prefix).exists()
    again = stemforge("down", prefix)
    assert again.returncode == 0 and "nothing to destroy" in again.stderr


def test_ctrl_c_during_apply_destroys_what_was_made(moto_endpoint: str, tmp_path: Path) -> None:
    """SIGINT to ``stemforge env up`` while resources are being created: terraform is stopped cleanly (state
    saved), what it made is destroyed, the directory removed, exit status 130."""
    prefix = "sf-tf-int"
    env = {**os.environ, "STEMFORGE_ENV_ROOT": str(tmp_path / "envs")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stemforge.cli",
            "env",
            "up",
            prefix,
            "--endpoint",
            moto_endpoint,
            "--no-load-balancers",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 300
        for line in proc.stderr:
            seen.append(line)
            if "Creation complete" in line or time.monotonic() > deadline:
                break
        assert any("Creation complete" in line for line in seen), "".join(seen)[-2000:]
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
        seen.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen)
    assert proc.returncode == 130, err[-3000:]
    assert "what it made was destroyed" in err and "Interrupted." in err
    assert leftovers(moto_endpoint, prefix) == [], err
    assert not (tmp_path / "envs" / prefix).exists()


def test_failed_up_whose_destroy_fails_keeps_the_state_for_down(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollback's own failure (terraform destroy exiting 1, injected by a wrapper around the real binary) keeps
    the directory and the state, says so, and a later ``down`` with the real terraform removes everything."""
    prefix = "sf-tf-keep"
    real = shutil.which("terraform")
    assert real
    wrapper = tmp_path / "bin" / "terraform"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = destroy ]; then echo "Error: injected destroy failure" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("STEMFORGE_FAILPOINTS", "after:apply")
    directory = tmp_path / "envs" / prefix
    environment = Environment(directory, terraform_binary=str(wrapper), sink=lambda line: None)
    with pytest.raises(EnvironmentError) as info:
        environment.up(EnvironmentSpec(name=prefix, endpoint=moto_endpoint, load_balancers=False))
    message = str(info.value)
    assert "destroying what it made failed too" in message and "injected destroy failure" in message
    assert f"retry `stemforge env down {prefix}`" in message
    assert environment.has_state() and leftovers(moto_endpoint, prefix)
    monkeypatch.delenv("STEMFORGE_FAILPOINTS")
    assert Environment(directory, sink=lambda line: None).down() is True
    assert leftovers(moto_endpoint, prefix) == [] and not directory.exists()
