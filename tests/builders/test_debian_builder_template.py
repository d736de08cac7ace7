"""The ``debian`` builder through ``stemforge build`` (the real runner and CLI): a Packer JSON template with the
core ``shell``/``file`` provisioners and the offline ones, a sensitive root password that never reaches the
output; the image's files are then read straight from the ext4 partition with ``debugfs``. Also Ctrl-C during
provisioning: Packer's words, exit 1, nothing left. Shares the bootstrap cache with the other debian tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from builders.builder_types.debian import chroot as chroot_mod

PASSWORD = "s3cr3t-Pa55-word"
BASE = {
    "type": "debian",
    "include_sshd": True,
    "include_cloud_init": True,
    "datasource": "ConfigDrive",
    "disk_size": "2G",
}


def _stemforge(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stemforge.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _debugfs(image: Path, command: str) -> str:
    out = subprocess.run(["debugfs", "-R", command, f"{image}?offset=1048576"], capture_output=True, text=True,
                         timeout=60)
    return out.stdout


def test_template_build_with_every_provisioner(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "payload.txt").write_text("payload\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True,
                   timeout=60)
    template = {
        "variables": {"root_pw": PASSWORD},
        "sensitive-variables": ["root_pw"],
        "builders": [{**BASE, "name": "tpl", "format": "raw", "root_password": "{{user `root_pw`}}",
                      "output_directory": "out"}],
        "provisioners": [
            {"type": "shell", "inline": ["echo shell-ran > /etc/stemforge-shell", "test -r /proc/self/status"]},
            {"type": "file", "source": "files/", "destination": "/opt/payload"},
            {"type": "hostname", "hostname": "tpl-host"},
            {"type": "ssh-inject", "public_key_file": "key.pub"},
            {"type": "firstboot", "inline": ["echo hi > /var/lib/fb"]},
        ],
    }
    (tmp_path / "t.json").write_text(json.dumps(template))
    child = _stemforge("build", "t.json", cwd=tmp_path)
    out, _ = child.communicate(timeout=900)
    assert child.returncode == 0, out[-3000:]
    assert PASSWORD not in out
    image = tmp_path / "out" / "tpl.raw"
    assert image.is_file(), out[-2000:]
    assert _debugfs(image, "cat /etc/hostname") == "tpl-host\n"
    assert _debugfs(image, "cat /etc/stemforge-shell") == "shell-ran\n"
    assert _debugfs(image, "cat /opt/payload/payload.txt") == "payload\n"
    assert _debugfs(image, "cat /root/.ssh/authorized_keys").strip() == (tmp_path / "key.pub").read_text().strip()
    shadow_root = [ln for ln in _debugfs(image, "cat /etc/shadow").splitlines() if ln.startswith("root:")][0]
    assert shadow_root.split(":")[1].startswith("$") and PASSWORD not in shadow_root
    fstab = _debugfs(image, "cat /etc/fstab")
    assert "UUID=" in fstab and " / ext4 " in fstab
    assert _debugfs(image, "cat /etc/machine-id") == ""
    assert "ssh_host_" not in _debugfs(image, "ls /etc/ssh")
    assert "policy-rc.d" not in _debugfs(image, "ls /usr/sbin")
    assert "firstboot" in _debugfs(image, "ls /etc/systemd/system/multi-user.target.wants")
    assert "datasource_list: [ConfigDrive, None]" in _debugfs(image, "cat /etc/cloud/cloud.cfg.d/90_stemforge.cfg")
    assert "console=ttyS0" in _debugfs(image, "cat /boot/grub/grub.cfg")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tpl.raw"]


def test_ctrl_c_during_provisioning_leaves_nothing(tmp_path: Path) -> None:
    template = {
        "builders": [{**BASE, "name": "intr", "format": "qcow2", "output_directory": "out"}],
        "provisioners": [{"type": "shell", "inline": ["echo provisioning-now", "sleep 300"]}],
    }
    (tmp_path / "t.json").write_text(json.dumps(template))
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout
    child = _stemforge("build", "t.json", cwd=tmp_path)
    lines: list[str] = []
    seen = threading.Event()

    def reader() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line)
            if "provisioning-now" in line:
                seen.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        assert seen.wait(timeout=600), "".join(lines[-40:])
        time.sleep(1)
        os.kill(child.pid, signal.SIGINT)
        child.wait(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    thread.join(timeout=30)
    text = "".join(lines)
    assert child.returncode == 1, text[-3000:]
    assert "Cleanly cancelled builds after being interrupted." in text
    assert not (tmp_path / "out").exists()
    assert list(Path("/dev/shm").glob(f"stemforge-debian-{child.pid}-*")) == []
    assert chroot_mod.mounts_under(tmp_path) == []
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout == loops
    sleepers = subprocess.run(["pgrep", "-x", "-f", "sleep 300"], capture_output=True, text=True,
                              timeout=30).stdout.split()
    roots = []
    for pid in sleepers:
        try:
            roots.append(os.readlink(f"/proc/{pid}/root"))
        except OSError:
            continue
    assert not [r for r in roots if r.startswith(f"/dev/shm/stemforge-debian-{child.pid}-")]
