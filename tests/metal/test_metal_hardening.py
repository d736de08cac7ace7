"""Regression tests for the adversarial review of the bare-metal provider (issue 12, items 3 and 9).

HTTP (``metal serve``'s server on 127.0.0.1 with a real MetalStore, no guests):
* a job token stops working at its job's deadline (instructions, config drive, events);
* a phone-home report cannot be replayed (a token is spent per boot; a report without a boot count once);
* ``Range: bytes=0-<5000 digits>`` and a 100k-deep JSON body are answered 200/416/400, never 500 + traceback;
* ``GET /ipxe/<mac>`` (the script holds the job token) goes only to the address dnsmasq leased that MAC, read
  from a lease file in dnsmasq's format (the real dnsmasq is in test_metal_services_netns.py).

Cleaning (the real deploy ramdisk in QEMU through ``tests/harness/ramdisk_rig.py``, the same rig as
test_metal_ramdisk.py): plant a secret in the agent settings' ``env``, deploy the test stemcell with that config
drive, clean, then search the whole disk file for the secret: absent; no ext superblock copy, LVM label or md
superblock is left, and libblkid finds nothing. A plan's full erase zeroes the rest of the disk too, with progress
events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cpi import configdrive
from cpi.providers.baremetal.serve import leases
from cpi.providers.baremetal.serve.http import MetalHTTPServer, serve_in_thread
from cpi.providers.baremetal.serve.shared_store import SharedStore
from cpi.providers.baremetal.store import Bmc, MetalStore, NodeSpec
from tests.harness import ramdisk_rig as rig
from tests.harness.ramdisk_rig import deploy_instructions, run_ramdisk

pytestmark = pytest.mark.metal

MAC1 = "52:54:00:ab:00:01"
MAC2 = "52:54:00:ab:00:02"
MIB = 1024 * 1024
GIB = 1024 * MIB


def _spec(name: str, mac: str) -> NodeSpec:
    return NodeSpec(
        name=name,
        bmc=Bmc("redfish", "http://127.0.0.1:9", f"/redfish/v1/Systems/{name}", "admin", "bmc-pw"),
        macs=(mac,),
        plan={"arch": "x86_64", "disks": [{"size_gib": 4}]},
    )


class Env:
    def __init__(self, state: Path, store: MetalStore, server: MetalHTTPServer, lease_file: Path) -> None:
        self.state = state
        self.store = store
        self.server = server
        self.url = server.base_url
        self.lease_file = lease_file

    def api(self, node: str, route: str) -> str:
        return f"{self.url}/v1/nodes/{node}/{route}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    state = tmp_path / "state"
    ramdisk = tmp_path / "ramdisk"
    ramdisk.mkdir()
    (ramdisk / "vmlinuz").write_bytes(os.urandom(10_000))
    (ramdisk / "initrd.img").write_bytes(os.urandom(10_000))
    store = MetalStore(state)
    store.enroll([_spec("n1", MAC1), _spec("n2", MAC2)], who="test")
    (state / "configdrives").mkdir()
    (state / "configdrives" / "n1.iso").write_bytes(b"ISO" * 100)
    lease_file = tmp_path / "dnsmasq.leases"
    server_store = MetalStore(state)
    server = MetalHTTPServer(("127.0.0.1", 0), store=SharedStore(server_store), state_dir=state,
                             ramdisk_dir=ramdisk, lease_file=lease_file)  # fmt: skip
    with serve_in_thread(server):
        yield Env(state, store, server, lease_file)
    server_store.close()
    store.close()


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# -- item 9: deadlines, replays, hostile ranges and bodies -------------------------------------------------------
def test_a_job_token_stops_working_at_the_jobs_deadline(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    job = env.store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=1.5)
    header = {"X-Stemforge-Token": job.token}
    assert requests.get(env.api("n1", "instructions"), headers=header, timeout=10).status_code == 200
    time.sleep(1.6)
    event = json.dumps({"kind": "stage", "stage": "booted", "ok": True})
    for method, route, body in (("GET", "instructions", None), ("GET", "configdrive", None),
                                ("POST", "events", event)):  # fmt: skip
        resp = requests.request(method, env.api("n1", route), headers=header, data=body, timeout=10)
        assert resp.status_code == 401, (route, resp.status_code)
    assert env.store.events("n1") == []
    assert "rejected callback for node n1 from 127.0.0.1 (job expired)" in _log_text(caplog)
    assert job.token not in _log_text(caplog)


def test_a_phone_home_report_cannot_be_replayed(env: Env) -> None:
    token = env.store.issue_phone_home_token("n1")
    header = {"X-Stemforge-Token": token}
    url = env.api("n1", "phone-home")
    first_boot = json.dumps({"agent_id": "a1", "boot": 1})
    assert requests.post(url, headers=header, data=first_boot, timeout=10).status_code == 204
    replay = requests.post(url, headers=header, data=first_boot, timeout=10)
    assert replay.status_code == 409 and "boot 1 was already reported" in replay.json()["error"]
    assert requests.post(url, headers=header, data=json.dumps({"agent_id": "a1", "boot": 0}),
                         timeout=10).status_code == 409  # fmt: skip
    # the same OS booting again (reboot_vm) reports its next boot, once
    second_boot = json.dumps({"agent_id": "a1", "boot": 2})
    assert requests.post(url, headers=header, data=second_boot, timeout=10).status_code == 204
    assert requests.post(url, headers=header, data=second_boot, timeout=10).status_code == 409
    assert [e.data["boot"] for e in env.store.events("n1", kinds=["phone-home"])] == [1, 2]
    # a report without a boot count spends the token outright
    token = env.store.issue_phone_home_token("n1")
    header = {"X-Stemforge-Token": token}
    assert requests.post(url, headers=header, data='{"agent_id": "a1"}', timeout=10).status_code == 204
    assert requests.post(url, headers=header, data='{"agent_id": "a1"}', timeout=10).status_code == 409
    for bad in ('{"boot": -1}', '{"boot": true}', '{"boot": "3"}', '{"boot": 99999999999999}'):
        resp = requests.post(url, headers=header, data=bad, timeout=10)
        assert resp.status_code == 400 and "boot must be an integer" in resp.json()["error"], bad
    assert len(env.store.events("n1", kinds=["phone-home"])) == 3


def test_a_range_with_thousands_of_digits_is_answered_not_a_traceback(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "9" * 5000
    url = f"{env.url}/ramdisk/initrd.img"
    data = (env.server.ramdisk_dir / "initrd.img").read_bytes()
    whole = requests.get(url, headers={"Range": f"bytes=0-{huge}"}, timeout=10)
    assert whole.status_code == 200 and whole.content == data  # a last position past the end means the end
    assert requests.get(url, headers={"Range": f"bytes={huge}-"}, timeout=10).status_code == 416
    assert requests.get(url, headers={"Range": f"bytes={huge}-{huge}"}, timeout=10).status_code == 416
    suffix = requests.get(url, headers={"Range": f"bytes=-{huge}"}, timeout=10)
    assert suffix.status_code == 200 and suffix.content == data
    tail = requests.get(url, headers={"Range": f"bytes={'0' * 5000}9990-"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[9990:]
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


@pytest.mark.parametrize("route", ["events", "phone-home"])
def test_a_deeply_nested_json_body_is_a_400(env: Env, route: str, caplog: pytest.LogCaptureFixture) -> None:
    token = env.store.start_job("n1", "clean", {"mode": "clean"}, timeout_s=60).token
    if route == "phone-home":
        token = env.store.issue_phone_home_token("n1")
    depth = 100_000 if route == "phone-home" else 30_000  # events are capped at 64 KiB
    body = '{"kind": "stage", "stage": "x", "data": {"a": ' + "[" * depth + "]" * depth + "}}"
    resp = requests.post(env.api("n1", route), headers={"X-Stemforge-Token": token}, data=body, timeout=30)
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["error"]
    # deep but within Python's recursion limit: refused by our own depth limit, not stored
    body = '{"kind": "stage", "stage": "x", "data": {"a": ' + "[" * 100 + "]" * 100 + "}}"
    resp = requests.post(env.api("n1", route), headers={"X-Stemforge-Token": token}, data=body, timeout=30)
    assert resp.status_code == 400 and "nests deeper than 32 levels" in resp.json()["error"]
    assert env.store.events("n1") == []
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


# -- item 9: the iPXE script (it holds the job token) goes only to the DHCP lease of its MAC -----------------------
def _write_leases(path: Path, *entries: tuple[str, str], expiry: int | None = None) -> None:
    """A lease file as dnsmasq's lease_update_file() writes it (expiry, hwaddr, ip, hostname, client-id)."""
    when = int(time.time()) + 3600 if expiry is None else expiry
    lines = [f"{when} {mac} {ip} * 01:{mac}" for mac, ip in entries]
    lines += ["duid 00:01:00:01:2c:00:00:00:52:54:00:00:00:01", f"{when} 1234 fd00::5 * 00:01:00:01"]
    path.write_text("\n".join(lines) + "\n")


