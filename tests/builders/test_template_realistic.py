"""Realistic templates (tests/templates/) modelled on the option sets public qemu templates use: each parses
and renders to the values Packer would give."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from builders.template import BUILD_PLACEHOLDER, TemplateError, parse_template

T = Path(__file__).parents[1] / "templates"


def test_bento_debian_installer_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    t = parse_template(T / "bento-debian-12.json")
    assert (t.description or "").startswith("Debian 12") and t.min_packer_version == "1.7.0"
    assert t.variables["box_basename"] == "debian-12.5"
    assert t.variables["iso_name"] == "debian-12.5-amd64-netinst.iso"
    assert t.variables["http_proxy"] == "http://127.0.0.1:3128" and t.variables["https_proxy"] == ""
    (b,) = t.builders
    assert (b.name, b.raw_name, b.type) == ("debian-12.5-amd64", "{{user `template`}}", "qemu")
    cfg = t.render(b.config, build_name=b.name, build_type=b.type, where=f"builder '{b.name}'")
    assert cfg["iso_url"] == ("https://cdimage.debian.org/cdimage/archive/12.5/amd64/iso-cd/"
                              "debian-12.5-amd64-netinst.iso")
    assert cfg["iso_checksum"] == "file:https://cdimage.debian.org/cdimage/archive/12.5/amd64/iso-cd/SHA256SUMS"
    assert cfg["http_directory"] == f"{T}/http"
    assert cfg["output_directory"] == "../../builds/packer-debian-12.5-amd64-qemu"
    assert (cfg["cpus"], cfg["memory"], cfg["disk_size"], cfg["headless"]) == ("2", "2048", "65536", "true")
    assert cfg["ssh_port"] == 22 and cfg["ssh_password"] == "vagrant"
    # boot-command variables are the builder's: they survive rendering untouched; user variables are rendered
    assert cfg["boot_command"][0] == "<esc><wait>"
    assert cfg["boot_command"][2] == " preseed/url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/debian/preseed.cfg <wait>"
    assert cfg["boot_command"][8] == "netcfg/get_hostname={{ .Name }} <wait>"
    # ... and render as Packer renders them once the builder knows the values
    boot = t.render(cfg["boot_command"], build_name=b.name, build_type=b.type,
                    generated={"HTTPIP": "10.0.2.2", "HTTPPort": 8234, "Name": "debian-12.5-amd64"})
    assert boot[2] == " preseed/url=http://10.0.2.2:8234/debian/preseed.cfg <wait>"
    assert boot[8] == "netcfg/get_hostname=debian-12.5-amd64 <wait>"
    (p,) = t.provisioners
    pc = t.render(p.config_for(b.name), build_name=b.name, build_type=b.type)
    assert pc["execute_command"] == "echo 'vagrant' | {{.Vars}} sudo -S -E sh -eux '{{.Path}}'"
    assert pc["environment_vars"][1] == "http_proxy=http://127.0.0.1:3128"
    assert pc["scripts"] == [f"{T}/scripts/update.sh", f"{T}/scripts/sshd.sh", f"{T}/scripts/cleanup.sh"]
    assert pc["expect_disconnect"] is True
    (chain,) = t.post_processors
    m = t.render(chain[0].config, build_name=b.name, build_type=b.type)
    assert m == {"output": "../../builds/debian-12.5.manifest.json", "strip_path": True,
                 "custom_data": {"os_version": "12.5"}}
    assert t.mask("password vagrant") == "password <sensitive>"


def test_bento_debian_var_files_and_var(monkeypatch: pytest.MonkeyPatch) -> None:
    t = parse_template(T / "bento-debian-12.json",
                       var_files=[T / "vars/debian-11.json", T / "vars/debian-12-large.json"],
                       var_overrides={"memory": "4096"})
    assert t.variables["os_version"] == "12.5" and t.variables["cpus"] == "4" and t.variables["memory"] == "4096"
    t11 = parse_template(T / "bento-debian-12.json", var_files=[T / "vars/debian-11.json"])
    assert t11.builders[0].name == "debian-11.9-amd64" and t11.variables["memory"] == "1024"
    assert t11.variables["iso_name"] == "debian-11.9-amd64-netinst.iso"


def test_bento_ubuntu_autoinstall() -> None:
    t = parse_template(T / "bento-ubuntu-2204.json")
    (b,) = t.builders
    assert b.name == "qemu"
    cfg = t.render(b.config, build_name=b.name, build_type=b.type)
    assert cfg["iso_checksum"].startswith("sha256:45f873de")
    assert cfg["iso_url"] == "https://releases.ubuntu.com/22.04/ubuntu-22.04.4-live-server-amd64.iso"
    assert cfg["boot_command"][2] == ("linux /casper/vmlinuz quiet autoinstall "
                                      "ds=nocloud-net\\;s=http://{{.HTTPIP}}:{{.HTTPPort}}/ubuntu/ ---<enter><wait>")
    assert cfg["qemuargs"] == [["-cpu", "host"], ["-serial", "mon:stdio"]]
    assert cfg["vm_name"] == "ubuntu-22.04.4-amd64.qcow2" and cfg["output_directory"] == "output-qemu"
    assert cfg["shutdown_command"] == "echo 'vagrant' | sudo -S shutdown -P now"
    assert (cfg["memory"], cfg["cpus"], cfg["headless"]) == (2048, 2, True)
    (p,) = t.provisioners
    assert (p.pause_before, p.max_retries) == (10.0, 2)
    (chain,) = t.post_processors
    assert [pp.type for pp in chain] == ["checksum", "manifest"]
    out = t.render(chain[0].config, build_name="qemu", build_type="qemu")["output"]
    assert out == "output-qemu/qemu.{{.ChecksumType}}"
    assert t.render(out, build_name="qemu", build_type="qemu", generated={"ChecksumType": "sha256"}) == \
        "output-qemu/qemu.sha256"


def _cloud(path: Path):
    return parse_template(path, var_overrides={"ssh_password": "hunter2-pw"})


def test_cloud_image_with_cidata_seed() -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(T / "cloud-image-cidata.json")
    assert info.value.errors == ["required variable not set: ssh_password"]
    t = _cloud(T / "cloud-image-cidata.json")
    (b,) = t.builders
    cfg = t.render(b.config, build_name=b.name, build_type=b.type)
    assert cfg["disk_image"] is True and cfg["use_backing_file"] is True and cfg["cd_label"] == "cidata"
    assert cfg["cd_files"] == [f"{T}/http/meta-data", f"{T}/http/user-data"]
    assert cfg["iso_checksum"] == "file:https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS"
    assert cfg["output_directory"] == "output-debian-12-cloud" and cfg["vm_name"] == "cloudimg.qcow2"
    assert cfg["ssh_password"] == "hunter2-pw"
    # `build` is a placeholder before provisioning and the value at provision time
    shell = t.provisioners[0]
    before = t.render(shell.config, build_name=b.name, build_type=b.type)
    assert before["inline"][1] == "echo {{.ID}} > /tmp/build-id"
    at = t.render(shell.config, build_name=b.name, build_type=b.type, generated={"ID": "vm-42"})
    assert at["inline"][1] == "echo vm-42 > /tmp/build-id"
    placeholder = t.render(shell.config, build_name=b.name, build_type=b.type,
                           generated={"ID": f"Build_ID. {BUILD_PLACEHOLDER}"})
    assert placeholder["inline"][1] == "echo {{.ID}} > /tmp/build-id"
    with pytest.raises(TemplateError, match="loaded data, but couldnt find ID in it."):
        t.render(shell.config, build_name=b.name, build_type=b.type, generated={"Host": "127.0.0.1"})
    f = t.provisioners[1]
    assert t.render(f.config, build_name=b.name, build_type=b.type) == {"source": f"{T}/scripts/motd",
                                                                       "destination": "/tmp/motd"}
    assert "hunter2-pw" not in json.dumps(t.to_dict())


def test_yaml_twin_parses_identically() -> None:
    j = _cloud(T / "cloud-image-cidata.json")
    y = _cloud(T / "cloud-image-cidata.yaml")
    assert y.format == "yaml" and j.format == "json"
    assert y.variables == j.variables and y.sensitive_variables == j.sensitive_variables
    assert y.comments == j.comments
    assert [(b.name, b.type, b.config) for b in y.builders] == [(b.name, b.type, b.config) for b in j.builders]
    assert [(p.type, p.config) for p in y.provisioners] == [(p.type, p.config) for p in j.provisioners]
    assert y.render(y.builders[0].config, build_name="x", build_type="qemu") == \
        j.render(j.builders[0].config, build_name="x", build_type="qemu")


def test_multiple_named_qemu_builders_with_only_except_override() -> None:
    t = parse_template(T / "multi-qemu.json")
    assert [b.name for b in t.builders] == ["debian-11", "debian-12", "ubuntu-2204"]
    assert [b.name for b in t.select_builders(["debian-12"], [])] == ["debian-12"]
    assert [b.name for b in t.select_builders([], ["ubuntu-2204"])] == ["debian-11", "debian-12"]
    for name, n_provs in (("debian-11", 3), ("debian-12", 3), ("ubuntu-2204", 1)):
        assert len(t.provisioners_for(name)) == n_provs
    ub = t.builder("ubuntu-2204")
    assert t.render(ub.config, build_name=ub.name, build_type=ub.type)["vm_name"] == "ubuntu-2204.qcow2"
    assert t.render(t.builder("debian-11").config, build_name="debian-11", build_type="qemu")["disk_size"] == "10240"
    assert t.provisioners[0].config_for("ubuntu-2204") == {
        "inline": ["sudo apt-get -y install curl"], "execute_command": "sudo sh -c '{{ .Vars }} {{ .Path }}'"}
    assert t.provisioners[0].config_for("debian-12") == {"inline": ["apt-get -y install curl"]}
    echo = t.render(t.provisioners[2].config, build_name="debian-12", build_type="qemu")
    assert echo == {"inline": ["echo debian-12 qemu"]}
    assert [[p.type for p in c] for c in t.post_processor_chains_for("debian-12")] == [["compress"], ["manifest"]]
    assert [[p.type for p in c] for c in t.post_processor_chains_for("debian-11")] == [["manifest"]]


def test_comments_everywhere() -> None:
    t = parse_template(T / "comments-everywhere.json")
    assert set(t.comments) == {"_comment", "_author", "_todo"}
    assert t.builders[0].config == {"iso_url": "images/base.qcow2", "iso_checksum": "none", "disk_image": True,
                                    "communicator": "none"}
    assert t.provisioners[0].config == {"inline": ["echo building {{user `version`}}"]}
    assert [pp.config for pp in t.post_processors[0]] == [{"checksum_types": ["sha256", "md5"]}, {}]
    assert t.render(t.provisioners[0].config, build_name="qemu", build_type="qemu") == {
        "inline": ["echo building 1.2.3"]}


def test_provisioner_meta_keys_and_cleanup_provisioner() -> None:
    t = parse_template(T / "provisioner-meta.json")
    p = t.provisioners
    assert [(x.pause_before, x.max_retries, x.timeout) for x in p] == [
        (10.0, 5, 90.0), (3723.5, 0, None), (0.0, 4, 7200.0), (0.0, 0, None), (0.0, 0, 0.5)]
    assert p[1].only == ["slow"] and p[3].except_ == ["fast"]
    assert [x.index for x in t.provisioners_for("fast")] == [0, 2, 4]
    assert [x.index for x in t.provisioners_for("slow")] == [0, 1, 2, 3, 4]
    assert p[2].config_for("slow") == {"script": "scripts/setup.sh", "environment_vars": ["SLOW=1"]}
    assert p[2].config_for("fast") == {"script": "scripts/setup.sh"}
    c = t.error_cleanup_provisioner
    assert c is not None and c.type == "shell-local"
    assert t.render(c.config, build_name="slow", build_type="qemu") == {"inline": ["echo cleaning up after slow"]}


def test_post_processor_chains() -> None:
    t = parse_template(T / "post-processor-chains.json")
    shape = [[(p.type, p.name, p.keep_input_artifact) for p in chain] for chain in t.post_processors]
    assert shape == [
        [("checksum", "checksum", None)],
        [("manifest", "record", None)],
        [("compress", "tarball", True), ("checksum", "tarball-sums", False), ("manifest", "tarball-manifest", None)],
        [("compress", "compress", None), ("manifest", "manifest", None)],
    ]
    rec = t.render(t.post_processors[1][0].config, build_name="base", build_type="qemu")
    assert rec == {"output": "manifest.json", "strip_path": True,
                   "custom_data": {"built_by": "stemforge", "source": "base"}}
    assert [len(c) for c in t.post_processor_chains_for("base")] == [1, 1, 3]
    assert [len(c) for c in t.post_processor_chains_for("hardened")] == [1, 1, 3, 2]
    # -except=tarball-sums cuts that chain after "tarball", as Packer does
    assert [[p.name for p in c] for c in t.post_processor_chains_for("base", except_=["tarball-sums"])] == [
        ["checksum"], ["record"], ["tarball"]]


def test_sensitive_variables_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMFORGE_TEST_TOKEN", "tok-9f8e7d")
    t = parse_template(T / "sensitive.json")
    assert t.variables["login"] == "admin:correct-horse-battery"
    assert t.mask("pw correct-horse-battery token tok-9f8e7d login admin:correct-horse-battery") == \
        "pw <sensitive> token <sensitive> login <sensitive>"
    dumped = json.dumps(t.to_dict())
    assert "correct-horse-battery" not in dumped and "tok-9f8e7d" not in dumped
    cfg = t.render(t.builders[0].config, build_name="qemu", build_type="qemu")
    assert cfg["ssh_password"] == "correct-horse-battery"  # the plugin gets the real value
    assert cfg["qemuargs"] == [["-fw_cfg", "name=opt/token,string=tok-9f8e7d"]]
    # errors never show a secret
    with pytest.raises(TemplateError) as info:
        t.render({"x": "{{ split (user `root_password`) `-` 9 }}"}, build_name="qemu", build_type="qemu")
    assert "correct-horse-battery" not in str(info.value)
    # a -var value for a sensitive variable is masked too
    t2 = parse_template(T / "sensitive.json", var_overrides={"root_password": "cli-secret-123"})
    assert t2.mask("x cli-secret-123 y") == "x <sensitive> y"


def test_functions_template(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    t = parse_template(T / "functions.json")
    v = t.variables
    assert v["major"] == "12" and v["slug"] == "debian-12-bookworm" and v["first_dash"] == "12-5.0"
    assert v["shout"] == "DEBIAN 12/BOOKWORM" and v["trimmed"] == "12.5.0"
    (b,) = t.builders
    cfg = t.render(b.config, build_name=b.name, build_type=b.type)
    assert cfg["vm_name"] == f"debian-12-bookworm-{t.run_timestamp}"
    assert cfg["output_directory"] == f"{T}/out-fn"
    assert cfg["iso_url"] == f"{os.getcwd()}/images/base.qcow2"
    env = t.render(t.provisioners[0].config, build_name=b.name, build_type=b.type)["environment_vars"]
    when = dt.datetime.fromtimestamp(t.run_timestamp, dt.UTC)
    assert env[0] == "IMAGE_NAME=debian-12-bookworm"
    assert env[1] == "STAMP=" + when.strftime("%Y%m%d-%H%M")
    assert env[2] == "RFC3339=" + when.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert re.fullmatch(r"RUN_ID=[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", env[3])
    assert env[4] == "VM_ID={{.ID}}"
    assert cfg["boot_command"] == ["<esc>", "url=http://{{ .HTTPIP }}:{{ .HTTPPort }}/qemu.cfg<enter>"]


def test_debug_cli_prints_masked_json(capsys: pytest.CaptureFixture[str]) -> None:
    from builders.template.__main__ import main

    assert main([str(T / "cloud-image-cidata.yaml"), "-var", "ssh_password=s3cr3t-value"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["builders"][0]["name"] == "debian-12-cloud" and "s3cr3t-value" not in out
    assert data["variables"]["ssh_password"] == "<sensitive>"
    assert main([str(T / "cloud-image-cidata.json")]) == 1
    assert "required variable not set: ssh_password" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.name for p in T.iterdir() if p.suffix in (".json", ".yaml")))
def test_every_fixture_passes_stemforge_validate(name: str, tmp_path: Path) -> None:
    """End to end with the plugins' option schemas: each realistic template is valid for `stemforge validate`
    once its required variables are set (to real files where the plugins check them)."""
    import subprocess
    import sys

    image = tmp_path / "image.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(508))
    values = {
        "ssh_password": "pw",
        "image": str(image),
        "out": str(tmp_path / "out"),
        "cpi_config": str(T.parent.parent / "examples" / "cpi-libvirt.yml"),
    }
    template = parse_template(T / name, syntax_only=True)
    args = [sys.executable, "-m", "stemforge.cli", "validate"]
    for variable in template.required_variables:
        assert variable in values, f"{name}: the test has no value for required variable {variable!r}"
        args += ["-var", f"{variable}={values[variable]}"]
    args.append(name)
    proc = subprocess.run(args, cwd=T, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The configuration is valid." in proc.stdout
