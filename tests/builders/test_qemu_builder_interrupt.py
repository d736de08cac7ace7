"""Interrupting a qemu build anywhere leaves nothing behind: a failpoint after every step, the cancel event while
waiting for SSH, and a real SIGINT to a build process (while downloading, waiting for SSH and shutting down).
After each: no QEMU process, no temporary file (private TMPDIR is empty), no output directory, no listening HTTP
server, no private key in the generated data."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders.builder_types.qemu.steps import build_steps
from stemforge_base.steps import Cancelled, FailpointError
from tests.harness.qemu import RecordingUi, make_ctx, qemu_pids, run_build

STEPS = ["download", "output_dir", "ssh_keygen", "create_floppy", "create_cd", "create_disk", "copy_disk",
         "resize_disk", "http_server", "run_vm", "boot_command", "connect", "provision", "cleanup_temp_keys",
         "shutdown", "convert_disk"]


def _config(image: Path, out: Path, **over: Any) -> dict[str, Any]:
    return {"iso_url": str(image), "iso_checksum": "none", "disk_image": True, "disk_size": "160M",
            "communicator": "none", "output_directory": str(out), "boot_wait": "0s", "shutdown_timeout": "3s",
            "headless": True, "accelerator": "tcg", "cd_content": {"meta-data": "instance-id: x\n"},
            "cd_label": "cidata", "http_content": {"/ks.cfg": "text\n"}, "http_port_min": 18200,
            "http_port_max": 18299, **over}


HTTP_PORTS = list(range(18200, 18300))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _assert_nothing_left(out: Path, private_tmp: Path, ports: list[int] | None = None) -> None:
    assert not out.exists(), f"{out} left behind"
    assert list(private_tmp.iterdir()) == [], f"temporary files left: {list(private_tmp.iterdir())}"
    deadline = time.monotonic() + 10
    while qemu_pids(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert qemu_pids(str(out)) == [], "a QEMU process is still running"
    for port in ports or []:
        assert not _port_open(port), f"HTTP server still listening on {port}"


def test_step_names_are_the_failpoint_names(tmp_path: Path) -> None:
    from builders.builder_types.qemu.config import QemuConfig

    names = [s.name for s in build_steps(QemuConfig(build_name="x"), make_ctx(tmp_path), hook=None)]  # type: ignore[arg-type]
    assert names == STEPS


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_failpoint_after_every_step_leaves_nothing(tmp_path: Path, test_image: Path, private_tmp: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    timings = {}
    for step in STEPS:
        out = tmp_path / f"out-{step}"
        monkeypatch.setenv("STEMFORGE_FAILPOINTS", f"after:{step}")
        ui = RecordingUi()
        ctx = make_ctx(tmp_path, ui=ui, name=f"fp-{step}")
        started = time.monotonic()
        with pytest.raises(FailpointError, match=f"after:{step}"):
            run_build(_config(test_image, out), ctx)
        timings[step] = round(time.monotonic() - started, 1)
        _assert_nothing_left(out, private_tmp, HTTP_PORTS)
        if step == "shutdown":
            assert "did not power off within 3s" in ui.text()  # the kill-after-timeout path, with a warning
        if step in ("create_cd", "run_vm"):
            assert "Deleting output directory..." in ui.text()
    print(f"\nfailpoint runs (s): {timings}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cancel_while_waiting_for_ssh_removes_key_vm_and_files(tmp_path: Path, test_image: Path,
                                                               private_tmp: Path) -> None:
    out = tmp_path / "out"
    ui = RecordingUi()
    ctx = make_ctx(tmp_path, ui=ui, name="cancel")

    def on_line(line: str) -> None:
        if line.startswith("Waiting for SSH"):
            threading.Timer(1.0, ctx.cancel.set).start()

    ui.on_line = on_line
    config = _config(test_image, out, communicator="ssh", ssh_username="root", ssh_timeout="5m",
                     temporary_key_pair_type="ed25519",
                     cd_content={"user-data": "#cloud-config\nssh_authorized_keys: ['{{ build `SSHPublicKey` }}']\n"})
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_build(config, ctx)
    assert time.monotonic() - started < 60
    assert "SSHPrivateKey" not in ctx.generated
    assert ctx.generated["SSHPublicKey"].startswith("ssh-ed25519 ")
    assert "Deleting temporary SSH key pair..." in ui.text()
    _assert_nothing_left(out, private_tmp, HTTP_PORTS)


# ------------------------------------------------------------------ SIGINT to a real build process

DRIVER = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
from tests.harness.qemu import RecordingUi, make_ctx, run_build
from pathlib import Path
config = json.loads(sys.argv[2])
ui = RecordingUi(on_line=lambda line: print("UI", line, flush=True))
ctx = make_ctx(Path(sys.argv[3]), ui=ui, name="sigint")
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
try:
    run_build(config, ctx)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves a 64 MiB body slowly (so an interrupt lands mid-download)."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(64 << 20))
        self.end_headers()
        try:
            for _ in range(64 * 16):
                self.wfile.write(bytes(64 << 10))
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def trickle_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image.qcow2"
    finally:
        server.shutdown()
        server.server_close()


def _interrupt(tmp_path: Path, private_tmp: Path, config: dict[str, Any], marker: str,
               env_extra: dict[str, str] | None = None) -> str:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "TMPDIR": str(private_tmp), **(env_extra or {})}
    env.pop("STEMFORGE_FAILPOINTS", None)
    proc = subprocess.Popen([sys.executable, str(script), str(Path(__file__).resolve().parents[2]), json.dumps(config),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout

    def reader() -> None:
        for line in stdout:
            lines.append(line.rstrip("\n"))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while not any(marker in line for line in lines):
            assert proc.poll() is None, "\n".join(lines)
            assert time.monotonic() < deadline, f"marker {marker!r} not seen:\n" + "\n".join(lines)
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        t.join(timeout=10)
    text = "\n".join(lines)
    assert proc.returncode == 130 and "INTERRUPTED" in text, text
    return text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_during_download(tmp_path: Path, private_tmp: Path, trickle_url: str) -> None:
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    config = _config(Path("unused"), out, iso_url=trickle_url)
    _interrupt(tmp_path, private_tmp, config, "UI Downloading", {"PACKER_CACHE_DIR": str(cache)})
    assert not cache.exists() or list(cache.iterdir()) == []  # the partial download is gone
    _assert_nothing_left(out, private_tmp, HTTP_PORTS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_while_waiting_for_ssh(tmp_path: Path, test_image: Path, private_tmp: Path) -> None:
    out = tmp_path / "out"
    config = _config(test_image, out, communicator="ssh", ssh_username="root", temporary_key_pair_type="ed25519")
    text = _interrupt(tmp_path, private_tmp, config, "UI Waiting for SSH")
    assert "Deleting temporary SSH key pair..." in text and "Deleting output directory..." in text
    _assert_nothing_left(out, private_tmp, HTTP_PORTS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_during_shutdown(tmp_path: Path, test_image: Path, private_tmp: Path) -> None:
    out = tmp_path / "out"
    config = _config(test_image, out, shutdown_timeout="5m")
    text = _interrupt(tmp_path, private_tmp, config, "UI Sending an ACPI power-down")
    assert "Stopping the VM..." in text
    _assert_nothing_left(out, private_tmp, HTTP_PORTS)
