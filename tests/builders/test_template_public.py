"""Packer's answers for the shapes public templates have, where stemforge answered differently (found by trying
real public templates; the templates here are minimal ones written for these tests, showing one behaviour each)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builders.builder_types.qemu.config import prepare_config as qemu_prepare
from builders.builder_types.qemu.floppy import write_floppy
from builders.builder_types.qemu.http_server import HTTPServer
from builders.builder_types.qemu.qemu_process import LaunchPlan, default_args
from builders.cli import main
from builders.core import BuildError
from builders.template.functions import PACKER_COMPAT_VERSION
from tests.harness.sshd import Sshd

VALID = "The configuration is valid."


def _validate(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    status = main(["validate", *flags, str(path)])
    out = capsys.readouterr()
    return status, out.out + out.err


def _build(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``stemforge build ...`` run in ``cwd`` (in process): the exit status and everything printed."""
    monkeypatch.chdir(cwd)
    status = main(args)
    out = capsys.readouterr()
    return status, out.out + out.err


def _qemu_hcl(body: str) -> str:
    return ('source "qemu" "vm" {\n  iso_url = "disk.qcow2"\n  iso_checksum = "none"\n  disk_image = true\n'
            '  communicator = "none"\n  shutdown_timeout = "1s"\n' + body
            + '}\nbuild { sources = ["source.qemu.vm"] }\n')


# ---------------------------------------------------------------- qemu vnc_use_password


def test_vnc_use_password_is_accepted_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "vnc.pkr.hcl"
    hcl.write_text(_qemu_hcl("  vnc_use_password = true\n"))
    status, text = _validate(hcl, capsys)
    assert status == 0 and VALID in text, text
    assert "vnc_use_password" in text and "no VNC server is started" in text, text
    legacy = tmp_path / "vnc.json"
    legacy.write_text(json.dumps({"builders": [{"type": "qemu", "iso_url": "disk.qcow2", "iso_checksum": "none",
                                                "disk_image": True, "communicator": "none",
                                                "vnc_use_password": True}]}))
    status, text = _validate(legacy, capsys)
    assert status == 0 and VALID in text, text


# ---------------------------------------------------------------- http_directory checked at build time


def test_missing_http_directory_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "http.pkr.hcl"
    hcl.write_text(_qemu_hcl('  http_directory = "http"\n'))
    status, text = _validate(hcl, capsys)
    assert status == 0 and VALID in text, text


def test_http_server_refuses_a_missing_directory_before_listening(tmp_path: Path) -> None:
    server = HTTPServer(tmp_path / "absent")
    with pytest.raises(BuildError, match=r'Error finding ".*absent": stat .*absent: no such file or directory'):
        server.start(8000, 9000)
    assert server.port == 0 and server._server is None


