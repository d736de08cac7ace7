"""``amazon-ebs`` with ``communicator: ssh`` through ``stemforge build`` against the loopback moto server.

moto's instances have no network stack, so the "instance" the build reaches is a real OpenSSH server on 127.0.0.1
(the ``sshd`` fixture of ``builders/conftest.py``: its own ``sshd -D`` on a free port) through ``ssh_host`` /
``ssh_port``, with Packer's "bring your own key" options: ``ssh_keypair_name`` (imported into moto, attached to
the instance) and ``ssh_private_key_file``. Everything else is the real build: the temporary security group opens
the SSH port, the shell and file provisioners run over SSH, the instance is stopped, the AMI is made and copied.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from builders.communicators.ssh import load_private_key
from tests.harness.aws import moto_amazon_ebs
from tests.harness.builds import stemforge
from tests.harness.sshd import Sshd

pytestmark = pytest.mark.aws


def test_ssh_communicator_provisions_over_ssh(tmp_path: Path, moto_endpoint: str, sshd: Sshd) -> None:
    import boto3

    test_id = uuid.uuid4().hex[:8]
    ec2 = boto3.session.Session().client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    key = load_private_key(sshd.private_key)
    key_file = tmp_path / "id_build"
    key_file.write_text(sshd.private_key)
    key_file.chmod(0o600)
    pair = f"stemforge-{test_id}"
    ec2.import_key_pair(KeyName=pair, PublicKeyMaterial=f"{key.get_name()} {key.get_base64()}".encode())
    upload = tmp_path / "motd"
    upload.write_text(f"built by {test_id}\n")
    marker = sshd.home / f"marker-{test_id}"
    doc: dict[str, Any] = {
        "builders": [
            moto_amazon_ebs(
                moto_endpoint,
                {
                    "ami_name": f"stemforge-ssh-{test_id}",
                    "ami_regions": ["us-west-2"],
                    "communicator": "ssh",
                    "ssh_username": "root",
                    "ssh_host": "127.0.0.1",
                    "ssh_port": sshd.port,
                    "ssh_keypair_name": pair,
                    "ssh_private_key_file": str(key_file),
                    "ssh_timeout": "30s",
                    "temporary_security_group_source_cidrs": ["127.0.0.1/32"],
                    "run_tags": {"stemforge-test": test_id},
                    "aws_polling": {"delay_seconds": 1},
                },
            )
        ],
        "provisioners": [
            {"type": "shell", "inline": [f"echo provisioned-over-ssh-{{{{build `ID`}}}} > {marker}", "uname -s"]},
            {"type": "file", "source": str(upload), "destination": str(sshd.home / f"motd-{test_id}")},
        ],
    }
    template = tmp_path / "ssh.json"
    template.write_text(json.dumps(doc, indent=2))
    result = stemforge(["build", str(template)], tmp_path, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"Using existing SSH private key and key pair {pair}" in out
    assert "Creating temporary keypair" not in out
    assert "Authorizing access to port" in out and "Connected to SSH!" in out
    instance_id = marker.read_text().strip().split("provisioned-over-ssh-", 1)[1]
    assert marker.read_text().startswith("provisioned-over-ssh-i-"), "the shell provisioner ran over SSH"
    assert (sshd.home / f"motd-{test_id}").read_text() == f"built by {test_id}\n"
    assert sshd.private_key not in out
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert instance["KeyName"] == pair and instance["State"]["Name"] == "terminated"
    tag = [{"Name": "tag:stemforge-test", "Values": [test_id]}]
    assert ec2.describe_security_groups(Filters=tag)["SecurityGroups"] == []
    ec2.delete_key_pair(KeyName=pair)
    for region in ("us-east-1", "us-west-2"):
        c = boto3.session.Session().client(
            "ec2",
            region_name=region,
            endpoint_url=moto_endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing-secret",
        )
        for image in c.describe_images(
            Owners=["self"], Filters=[{"Name": "name", "Values": [f"stemforge-ssh-{test_id}"]}]
        )["Images"]:
            c.deregister_image(ImageId=image["ImageId"])
