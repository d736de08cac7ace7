"""A real OpenSSH server on loopback for the SSH communicator tests: ``sshd -D -e`` (not the system service) on
127.0.0.1 on a free port, with a temporary host key, an AuthorizedKeysFile holding a key generated for the run,
``UsePAM no`` and ``StrictModes no``; it is killed on exit. ``/run/sshd`` (the package's privilege-separation
directory, normally made by systemd-tmpfiles at boot) is created when missing and left in place, since other sshd
instances may rely on it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders.communicators.ssh import free_loopback_port

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    """A running test sshd: its port, the client's private key, the process, its log, a home directory."""

    port: int
    private_key: str
    proc: subprocess.Popen[bytes]
    log: Path
    home: Path


def keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "stemforge-test", "-f", str(path)],
                   check=True, timeout=30)


@contextlib.contextmanager
def running_sshd(tmp: Path) -> Iterator[Sshd]:
    """An sshd whose keys, config and log live in ``tmp``, listening until the block ends."""
    if not os.path.exists(SSHD):
        pytest.fail("openssh-server is not installed (scripts/apt-packages.txt lists it)")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    keygen(tmp / "host_key")
    keygen(tmp / "client_key")
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    port = free_loopback_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication yes\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\nAcceptEnv none\n"
    )
    log = tmp / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while b"Server listening" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {log.read_text()}")
            time.sleep(0.05)
        home = tmp / "remote"
        home.mkdir()
        yield Sshd(port, (tmp / "client_key").read_text(), proc, log, home)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
