"""The Redfish side of the bare-metal tests: a real ``sushy-emulator`` (fake driver) on 127.0.0.1 with basic auth
and two systems, and a ramdisk player that posts deploy events into a :class:`MetalStore` as the services would."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from cpi.providers.baremetal.interfaces.redfish import forget_clients
from cpi.providers.baremetal.store import MetalStore

PASSWORD = "bmc-Secret-42"
SYSTEMS = [
    ("11111111-0000-0000-0000-00000000000a", "node-a", "52:54:00:10:00:0a"),
    ("11111111-0000-0000-0000-00000000000b", "node-b", "52:54:00:10:00:0b"),
]
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Emulator:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path


@contextlib.contextmanager
def sushy_emulator(workdir: Path) -> Iterator[Emulator]:
    """A fake-driver sushy-emulator on 127.0.0.1 with basic auth and its own state dir."""
    workdir.mkdir(parents=True, exist_ok=True)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text("admin:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode() + "\n")
    port = free_port()
    systems = [
        {"uuid": u, "name": n, "power_state": "Off", "nics": [{"mac": m, "ip": "127.0.0.2"}]} for u, n, m in SYSTEMS
    ]
    conf = workdir / "emulator.conf"
    conf.write_text(
        f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\nSUSHY_EMULATOR_STATE_DIR = {str(workdir / 'state')!r}\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
    )
    exe = Path(sys.executable).parent / "sushy-emulator"
    log_path = workdir / "emulator.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([str(exe), "--config", str(conf), "--fake"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/redfish/v1/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sushy-emulator did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield Emulator(url, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        forget_clients()


def ramdisk_player(store: MetalStore, node: str, script: list[tuple[str, dict[str, object]]],
                   jobs_seen: list[Any] | None = None) -> threading.Thread:
    """Plays a ramdisk: waits for the node's job (appended to ``jobs_seen``), then posts ``script`` events as the
    services would store them."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while store.job(node) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if jobs_seen is not None:
            jobs_seen.append(store.job(node))
        for kind, body in script:
            store.add_event(node, kind, {"kind": kind, **body})
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