def test_missing_http_directory_fails_the_build_before_the_vm_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "disk.qcow2"), "16M"], check=True)
    (tmp_path / "t.pkr.hcl").write_text(_qemu_hcl('  http_directory = "http"\n  output_directory = "out"\n'
                                                  '  disk_size = "16M"\n'))
    status, text = _build(["build", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 1, text
    assert f'Error finding "{tmp_path / "http"}"' in text, text
    assert "Starting HTTP server" not in text and "Starting VM" not in text, text
    assert not (tmp_path / "out").exists(), "the output directory is cleaned up"


# ---------------------------------------------------------------- the Packer version stemforge claims


@pytest.mark.parametrize(("constraint", "ok"), [(">= 1.10.0", True), ("~> 1.12", True), (">= 1.7, < 2.0", True),
                                                ("< 1.10", False), (">= 99.0", False)])
def test_required_version_against_the_claimed_release(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      constraint: str, ok: bool) -> None:
    hcl = tmp_path / "v.pkr.hcl"
    hcl.write_text(f'packer {{\n  required_version = "{constraint}"\n}}\n' + _qemu_hcl(""))
    status, text = _validate(hcl, capsys)
    assert (status == 0) is ok, text
    if not ok:
        assert "Unsupported Packer Core version" in text and PACKER_COMPAT_VERSION in text, text


def test_packer_version_follows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "v.pkr.hcl"
    hcl.write_text('locals { v = packer.version }\n' + _qemu_hcl('  vm_name = "packer-${local.v}"\n'))
    assert main(["inspect", str(hcl)]) == 0
    assert PACKER_COMPAT_VERSION == "1.13.0"
    assert capsys.readouterr().out.count("1.13.0") >= 1


# ---------------------------------------------------------------- HCP Packer data sources


HCP = '''
data "hcp-packer-version" "base" {
  bucket_name  = "base"
  channel_name = "prod"
}

data "hcp-packer-artifact" "base" {
  bucket_name         = "base"
  version_fingerprint = data.hcp-packer-version.base.fingerprint
  platform            = "aws"
  region              = "us-east-1"
}

source "amazon-ebs" "app" {
  region        = "us-east-1"
  source_ami    = data.hcp-packer-artifact.base.external_identifier
  instance_type = "t3.small"
  ssh_username  = "ubuntu"
  ami_name      = "app"
}

build { sources = ["source.amazon-ebs.app"] }
'''


def test_hcp_packer_data_sources_validate_without_evaluation(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "hcp.pkr.hcl"
    hcl.write_text(HCP)
    status, text = _validate(hcl, capsys)
    assert status == 0 and VALID in text, text
    assert main(["inspect", str(hcl)]) == 0, capsys.readouterr().out
    assert "amazon-ebs.app" in capsys.readouterr().out


def test_hcp_packer_data_sources_fail_when_their_value_is_needed(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "hcp.pkr.hcl"
    hcl.write_text(HCP)
    status, text = _validate(hcl, capsys, "-evaluate-datasources")
    assert status == 1 and "HCP Packer data source not supported" in text, text
    assert main(["build", str(hcl)]) == 1
    assert "HCP Packer data source not supported" in "".join(capsys.readouterr())


@pytest.mark.parametrize(("block", "message"), [
    ('data "hcp-packer-version" "v" {\n  bucket_name = "b"\n}\n', "the `channel_name` must be specified"),
    ('data "hcp-packer-iteration" "v" {\n  bucket_name = "b"\n}\n', "`channel` is currently a required field."),
    ('data "hcp-packer-artifact" "a" {\n  bucket_name = "b"\n  platform = "aws"\n  region = "r"\n}\n',
     "`version_fingerprint` or `channel_name` must be specified"),
    ('data "hcp-packer-artifact" "a" {\n  bucket_name = "b"\n  channel_name = "c"\n  version_fingerprint = "f"\n'
     '  platform = "aws"\n}\n', "`version_fingerprint` and `channel_name` cannot be specified together"),
])
def test_hcp_packer_data_source_configuration_is_still_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               block: str, message: str) -> None:
    hcl = tmp_path / "hcp.pkr.hcl"
    kind = block.split('"')[1]
    ref = f"data.{kind}.v.id" if kind != "hcp-packer-artifact" else "data.hcp-packer-artifact.a.region"
    hcl.write_text(block + f'locals {{ x = {ref} }}\n' + _qemu_hcl('  vm_name = local.x\n'))
    status, text = _validate(hcl, capsys)
    assert status == 1 and message in text, text


# ---------------------------------------------------------------- Packer's core null builder


def test_null_builder_runs_local_provisioners_without_a_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.pkr.hcl").write_text('source "null" "prep" {\n  communicator = "none"\n}\n'
                                        'build {\n  sources = ["source.null.prep"]\n'
                                        '  provisioner "shell-local" {\n    inline = ["echo prepared > done.txt"]\n'
                                        '  }\n}\n')
    status, text = _build(["build", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0, text
    assert (tmp_path / "done.txt").read_text() == "prepared\n"
    assert "Did not export anything. This is the null builder" in text, text


def test_null_builder_provisions_an_ssh_host(tmp_path: Path, sshd: Sshd, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "id"
    key.write_text(sshd.private_key)
    key.chmod(0o600)
    marker = sshd.home / "null-was-here"
    (tmp_path / "t.pkr.hcl").write_text(
        f'source "null" "host" {{\n  ssh_host = "127.0.0.1"\n  ssh_port = {sshd.port}\n  ssh_username = "root"\n'
        f'  ssh_private_key_file = "id"\n  ssh_timeout = "30s"\n}}\n'
        f'build {{\n  sources = ["source.null.host"]\n'
        f'  provisioner "shell" {{\n    inline = ["echo over-ssh > {marker}"]\n  }}\n}}\n')
    status, text = _build(["build", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0, text
    assert marker.read_text() == "over-ssh\n" and "Connected to SSH!" in text, text


@pytest.mark.parametrize(("body", "messages"), [
    ('  ssh_username = "u"\n  ssh_password = "p"\n',
     ["a Host must be specified, please reference your communicator documentation"]),
    ('  ssh_host = "127.0.0.1"\n  ssh_username = "u"\n',
     ["one authentication method must be specified"]),
    ('  ssh_host = "127.0.0.1"\n',
     ["An ssh_username must be specified", "a Username must be specified"]),
])
def test_null_builder_checks_its_communicator(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str,
                                              messages: list[str]) -> None:
    hcl = tmp_path / "n.pkr.hcl"
    hcl.write_text(f'source "null" "n" {{\n{body}}}\nbuild {{ sources = ["source.null.n"] }}\n')
    status, text = _validate(hcl, capsys)
    assert status == 1, text
    for message in messages:
        assert message in text, text


# ---------------------------------------------------------------- amazon-ebs metadata_options


def test_metadata_options_are_checked_as_packer_checks_them(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"builders": [{"type": "amazon-ebs", "region": "us-east-1", "source_ami": "ami-12345678",
                         "instance_type": "t3.micro", "ssh_username": "ec2-user", "ami_name": "x",
                         "metadata_options": {"http_tokens": "always", "http_put_response_hop_limit": 65}}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    status, text = _validate(path, capsys)
    assert status == 1, text
    assert "http_tokens requires either optional or required as its value" in text, text
    assert "http_put_response_hop_limit requires a number between 1 and 64" in text, text


def test_metadata_options_reach_the_launched_instance(tmp_path: Path, moto_endpoint: str,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import boto3  # lazy: the aws extra

    tag = f"meta-{tmp_path.name}"
    doc = {"builders": [{
        "type": "amazon-ebs", "region": "us-east-1", "custom_endpoint_ec2": moto_endpoint,
        "source_ami_filter": {"filters": {"name": "ubuntu/images/*"}, "owners": ["099720109477"],
                              "most_recent": True},
        "instance_type": "t3.micro", "communicator": "none", "ami_name": f"{tag} {{{{timestamp}}}}",
        "run_tags": {"test": tag}, "aws_polling": {"delay_seconds": 1, "max_attempts": 60},
        "metadata_options": {"http_tokens": "required", "http_put_response_hop_limit": 2}}]}
    (tmp_path / "ebs.json").write_text(json.dumps(doc))
    status, text = _build(["build", "ebs.json"], tmp_path, monkeypatch, capsys)
    assert status == 0, text
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_endpoint)
    found = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:test", "Values": [tag]}])["Reservations"]
             for i in r["Instances"]]
    assert len(found) == 1, found
    options = found[0]["MetadataOptions"]
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"], options["HttpEndpoint"]) == \
        ("required", 2, "enabled"), options


# ---------------------------------------------------------------- qemu floppy_files


def test_floppy_image_holds_the_files(tmp_path: Path) -> None:
    (tmp_path / "preseed.cfg").write_text("d-i debian-installer/locale string en_US\n")
    image = tmp_path / "floppy.img"
    write_floppy({"preseed.cfg": tmp_path / "preseed.cfg", "scripts/run.bat": b"echo hi\r\n"}, "packer", image)
    assert image.stat().st_size == 1440 * 1024
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    listing = subprocess.run(["mdir", "-b", "-/", "-i", str(image), "::"], capture_output=True, text=True,
                             env=env, check=True).stdout
    assert "::/preseed.cfg" in listing and "::/scripts/run.bat" in listing, listing
    text = subprocess.run(["mtype", "-i", str(image), "::/preseed.cfg"], capture_output=True, text=True, env=env,
                          check=True).stdout
    assert text == "d-i debian-installer/locale string en_US\n"
    label = subprocess.run(["mlabel", "-s", "-i", str(image), "::"], capture_output=True, text=True, env=env,
                           check=True).stdout
    assert "PACKER" in label, label


def test_floppy_options_validate_and_attach_as_drive_a(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "http").mkdir()
    (tmp_path / "http" / "preseed.cfg").write_text("x\n")
    hcl = tmp_path / "f.pkr.hcl"
    hcl.write_text(_qemu_hcl('  floppy_files = ["http/preseed.cfg"]\n  floppy_label = "cidata"\n'))
    status, text = _validate(hcl, capsys)
    assert status == 0 and VALID in text, text
    hcl.write_text(_qemu_hcl('  floppy_files = ["http/missing.cfg"]\n'))
    status, text = _validate(hcl, capsys)
    assert status == 1, text
    assert "Bad Floppy disk file 'http/missing.cfg': stat http/missing.cfg: no such file or directory" in text
    cfg, _ = qemu_prepare({"iso_url": "x.iso", "iso_checksum": "none", "communicator": "none",
                           "floppy_files": ["http/preseed.cfg"]}, "vm", tmp_path, False, "qemu")
    plan = LaunchPlan(accel="tcg", disks=[tmp_path / "d.qcow2"], cd_paths=[], qmp_path=tmp_path / "q",
                      serial_path=tmp_path / "s", floppy_path=tmp_path / "floppy.img")
    assert f"file={tmp_path / 'floppy.img'},if=floppy,index=0,format=raw" in default_args(cfg, plan)["-drive"]


def test_qemu_sees_the_floppy_drive(tmp_path: Path) -> None:
    image = tmp_path / "floppy.img"
    write_floppy({"a.txt": b"a"}, "packer", image)
    cfg, _ = qemu_prepare({"iso_url": "x.iso", "iso_checksum": "none", "communicator": "none"}, "vm", tmp_path,
                          False, "qemu")
    plan = LaunchPlan(accel="tcg", disks=[], cd_paths=[], qmp_path=tmp_path / "q", serial_path=tmp_path / "s",
                      floppy_path=image)
    drive = next(d for d in default_args(cfg, plan)["-drive"] if "if=floppy" in d)
    proc = subprocess.run(["qemu-system-x86_64", "-S", "-display", "none", "-accel", "tcg", "-drive", drive,
                           "-monitor", "stdio"], input="info block\nquit\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert "floppy0 (#block" in proc.stdout and str(image) in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------- -only/-except before plugins are looked up


ONLY = '''
source "docker" "app" {
  image  = "ubuntu:jammy"
  commit = true
}
source "null" "prep" {
  communicator = "none"
}
build {
  sources = ["source.docker.app", "source.null.prep"]
  provisioner "shell" {
    except = ["null.prep"]
    inline = ["echo in the container"]
  }
  provisioner "ansible-local" {
    only          = ["docker.app"]
    playbook_file = "site.yml"
  }
  provisioner "shell-local" {
    inline = ["echo prepared > prep.txt"]
  }
}
'''


@pytest.mark.parametrize("flag", ["-only=null.prep", "-except=docker.*"])
def test_builds_left_out_by_only_are_not_started(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    (tmp_path / "t.pkr.hcl").write_text(ONLY)
    status, text = _build(["validate", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 1 and 'Unknown source type "docker"' in text, text
    status, text = _build(["validate", flag, "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0 and VALID in text, text
    status, text = _build(["build", flag, "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0, text
    assert (tmp_path / "prep.txt").read_text() == "prepared\n"
    assert "docker" not in text and "ansible" not in text, text


def test_packer_hcp_values_are_unknown_without_a_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.pkr.hcl").write_text(
        'source "file" "a" {\n  content = "x"\n  target = "out.txt"\n}\n'
        'build {\n  sources = ["source.file.a"]\n  post-processor "manifest" {\n    output = "m.json"\n'
        '    custom_data = {\n      fingerprint = packer.versionFingerprint\n      iteration = packer.iterationID\n'
        '    }\n  }\n}\n')
    status, text = _build(["validate", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0 and VALID in text, text
    status, text = _build(["build", "t.pkr.hcl"], tmp_path, monkeypatch, capsys)
    assert status == 0, text
    custom = json.loads((tmp_path / "m.json").read_text())["builds"][0]["custom_data"]
    # an unknown value reaches a plugin as hcl2shim's UnknownVariableValue, as in Packer
    assert custom == {"fingerprint": "74D93920-ED26-11E3-AC10-0800200C9A66",
                      "iteration": "74D93920-ED26-11E3-AC10-0800200C9A66"}, custom
