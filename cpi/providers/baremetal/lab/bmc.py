"""The lab's BMCs: one sushy-tools Redfish emulator (libvirt driver) per lab, on ``127.0.0.1:<free port>``.

Its configuration file (``<lab>/redfish/emulator.conf``, 0600) restricts it to the lab's domains
(``SUSHY_EMULATOR_ALLOWED_INSTANCES``: names and UUIDs, since clients address systems by either), gives it its own
state directory and turns on HTTP basic auth from an htpasswd file holding one user with a generated password
(bcrypt, the only hash sushy-tools accepts). The password is returned to the caller only; it never reaches a log.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bcrypt
import requests

from cpi.providers.baremetal.lab import proc as lab_proc
from cpi.providers.baremetal.lab.record import write_private

USERNAME = "admin"
LIBVIRT_URI = "qemu:///system"


class BmcStartError(RuntimeError):
    """The emulator did not come up; the message quotes the end of its log (which holds no secret)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulator_binary() -> str:
    """``sushy-emulator`` next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "sushy-emulator"
    if local.exists():
        return str(local)
    found = shutil.which("sushy-emulator")
    if not found:
        raise BmcStartError("sushy-emulator is not installed (pip install sushy-tools)")
    return found


def write_config(directory: Path, port: int, allowed: Sequence[str], password: str) -> Path:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "state").mkdir(mode=0o700, exist_ok=True)
    htpasswd = directory / "htpasswd"
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    write_private(htpasswd, f"{USERNAME}:{digest}\n")
    config = directory / "emulator.conf"
    write_private(
        config,
        "\n".join(
            [
                f"SUSHY_EMULATOR_LISTEN_IP = {'127.0.0.1'!r}",
                f"SUSHY_EMULATOR_LISTEN_PORT = {port!r}",
                f"SUSHY_EMULATOR_LIBVIRT_URI = {LIBVIRT_URI!r}",
                f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}",
                f"SUSHY_EMULATOR_STATE_DIR = {str(directory / 'state')!r}",
                f"SUSHY_EMULATOR_ALLOWED_INSTANCES = {sorted(allowed)!r}",
                "SUSHY_EMULATOR_FEATURE_SET = 'full'",
                "",
            ]
        ),
    )
    return config


def start(directory: Path, allowed: Sequence[str], *, timeout: float = 60.0, attempts: int = 3) -> dict[str, Any]:
    """Start the emulator and wait until it answers an authenticated request. Returns its record, which includes
    ``password`` (keep it out of logs). A port taken between probing and binding is retried on another port."""
    password = secrets.token_urlsafe(18)
    log_path = directory / "emulator.log"
    last = ""
    for _ in range(attempts):
        port = free_port()
        config = write_config(directory, port, allowed, password)
        env = {**os.environ, "SUSHY_EMULATOR_CONFIG": str(config)}
        env.pop("SUSHY_EMULATOR_LIBVIRT_URI", None)
        proc = lab_proc.spawn([emulator_binary(), "--config", str(config)], log_path, env)
        record: dict[str, Any] = {
            **lab_proc.identity(proc.pid),
            "port": port,
            "address": f"http://127.0.0.1:{port}",
            "username": USERNAME,
            "password": password,
            "config": str(config),
            "log": str(log_path),
            "dir": str(directory),
        }
        try:
            if _wait_ready(record, proc, timeout):
                return record
        except BaseException:
            lab_proc.stop(record)
            raise
        lab_proc.stop(record)
        last = _tail(log_path)
        if "Address already in use" not in last:
            break
    raise BmcStartError(f"sushy-emulator did not answer within {timeout:g}s; its log ends with: {last[-800:]}")


def stop(record: dict[str, Any] | None) -> bool:
    return lab_proc.stop(record)


def _wait_ready(record: dict[str, Any], proc: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    url = f"{record['address']}/redfish/v1/Systems"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(requests.RequestException):
            r = requests.get(url, auth=(record["username"], record["password"]), timeout=5)
            if r.status_code == 200:
                return True
        time.sleep(0.2)
    return False


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""