def test_the_ipxe_script_goes_only_to_the_address_dnsmasq_leased_that_mac(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    job = env.store.start_job("n1", "deploy", {"mode": "deploy"}, timeout_s=60)
    url = f"{env.url}/ipxe/{MAC1}"
    # no lease for the MAC at all (someone asking by MAC from anywhere): refused, no token
    t0 = time.monotonic()
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 403 and job.token not in refused.text
    assert time.monotonic() - t0 >= leases.LEASE_WAIT_S * 0.9  # it waited for dnsmasq to write the lease
    # the MAC's lease names another address: refused
    _write_leases(env.lease_file, (MAC1, "10.9.0.150"), (MAC2, "127.0.0.1"))
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 403 and job.token not in refused.text
    assert "refused to 127.0.0.1: dnsmasq leased that MAC to 10.9.0.150" in _log_text(caplog)
    # an expired lease counts for nothing
    _write_leases(env.lease_file, (MAC1, "127.0.0.1"), expiry=int(time.time()) - 10)
    assert requests.get(url, timeout=10).status_code == 403
    # the address dnsmasq leased the MAC gets the script with the token
    _write_leases(env.lease_file, (MAC1.upper(), "127.0.0.1"), expiry=0)  # 0: an infinite lease
    script = requests.get(url, timeout=10)
    assert script.status_code == 200 and f"sf.token={job.token}" in script.text
    # a lease written just after the request (dnsmasq writes the file after answering) is waited for
    _write_leases(env.lease_file)
    import threading

    late = threading.Timer(0.5, _write_leases, (env.lease_file, (MAC1, "127.0.0.1")))
    late.start()
    assert requests.get(url, timeout=10).status_code == 200
    late.join()
    assert job.token not in _log_text(caplog)


# -- item 3: cleaning leaves nothing of the previous tenant ------------------------------------------------------
# (the rig tests below boot the real ramdisk in QEMU; module-scoped builds are shared with test_metal_ramdisk.py's
# cache)
def lvm_label() -> bytes:
    """Sector 1 of an LVM2 physical volume (label_header + pv_header; lib/label/label.c, lib/format_text/layout.h):
    "LABELONE", its sector number, the CRC LVM computes (calc_crc: reflected CRC-32, initial 0xf597a6cf, no final
    xor) over the rest of the sector from offset 20, offset 32, "LVM2 001", then a pv_header with a uuid."""
    sector = bytearray(512)
    body = bytearray(512)
    body[0:8] = b"LABELONE"
    body[8:16] = struct.pack("<Q", 1)
    body[20:24] = struct.pack("<I", 32)
    body[24:32] = b"LVM2 001"
    body[32:64] = b"Aaaa1111Bbbb2222Cccc3333Dddd4444"
    body[64:72] = struct.pack("<Q", 4 * GIB)
    crc = ~zlib.crc32(bytes(body[20:]), ~0xF597A6CF & 0xFFFFFFFF) & 0xFFFFFFFF
    body[16:20] = struct.pack("<I", crc)
    sector[:] = body
    return bytes(sector)


def md_superblock_v1(size_sectors: int) -> bytes:
    """A 1 KiB md v1 superblock (drivers/md/md.h struct mdp_superblock_1; libblkid's probe_raid1 checks magic,
    major_version and sb_csum): magic a92b4efc, version 1, a set uuid, level 1, 2 raid disks, the data size, and
    sb_csum the folded 32-bit sum of the little-endian words of the 256 + 2*max_dev bytes (calc_sb_1_csum)."""
    sb = bytearray(1024)
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)
    sb[16:32] = hashlib.md5(b"stemforge-md").digest()
    sb[32:41] = b"sf:tenant"
    struct.pack_into("<IiI", sb, 64, int(time.time()), 1, 0)  # ctime, level, layout
    struct.pack_into("<QI", sb, 80, size_sectors, 0)  # size, chunksize
    struct.pack_into("<I", sb, 92, 2)  # raid_disks
    struct.pack_into("<Q", sb, 128, 2048)  # data_offset
    struct.pack_into("<Q", sb, 136, size_sectors)  # data_size
    struct.pack_into("<Q", sb, 144, 8)  # super_offset (v1.2: 4 KiB)
    struct.pack_into("<I", sb, 220, 2)  # max_dev
    total = sum(struct.unpack_from(f"<{(256 + 4) // 4}I", sb, 0))
    csum = (total & 0xFFFFFFFF) + (total >> 32)
    struct.pack_into("<I", sb, 216, csum & 0xFFFFFFFF)
    return bytes(sb)


