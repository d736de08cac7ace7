"""``stemforge stemcell inspect|verify|create`` through ``stemforge.cli.main``: exit codes and output."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from stemcells.cli import parse_cloud_properties
from stemcells.errors import StemcellError
from stemcells.tarball import read_stemcell
from stemforge.cli import main

PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\ds\] ", re.M)


@pytest.fixture
def root_img(tmp_path: Path) -> Path:
    path = tmp_path / "root.img"  # a real (tiny) qcow2: create and verify run qemu-img info on it
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    return path


def create_heavy(tmp_path: Path, root_img: Path, *extra: str) -> int:
    packages = tmp_path / "packages.txt"
    packages.write_text("ii  bash  5.1\n")
    return main(
        [
            "stemcell", "create",
            "--name", "bosh-openstack-kvm-ubuntu-jammy-go_agent",
            "--version", "1.50",
            "--os", "ubuntu-jammy",
            "--format", "openstack-qcow2",
            "--image", str(root_img),
            "--cloud-property", "infrastructure=openstack",
            "--cloud-property", "disk=5120",
            "--cloud-property", "disk_format=qcow2",
            "--packages", str(packages),
            "-o", str(tmp_path),
            *extra,
        ]
    )  # fmt: skip


def test_create_heavy_then_inspect_and_verify(
    tmp_path: Path, root_img: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert create_heavy(tmp_path, root_img) == 0
    created = capsys.readouterr()
    path = tmp_path / "bosh-stemcell-1.50-openstack-kvm-ubuntu-jammy-go_agent.tgz"
    assert created.out.strip() == str(path)
    assert PROGRESS_LINE.search(created.err), created.err
    assert "Packing" in created.err

    assert main(["stemcell", "inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^Version:\s+1\.50$", text, re.M)
    assert re.search(r"^Kind:\s+heavy$", text, re.M)
    assert "  disk: 5120" in text
    assert re.search(r"^  image\s+\d+ B$", text, re.M)

    assert main(["stemcell", "inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["version"] == "1.50"
    assert data["manifest"]["cloud_properties"] == {"infrastructure": "openstack", "disk": 5120, "disk_format": "qcow2"}
    assert data["light"] is False
    assert [m["name"] for m in data["members"]][:2] == ["stemcell.MF", "image"]

    assert main(["stemcell", "verify", str(path)]) == 0
    verified = capsys.readouterr()
    for check in ("archive", "members", "manifest", "image sha1", "root image"):
        assert re.search(rf"^ok\s+{check}: ", verified.out, re.M), verified.out
    assert "root image: root.img: qcow2" in verified.out
    assert "stemcell OK" in verified.out
    assert "Hashing image" in verified.err


def test_create_light_with_dotted_cloud_properties(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    props = tmp_path / "props.yml"
    props.write_text("infrastructure: aws\narchitecture: x86_64\n")
    status = main(
        [
            "stemcell", "create", "--light",
            "--name", "bosh-aws-xen-hvm-ubuntu-jammy-go_agent",
            "--version", "1.50", "--os", "ubuntu-jammy", "--format", "aws-light",
            "--cloud-properties", str(props),
            "--cloud-property", "ami.us-east-1=ami-0abc",
            "--cloud-property", "ami.eu-west-1=ami-0def",
            "--cloud-property", "root_device_name=/dev/sda1",
            "-o", str(tmp_path),
        ]
    )  # fmt: skip
    assert status == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "light-bosh-stemcell-1.50-aws-xen-hvm-ubuntu-jammy-go_agent.tgz"
    manifest = read_stemcell(path).manifest
    assert manifest.is_light
    assert manifest.cloud_properties == {
        "infrastructure": "aws",
        "architecture": "x86_64",
        "ami": {"us-east-1": "ami-0abc", "eu-west-1": "ami-0def"},
        "root_device_name": "/dev/sda1",
    }
    assert main(["stemcell", "verify", str(path)]) == 0
    assert "light stemcell" in capsys.readouterr().out


def test_verify_failure_exits_1_with_fail_lines(
    tmp_path: Path, root_img: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert create_heavy(tmp_path, root_img) == 0
    good = Path(capsys.readouterr().out.strip())
    bad = tmp_path / "bad.tgz"
    with tarfile.open(good, "r:gz") as src, tarfile.open(bad, "w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "stemcell.MF":
                fields = yaml.safe_load(data)
                fields["sha1"] = "0" * 40
                data = yaml.safe_dump(fields).encode()
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    assert main(["stemcell", "verify", str(bad)]) == 1
    result = capsys.readouterr()
    assert re.search(r"^FAIL\s+image sha1: sha1 of image is [0-9a-f]{40} but stemcell.MF says 0{40}$", result.out, re.M)
    assert "1 check(s) failed" in result.err
    assert "Traceback" not in result.err


def test_user_errors_print_error_and_exit_1(tmp_path: Path, root_img: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stemcell", "inspect", str(tmp_path / "missing.tgz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ")
    assert "missing.tgz" in err
    assert "Traceback" not in err

    assert create_heavy(tmp_path, root_img, "--version", "1 50") == 1
    err = capsys.readouterr().err
    assert "Error: stemcell.MF: field 'version' must be a version string" in err
    assert list(tmp_path.glob("*.tgz")) == []

    assert create_heavy(tmp_path, tmp_path / "nope.img") == 1
    assert "nope.img: root image does not exist" in capsys.readouterr().err

    assert create_heavy(tmp_path, root_img, "--cloud-property", "novalue") == 1
    assert "Error: --cloud-property 'novalue': expected KEY=VALUE" in capsys.readouterr().err

    assert create_heavy(tmp_path, root_img, "--packages", str(tmp_path / "none.txt")) == 1
    assert "Error: --packages" in capsys.readouterr().err


def test_create_refuses_to_overwrite_without_force(
    tmp_path: Path, root_img: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert create_heavy(tmp_path, root_img) == 0
    assert create_heavy(tmp_path, root_img) == 1
    assert "already exists" in capsys.readouterr().err
    assert create_heavy(tmp_path, root_img, "--force") == 0


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stemcell", "create", "--name", "x", "--version", "1", "--os", "u", "--format", "f"])
    assert info.value.code == 2
    assert "one of the arguments --image --light is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["stemcell"])
    assert info.value.code == 2


def test_parse_cloud_properties() -> None:
    parsed = parse_cloud_properties(
        ["disk=5120", "auto_disk_config=true", "image_id.region1=img-1", "version=1.50", "label=007", "neg=-3"],
        {"infrastructure": "openstack"},
    )
    assert parsed == {
        "infrastructure": "openstack",
        "disk": 5120,
        "auto_disk_config": True,
        "image_id": {"region1": "img-1"},
        "version": "1.50",
        "label": "007",
        "neg": -3,
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["=x"], "expected KEY=VALUE"),
        (["a..b=x"], "expected KEY=VALUE"),
        (["disk=1", "disk.size=2"], "disk already holds a value"),
        (["ami.r=1", "ami=2"], "ami is a mapping"),
    ],
)
def test_parse_cloud_properties_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(StemcellError, match=message):
        parse_cloud_properties(pairs)
