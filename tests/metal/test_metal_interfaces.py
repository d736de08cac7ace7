"""Hardware interfaces against real BMC emulators on loopback: Redfish through a real ``sushy-emulator`` (fake
driver: simulated power with 1-11 s delays, each test its own state dir), BMC-down / 5xx / 4xx behaviour through a
loopback proxy that answers errors, and the ramdisk deploy interface following store events."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cpi.providers.baremetal.config import BmcPolicy, MetalConfig, Timeouts
from cpi.providers.baremetal.interfaces import hardware_for
from cpi.providers.baremetal.interfaces.base import BmcError, BmcUnreachable, DeployFailed, Task
from cpi.providers.baremetal.interfaces.deploy_ramdisk import follow
from cpi.providers.baremetal.store import Bmc, MetalStore, NodeSpec
from tests.harness.redfish import PASSWORD, SYSTEMS, Emulator, free_port, ramdisk_player

log = logging.getLogger("test.metal.interfaces")


@dataclass
class Proxy:
    """A loopback HTTP proxy in front of a BMC: answers ``fail_status`` to the first ``fail_count`` requests (all
    when None), then forwards. Records the time of every request."""

    upstream: str
    fail_status: int = 503
    fail_count: int | None = 0
    hits: list[float] = field(default_factory=list)
    port: int = 0

    def serve(self) -> http.server.ThreadingHTTPServer:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy.hits.append(time.monotonic())
                n = len(proxy.hits)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.fail_count is None or n <= proxy.fail_count:
                    payload = b'{"error": {"message": "injected failure"}}'
                    self.send_response(proxy.fail_status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=self.command)
                for key in ("Authorization", "Content-Type", "Accept"):
                    if self.headers.get(key):
                        req.add_header(key, self.headers[key])
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status, data, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
                except urllib.error.HTTPError as exc:
                    status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle  # noqa: N815

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def make_task(tmp_path: Path, address: str, password: str = PASSWORD, **policy: float) -> Task:
    store = MetalStore(tmp_path / "metal")
    uuid, name, mac = SYSTEMS[0]
    store.enroll(
        [NodeSpec(name, Bmc("redfish", address, uuid, "admin", password), (mac,), {"arch": "x86_64"})], who="test"
    )
    defaults = {"attempts": 3, "backoff_s": 0.05, "backoff_max_s": 0.2, "min_interval_s": 0.0, "read_timeout_s": 5}
    config = MetalConfig(
        state_dir=tmp_path / "metal",
        timeouts=Timeouts(power=40),
        bmc=BmcPolicy(**{**defaults, **policy}),  # type: ignore[arg-type]
    )
    return Task(store, store.get_node(name), config, log)


def test_redfish_power_and_boot_device(tmp_path: Path, emulator: Emulator) -> None:
    task = make_task(tmp_path, emulator.url)
    hw = hardware_for(task.node)
    assert hw.power.get_power_state(task) == "off"
    info = hw.management.get_bmc_info(task)
    assert info["name"] == "node-a" and info["manufacturer"] == "Sushy Emulator" and PASSWORD not in str(info)
    hw.management.set_boot_device(task, "pxe", persistent=False)
    assert hw.management.get_boot_device(task)["device"] == "pxe"
    hw.power.set_power_state(task, "on")  # the fake driver applies it 1-11 s later: polled until reached
    assert hw.power.get_power_state(task) == "on"
    hw.power.reboot(task)
    assert hw.power.get_power_state(task) == "on"
    hw.management.set_boot_device(task, "disk", persistent=True)
    assert hw.management.get_boot_device(task) == {"device": "disk", "persistent": True}
    hw.power.set_power_state(task, "off")
    assert hw.power.get_power_state(task) == "off"


def test_redfish_wrong_password_fails_fast_without_leaking(tmp_path: Path, emulator: Emulator) -> None:
    proxy = Proxy(emulator.url)
    server = proxy.serve()
    try:
        task = make_task(tmp_path, f"http://127.0.0.1:{proxy.port}", password="not-the-password")
        with pytest.raises(BmcError) as info:
            hardware_for(task.node).power.get_power_state(task)
        assert "credentials refused" in info.value.message and "node-a" in info.value.message
        assert "not-the-password" not in info.value.message
        assert not isinstance(info.value, BmcUnreachable)
        gets_of_system = len(proxy.hits)
        assert gets_of_system <= 2  # service root + the one refused GET: no retries on 4xx
    finally:
        server.shutdown()


def test_redfish_5xx_is_retried_then_succeeds(tmp_path: Path, emulator: Emulator) -> None:
    proxy = Proxy(emulator.url, fail_status=503, fail_count=3)
    server = proxy.serve()
    try:
        task = make_task(tmp_path, f"http://127.0.0.1:{proxy.port}", attempts=5)
        assert hardware_for(task.node).power.get_power_state(task) == "off"
        assert len(proxy.hits) >= 4
    finally:
        server.shutdown()


def test_redfish_persistent_5xx_gives_bmc_unreachable(tmp_path: Path) -> None:
    proxy = Proxy("http://127.0.0.1:9", fail_status=500, fail_count=None)
    server = proxy.serve()
    try:
        task = make_task(tmp_path, f"http://127.0.0.1:{proxy.port}", attempts=3)
        with pytest.raises(BmcUnreachable, match=r"node node-a: BMC http://127.0.0.1:\d+ unreachable: .*HTTP 500"):
            hardware_for(task.node).power.get_power_state(task)
        # sushy's own single GET retry doubles each attempt at most: 3 attempts -> 3..6 requests
        assert 3 <= len(proxy.hits) <= 6
    finally:
        server.shutdown()


def test_redfish_bmc_down_connection_refused(tmp_path: Path) -> None:
    task = make_task(tmp_path, f"http://127.0.0.1:{free_port()}", attempts=2)
    started = time.monotonic()
    with pytest.raises(BmcUnreachable, match="connection error"):
        hardware_for(task.node).power.get_power_state(task)
    assert time.monotonic() - started < 30  # bounded: no hidden retry loops


def test_redfish_4xx_other_than_auth_fails_fast(tmp_path: Path) -> None:
    proxy = Proxy("http://127.0.0.1:9", fail_status=404, fail_count=None)
    server = proxy.serve()
    try:
        task = make_task(tmp_path, f"http://127.0.0.1:{proxy.port}", attempts=5)
        with pytest.raises(BmcError, match="refused GET system: HTTP 404") as info:
            hardware_for(task.node).power.get_power_state(task)
        assert not isinstance(info.value, BmcUnreachable)
        assert len(proxy.hits) == 1
    finally:
        server.shutdown()


def test_calls_to_one_bmc_are_paced(tmp_path: Path, emulator: Emulator) -> None:
    proxy = Proxy(emulator.url)
    server = proxy.serve()
    try:
        task = make_task(tmp_path, f"http://127.0.0.1:{proxy.port}", min_interval_s=0.3)
        power = hardware_for(task.node).power
        for _ in range(3):
            power.get_power_state(task)
        gaps = [b - a for a, b in zip(proxy.hits, proxy.hits[1:], strict=False)]
        # the first call also fetches the service root; from then on each call is one GET, >= 0.3 s apart
        assert sum(1 for g in gaps if g >= 0.29) >= 2
    finally:
        server.shutdown()


# -- deploy interface: following the ramdisk's events ----------------------------------------------------------
def test_follow_reports_stages_and_failure(tmp_path: Path) -> None:
    task = make_task(tmp_path, "http://127.0.0.1:9")
    lines: list[str] = []
    task.progress = lines.append
    store, name = task.store, task.node.name
    job = store.start_job(name, "deploy", {}, 30)
    for stage in ("booted", "disk-selected"):
        store.add_event(name, "stage", {"kind": "stage", "stage": stage, "ok": True})
    store.add_event(name, "heartbeat", {"kind": "heartbeat"})
    store.add_event(
        name,
        "result",
        {"kind": "result", "stage": "checksum-ok", "ok": False, "message": "sha256 mismatch: got ab, want cd"},
    )
    with pytest.raises(DeployFailed, match="node node-a: deploy failed at stage checksum-ok: sha256 mismatch") as info:
        follow(task, job, 0)
    assert info.value.stage == "checksum-ok" and not info.value.timed_out
    assert any("booted" in line for line in lines) and any("disk-selected" in line for line in lines)


def test_follow_times_out_naming_the_last_stage(tmp_path: Path) -> None:
    task = make_task(tmp_path, "http://127.0.0.1:9")
    store, name = task.store, task.node.name
    job = store.start_job(name, "deploy", {}, 1.5)
    store.add_event(name, "stage", {"kind": "stage", "stage": "booted", "ok": True})
    store.add_event(name, "stage", {"kind": "stage", "stage": "disk-selected", "ok": True})
    with pytest.raises(DeployFailed, match=r"no callback from node node-a within 2 s \(last stage: disk-selected"):
        follow(task, job, 0)


def test_follow_notices_a_restart_mid_deploy(tmp_path: Path) -> None:
    task = make_task(tmp_path, "http://127.0.0.1:9")
    lines: list[str] = []
    task.progress = lines.append
    store, name = task.store, task.node.name
    job = store.start_job(name, "deploy", {}, 30)
    for stage in ("booted", "disk-selected", "booted", "disk-selected", "image-written", "checksum-ok", "done"):
        store.add_event(name, "stage", {"kind": "stage", "stage": stage, "ok": True})
    store.add_event(name, "result", {"kind": "result", "stage": "done", "ok": True})
    stages = follow(task, job, 0)
    assert [s.get("stage") for s in stages][-2:] == ["done", "done"]
    assert any("restarted (was at stage disk-selected)" in line for line in lines)


def test_deploy_and_clean_through_redfish(tmp_path: Path, emulator: Emulator) -> None:
    task = make_task(tmp_path, emulator.url)
    hw = hardware_for(task.node)
    store, name = task.store, task.node.name
    stages = ["booted", "disk-selected", "image-written", "checksum-ok", "configdrive-written", "done"]
    player = ramdisk_player(
        store, name, [("stage", {"stage": s, "ok": True}) for s in stages] + [("result", {"stage": "done", "ok": True})]
    )
    events = hw.deploy.deploy(task, {"image_url": "http://x/images/a.raw"}, timeout_s=60)
    player.join(10)
    assert [e.get("stage") for e in events] == [*stages, "done"]
    job = store.job(name)
    assert job is not None and job.instructions["mode"] == "deploy"
    assert hw.power.get_power_state(task) == "on"
    hw.boot.prepare_instance(task)
    assert store.job(name) is None
    assert hw.management.get_boot_device(task) == {"device": "disk", "persistent": True}
    # clean: the server is on, so it is reset into the ramdisk; afterwards powered off and the job gone
    player = ramdisk_player(
        store,
        name,
        [("stage", {"stage": "booted", "ok": True}), ("stage", {"stage": "disk-wiped", "ok": True, "message": "vda"})]
        + [("result", {"stage": "done", "ok": True})],
    )
    hw.deploy.clean(task, timeout_s=60)
    player.join(10)
    assert store.job(name) is None and hw.power.get_power_state(task) == "off"
    # a plan that asks for a full erase gets it in the clean job's instructions (the default job names none)
    task.node.plan["erase"] = "full"
    seen: list[Any] = []
    player = ramdisk_player(store, name, [("result", {"stage": "done", "ok": True})], jobs_seen=seen)
    hw.deploy.clean(task, timeout_s=60)
    player.join(10)
    assert seen and seen[0].instructions["mode"] == "clean" and seen[0].instructions["erase"] == "full"


# -- IPMI through pyghmi, against virtualbmc's libvirt driver on 127.0.0.1 --------------------------------------
IPMI_DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices><serial type='pty'/></devices>
</domain>"""