def signatures(path: Path) -> list[str]:
    """The signatures libblkid finds in the file ``path`` (every one, as ``wipefs`` lists them)."""
    out = subprocess.run(["wipefs", "--json", "-O", "TYPE", str(path)], capture_output=True, text=True, check=True)
    return sorted(s["type"] for s in json.loads(out.stdout or '{"signatures": []}').get("signatures", []))


def region_signatures(disk: Path, offset: int, length: int, tmp: Path) -> list[str]:
    """``signatures`` of ``length`` bytes of ``disk`` at ``offset`` (a partition), copied to a scratch file."""
    scratch = tmp / "region.raw"
    with open(disk, "rb") as src, open(scratch, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(length))
    try:
        return signatures(scratch)
    finally:
        scratch.unlink()


def data_extents(path: Path) -> Iterator[tuple[int, int]]:
    """(offset, length) of the allocated parts of a sparse file (SEEK_DATA / SEEK_HOLE)."""
    with open(path, "rb") as fh:
        fd, size, off = fh.fileno(), os.fstat(fh.fileno()).st_size, 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after off
                return
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end - start
            off = end


def find_in_disk(path: Path, needle: bytes) -> list[int]:
    """Every offset of ``needle`` in the disk file (its data extents, read in 4 MiB pieces with overlap)."""
    hits: list[int] = []
    with open(path, "rb") as fh:
        for start, length in data_extents(path):
            pos = start
            while pos < start + length:
                fh.seek(pos)
                chunk = fh.read(min(4 * MIB + len(needle), start + length - pos))
                i = chunk.find(needle)
                while i >= 0:
                    if pos + i not in hits:
                        hits.append(pos + i)
                    i = chunk.find(needle, i + 1)
                pos += 4 * MIB
    return hits


