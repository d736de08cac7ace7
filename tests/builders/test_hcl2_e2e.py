"""End to end: the HCL2 directory template ``tests/templates/hcl2/e2e`` (variables, locals, a ``dynamic`` block,
a ``data "amazon-ami"`` answered by the loopback moto server, two ``source`` overrides in one build block) built by
``stemforge build`` as users run it: the ``qemu`` build boots the test image under TCG, the ``amazon-ebs`` build
runs against moto; one manifest lists both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.qemu import cached_test_image, qemu_pids

TEMPLATE = Path(__file__).parents[1] / "templates" / "hcl2" / "e2e"
SECRET = "hcl2-e2e-secret-key-never-printed"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hcl2_directory_builds_qemu_and_amazon_ebs(tmp_path: Path, moto_endpoint: str) -> None:
    import boto3

    image = cached_test_image()
    out = tmp_path / "out"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PKR_VAR_aws_secret_key": SECRET, "PYTHONUNBUFFERED": "1"}
    env.pop("STEMFORGE_FAILPOINTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "build", "-var", f"image={image}", "-var", f"out={out}",
         "-var", f"ec2_endpoint={moto_endpoint}", "-var", "test_id=hcl2e2e", str(TEMPLATE)],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=540, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]
    assert SECRET not in text
    assert "provisioned amazon-ebs.ami with <sensitive>" in text
    manifest = json.loads((out / "manifest.json").read_text())
    builds = {b["name"]: b for b in manifest["builds"]}
    assert sorted(builds) == ["ami", "tcg"]
    assert builds["tcg"]["builder_type"] == "qemu"
    qcow2 = out / "output-tcg" / "stemforge-hcl2e2e-tcg.qcow2"
    assert qcow2.is_file() and [f["name"] for f in builds["tcg"]["files"]] == [str(qcow2)]
    assert qemu_pids(str(out)) == []

    region, ami_id = builds["ami"]["artifact_id"].split(":")
    assert region == "us-east-1"
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint)
    image_info = ec2.describe_images(ImageIds=[ami_id])["Images"][0]
    assert image_info["Name"].startswith("stemforge-hcl2e2e-ami ")
    tags = {t["Key"]: t["Value"] for t in image_info.get("Tags", [])}
    assert tags["stemforge-test"] == "hcl2e2e" and tags["base"].startswith("ubuntu/images/")
    source_ami = ec2.describe_images(Filters=[{"Name": "name", "Values": [tags["base"]]}],
                                     Owners=["099720109477"])["Images"][0]["ImageId"]
    assert image_info["Description"] == f"from {source_ami} by ami"
    # the build instance (launched with the dynamic block's volumes, see test_hcl2_template) is gone
    instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                 if i.get("ImageId") == source_ami]
    assert instances and all(i["State"]["Name"] == "terminated" for i in instances)
    assert list(tmpdir.iterdir()) == []
