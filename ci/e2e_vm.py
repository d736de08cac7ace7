"""e2e's last leg: a VM from a light AWS stemcell through the real CPI, then nothing left behind.

``python -m ci.e2e_vm --stemcell TGZ --metadata FILE --endpoint URL --work DIR [--region R ...]`` extracts the
stemcell (``stemcells.tarball``), writes an aws CPI config from the Terraform environment's metadata (subnet,
security group, key pair; static credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, since the
director-style ``bin/cpi`` gets a stripped environment), then drives the CPI as the director does
(:class:`stemforge_base.cpi_client.CpiClient`): ``create_stemcell`` (the light stemcell's AMI of the environment's
region), ``create_vm`` on the environment's subnet, ``has_vm``, ``delete_vm``, ``delete_stemcell``. Finally the AMIs
of every region the stemcell names are deregistered and their snapshots deleted (also after a failure): the e2e's
images never outlive it. Each step prints a line with the elapsed time; exit 0 when the VM existed and everything was
removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3

from cpi.wrapper import write_wrapper
from stemcells.tarball import extract_stemcell
from stemforge_base.cpi_client import CpiCallError, CpiClient


def _say(started: float, message: str) -> None:
    print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)


def cpi_config(metadata: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The aws CPI config for the environment (credentials from the environment variables)."""
    groups = metadata["default_security_groups"]
    return {
        "cloud": {
            "plugin": "aws",
            "properties": {
                "aws": {
                    "region": metadata["region"],
                    "endpoint": endpoint,
                    "credentials_source": "static",
                    "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                    "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                    "default_key_name": metadata["default_key_name"],
                    "default_security_groups": groups if isinstance(groups, list) else [groups],
                    "max_retries": 2,
                },
            },
        }
    }


def deregister(amis: dict[str, str], endpoint: str) -> list[str]:
    """Deregister each region's AMI and delete its snapshots; returns what was removed."""
    removed: list[str] = []
    for region, ami in sorted(amis.items()):
        ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
        images = ec2.describe_images(ImageIds=[ami])["Images"]
        snapshots = [
            mapping["Ebs"]["SnapshotId"]
            for image in images
            for mapping in image.get("BlockDeviceMappings", [])
            if mapping.get("Ebs", {}).get("SnapshotId")
        ]
        ec2.deregister_image(ImageId=ami)
        for snapshot in snapshots:
            ec2.delete_snapshot(SnapshotId=snapshot)
        removed.append(f"{region}:{ami}" + (f" (+{len(snapshots)} snapshot(s))" if snapshots else ""))
    return removed


def run(stemcell: Path, metadata_path: Path, endpoint: str, work: Path) -> int:
    started = time.monotonic()
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    extracted = extract_stemcell(stemcell, work / "stemcell")
    cloud_properties = dict(extracted.manifest.cloud_properties)
    amis = dict(cloud_properties.get("ami") or {})
    _say(started, f"stemcell {stemcell.name}: AMIs in {', '.join(sorted(amis)) or 'no region'}")
    status = 1
    try:
        if metadata["region"] not in amis:
            _say(started, f"FAILED: the stemcell has no AMI in the environment's region {metadata['region']}")
            return 1
        config = work / "cpi.json"
        config.write_text(json.dumps(cpi_config(metadata, endpoint)), encoding="utf-8")
        config.chmod(0o600)
        client = CpiClient([str(write_wrapper(config, work / "job"))])
        stemcell_cid = client.create_stemcell(extracted.image_path, cloud_properties)
        _say(started, f"create_stemcell -> {stemcell_cid}")
        try:
            networks = {
                "default": {
                    "type": "dynamic",
                    "default": ["dns", "gateway"],
                    "cloud_properties": {"subnet": metadata["subnet_id"]},
                }
            }
            vm_cid, _ = client.create_vm(
                f"agent-{uuid.uuid4()}",
                stemcell_cid,
                {"instance_type": "t3.micro"},
                networks,
                [],
                {"bosh": {"group": "stemforge-e2e"}},
            )
            _say(started, f"create_vm -> {vm_cid} on {metadata['subnet_id']}")
            try:
                if not client.has_vm(vm_cid):
                    _say(started, f"FAILED: has_vm {vm_cid} -> false right after create_vm")
                    return 1
                _say(started, f"has_vm {vm_cid} -> true")
            finally:
                client.delete_vm(vm_cid)
                _say(started, f"delete_vm {vm_cid}")
            status = 0 if not client.has_vm(vm_cid) else 1
        finally:
            client.delete_stemcell(stemcell_cid)
            _say(started, f"delete_stemcell {stemcell_cid}")
    except CpiCallError as exc:
        _say(started, f"FAILED: {exc}")
        status = 1
    finally:
        removed = deregister(amis, endpoint)
        _say(started, f"deregistered {', '.join(removed) or 'nothing'}")
    _say(started, "e2e VM: passed" if status == 0 else "e2e VM: failed")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.e2e_vm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stemcell", type=Path, required=True, help="the light stemcell tarball")
    parser.add_argument("--metadata", type=Path, required=True, help="the environment's metadata JSON")
    parser.add_argument("--endpoint", required=True, help="the AWS endpoint (moto on loopback in tests)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not os.environ.get(name):
            print(f"e2e_vm: {name} is not set", file=sys.stderr)
            return 2
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return run(args.stemcell, args.metadata, args.endpoint, args.work)
    with tempfile.TemporaryDirectory(prefix="e2e-vm-") as work:
        return run(args.stemcell, args.metadata, args.endpoint, Path(work))


if __name__ == "__main__":
    sys.exit(main())