def nonzero_bytes(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        for start, length in data_extents(path):
            fh.seek(start)
            left = length
            while left:
                chunk = fh.read(min(4 * MIB, left))
                left -= len(chunk)
                count += len(chunk) - chunk.count(0)
    return count


def partitions(disk: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return []
    return list(json.loads(proc.stdout)["partitiontable"].get("partitions", []))


def ext_superblock_offsets(disk: Path, part_offset: int) -> list[int]:
    """Byte offsets in ``disk`` of the ext superblock of the partition at ``part_offset`` and of every backup copy
    (read from the primary: groups 1 and powers of 3, 5, 7 with sparse_super), as e2fsprogs places them."""
    with open(disk, "rb") as fh:
        fh.seek(part_offset + 1024)
        sb = fh.read(1024)
    assert sb[56:58] == b"\x53\xef", "no ext superblock"
    blocks, first, log_bs, bpg = (struct.unpack_from("<I", sb, o)[0] for o in (4, 20, 24, 32))
    ro_compat = struct.unpack_from("<I", sb, 100)[0]
    assert ro_compat & 1, "the test expects sparse_super"
    bs, groups = 1024 << log_bs, (blocks - first + bpg - 1) // bpg
    backups = {1} | {b**k for b in (3, 5, 7) for k in range(1, 40) if b**k < groups}
    return [part_offset + 1024] + [part_offset + (first + g * bpg) * bs for g in sorted(backups) if g < groups]


SECRET_ENV = "tenant-env-SECRET-9f3c1e"
SECRET_MBUS = "mbus-SECRET-7a1d20"


def secret_configdrive(path: Path, stub: Any) -> Path:
    """The config drive the provider writes (agent settings with env and the message-bus URL), secrets planted."""
    settings = {
        "agent_id": "agent-hardening",
        "vm": {"name": "vm-hardening"},
        "mbus": f"nats://nats:{SECRET_MBUS}@10.0.0.6:4222",
        "blobstore": {"provider": "dav", "options": {"endpoint": "http://10.0.0.6:25250", "password": SECRET_MBUS}},
        "networks": {"prov": {"type": "dynamic", "mac": "52:54:00:5f:aa:01", "default": ["dns", "gateway"]}},
        "disks": {"system": "/dev/vda", "persistent": {}},
        "env": {"bosh": {"password": SECRET_ENV}},
    }
    files = configdrive.files_for(settings, instance_uuid="hardening", hostname="hardening", network_data={"links": []})
    meta = json.loads(files["openstack/latest/meta_data.json"])
    meta["meta"] = {"phone_home_url": stub.phone_home_url, "phone_home_token": stub.phone_home_token}
    files["openstack/latest/meta_data.json"] = json.dumps(meta, sort_keys=True).encode()
    return configdrive.write_iso(path, files)


@pytest.fixture(scope="module")
def ramdisk() -> Any:
    from cpi.providers.baremetal.ramdisk import build as rdb

    return rdb.ensure_ramdisk(progress=print)


@pytest.fixture(scope="module")
def test_image() -> Path:
    from stemcells.testimage import build as tib

    return tib.build_test_image(fmt="raw", progress=print)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_cleaning_leaves_nothing_of_the_previous_tenant(ramdisk: Any, test_image: Path, tmp_path: Path) -> None:
    """Deploy the test stemcell with a config drive holding secrets; give the second disk an LVM PV and an md RAID
    member; clean (metadata erase): no secret, no superblock copy, no signature anywhere; then a plan's full erase
    leaves only zeros, reporting progress."""
    root = rig.sparse_disk(tmp_path / "root.raw", GIB)
    extra = rig.sparse_disk(tmp_path / "extra.raw", 256 * MIB)
    disks = [rig.Disk(root, "sf-root", discard=True), rig.Disk(extra, "sf-extra")]
    # the second disk: an LVM physical volume on partition 1, an md RAID member (v1.2) on partition 2
    layout = b"label: dos\nunit: sectors\n\nstart=2048, size=204800, type=8e\nstart=206848, size=204800, type=fd\n"
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(extra)], input=layout, check=True)
    with open(extra, "r+b") as fh:
        fh.seek(2048 * 512 + 512)
        fh.write(lvm_label())
        fh.seek(206848 * 512 + 4096)
        fh.write(md_superblock_v1(204800 - 2048))
        fh.seek(150 * MIB)  # inside partition 2, away from its md superblock and the last 66 MiB
        fh.write(b"tenant data in the middle of a disk " * 1000)
    assert region_signatures(extra, 2048 * 512, 100 * MIB, tmp_path) == ["LVM2_member"]
    assert region_signatures(extra, 206848 * 512, 100 * MIB, tmp_path) == ["linux_raid_member"]

    with rig.ProvisioningStub(images={"root.img": test_image}) as stub:
        stub.configdrive = secret_configdrive(tmp_path / "cd.iso", stub)
        stub.instructions = deploy_instructions(stub, test_image, root_hints="serial=sf-root")
        assert run_ramdisk(tmp_path, "deploy", stub, ramdisk, disks)["ok"] is True
    # the attack, reproduced: the deployed disk holds the secrets (config drive) and the root fs's superblocks
    assert find_in_disk(root, SECRET_ENV.encode()) and find_in_disk(root, SECRET_MBUS.encode())
    parts = partitions(root)
    assert len(parts) == 3
    ext_part = next(
        p
        for p in parts
        if any(t.startswith("ext") for t in region_signatures(root, p["start"] * 512, 2 * MIB, tmp_path))
    )
    copies = ext_superblock_offsets(root, ext_part["start"] * 512)
    assert len(copies) >= 3

    with rig.ProvisioningStub() as stub:
        stub.instructions = {"mode": "clean", "heartbeat_s": 2}
        assert run_ramdisk(tmp_path, "clean", stub, ramdisk, disks)["ok"] is True
        wiped = {
            e["data"]["serial"]: e["data"]
            for e in stub.events
            if e.get("kind") == "stage" and e["stage"] == "disk-wiped"
        }
    assert wiped["sf-root"]["verified"] is True and wiped["sf-root"]["configdrives"] == 1
    assert wiped["sf-root"]["superblock_copies"] == len(copies)
    assert wiped["sf-root"]["erase"] == "metadata" and wiped["sf-extra"]["verified"] is True
    for disk in (root, extra):
        assert find_in_disk(disk, SECRET_ENV.encode()) == [], f"{disk.name}: the env password survived cleaning"
        assert find_in_disk(disk, SECRET_MBUS.encode()) == [], f"{disk.name}: the mbus password survived cleaning"
        assert signatures(disk) == [] and partitions(disk) == []
    with open(root, "rb") as fh:
        for offset in copies:
            fh.seek(offset + 56)
            assert fh.read(2) != b"\x53\xef", f"an ext superblock copy survived at byte {offset}"
    for start in (2048, 206848):  # the old partitions' signatures, probed where the partitions were
        assert region_signatures(extra, start * 512, 100 * MIB, tmp_path) == []
    assert find_in_disk(extra, b"tenant data in the middle")  # a metadata erase leaves file data

    # a plan's full erase: every byte of every disk, with progress
    with rig.ProvisioningStub() as stub:
        stub.instructions = {"mode": "clean", "heartbeat_s": 2, "erase": "full"}
        assert run_ramdisk(tmp_path, "erase", stub, ramdisk, disks)["ok"] is True
        progress = [e["data"] for e in stub.events if e.get("kind") == "stage" and e["stage"] == "erase-progress"]
        wiped = {
            e["data"]["serial"]: e["data"]
            for e in stub.events
            if e.get("kind") == "stage" and e["stage"] == "disk-wiped"
        }
    assert wiped["sf-root"]["method"] == "discard+zeroout" and wiped["sf-root"]["erase"] == "full"
    by_disk: dict[str, list[int]] = {}
    for p in progress:
        by_disk.setdefault(p["device"], []).append(p["percent"])
    assert sorted(by_disk) == ["/dev/vda", "/dev/vdb"]
    for percents in by_disk.values():
        assert percents == sorted(percents) and percents[-1] == 100
    assert len(by_disk["/dev/vda"]) == 4  # 1 GiB in chunks of 256 MiB (at least 256 MiB, at most 1/8 of the disk)
    for disk in (root, extra):
        assert nonzero_bytes(disk) == 0, f"{disk.name}: not all zeros after a full erase"


def test_clean_instructions_carry_the_erase_depth() -> None:
    from cpi.providers.baremetal.instructions import InstructionsError, render_instructions

    assert (
        render_instructions("n1", "clean", {"mode": "clean", "erase": "full"}) == "SF_MODE='clean'\nSF_ERASE='full'\n"
    )
    assert "SF_ERASE='metadata'" in render_instructions("n1", "clean", {"erase": "metadata"})
    with pytest.raises(InstructionsError, match="erase: must be one of metadata, full, not 'secure'"):
        render_instructions("n1", "clean", {"erase": "secure"})
    with pytest.raises(InstructionsError, match="erase: only a clean job erases disks"):
        render_instructions("n1", "deploy", {"image_url": "http://h/i", "image_sha256": "a" * 64, "image_size": 1,
                                             "erase": "full"})  # fmt: skip
