"""A hung IaaS call: the CPI answers CloudError after ``call_timeout`` and exits 0 (the director sets no timeout)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.libvirt  # the real libvirt client library talks to the hanging socket


def test_hung_libvirt_connection_is_answered_after_call_timeout(tmp_path: Path) -> None:
    pytest.importorskip("libvirt")
    sock_path = tmp_path / "hang.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:  # a libvirtd that accepts and never answers
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    config = {"cloud": {"plugin": "libvirt", "properties": {
        "state_dir": str(tmp_path / "state"), "call_timeout": 3,
        "libvirt": {"uri": f"qemu+unix:///system?socket={sock_path}"}}}}
    config_path = tmp_path / "cpi.json"
    config_path.write_text(json.dumps(config))
    request = {"method": "has_vm", "arguments": ["vm-x"], "context": {"director_uuid": "d"}, "api_version": 2}
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "cpi.main", str(config_path)], input=json.dumps(request).encode(),
                              capture_output=True, timeout=60, check=False)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0
    response = json.loads(proc.stdout)
    assert response["result"] is None
    assert response["error"]["type"] == "Bosh::Clouds::CloudError"
    assert "has_vm did not finish within 3s" in response["error"]["message"]
    assert response["error"]["ok_to_retry"] is True
    assert 3 <= elapsed < 30
