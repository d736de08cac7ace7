"""The qemu builder end to end over SSH, through ``stemforge build``: a Packer JSON template in the cloud-image
style (Debian test image from ``builders.builder_types.debian``, ``disk_image`` + ``use_backing_file``, a
``cidata`` seed whose ``user-data`` carries ``{{ build `SSHPublicKey` }}``, the temporary key pair, the HTTP
server reached from the guest through the loopback ``guestfwd``), ``shell`` (inline, script, environment_vars)
and ``file`` (upload file and directory, download) provisioners, ``shutdown_command`` and compaction."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.qemu import qemu_pids

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def debian_image() -> Path:
    from builders.builder_types.debian.testimage import build_test_debian_image

    return build_test_debian_image()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cloud_image_build_with_ssh_shell_and_file(tmp_path: Path, debian_image: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    (work / "seed").mkdir()
    (work / "seed" / "meta-data").write_text("instance-id: {{ build_name }}-1\nlocal-hostname: built\n")
    (work / "seed" / "user-data").write_text(
        "#cloud-config\ndisable_root: false\nssh_pwauth: false\n"
        "ssh_authorized_keys:\n  - {{ build `SSHPublicKey` }}\n")
    (work / "http").mkdir()
    (work / "http" / "answer.txt").write_text("served over the loopback guestfwd\n")
    (work / "files" / "tree" / "sub").mkdir(parents=True)
    (work / "files" / "tree" / "a.txt").write_text("alpha\n")
    (work / "files" / "tree" / "sub" / "b.txt").write_text("beta\n")
    (work / "files" / "single.conf").write_text("key = value\n")
    (work / "scripts").mkdir()
    (work / "scripts" / "check.sh").write_text(
        "#!/bin/sh\nset -e\necho \"script sees GREETING=$GREETING build=$PACKER_BUILD_NAME\"\n"
        "cat /opt/stemforge/single.conf /opt/stemforge/tree/sub/b.txt\n"
        "uname -r > /root/report.txt\nhostname >> /root/report.txt\n")
    digest = hashlib.sha256(debian_image.read_bytes()).hexdigest()
    (work / "SHA256SUMS").write_text(f"{digest}  {debian_image.name}\n")
    template = {
        "_comment": "cloud-image build with a cidata seed (the usual Packer pattern)",
        "variables": {"image": str(debian_image), "greeting": "hello from packer"},
        "builders": [{
            "type": "qemu", "name": "cloud",
            "iso_url": "{{user `image`}}", "iso_checksum": "file:./SHA256SUMS",
            "disk_image": True, "use_backing_file": True, "disk_size": "3G", "format": "qcow2",
            "output_directory": "output-cloud", "vm_name": "cloud.qcow2", "headless": True,
            "memory": 1024, "cpus": 2, "accelerator": "auto",
            "cd_files": ["./seed/meta-data", "./seed/user-data"], "cd_label": "cidata",
            "http_directory": "http", "http_port_min": 18400, "http_port_max": 18499,
            "communicator": "ssh", "ssh_username": "root", "ssh_timeout": "8m",
            "temporary_key_pair_type": "ed25519", "ssh_clear_authorized_keys": True,
            "boot_wait": "1s", "shutdown_command": "shutdown -P now", "shutdown_timeout": "3m",
        }],
        "provisioners": [
            {"type": "file", "source": "files/single.conf", "destination": "/opt/"},
            {"type": "shell", "inline": ["mkdir -p /opt/stemforge", "mv /opt/single.conf /opt/stemforge/"]},
            {"type": "file", "source": "files/tree", "destination": "/opt/stemforge"},
            {"type": "shell", "script": "scripts/check.sh",
             "environment_vars": ["GREETING={{user `greeting`}}"]},
            {"type": "shell", "inline_shebang": "/bin/bash -e", "timeout": "2m", "inline": [
                "exec 3<>/dev/tcp/{{ build `PackerHTTPIP` }}/{{ build `PackerHTTPPort` }}",
                "printf 'GET /answer.txt HTTP/1.0\\r\\n\\r\\n' >&3",
                "cat <&3 | tail -n 1 > /root/http.txt",
                "exec 4<>/dev/tcp/{{ build `PackerHTTPIP` }}/{{ build `PackerHTTPPort` }}",
                "printf 'GET /answer.txt HTTP/1.0\r\n\r\n' >&4",
                "cat <&4 | tail -n 1 >> /root/http.txt",
                "grep -c ssh-ed25519 /root/.ssh/authorized_keys > /root/keys.txt",
                "ping -c 1 -W 2 8.8.8.8 >/dev/null 2>&1 && echo ONLINE > /root/net.txt || echo OFFLINE > /root/net.txt",
            ]},
            {"type": "file", "direction": "download", "source": "/root/report.txt", "destination": "downloads/"},
            {"type": "file", "direction": "download", "source": "/root/http.txt", "destination": "downloads/"},
            {"type": "file", "direction": "download", "source": "/root/net.txt", "destination": "downloads/"},
            {"type": "file", "direction": "download", "source": "/opt/stemforge/tree",
             "destination": "downloads/"},
        ],
    }
    (work / "template.json").write_text(json.dumps(template, indent=2))
    env = {**os.environ, "TMPDIR": str(private_tmp), "PACKER_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("STEMFORGE_FAILPOINTS", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stemforge.cli", "build", "-machine-readable", "template.json"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=560)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    print(f"\nqemu build over SSH (Debian, TCG): {elapsed:.0f}s")
    assert proc.returncode == 0, log[-6000:]

    out = work / "output-cloud"
    assert sorted(p.name for p in out.iterdir()) == ["cloud.qcow2"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out / "cloud.qcow2")], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    assert info["virtual-size"] == 3 << 30 and info["full-backing-filename"] == str(debian_image)
    downloads = work / "downloads"
    report = (downloads / "report.txt").read_text().splitlines()
    assert report[0].endswith("amd64") and report[1] == "built"  # cloud-init applied the cidata seed
    assert (downloads / "http.txt").read_text() == "served over the loopback guestfwd\n" * 2  # two connections
    assert (downloads / "net.txt").read_text() == "OFFLINE\n"  # restrict=on: no way out
    assert (downloads / "tree" / "a.txt").read_text() == "alpha\n"
    assert (downloads / "tree" / "sub" / "b.txt").read_text() == "beta\n"
    assert "script sees GREETING=hello from packer build=cloud" in log
    assert "key = value" in log and "Trying to remove ephemeral keys from authorized_keys files" in log
    assert "Gracefully halting virtual machine..." in log
    assert "PRIVATE KEY" not in log and "Traceback" not in log
    assert qemu_pids(str(out)) == [] and list(private_tmp.iterdir()) == []
