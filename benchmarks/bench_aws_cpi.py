#!/usr/bin/env python3
"""AWS CPI: a create_vm + delete_vm round trip through ``bin/cpi`` against a loopback moto server, versus the floor:
a bare boto3 script doing only ``run_instances`` (+ polling until running) and ``terminate_instances`` (+ polling
until terminated). Target: the CPI's round trip <= 1.5x the floor (medians).

A round trip is what the director pays: two CPI processes (create_vm, delete_vm), each a fresh interpreter under
the director's stripped environment that reads the request, validates it, loads the config, builds the boto3 client
and makes its calls (create_vm: DescribeImages, DescribeSubnets, RunInstances, DescribeInstances until running;
delete_vm: DescribeInstances, TerminateInstances, DescribeInstances until terminated). The floor runs the same
shape: two fresh ``python -I`` processes of a bare boto3 script (one RunInstances + polls, one TerminateInstances +
polls), same instance type, subnet, security group, key and user-data size. A third line, for information, does
both bare calls in one process (what a long-lived client would pay).

Runs are interleaved (one of each per round, order rotated every round, one warm-up round discarded), all against
one moto server (``moto.server.ThreadedMotoServer`` on 127.0.0.1, port picked by the kernel) in this process; every
answer is checked (a running instance after create, terminated after delete). Everything is removed at the end.

Run: ``.venv/bin/python benchmarks/bench_aws_cpi.py [--rounds 15]``; ``--quick`` runs 3 rounds (smoke test);
``--strict`` exits 1 on a MISS. Exit status 2 when a call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stemforge_base.cpi_client import DIRECTOR_ENV  # noqa: E402 - after the path set-up

TARGET_RATIO = 1.5
REGION = "us-east-1"

BARE_SCRIPT = r"""
import json, sys, time
import boto3
from botocore.config import Config
cfg = json.loads(sys.argv[2])
ec2 = boto3.client("ec2", endpoint_url=cfg["endpoint"], region_name=cfg["region"], aws_access_key_id="testing",
                   aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))

def wait(instance_id, state):
    while True:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if found["State"]["Name"] == state:
            return
        time.sleep(0.04)

def run():
    r = ec2.run_instances(ImageId=cfg["ami"], InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=cfg["key"],
                          UserData=cfg["user_data"], NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": cfg["subnet"],
                          "Groups": [cfg["group"]]}])
    instance_id = r["Instances"][0]["InstanceId"]
    wait(instance_id, "running")
    return instance_id

def terminate(instance_id):
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait(instance_id, "terminated")

if sys.argv[1] == "create":
    print(run())
elif sys.argv[1] == "delete":
    terminate(sys.argv[3])
else:
    terminate(run())
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))]


