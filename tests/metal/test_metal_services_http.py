"""The provisioning HTTP server of ``metal serve`` against a real server on 127.0.0.1 with a real MetalStore.

Every route of METAL.md, the token rules (wrong/missing token, job vs phone-home token, unknown node), bad bodies,
path traversal, ranges and streaming a large sparse image without loading it. Log lines are captured to check that
no token and no query string ever reaches them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cpi.providers.baremetal.instructions import InstructionsError, render_instructions
from cpi.providers.baremetal.serve.http import MetalHTTPServer, serve_in_thread
from cpi.providers.baremetal.serve.shared_store import SharedStore
from cpi.providers.baremetal.store import Bmc, MetalStore, NodeSpec

MAC1 = "52:54:00:aa:00:01"
MAC1B = "52:54:00:aa:00:11"
MAC2 = "52:54:00:aa:00:02"
SHA = "ab" * 32


def _spec(name: str, macs: tuple[str, ...]) -> NodeSpec:
    return NodeSpec(
        name=name,
        bmc=Bmc("redfish", "http://127.0.0.1:9", f"/redfish/v1/Systems/{name}", "admin", "bmc-secret-pw"),
        macs=macs,
        plan={"arch": "x86_64", "cpus": 1, "memory_mib": 512, "disks": [{"size_gib": 4}], "labels": {}},
        root_hints={"size": 4},
    )


class Env:
    def __init__(self, state: Path, ramdisk: Path, store: MetalStore, server: MetalHTTPServer) -> None:
        self.state = state
        self.ramdisk = ramdisk
        self.store = store
        self.server = server
        self.url = server.base_url

    def deploy_job(self, node: str = "n1", **extra: Any) -> str:
        instructions = {
            "mode": "deploy",
            "image_url": f"{self.url}/images/sc-1/root.img",
            "image_sha256": SHA,
            "image_size": 4096,
            "image_format": "raw",
            "configdrive_url": f"{self.url}/v1/nodes/{node}/configdrive",
            "root_hints": {"size": ">=4", "serial": "QM0001"},
            "heartbeat_s": 5,
            **extra,
        }
        return self.store.start_job(node, "deploy", instructions, timeout_s=600).token


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    state = tmp_path / "state"
    ramdisk = tmp_path / "ramdisk"
    ramdisk.mkdir()
    (ramdisk / "vmlinuz").write_bytes(b"K" * 5000)
    (ramdisk / "initrd.img").write_bytes(os.urandom(300_000))
    store = MetalStore(state)
    store.enroll([_spec("n1", (MAC1, MAC1B)), _spec("n2", (MAC2,))], who="test")
    server_store = MetalStore(state)  # the server's own connection, as in another process
    server = MetalHTTPServer(("127.0.0.1", 0), store=SharedStore(server_store), state_dir=state, ramdisk_dir=ramdisk)
    with serve_in_thread(server):
        yield Env(state, ramdisk, store, server)
    server_store.close()
    store.close()


def _raw_get(env: Env, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A GET with the path sent exactly as given (requests would normalise '..')."""
    conn = http.client.HTTPConnection("127.0.0.1", env.server.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# -- iPXE ------------------------------------------------------------------------------------------------------


def test_boot_ipxe_chains_the_per_mac_script(env: Env) -> None:
    resp = requests.get(f"{env.url}/boot.ipxe", timeout=10)
    assert resp.status_code == 200
    assert resp.text.startswith("#!ipxe\n")
    assert f"chain {env.url}/ipxe/${{netX/mac}} || goto failed" in resp.text
    assert resp.headers["Content-Length"] == str(len(resp.content))


def test_mac_script_boots_the_ramdisk_only_while_the_node_has_a_job(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    no_job = requests.get(f"{env.url}/ipxe/{MAC1}", timeout=10)
    assert no_job.status_code == 200 and "exit 1" in no_job.text and "kernel" not in no_job.text
    unknown = requests.get(f"{env.url}/ipxe/52:54:00:ff:ff:ff", timeout=10)
    assert "exit 1" in unknown.text and "not enrolled" in unknown.text

    token = env.deploy_job()
    # iPXE URL-encodes the MAC; any case and '-' separators work too; the second NIC of the node finds the same job
    for mac in ("52%3A54%3A00%3Aaa%3A00%3A01", MAC1.upper().replace(":", "-"), MAC1B):
        script = requests.get(f"{env.url}/ipxe/{mac}", timeout=10).text
        lines = script.splitlines()
        assert lines[0] == "#!ipxe"
        kernel = next(line for line in lines if line.startswith("kernel "))
        assert kernel.split()[1] == f"{env.url}/ramdisk/vmlinuz"
        args = kernel.split(" || ")[0].split()[2:]
        assert "console=ttyS0" in args
        assert f"sf.api={env.url}/v1/nodes/n1" in args
        assert f"sf.token={token}" in args
        assert "sf.debug=1" not in args
        assert f"initrd {env.url}/ramdisk/initrd.img || goto failed" in lines
        assert "boot || goto failed" in lines
    other = requests.get(f"{env.url}/ipxe/{MAC2}", timeout=10).text
    assert "exit 1" in other and token not in other
    bad = requests.get(f"{env.url}/ipxe/not-a-mac", timeout=10)
    assert bad.status_code == 400 and "not a MAC address" in bad.json()["error"]
    assert token not in _log_text(caplog), "the script body (with the token) must never be logged"
    assert "iPXE script for node n1" in _log_text(caplog)


def test_an_expired_job_no_longer_boots_the_ramdisk(env: Env) -> None:
    job = env.store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=-1)  # its deadline is already past
    script = requests.get(f"{env.url}/ipxe/{MAC1}", timeout=10).text
    assert "exit 1" in script and "expired" in script and job.token not in script


def test_ramdisk_debug_adds_sf_debug(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([_spec("n1", (MAC1,))], who="test")
    store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=60)
    server = MetalHTTPServer(("127.0.0.1", 0), store=SharedStore(store), state_dir=tmp_path,
                             ramdisk_dir=tmp_path, ramdisk_debug=True)  # fmt: skip
    with serve_in_thread(server):
        script = requests.get(f"{server.base_url}/ipxe/{MAC1}", timeout=10).text
    assert "sf.debug=1" in script and "echo stemforge: clean of node n1" in script
    store.close()


# -- files -----------------------------------------------------------------------------------------------------


def test_ramdisk_files_are_served_with_length_head_and_ranges(env: Env) -> None:
    data = (env.ramdisk / "initrd.img").read_bytes()
    resp = requests.get(f"{env.url}/ramdisk/initrd.img", timeout=10)
    assert resp.status_code == 200 and resp.content == data
    assert resp.headers["Content-Length"] == str(len(data))
    head = requests.head(f"{env.url}/ramdisk/vmlinuz", timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == "5000" and head.content == b""
    part = requests.get(f"{env.url}/ramdisk/initrd.img", headers={"Range": "bytes=1000-"}, timeout=10)
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    mid = requests.get(f"{env.url}/ramdisk/initrd.img", headers={"Range": "bytes=10-19"}, timeout=10)
    assert mid.status_code == 206 and mid.content == data[10:20]
    beyond = requests.get(f"{env.url}/ramdisk/initrd.img", headers={"Range": f"bytes={len(data)}-"}, timeout=10)
    assert beyond.status_code == 416
    assert requests.get(f"{env.url}/ramdisk/nothing", timeout=10).status_code == 404


def test_path_traversal_is_refused(env: Env, tmp_path: Path) -> None:
    (env.state / "images").mkdir()
    (env.state / "images" / "ok.img").write_bytes(b"fine")
    (tmp_path / "outside.txt").write_text("secret outside")
    os.symlink(tmp_path / "outside.txt", env.state / "images" / "link.img")
    os.symlink(env.state / "metal.db", env.ramdisk / "db")
    assert _raw_get(env, "/images/ok.img") == (200, b"fine")
    for path in (
        "/images/../metal.db",
        "/images/%2e%2e/metal.db",
        "/images/..%2Fmetal.db",
        "/ramdisk/../../state/metal.db",
        "/images/.hidden",
        "/images/link.img",  # a symlink leading out of the directory
        "/ramdisk/db",
        "/images/ok.img/../../metal.db",
    ):
        status, body = _raw_get(env, path)
        assert status in (400, 404), path
        assert b"secret outside" not in body and b"SQLite" not in body, path
    assert _raw_get(env, "/images/")[0] in (400, 404)


def test_large_sparse_image_streams_without_loading_it(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    images = env.state / "images" / "sc-big"
    images.mkdir(parents=True)
    path = images / "root.img"
    size = 512 * 1024**2 + 12345
    tail = os.urandom(1024 * 1024)
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(size - len(tail) - 7)
        fh.write(tail)
    expected = hashlib.sha256()
    zeros = bytes(1024 * 1024)
    remaining = size - len(tail) - 7
    while remaining:
        n = min(len(zeros), remaining)
        expected.update(zeros[:n])
        remaining -= n
    expected.update(tail + bytes(7))

    # reset this process's peak RSS (the server runs in it) so VmHWM shows what streaming costs
    Path("/proc/self/clear_refs").write_text("5")
    before = _vm_hwm_kib()
    digest = hashlib.sha256()
    received = 0
    with requests.get(f"{env.url}/images/sc-big/root.img", stream=True, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(size)
        for chunk in resp.iter_content(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    peak = _vm_hwm_kib()
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    assert peak - before < 128 * 1024, f"peak RSS grew by {(peak - before) // 1024} MiB while streaming 512 MiB"
    assert f"GET /images/sc-big/root.img: sent {size} of {size} bytes in " in _log_text(caplog)


def test_four_servers_download_at_once(env: Env) -> None:
    """Four ramdisks fetching the same image at the same time each get every byte (threads, no shared offsets)."""
    images = env.state / "images"
    images.mkdir()
    data = os.urandom(24 * 1024 * 1024)
    (images / "shared.raw").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()

    def fetch(_: int) -> str:
        digest = hashlib.sha256()
        with requests.get(f"{env.url}/images/shared.raw", stream=True, timeout=60) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_content(256 * 1024):
                digest.update(chunk)
        return digest.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fetch, range(4))) == [want] * 4


def test_a_client_dropping_mid_stream_is_logged_and_harmless(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    images = env.state / "images"
    images.mkdir()
    with open(images / "big.img", "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", env.server.port, timeout=30)
    conn.request("GET", "/images/big.img")
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read(3 * 1024 * 1024)) == 3 * 1024 * 1024
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "GET /images/big.img: sent" not in _log_text(caplog):
        time.sleep(0.1)
    line = next(r.getMessage() for r in caplog.records if "GET /images/big.img: sent" in r.getMessage())
    assert f"of {256 * 1024 * 1024} bytes" in line and "to 127.0.0.1" in line
    assert requests.get(f"{env.url}/boot.ipxe", timeout=10).status_code == 200


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/self/status")


# -- instructions ----------------------------------------------------------------------------------------------


def test_instructions_render_as_shell_the_ramdisk_can_source(env: Env, tmp_path: Path) -> None:
    token = env.deploy_job(image_url=f"{env.url}/images/it's here/root.img")
    resp = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    lines = resp.text.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [
        "SF_MODE", "SF_IMAGE_URL", "SF_IMAGE_SHA256", "SF_IMAGE_SIZE", "SF_IMAGE_FORMAT", "SF_CONFIGDRIVE_URL",
        "SF_ROOT_HINTS", "SF_HEARTBEAT_S",
    ]  # fmt: skip
    script = tmp_path / "instructions"
    script.write_text(resp.text)
    out = subprocess.run(
        ["busybox", "sh", "-c", f'. {script} && printf "%s|" "$SF_MODE" "$SF_IMAGE_URL" "$SF_IMAGE_SIZE" '
         '"$SF_ROOT_HINTS" "$SF_HEARTBEAT_S" "$SF_IMAGE_FORMAT" "$SF_IMAGE_SHA256"'],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.split("|")[:-1] == [
        "deploy", f"{env.url}/images/it's here/root.img", "4096", "size=>=4 serial=QM0001", "5", "raw", SHA,
    ]  # fmt: skip


def test_instructions_with_an_unknown_key_are_refused_naming_it(env: Env) -> None:
    token = env.deploy_job(kernel_args="rm -rf /")
    resp = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.status_code == 500
    assert "kernel_args" in resp.json()["error"] and "unknown key" in resp.json()["error"]


def test_render_instructions_rules() -> None:
    assert render_instructions("n", "clean", {}) == "SF_MODE='clean'\n"
    text = render_instructions("n", "deploy", {"image_url": "http://x/i", "image_sha256": SHA.upper(),
                                               "image_size": 10, "root_hints": "name=/dev/vda"})  # fmt: skip
    assert "SF_IMAGE_SHA256='" + SHA + "'" in text and "SF_IMAGE_FORMAT='raw'" in text
    assert "SF_ROOT_HINTS='name=/dev/vda'" in text
    hints = {"model": "QM-1", "size": ">= 4", "wwn": "0x5000c5", "serial": "S1", "name": "/dev/sda"}
    text = render_instructions("n", "clean", {"root_hints": hints, "heartbeat_s": 2.5})
    assert "SF_ROOT_HINTS='size=>=4 name=/dev/sda serial=S1 wwn=0x5000c5 model=QM-1'" in text
    assert "SF_HEARTBEAT_S='3'" in text
    for size in ("<=8", ">2", "<100", 4):
        assert f"size={size}'" in render_instructions("n", "clean", {"root_hints": {"size": size}})
    for instructions, field in (
        ({"mode": "deploy"}, "image_url, image_sha256, image_size"),
        ({"mode": "clean", "bogus": 1}, "bogus"),
        ({"mode": "deploy", "image_url": "ftp://x", "image_sha256": SHA, "image_size": 1}, "image_url"),
        ({"mode": "deploy", "image_url": "http://x", "image_sha256": "xyz", "image_size": 1}, "image_sha256"),
        ({"mode": "deploy", "image_url": "http://x", "image_sha256": SHA, "image_size": "1"}, "image_size"),
        ({"mode": "deploy", "image_url": "http://x", "image_sha256": SHA, "image_size": True}, "image_size"),
        ({"mode": "clean", "root_hints": {"colour": "x"}}, "root_hints.colour"),
        ({"mode": "clean", "root_hints": {"serial": ">= 4"}}, "root_hints.serial"),
        ({"mode": "clean", "root_hints": {"size": "big"}}, "root_hints.size"),
        ({"mode": "clean", "heartbeat_s": 0}, "heartbeat_s"),
        ({"mode": "clean", "heartbeat_s": float("nan")}, "heartbeat_s"),
        ({"mode": "clean", "root_hints": {"rotational": "maybe"}}, "root_hints.rotational"),
        ({"mode": "clean", "root_hints": {"serial": ""}}, "root_hints.serial"),
        ({"mode": "clean", "image_format": "qcow2"}, "image_format"),
        ({"mode": "deploy"}, "mode"),  # kind clean below: mode must match the job kind
    ):
        kind = "clean" if field == "mode" else instructions.get("mode", "clean")
        with pytest.raises(InstructionsError, match=f"node 'n'.*{field}"):
            render_instructions("n", str(kind), instructions)
    with pytest.raises(InstructionsError, match="newlines"):
        render_instructions("n", "deploy", {"image_url": "http://x/\nrm", "image_sha256": SHA, "image_size": 1})


def test_root_device_is_chosen_by_the_jobs_hints_among_the_reported_disks(env: Env, tmp_path: Path) -> None:
    """POST root-device: Ironic's rules (root_hints.py) over the ramdisk's disks; the answer is shell the ramdisk
    sources; no match names the hints and every disk; bad reports, clean jobs and wrong tokens are refused."""
    gib = 1 << 30
    disks = [{"name": "vda", "size": 4 * gib, "serial": "QM0002"}, {"name": "vdb", "size": 8 * gib, "serial": "qm0001"}]
    token = env.deploy_job()  # hints: size >=4, serial QM0001
    url = f"{env.url}/v1/nodes/n1/root-device"
    resp = requests.post(url, json={"disks": disks}, headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.status_code == 200 and resp.text == "SF_ROOT_DEVICE='vdb'\n"
    resp = requests.post(url, json={"disks": disks[:1]}, headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.status_code == 200 and resp.text.startswith("SF_ROOT_ERROR='node n1: no disk matches")
    script = tmp_path / "answer"
    script.write_text(resp.text)
    out = subprocess.run(["busybox", "sh", "-c", f'. {script} && printf "%s" "$SF_ROOT_ERROR"'],
                         capture_output=True, text=True, check=True, timeout=10)  # fmt: skip
    assert "root device hints size=>=4 serial=QM0001; disks seen: vda (4.0 GiB, serial QM0002)" in out.stdout
    for body, problem in (({"disks": [{"name": "../x", "size": 1}]}, "disks[0].name"),
                          ({"disks": [{"name": "vda", "size": "4"}]}, "disks[0].size"), ({}, "disks")):  # fmt: skip
        resp = requests.post(url, json=body, headers={"X-Stemforge-Token": token}, timeout=10)
        assert resp.status_code == 400 and problem in resp.json()["error"]
    assert requests.post(url, json={"disks": disks}, timeout=10).status_code == 401
    # inspected with these disks: the same set passes; a replaced disk fails naming both sides
    inventory = {"disks": disks, "nics": [], "cpu": {"count": 1, "arch": "x86_64"}, "memory": {"total_bytes": 1},
                 "boot": {"mode": "bios"}}  # fmt: skip
    env.store.set_inspection("n1", inventory)
    resp = requests.post(url, json={"disks": disks}, headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.text == "SF_ROOT_DEVICE='vdb'\n"
    swapped = [disks[0], {**disks[1], "serial": "NEW-1"}]
    resp = requests.post(url, json={"disks": swapped}, headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.text.startswith("SF_ROOT_ERROR='node n1: its disks changed since the inspection of 20")
    assert "missing qm0001 (8.0 GiB); new NEW-1 (8.0 GiB); inspect it again" in resp.text
    env.store.end_job("n1")
    clean = env.store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=60).token
    resp = requests.post(url, json={"disks": disks}, headers={"X-Stemforge-Token": clean}, timeout=10)
    assert resp.status_code == 409 and "not a deploy job" in resp.json()["error"]


def test_layout_route_answers_the_jobs_layout_on_the_reported_disks(env: Env, tmp_path: Path) -> None:
    """POST layout (a layout deploy job): the instructions carry SF_DEPLOY_KIND and SF_ROOTFS_*, not the layout;
    the route answers the lay_* lines for the reported disks, an SF_LAYOUT_ERROR line when the disk set is not the
    inspected one (naming both) or the layout does not fit; clean jobs and wrong tokens are refused."""
    gib = 1 << 30
    disks = [{"name": "vda", "size": 8 * gib, "serial": "SF-A"}, {"name": "vdb", "size": 8 * gib, "serial": "SF-B"}]
    layout = {"boot_mode": "bios", "disks": [
        {"id": "d0", "hints": {"serial": "SF-B"}, "partitions": [
            {"id": "grub", "size": 1, "bios_grub": True}, {"id": "root", "size": "fill", "filesystem": "ext4",
                                                          "mount": "/"}]}]}  # fmt: skip
    rootfs = {"rootfs_url": f"{env.url}/images/sc-1/root.img", "rootfs_offset": 1 << 20, "rootfs_size": 2048,
              "rootfs_sha256": SHA, "rootfs_fstype": "ext4"}  # fmt: skip
    token = env.deploy_job(root_hints=None, deploy_kind="layout", layout=layout, boot_mode="bios", **rootfs)
    headers = {"X-Stemforge-Token": token}
    text = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers=headers, timeout=10).text
    assert "SF_DEPLOY_KIND='layout'\n" in text and f"SF_ROOTFS_OFFSET='{1 << 20}'\n" in text
    assert "SF_ROOTFS_FSTYPE='ext4'\n" in text and "layout" not in text.replace("SF_DEPLOY_KIND='layout'", "")
    url = f"{env.url}/v1/nodes/n1/layout"
    resp = requests.post(url, json={"disks": disks}, headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text.splitlines() == [
        "lay_boot_mode 'bios'", "lay_disk 'd0' 'vdb'", "lay_part 'd0' '1' 'grub' '1' 'bios_grub'",
        "lay_part 'd0' '2' 'root' 'fill' 'linux'", "lay_configdrive 'd0' '3'", "lay_fs 'root' 'ext4' '/'", "lay_go",
    ]  # fmt: skip
    resp = requests.post(url, json={"disks": disks[:1]}, headers=headers, timeout=10)
    assert resp.text.startswith("SF_LAYOUT_ERROR='node n1: layout: disks/0/hints: no free inspected disk matches")
    inventory = {"disks": disks, "nics": [], "cpu": {"count": 1, "arch": "x86_64"}, "memory": {"total_bytes": 1},
                 "boot": {"mode": "bios"}}  # fmt: skip
    env.store.set_inspection("n1", inventory)
    assert requests.post(url, json={"disks": disks}, headers=headers, timeout=10).text.endswith("lay_go\n")
    resp = requests.post(url, json={"disks": [disks[0], {**disks[1], "size": 9 * gib}]}, headers=headers, timeout=10)
    assert "its disks changed since the inspection of 20" in resp.text
    assert "missing SF-B (8.0 GiB); new SF-B (9.0 GiB)" in resp.text and resp.text.count("\n") == 1
    (change,) = env.store.events("n1", kinds=["hardware-change"])  # placement.py refuses n1 until re-inspected
    assert "missing SF-B (8.0 GiB); new SF-B (9.0 GiB)" in change.data["message"] and change.data["route"] == "layout"
    assert requests.post(url, json={"disks": "x"}, headers=headers, timeout=10).status_code == 400
    assert requests.post(url, json={"disks": disks}, timeout=10).status_code == 401
    assert requests.get(url, headers=headers, timeout=10).status_code == 405
    env.store.end_job("n1")
    clean = env.store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=60).token
    resp = requests.post(url, json={"disks": disks}, headers={"X-Stemforge-Token": clean}, timeout=10)
    assert resp.status_code == 409


def test_layout_deploy_instructions_are_checked() -> None:
    base = {"image_url": "http://x/i", "image_sha256": SHA, "image_size": 1, "deploy_kind": "layout",
            "rootfs_url": "http://x/i", "rootfs_offset": 0, "rootfs_size": 5, "rootfs_sha256": SHA,
            "rootfs_fstype": "ext4", "layout": {"disks": [{"id": "d0", "partitions": []}]}}  # fmt: skip
    assert "SF_ROOTFS_SIZE='5'" in render_instructions("n", "deploy", base)
    for change, field in (
        ({"rootfs_sha256": None}, "rootfs_sha256"),
        ({"rootfs_offset": -1}, "rootfs_offset"),
        ({"rootfs_size": True}, "rootfs_size"),
        ({"rootfs_url": "file:///x"}, "rootfs_url"),
        ({"rootfs_fstype": "xfs"}, "rootfs_fstype"),
        ({"deploy_kind": "tarball"}, "deploy_kind"),
        ({"layout": {"disks": [{"id": "D0", "partitions": []}]}}, "layout: layout/disks/0/id"),
        ({"boot_mode": "efi"}, "boot_mode"),
        ({"image_format": "gzip"}, "image_format"),
        ({"deploy_kind": "whole-disk"}, "only a layout deploy"),
    ):
        with pytest.raises(InstructionsError, match=f"node 'n'.*{field}"):
            render_instructions("n", "deploy", {**base, **change})


def test_cloud_init_phone_home_form_with_the_token_in_the_path(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """cloud-init's phone_home (cc_phone_home.py): a form POST to .../phone-home/<token>; recorded as event
    phone-home when instance_id is the node's VM uuid (its config drive's), once; the token never reaches a log."""
    caplog.set_level(logging.DEBUG)
    for verb, to in (("manage", "manageable"), ("provide", "cleaning"), ("done", "available")):
        env.store.transition("n1", verb, [env.store.get_node("n1").provision_state], to, "test", "test")
    assert env.store.claim("n1", "vm-1234-abcd", "deploying", "test", "create_vm")
    token = env.store.issue_phone_home_token("n1")
    url = f"{env.url}/v1/nodes/n1/phone-home/{token}"
    form = {"instance_id": "1234-abcd", "hostname": "vm-1234-abcd"}
    wrong = requests.post(url, data={**form, "instance_id": "other"}, timeout=10)
    assert wrong.status_code == 409 and "not its VM's config drive uuid" in wrong.json()["error"]
    assert requests.post(url, data="instance_id=%ZZ&&", timeout=10).status_code == 400
    assert requests.post(url, data={"hostname": "x"}, timeout=10).status_code == 400
    assert requests.post(url[:-3] + "AAA", data=form, timeout=10).status_code == 401
    assert requests.get(url, timeout=10).status_code == 405
    resp = requests.post(url, data=form, timeout=10)  # what cloud-init sends: application/x-www-form-urlencoded
    assert resp.status_code == 204, resp.text
    (event,) = env.store.events("n1", kinds=["phone-home"])
    assert event.data == {"source": "cloud-init", **form}
    assert requests.post(url, data=form, timeout=10).status_code == 409  # replayed
    assert requests.post(f"{env.url}/v1/nodes/n2/phone-home/{token}", data=form, timeout=10).status_code == 401
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("stemforge"))  # not urllib3's
    assert token not in text and token[:-3] not in text
    assert "POST /v1/nodes/n1/phone-home/*** 204" in text


# -- tokens ----------------------------------------------------------------------------------------------------


def test_wrong_or_missing_token_is_rejected_and_logged_without_the_token(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    token = env.deploy_job()
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for headers in ({"X-Stemforge-Token": wrong}, {}):
        for method, route, body in (
            ("GET", "instructions", None),
            ("GET", "configdrive", None),
            ("POST", "events", json.dumps({"kind": "heartbeat"})),
        ):
            resp = requests.request(method, f"{env.url}/v1/nodes/n1/{route}?token={wrong}", headers=headers,
                                    data=body, timeout=10)  # fmt: skip
            assert resp.status_code == 401, (route, resp.text)
            assert token not in resp.text and wrong not in resp.text
    # another node's job token does not work for n1
    other = env.deploy_job("n2")
    resp = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": other}, timeout=10)
    assert resp.status_code == 401
    text = _log_text(caplog)
    assert "rejected callback for node n1 from 127.0.0.1 (bad token)" in text
    assert "rejected callback for node n1 from 127.0.0.1 (no token)" in text
    for secret in (token, wrong, other):
        assert secret not in text
    assert "?token" not in text, "request logs must not contain query strings"
    assert env.store.events("n1") == []


def test_unknown_node_is_404_and_no_job_is_401(env: Env) -> None:
    token = env.deploy_job()
    for route in ("instructions", "configdrive"):
        resp = requests.get(f"{env.url}/v1/nodes/ghost/{route}", headers={"X-Stemforge-Token": token}, timeout=10)
        assert resp.status_code == 404 and "ghost" in resp.json()["error"]
    resp = requests.post(f"{env.url}/v1/nodes/ghost/phone-home", data="{}", timeout=10)
    assert resp.status_code == 404
    env.store.end_job("n1")
    resp = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": token}, timeout=10)
    assert resp.status_code == 401


# -- config drive ----------------------------------------------------------------------------------------------


def test_configdrive_is_served_to_the_job_token_only(env: Env) -> None:
    token = env.deploy_job()
    headers = {"X-Stemforge-Token": token}
    missing = requests.get(f"{env.url}/v1/nodes/n1/configdrive", headers=headers, timeout=10)
    assert missing.status_code == 404 and "no config drive" in missing.json()["error"]
    drives = env.state / "configdrives"
    drives.mkdir()
    iso = os.urandom(70_000)
    (drives / "n1.iso").write_bytes(iso)
    resp = requests.get(f"{env.url}/v1/nodes/n1/configdrive", headers=headers, timeout=10)
    assert resp.status_code == 200 and resp.content == iso and resp.headers["Content-Length"] == str(len(iso))


# -- events and phone-home -------------------------------------------------------------------------------------


def test_events_are_stored_as_sent(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    token = env.deploy_job()
    headers = {"X-Stemforge-Token": token, "Content-Type": "application/x-www-form-urlencoded"}  # busybox wget's
    sent = [
        {"kind": "heartbeat"},
        {"kind": "stage", "stage": "booted", "message": "ramdisk up", "data": {"disks": ["vda", "vdb"]}},
        {"kind": "result", "stage": "checksum-ok", "ok": False, "message": "sha256 mismatch"},
        {"kind": "bench", "stage": "round-1", "ok": True, "message": "dd 1.2s, ours 1.1s", "data": {}},
        {"kind": "heartbeat", "stage": "", "ok": True, "message": "", "data": {}},  # what the ramdisk sends
    ]
    for body in sent:
        resp = requests.post(f"{env.url}/v1/nodes/n1/events", headers=headers, data=json.dumps(body), timeout=10)
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
    events = env.store.events("n1")
    assert [(e.kind, e.data) for e in events] == [(b["kind"], b) for b in sent]
    posts = [r for r in caplog.records if r.getMessage().startswith("POST /v1/nodes/n1/events 204")]
    assert len(posts) == len(sent) - 2, "heartbeats are logged at DEBUG only (they come every few seconds)"
    assert "node n1 result checksum-ok FAILED: sha256 mismatch" in _log_text(caplog)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe", 400, "not UTF-8"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"kind": "reboot"}', 400, "kind"),
        (b'{"kind": "stage"}', 400, "stage: required"),
        (b'{"kind": "result", "stage": "done"}', 400, "ok: required"),
        (b'{"kind": "stage", "stage": "booted", "ok": "yes"}', 400, "ok: must be true or false"),
        (b'{"kind": "heartbeat", "token": "x"}', 400, "token: unknown field"),
        (b'{"kind": "heartbeat", "data": []}', 400, "data: must be an object"),
        (b"{}" + b" " * (65 * 1024), 413, "exceeds"),
    ],
)
def test_bad_event_bodies_are_refused_naming_the_problem(env: Env, body: bytes, status: int, words: str) -> None:
    token = env.deploy_job()
    resp = requests.post(f"{env.url}/v1/nodes/n1/events", headers={"X-Stemforge-Token": token}, data=body,
                         timeout=10)  # fmt: skip
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]
    assert env.store.events("n1") == []


def test_phone_home_takes_only_the_phone_home_token(env: Env) -> None:
    job_token = env.deploy_job()
    report = {"agent_id": "agent-1", "networks": {"default": {"ip": "10.0.0.5"}}, "macs": [MAC1],
              "configdrive_sha256": SHA, "hostname": "n1"}  # fmt: skip
    url = f"{env.url}/v1/nodes/n1/phone-home"
    assert requests.post(url, data=json.dumps(report), timeout=10).status_code == 401  # none issued yet
    token = env.store.issue_phone_home_token("n1")
    assert requests.post(url, headers={"X-Stemforge-Token": job_token}, data=json.dumps(report),
                         timeout=10).status_code == 401  # fmt: skip
    bad = requests.post(url, headers={"X-Stemforge-Token": token}, data=b"agent_id=1", timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    ok = requests.post(url, headers={"X-Stemforge-Token": token}, data=json.dumps(report), timeout=10)
    assert ok.status_code == 204
    events = env.store.events("n1", kinds=["phone-home"])
    assert [e.data for e in events] == [report]
    env.store.issue_phone_home_token("n1")  # a new deployment rotates it
    assert requests.post(url, headers={"X-Stemforge-Token": token}, data=json.dumps(report),
                         timeout=10).status_code == 401  # fmt: skip


def test_methods_and_unknown_paths(env: Env) -> None:
    assert requests.post(f"{env.url}/boot.ipxe", data="x", timeout=10).status_code == 405
    assert requests.get(f"{env.url}/v1/nodes/n1/events", timeout=10).status_code == 405
    assert requests.put(f"{env.url}/images/x", data="x", timeout=10).status_code == 405
    assert requests.get(f"{env.url}/v1/nodes/n1", timeout=10).status_code == 404
    assert requests.get(f"{env.url}/", timeout=10).status_code == 404
    # keep-alive survives refused requests: one session, several answers
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(f"{env.url}/boot.ipxe", timeout=10).status_code == 200
            assert session.post(f"{env.url}/v1/nodes/n1/events", data="{}", timeout=10).status_code == 401


def test_a_store_failure_answers_500_and_the_server_keeps_serving(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    token = env.deploy_job()
    original = env.server.store.call

    def broken(fn: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    env.server.store.call = broken  # type: ignore[method-assign]
    try:
        resp = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": token}, timeout=10)
    finally:
        env.server.store.call = original  # type: ignore[method-assign]
    assert resp.status_code == 500 and resp.json() == {"error": "internal error (OperationalError)"}
    assert "GET /v1/nodes/n1/instructions failed" in _log_text(caplog) and token not in _log_text(caplog)
    ok = requests.get(f"{env.url}/v1/nodes/n1/instructions", headers={"X-Stemforge-Token": token}, timeout=10)
    assert ok.status_code == 200
