"""The light AWS stemcell from an ``amazon-ebs`` build, end to end against the loopback moto server: ``stemforge
build`` runs amazon-ebs to 3 regions, then the ``stemcell`` post-processor writes a light stemcell whose
``stemcell.MF`` maps every region to its AMI; ``stemforge stemcell inspect|verify`` read it; the AWS CPI (``bin/cpi``
as the director runs it, in an environment built in moto) answers ``"<ami> light"`` in a region the map has and a
CloudError naming the regions present in one it lacks; the AMIs survive the post-processor chain."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.aws import ec2_client, make_cpi, moto_amazon_ebs
from tests.harness.builds import stemforge

pytestmark = pytest.mark.aws

REGIONS = ["us-west-2", "eu-west-1"]


def test_light_aws_stemcell_from_amazon_ebs_read_by_stemcells_and_the_cpi(tmp_path: Path, moto_endpoint: str) -> None:
    from stemcells.tarball import extract_stemcell, read_stemcell, verify_stemcell

    test_id = uuid.uuid4().hex[:8]
    out_dir = tmp_path / "stemcells"
    manifest = tmp_path / "packer-manifest.json"
    doc: dict[str, Any] = {
        "variables": {"version": "1.{{timestamp}}"},
        "builders": [
            moto_amazon_ebs(
                moto_endpoint,
                {
                    "communicator": "none",
                    "ami_regions": REGIONS,
                    "ami_name": f"bosh-aws-xen-hvm-ubuntu-jammy-go_agent {test_id}",
                    "tags": {"stemforge-test": test_id},
                    "aws_polling": {"delay_seconds": 1},
                },
            )
        ],
        "post-processors": [
            [
                {"type": "stemcell", "version": "1.42", "os": "ubuntu-jammy", "output_directory": str(out_dir)},
                {"type": "manifest", "output": str(manifest)},
            ]
        ],
    }
    template = tmp_path / "stemcell.json"
    template.write_text(json.dumps(doc, indent=2))
    result = stemforge(["build", str(template)], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Wrote light stemcell" in out

    stemcell_path = out_dir / "light-bosh-stemcell-1.42-aws-xen-hvm-ubuntu-jammy-go_agent.tgz"
    stemcell = read_stemcell(stemcell_path)
    mf = stemcell.manifest
    assert stemcell.is_light and mf.stemcell_formats == ["aws-light"]
    assert mf.name == "bosh-aws-xen-hvm-ubuntu-jammy-go_agent" and mf.version == "1.42"
    amis = mf.cloud_properties["ami"]
    assert sorted(amis) == sorted(["us-east-1", *REGIONS])
    props = mf.cloud_properties
    assert props["infrastructure"] == "aws" and props["name"] == mf.name and props["version"] == "1.42"
    assert props["architecture"] == "x86_64" and props["virtualization_type"] == "hvm"
    report = verify_stemcell(stemcell_path)
    assert report.ok, report
    # the manifest post-processor after the stemcell records the stemcell; the builder's artifact (the AMIs)
    # was kept: every AMI still exists
    for region, ami in amis.items():
        image = ec2_client(moto_endpoint, region).describe_images(ImageIds=[ami])["Images"][0]
        assert image["State"] == "available"
    inspect = stemforge(["stemcell", "inspect", str(stemcell_path)], tmp_path, timeout=60)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "light" in inspect.stdout and "aws-light" in inspect.stdout
    verify = stemforge(["stemcell", "verify", str(stemcell_path)], tmp_path, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # the CPI's create_stemcell, as the director calls it with the extracted image and the MF's cloud_properties
    extracted = extract_stemcell(stemcell_path, tmp_path / "extracted")
    # (create_stemcell of a light stemcell touches only the AMI: the CPI's environment needs no VPC here)
    for region in ("eu-west-1", "ap-south-1"):
        env = {
            "region": region,
            "default_key_name": f"sf{test_id}",
            "default_security_groups": ["sg-0123456789"],
            "images_bucket": f"sf{test_id}-images",
        }
        cpi = make_cpi(tmp_path / f"cpi-{region}", moto_endpoint, env)
        answer = cpi.call(
            "create_stemcell", str(extracted.image_path), extracted.manifest.cloud_properties, {}, api_version=3
        )
        if region == "eu-west-1":
            assert answer.result == f"{amis['eu-west-1']} light", answer
        else:
            assert answer.error["type"] == "Bosh::Clouds::CloudError", answer
            message = answer.error["message"]
            assert "ap-south-1" in message and "eu-west-1, us-east-1, us-west-2" in message, message

    # clean up the AMIs this test made
    for region, ami in amis.items():
        client = ec2_client(moto_endpoint, region)
        snaps = [
            m["Ebs"]["SnapshotId"]
            for m in client.describe_images(ImageIds=[ami])["Images"][0]["BlockDeviceMappings"]
            if "Ebs" in m
        ]
        client.deregister_image(ImageId=ami)
        for snap in snaps:
            client.delete_snapshot(SnapshotId=snap)
