"""ci/tasks/e2e.sh run outside Concourse, as its task would run it: a directory holding ``environment/metadata``
(here a network made with boto3 in a loopback moto server) and the ``stemforge-src`` input. The template builds an
AMI copied to two more regions and a light stemcell; a VM comes up from it through the CPI; then the VM, the
stemcell and every AMI and snapshot are gone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")

pytestmark = [pytest.mark.aws]


def test_e2e_task_outside_concourse(tmp_path: Path, moto_endpoint: str) -> None:
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="e2e", Description="e2e", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="e2e-key")
    (tmp_path / "environment").mkdir()
    (tmp_path / "environment" / "metadata").write_text(
        json.dumps(
            {
                "region": "us-east-1",
                "subnet_id": subnet,
                "default_security_groups": [group],
                "default_key_name": "e2e-key",
                "az": "us-east-1a",
            }
        )
    )
    (tmp_path / "environment" / "name").write_text("e2e-test\n")
    (tmp_path / "e2e-output").mkdir()
    (tmp_path / "stemforge-src").symlink_to(ROOT, target_is_directory=True)

    def snapshots() -> dict[str, set[str]]:
        return {
            region: {
                snap["SnapshotId"]
                for snap in boto3.client("ec2", region_name=region, endpoint_url=moto_endpoint).describe_snapshots(
                    OwnerIds=["self"]
                )["Snapshots"]
            }
            for region in REGIONS
        }

    before = snapshots()  # moto's own AMIs come with snapshots
    env = {
        **os.environ,
        "AWS_ENDPOINT": moto_endpoint,
        "REGIONS": ",".join(REGIONS[1:]),
        "TEMPLATE": "ci/templates/e2e-aws.json",
    }
    proc = subprocess.run(
        ["stemforge-src/ci/tasks/e2e.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Copied ami-" in out and "to 2 region(s)" in out
    assert "create_vm -> i-" in out and f"on {subnet}" in out and "-> true" in out
    assert "e2e VM: passed" in out and out.rstrip().endswith("e2e passed")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out
    stemcells = list((tmp_path / "e2e-output").glob("light-bosh-stemcell-*.tgz"))
    assert len(stemcells) == 1

    # nothing is left: no image or new snapshot in any region, no running instance
    assert snapshots() == before
    for region in REGIONS:
        client = boto3.client("ec2", region_name=region, endpoint_url=moto_endpoint)
        mine = [i["ImageId"] for i in client.describe_images(Owners=["self"])["Images"]]
        assert mine == [], (region, mine)
        running = [
            i["InstanceId"]
            for r in client.describe_instances()["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] not in ("terminated", "shutting-down")
        ]
        assert running == [], (region, running)