class Bench:
    def __init__(self, work: Path, endpoint: str) -> None:
        import boto3

        self.work = work
        self.endpoint = endpoint
        self.ec2 = boto3.client(
            "ec2",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        zone = sorted(z["ZoneName"] for z in self.ec2.describe_availability_zones()["AvailabilityZones"])[0]
        self.vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet = self.ec2.create_subnet(VpcId=self.vpc, CidrBlock="10.0.0.0/24", AvailabilityZone=zone)["Subnet"][
            "SubnetId"
        ]
        self.group = self.ec2.create_security_group(GroupName="bench", Description="bench", VpcId=self.vpc)["GroupId"]
        self.ec2.create_key_pair(KeyName="bench")
        volume = self.ec2.create_volume(Size=3, AvailabilityZone=zone)["VolumeId"]
        snapshot = self.ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
        self.ec2.delete_volume(VolumeId=volume)
        self.ami = self.ec2.register_image(
            Name="bench-stemcell",
            Architecture="x86_64",
            RootDeviceName="/dev/xvda",
            VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
        )["ImageId"]
        self.wrapper = self._wrapper()
        self.script = work / "bare_boto3.py"
        self.script.write_text(BARE_SCRIPT)
        self.networks = {"default": {"type": "dynamic", "cloud_properties": {"subnet": self.subnet}}}
        self.env = {"bosh": {"password": "bench-password", "tags": {"bench": "aws-cpi"}}}
        self.bare_cfg = json.dumps(
            {
                "endpoint": endpoint,
                "region": REGION,
                "ami": self.ami,
                "key": "bench",
                "subnet": self.subnet,
                "group": self.group,
                "user_data": "x" * 900,
            }
        )

    def _wrapper(self) -> Path:
        from cpi.wrapper import write_wrapper

        config = {
            "cloud": {
                "plugin": "aws",
                "properties": {
                    "aws": {
                        "region": REGION,
                        "endpoint": self.endpoint,
                        "access_key_id": "testing",
                        "secret_access_key": "testing",
                        "default_key_name": "bench",
                        "default_security_groups": [self.group],
                        "poll_interval": 0.2,
                        "wait_timeout": 120,
                    },
                    "agent": {
                        "mbus": "nats://nats:pw@10.0.0.6:4222",
                        "ntp": ["169.254.169.123"],
                        "blobstore": {"provider": "dav", "options": {"endpoint": "http://10.0.0.6:25250"}},
                    },
                },
            }
        }
        path = self.work / "cpi.json"
        path.write_text(json.dumps(config))
        return write_wrapper(path, self.work / "job")

    def cpi(self, method: str, *arguments: Any) -> Any:
        request = {
            "method": method,
            "arguments": list(arguments),
            "api_version": 2,
            "context": {"director_uuid": "bench", "request_id": f"cpi-{uuid.uuid4().int % 10**6}"},
        }
        proc = subprocess.run(
            [str(self.wrapper)],
            input=json.dumps(request).encode(),
            capture_output=True,
            env=DIRECTOR_ENV,
            timeout=300,
            check=False,
        )
        response = json.loads(proc.stdout)
        if response["error"] is not None:
            raise RuntimeError(f"{method}: {response['error']['message']}")
        return response["result"]

    def state(self, instance_id: str) -> str:
        found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return str(found["State"]["Name"])

    def round_trip_cpi(self) -> float:
        started = time.monotonic()
        vm_cid, _ = self.cpi(
            "create_vm",
            f"agent-{uuid.uuid4().hex[:8]}",
            f"{self.ami} light",
            {"instance_type": "t3.micro"},
            self.networks,
            [],
            self.env,
        )
        created = time.monotonic()
        if self.state(vm_cid) != "running":
            raise RuntimeError(f"create_vm answered {vm_cid}, which is not running")
        paused = time.monotonic() - created
        self.cpi("delete_vm", vm_cid)
        elapsed = time.monotonic() - started - paused
        if self.state(vm_cid) != "terminated":
            raise RuntimeError(f"delete_vm left {vm_cid} {self.state(vm_cid)}")
        return elapsed

    def _bare(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-I", str(self.script), args[0], self.bare_cfg, *args[1:]],
            capture_output=True,
            text=True,
            env=DIRECTOR_ENV,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bare boto3 script failed: {proc.stderr[-2000:]}")
        return proc.stdout.strip()

    def round_trip_bare(self) -> float:
        started = time.monotonic()
        instance_id = self._bare("create")
        created = time.monotonic()
        if self.state(instance_id) != "running":
            raise RuntimeError(f"bare run_instances left {instance_id} not running")
        paused = time.monotonic() - created
        self._bare("delete", instance_id)
        elapsed = time.monotonic() - started - paused
        if self.state(instance_id) != "terminated":
            raise RuntimeError(f"bare terminate left {instance_id} running")
        return elapsed

    def round_trip_bare_one_process(self) -> float:
        started = time.monotonic()
        self._bare("both")
        return time.monotonic() - started

    def cleanup(self) -> None:
        for reservation in self.ec2.describe_instances(Filters=[{"Name": "vpc-id", "Values": [self.vpc]}])[
            "Reservations"
        ]:
            ids = [i["InstanceId"] for i in reservation["Instances"] if i["State"]["Name"] != "terminated"]
            if ids:
                self.ec2.terminate_instances(InstanceIds=ids)


def run(args: argparse.Namespace) -> int:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    variants = {
        "cpi (2 processes)": "round_trip_cpi",
        "bare boto3 (2 processes)": "round_trip_bare",
        "bare boto3 (1 process)": "round_trip_bare_one_process",
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-aws-cpi-") as tmp:
            bench = Bench(Path(tmp), f"http://{host}:{port}")
            try:
                names = list(variants)
                for index in range(args.rounds + 1):
                    order = names[index % len(names) :] + names[: index % len(names)]
                    for name in order:
                        seconds = getattr(bench, variants[name])()
                        if index > 0:  # round 0 warms caches (moto's lazy loading, the page cache)
                            times[name].append(seconds)
                    if index:
                        print(
                            f"round {index}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names),
                            flush=True,
                        )
            finally:
                bench.cleanup()
    finally:
        server.stop()
    floor = statistics.median(times["bare boto3 (2 processes)"])
    cpi = statistics.median(times["cpi (2 processes)"])
    ratio = cpi / floor
    load = os.getloadavg()[0]
    print(
        f"\n=== bench_aws_cpi summary ({args.rounds} rounds, create_vm + delete_vm against moto on 127.0.0.1; "
        f"load average {load:.1f}; target <= {TARGET_RATIO}x the 2-process floor) ==="
    )
    print(f"{'variant':<28}{'median':>10}{'p90':>10}{'ratio':>9}")
    for name in variants:
        values = times[name]
        print(
            f"{name:<28}{statistics.median(values):>9.3f}s{percentile(values, 90):>9.3f}s"
            f"{statistics.median(values) / floor:>8.2f}x"
        )
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"cpi round trip / bare boto3 round trip: {ratio:.2f}x  {verdict}")
    return 1 if args.strict and verdict == "MISS" else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds (smoke test)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - a failed call is a benchmark failure, reported plainly
        print(f"bench_aws_cpi: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