@pytest.fixture
def vbmc(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A diskless, NIC-less libvirt domain behind a virtualbmc IPMI endpoint on 127.0.0.1 (both removed after)."""
    import uuid

    libvirt = pytest.importorskip("libvirt")
    pytest.importorskip("virtualbmc", reason="pip install virtualbmc (in the local mirror)")
    from tests.harness.libvirt import libvirt_unavailable_reason

    reason = libvirt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = f"sf-ipmi-test-{uuid.uuid4().hex[:8]}"
    conn = libvirt.open("qemu:///system")
    dom = conn.defineXML(IPMI_DOMAIN_XML.format(name=name))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys\nfrom virtualbmc.vbmc import VirtualBMC\n"
        "VirtualBMC(username='admin', password=sys.argv[1], port=int(sys.argv[2]), address='127.0.0.1',"
        " domain_name=sys.argv[3], libvirt_uri='qemu:///system').listen(timeout=0.5)\n"
    )
    with open(tmp_path / "vbmc.log", "wb") as vbmc_log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, PASSWORD, str(port), name], stdout=subprocess.DEVNULL, stderr=vbmc_log
        )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, (tmp_path / "vbmc.log").read_text()
        yield name, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        dom.undefine()
        conn.close()


@pytest.mark.libvirt
def test_ipmi_power_and_boot_device_through_virtualbmc(tmp_path: Path, vbmc: tuple[str, str]) -> None:
    _, address = vbmc
    store = MetalStore(tmp_path / "metal")
    store.enroll(
        [NodeSpec("ipmi-node", Bmc("ipmi", address, "", "admin", PASSWORD), ("52:54:00:10:01:01",), {})], who="test"
    )
    config = MetalConfig(
        state_dir=tmp_path / "metal",
        timeouts=Timeouts(power=60),
        bmc=BmcPolicy(attempts=3, backoff_s=0.1, min_interval_s=0.0),
    )
    task = Task(store, store.get_node("ipmi-node"), config, log)
    hw = hardware_for(task.node)
    assert hw.power.get_power_state(task) == "off"
    hw.management.set_boot_device(task, "pxe", persistent=False)
    assert hw.management.get_boot_device(task)["device"] == "pxe"
    hw.management.set_boot_device(task, "disk", persistent=True)
    assert hw.management.get_boot_device(task)["device"] == "disk"
    hw.power.set_power_state(task, "on")
    assert hw.power.get_power_state(task) == "on"
    hw.power.reboot(task)
    hw.power.set_power_state(task, "off")
    assert hw.power.get_power_state(task) == "off"


def test_ipmi_wrong_password_and_no_bmc(tmp_path: Path) -> None:
    store = MetalStore(tmp_path / "metal")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store.enroll(
        [NodeSpec("ipmi-node", Bmc("ipmi", f"127.0.0.1:{port}", "", "admin", PASSWORD), ("52:54:00:10:01:02",), {})],
        who="test",
    )
    config = MetalConfig(state_dir=tmp_path / "metal", bmc=BmcPolicy(attempts=2, backoff_s=0.1, min_interval_s=0.0))
    task = Task(store, store.get_node("ipmi-node"), config, log)
    with pytest.raises(BmcUnreachable, match=f"node ipmi-node: BMC 127.0.0.1:{port} unreachable") as info:
        hardware_for(task.node).power.get_power_state(task)
    assert PASSWORD not in info.value.message
