"""BareMetalProvider's CPI methods against a real sushy-emulator (fake driver: simulated power, 1-11 s delays) with
the ramdisk and the installed OS played by a thread working on the shared store (the full PXE path is in
test_metal_e2e.py): claims, config drive contents, failure cleanup, BMC-down maintenance, disks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpi import configdrive
from cpi.errors import CloudError, CpiError, DiskNotAttached, NotSupported, VMCreationFailed, VMNotFound
from cpi.provider import VmRequest
from cpi.providers.baremetal.provider import BareMetalProvider
from cpi.providers.baremetal.store import Bmc, MetalStore, NodeSpec
from tests.harness.redfish import PASSWORD, SYSTEMS, Emulator, free_port

log = logging.getLogger("test.metal.provider")
AGENT_ENV = {"bosh": {"password": "env-secret-pw", "mbus": {"cert": {"private_key": "PRIVATE"}}}}
NETWORKS = {"default": {"type": "dynamic", "dns": ["10.0.0.2"], "default": ["dns", "gateway"]}}


class FakeRamdisk:
    """Plays the deploy ramdisk (stage events per job), ``metal serve``'s DHCP-seen signal (a ``dhcp`` event per
    lease, as ``services/dhcp_seen.py`` records them) and the installed OS (a DHCP request after the deploy; a
    phone-home read from the config drive the provider wrote, with the token it holds) for every node, until
    stopped."""

    def __init__(self, store: MetalStore, drives: Path) -> None:
        self.store = store
        self.drives = drives
        self.seen: set[str] = set()
        self.deploy_result: Callable[[str], dict[str, Any]] = lambda node: {"stage": "done", "ok": True}
        self.phone_home = True
        self.deploy_dhcp = True  # the ramdisk's NIC is on metal serve's network
        self.os_dhcp = True  # the OS on the deployed disk asks for an address
        self.selected_serial: str | None = None  # the root disk the ramdisk reports (default: the plan's)
        self.on_deploy: Callable[[str], None] | None = None  # called as a deploy job starts (the ramdisk's asks)
        self.stop = threading.Event()
        self.pending_phone_home: dict[str, float] = {}
        self.booting: dict[str, float] = {}
        self.last_dhcp: dict[str, float] = {}
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def post(self, node: str, kind: str, **body: Any) -> None:
        self.store.add_event(node, kind, {"kind": kind, **body})

    def run(self) -> None:
        while not self.stop.is_set():
            for node in self.store.nodes():
                job = self.store.job(node.name)
                if job is not None and job.token not in self.seen:
                    self.seen.add(job.token)
                    threading.Thread(target=self.play, args=(node.name, job.kind), daemon=True).start()
            for name, since in list(self.pending_phone_home.items()):
                if self.store.job(name) is None and time.time() > since + 1:
                    del self.pending_phone_home[name]
                    if self.os_dhcp:
                        self.booting[name] = time.time()
                    if self.phone_home:
                        self.do_phone_home(name)
            # the fake cannot see the BMC reset that boots the disk: its OS asks for an address every 0.5 s while
            # create_vm waits (at most 60 s), as a DHCP client does on each boot
            for name, since in list(self.booting.items()):
                if self.store.get_node(name).provision_state != "deploying" or time.time() > since + 60:
                    del self.booting[name]
                elif time.time() > self.last_dhcp.get(name, 0) + 0.5:
                    self.last_dhcp[name] = time.time()
                    self.dhcp(name)
            time.sleep(0.1)

    def play(self, node: str, kind: str) -> None:
        time.sleep(0.3)
        self.post(node, "stage", stage="booted", ok=True)
        if kind == "clean":
            self.post(node, "stage", stage="disk-wiped", ok=True, message="/dev/vda")
            self.post(node, "stage", stage="done", ok=True)
            self.post(node, "result", stage="done", ok=True)
            return
        if self.deploy_dhcp:
            self.dhcp(node)
        if self.on_deploy is not None:
            self.on_deploy(node)
        serial = self.selected_serial or f"{node}-root"
        disk = {"name": "vda", "device": "/dev/vda", "size": 4 << 30, "serial": serial, "wwn": "", "model": ""}
        self.post(node, "stage", stage="disk-selected", ok=True, data=disk)
        for stage in ("image-written", "checksum-ok", "configdrive-written", "done"):
            self.post(node, "stage", stage=stage, ok=True)
        result = self.deploy_result(node)
        if result.get("ok"):
            self.pending_phone_home[node] = time.time()
        self.post(node, "result", **result)

    def dhcp(self, node: str) -> None:
        mac = self.store.get_node(node).macs[0]
        self.post(node, "dhcp", mac=mac, ip="10.9.9.100", interface="br0")

    def do_phone_home(self, node: str) -> None:
        iso = self.drives / f"{node}.iso"
        settings = json.loads(configdrive.read_iso_file(iso, "ec2/latest/user-data"))
        meta = json.loads(configdrive.read_iso_file(iso, "openstack/latest/meta_data.json"))["meta"]
        assert self.store.check_token(node, meta["phone_home_token"], "phone-home")
        self.post(
            node, "phone-home", agent_id=settings["agent_id"], macs=[n["mac"] for n in settings["networks"].values()]
        )


def inspect_as_planned(store: MetalStore, name: str, boot_mode: str = "bios", ts: float | None = None) -> None:
    """Record the inspection the ramdisk would report for a server whose plan is true (its disks, by kernel name
    in plan order, with their serials)."""
    plan = store.get_node(name).plan
    disks = [{"name": f"vd{chr(ord('a') + i)}", "size": int(float(d["size_gib"]) * (1 << 30)),
              **({"serial": d["serial"]} if d.get("serial") else {})} for i, d in enumerate(plan["disks"])]  # fmt: skip
    inventory = {"disks": disks, "nics": [], "cpu": {"count": plan["cpus"], "arch": plan["arch"]},
                 "memory": {"total_bytes": plan["memory_mib"] << 20}, "boot": {"mode": boot_mode}}  # fmt: skip
    store.set_inspection(name, inventory, ts=ts)


@contextlib.contextmanager
def lab(tmp_path: Path, emulator: Emulator, bad_bmc: bool = False, nodes: int = 2) -> Iterator[tuple[Any, ...]]:
    state = tmp_path / "metal"
    store = MetalStore(state)
    specs = []
    for index, (uuid, name, mac) in enumerate(SYSTEMS[:nodes]):
        address = f"http://127.0.0.1:{free_port()}" if (bad_bmc and index == 0) else emulator.url
        specs.append(
            NodeSpec(
                name,
                Bmc("redfish", address, uuid, "admin", PASSWORD),
                (mac,),
                {"arch": "x86_64", "cpus": 1 + index, "memory_mib": 512,
                 "disks": [{"size_gib": 4, "serial": f"{name}-root", "name": "/dev/vda"},
                           {"size_gib": 1, "serial": f"{name}-d1", "name": "/dev/vdb"}],
                 "labels": {"rack": f"r{index}"}},
                {"serial": f"{name}-root"},
            )
        )  # fmt: skip
    store.enroll(specs, who="test")
    for spec in specs:
        inspect_as_planned(store, spec.name)
        for verb, to in (("manage", "manageable"), ("provide", "cleaning"), ("done", "available")):
            store.transition(spec.name, verb, [store.get_node(spec.name).provision_state], to, "test", "test")
    props = {
        "baremetal": {
            "state_dir": str(state),
            "provisioning_url": "http://127.0.0.1:1",
            "timeouts": {"power": 40, "deploy": 60, "phone_home": 30, "clean": 60},
            "bmc": {"attempts": 2, "backoff_s": 0.05, "backoff_max_s": 0.1, "min_interval_s": 0},
        },
        "agent": {"mbus": "nats://127.0.0.1:4222"},
    }
    provider = BareMetalProvider(props, log)
    ramdisk = FakeRamdisk(store, state / "configdrives")
    try:
        yield provider, store, ramdisk
    finally:
        ramdisk.stop.set()


def make_stemcell(provider: BareMetalProvider, tmp_path: Path) -> str:
    raw = tmp_path / "root.raw"
    raw.write_bytes(b"\xeb\x63" + b"stemcell" * 1000)
    qcow = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    return provider.create_stemcell(str(qcow), {}, {"tag": "v"})


def test_stemcell_raw_with_checksum(tmp_path: Path) -> None:
    import hashlib

    provider = BareMetalProvider({"baremetal": {"state_dir": str(tmp_path / "metal")}}, log)
    cid = make_stemcell(provider, tmp_path)
    record = provider.store.stemcell(cid)
    assert record is not None
    image = Path(record["path"])
    assert image == tmp_path / "metal" / "images" / f"{cid}.raw"
    data = image.read_bytes()
    assert data.startswith(b"\xeb\x63stemcell") and record["size"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    provider.delete_stemcell(cid)
    assert not image.exists() and provider.store.stemcell(cid) is None
    provider.delete_stemcell(cid)  # idempotent
    with pytest.raises(CloudError, match="does not exist"):
        provider.create_stemcell(str(tmp_path / "nope"), {}, {})
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(CloudError, match="light stemcells are not supported"):
        provider.create_stemcell(str(tmp_path / "empty"), {}, {})
    assert list((tmp_path / "metal" / "images").iterdir()) == []


def _disk_image(path: Path, label: str, parts: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """A raw disk of 40 MiB partitioned by sfdisk (``label`` gpt or dos; parts: (size MiB, sfdisk type, fs) where
    fs is ext4, ext2, vfat or '' and a dos type 'E' makes an extended partition holding the following ones as
    logical partitions), each filesystem made in a file and copied to its partition; the (offset, size) of each."""
    from cpi.providers.baremetal.stemcell_images import partitions

    with open(path, "wb") as fh:
        fh.truncate(40 << 20)
    script = f"label: {label}\n" + "".join(f"size={mib}MiB, type={kind}\n" if kind != "E" else "type=E\n"
                                           for mib, kind, _ in parts)  # fmt: skip
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, timeout=60)
    found = partitions(path)
    usable = [p for p in parts if p[1] != "E"]
    assert len(found) == len(usable), found
    for (offset, length), (_, _, fs) in zip(found, usable, strict=True):
        if not fs:
            continue
        fs_file = path.with_suffix(f".{offset}")
        with open(fs_file, "wb") as fh:
            fh.truncate(length)
        mkfs = ["mkfs.vfat", str(fs_file)] if fs == "vfat" else [f"mkfs.{fs}", "-q", "-F", str(fs_file)]
        subprocess.run(mkfs, check=True, capture_output=True, timeout=60)
        subprocess.run(["dd", f"if={fs_file}", f"of={path}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
                        "conv=notrunc,sparse", "status=none"], check=True, timeout=60)  # fmt: skip
        fs_file.unlink()
    return found


def test_stemcell_root_partition_gpt_and_mbr_served_by_range(tmp_path: Path) -> None:
    """create_stemcell records the largest ext4 partition (offset, size, sha256 of exactly those bytes) of a GPT
    image (not the ESP, not a larger ext2) and of an MBR image's logical partition; an image without one is
    recorded without (whole-disk only); metal serve answers the Range a layout deploy asks for those bytes."""
    import gzip
    import hashlib

    import requests

    from cpi.providers.baremetal.serve.http import MetalHTTPServer, serve_in_thread
    from cpi.providers.baremetal.serve.shared_store import SharedStore

    provider = BareMetalProvider({"baremetal": {"state_dir": str(tmp_path / "metal")}}, log)
    gpt = tmp_path / "gpt.raw"
    found = _disk_image(gpt, "gpt", [(1, "21686148-6449-6E6F-744E-656564454649", ""), (4, "U", "vfat"),
                                     (9, "L", "ext2"), (8, "L", "ext4"), (6, "L", "ext4")])  # fmt: skip
    cid = provider.create_stemcell(str(gpt), {}, {})
    record = provider.store.stemcell(cid)
    assert record is not None and record["rootfs"] is not None
    rootfs = record["rootfs"]
    assert (rootfs["offset"], rootfs["size"], rootfs["index"], rootfs["fstype"]) == (*found[3], 4, "ext4")
    data = gpt.read_bytes()[rootfs["offset"] : rootfs["offset"] + rootfs["size"]]
    assert rootfs["sha256"] == hashlib.sha256(data).hexdigest()
    assert data[1080:1082] == b"\x53\xef"  # the ext superblock's magic

    dos = tmp_path / "dos.raw"
    found = _disk_image(dos, "dos", [(4, "83", "ext2"), (0, "E", ""), (8, "83", "ext4"), (12, "83", "")])
    rootfs_dos = provider.store.stemcell(provider.create_stemcell(str(dos), {}, {}))["rootfs"]  # type: ignore[index]
    assert (rootfs_dos["offset"], rootfs_dos["size"], rootfs_dos["index"]) == (*found[1], 2)
    assert found[1][0] > 4 << 20  # a logical partition, behind its EBR
    plain = provider.store.stemcell(make_stemcell(provider, tmp_path))
    assert plain is not None and plain["rootfs"] is None

    server = MetalHTTPServer(("127.0.0.1", 0), store=SharedStore(MetalStore(tmp_path / "metal")),
                             state_dir=tmp_path / "metal", ramdisk_dir=tmp_path)  # fmt: skip
    with serve_in_thread(server):
        start, end = rootfs["offset"], rootfs["offset"] + rootfs["size"] - 1
        resp = requests.get(f"{server.base_url}/images/{Path(record['path']).name}",
                            headers={"Range": f"bytes={start}-{end}"}, timeout=30)  # fmt: skip
        assert resp.status_code == 206 and resp.headers["Content-Range"] == f"bytes {start}-{end}/{gpt.stat().st_size}"
        assert hashlib.sha256(resp.content).hexdigest() == rootfs["sha256"]
        # what is streamed: the disk gzipped, and the root filesystem shrunk to its minimum and gzipped
        streams = record["streams"]
        for name, stream in streams.items():
            resp = requests.get(f"{server.base_url}/images/{stream['path']}", timeout=30)
            assert resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == stream["sha256"], name
            assert len(resp.content) == stream["bytes"], name
    assert gzip.decompress((tmp_path / "metal" / "images" / streams["disk"]["path"]).read_bytes()) == gpt.read_bytes()
    shrunk = tmp_path / "shrunk.ext4"
    shrunk.write_bytes(gzip.decompress((tmp_path / "metal" / "images" / streams["rootfs"]["path"]).read_bytes()))
    assert shrunk.stat().st_size == streams["rootfs"]["size"] < rootfs["size"]
    fsck = subprocess.run(["e2fsck", "-fn", str(shrunk)], capture_output=True, text=True, timeout=60, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "rootfs" not in plain["streams"] and "disk" in plain["streams"]


def test_vm_lifecycle_with_disks(tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    with lab(tmp_path, emulator) as (provider, store, ramdisk):
        stemcell = make_stemcell(provider, tmp_path)
        assert provider.calculate_vm_cloud_properties({"cpu": 2, "ram": 256, "ephemeral_disk_size": 1024}) == {
            "cpu": 2, "ram": 512, "arch": "x86_64", "ephemeral_disk_size": 1024}  # fmt: skip
        vm, networks = provider.create_vm(VmRequest("agent-1", stemcell, {"cpu": 1}, NETWORKS, [], AGENT_ENV))
        node = store.node_for_vm(vm)
        assert node is not None and node.name == "node-a"  # the smallest plan
        assert node.provision_state == "active" and networks["default"]["mac"] == node.macs[0]
        # the default readiness: the OS's DHCP request after the boot-to-disk reboot, no phone-home awaited
        assert "booted its disk: its OS asked for an address on 52:54:00:10:00:0a" in caplog.text
        assert provider.has_vm(vm)
        iso = tmp_path / "metal" / "configdrives" / "node-a.iso"
        settings = json.loads(configdrive.read_iso_file(iso, "openstack/latest/user_data"))
        assert settings["agent_id"] == "agent-1" and settings["env"] == AGENT_ENV
        assert settings["networks"]["default"]["mac"] == node.macs[0]
        # stable names: the root disk by the by-id link udev makes from its serial; no separate ephemeral disk
        assert settings["disks"]["system"] == "/dev/disk/by-id/virtio-node-a-root"
        assert settings["disks"]["ephemeral"] is None
        meta = json.loads(configdrive.read_iso_file(iso, "openstack/latest/meta_data.json"))["meta"]
        assert meta["phone_home_url"] == "http://127.0.0.1:1/v1/nodes/node-a/phone-home"
        # cloud-init's phone_home (vendor data as the ConfigDrive source reads it): token in the path, form fields
        vendor = json.loads(configdrive.read_iso_file(iso, "openstack/latest/vendor_data.json"))["cloud-init"]
        assert vendor.startswith("#cloud-config\n")
        assert yaml.safe_load(vendor)["phone_home"] == {"url": f"{meta['phone_home_url']}/{meta['phone_home_token']}",
                                                        "post": ["instance_id", "hostname"], "tries": 10}  # fmt: skip
        job_log = [t.to_state for t in store.transitions("node-a")]
        assert job_log[-4:] == ["deploying", "wait call-back", "deploying", "active"]
        provider.set_vm_metadata(vm, {"deployment": "d", "job": "j"})
        assert store.vm(vm)["metadata"] == {"deployment": "d", "job": "j"}
        with pytest.raises(NotSupported, match="needs a VM"):
            provider.create_disk(512, {}, None)
        disk = provider.create_disk(512, {}, vm)
        with pytest.raises(CloudError, match="no free local disk"):
            provider.create_disk(512, {}, vm)
        hint = provider.attach_disk(vm, disk)
        assert hint == {"id": "node-a-d1", "path": "/dev/vdb"}
        assert provider.get_disks(vm) == [disk]
        settings = json.loads(configdrive.read_iso_file(iso, "openstack/latest/user_data"))
        assert settings["disks"]["persistent"] == {disk: hint}
        provider.detach_disk(vm, disk)
        with pytest.raises(DiskNotAttached):
            provider.detach_disk(vm, disk)
        assert provider.get_disks(vm) == []
        provider.reboot_vm(vm)
        provider.delete_vm(vm)
        node = store.get_node("node-a")
        assert node.provision_state == "available" and node.claimed_by is None
        assert not provider.has_vm(vm) and not iso.exists() and not provider.has_disk(disk)
        provider.delete_vm(vm)  # idempotent
        with pytest.raises(VMNotFound):
            provider.reboot_vm(vm)
        logged = "\n".join(str(r) for r in store.transitions())
        assert PASSWORD not in logged and "env-secret-pw" not in logged


def test_failed_deploy_is_cleaned_and_released(tmp_path: Path, emulator: Emulator) -> None:
    with lab(tmp_path, emulator, nodes=1) as (provider, store, ramdisk):
        stemcell = make_stemcell(provider, tmp_path)
        ramdisk.deploy_result = lambda node: {"stage": "checksum", "ok": False, "message": "sha256 mismatch: x != y"}
        with pytest.raises(VMCreationFailed, match="deploy failed at stage checksum: sha256 mismatch") as info:
            provider.create_vm(VmRequest("agent-1", stemcell, {}, NETWORKS, [], AGENT_ENV))
        assert not info.value.ok_to_retry  # no other server
        node = store.get_node("node-a")
        assert node.provision_state == "available" and node.claimed_by is None and not node.maintenance
        verbs = [t.to_state for t in store.transitions("node-a")]
        assert verbs[-6:] == ["deploy failed", "deleting", "cleaning", "clean wait", "cleaning", "available"]
        assert store.vms() == [] and store.job("node-a") is None
        assert not (tmp_path / "metal" / "configdrives" / "node-a.iso").exists()
        with pytest.raises(VMCreationFailed, match="no server available: none of 1 enrolled servers matches cpu=8"):
            provider.create_vm(VmRequest("agent-2", stemcell, {"cpu": 8}, NETWORKS, [], AGENT_ENV))


def test_bmc_down_goes_to_maintenance_and_the_next_server_is_used(tmp_path: Path, emulator: Emulator) -> None:
    with lab(tmp_path, emulator, bad_bmc=True) as (provider, store, ramdisk):
        stemcell = make_stemcell(provider, tmp_path)
        ramdisk.phone_home = False
        provider.config = type(provider.config)(**{**provider.config.__dict__, "phone_home": False})
        vm, _ = provider.create_vm(VmRequest("agent-1", stemcell, {}, NETWORKS, [], AGENT_ENV))
        bad = store.get_node("node-a")
        assert bad.maintenance and "unreachable" in bad.maintenance_reason and bad.claimed_by is None
        assert bad.provision_state == "deploy failed"
        node = store.node_for_vm(vm)
        assert node is not None and node.name == "node-b" and node.provision_state == "active"
        with pytest.raises(VMCreationFailed, match=r"no server available matching any server: node-a \(deploy failed, "
                           r"maintenance\), node-b \(active, claimed\)"):  # fmt: skip
            provider.create_vm(VmRequest("agent-2", stemcell, {}, NETWORKS, [], AGENT_ENV))


def test_matching_smallest_plan_and_root_disk(tmp_path: Path) -> None:
    from cpi.providers.baremetal.plan_disks import root_disk

    state = tmp_path / "metal"
    store = MetalStore(state)
    plans = {
        "big": {"arch": "x86_64", "cpus": 8, "memory_mib": 8192, "disks": [{"size_gib": 100, "serial": "b0"}],
                "labels": {"rack": "r1", "gpu": "yes"}},
        "small": {"arch": "x86_64", "cpus": 2, "memory_mib": 2048,
                  "disks": [{"size_gib": 2, "serial": "s-tiny"}, {"size_gib": 8, "serial": "s-root"},
                            {"size_gib": 16, "serial": "s-data"}], "labels": {"rack": "r1"}},
        "arm": {"arch": "aarch64", "cpus": 4, "memory_mib": 4096, "disks": [{"size_gib": 50, "serial": "a0"}]},
    }  # fmt: skip
    store.enroll(
        [NodeSpec(n, Bmc("redfish", "http://127.0.0.1:9", n, "u", "p"), (f"52:54:00:20:00:0{i}",), p)
         for i, (n, p) in enumerate(plans.items())],
        who="test",
    )  # fmt: skip
    provider = BareMetalProvider({"baremetal": {"state_dir": str(state)}}, log)
    assert root_disk(store.get_node("small"))["serial"] == "s-root"  # smallest >= 4 GiB
    assert provider.calculate_vm_cloud_properties({"cpu": 1, "ram": 1024, "ephemeral_disk_size": 4096}) == {
        "cpu": 2, "ram": 2048, "arch": "x86_64", "ephemeral_disk_size": 4096}  # fmt: skip
    assert provider.calculate_vm_cloud_properties({"cpu": 3, "ram": 1024, "ephemeral_disk_size": 0})["cpu"] == 4
    with pytest.raises(CloudError, match="no enrolled server has cpu >= 64"):
        provider.calculate_vm_cloud_properties({"cpu": 64, "ram": 1, "ephemeral_disk_size": 0})
    names = [n.name for n in provider._candidates({"labels": {"rack": "r1"}})]
    assert names == ["small", "big"]
    assert [n.name for n in provider._candidates({"labels": {"gpu": "yes"}})] == ["big"]
    assert [n.name for n in provider._candidates({"arch": "aarch64"})] == ["arm"]
    assert [n.name for n in provider._candidates({"node": "big"})] == ["big"]
    assert provider._candidates({"ephemeral_disk_size": 200 * 1024}) == []


def _config(provider: BareMetalProvider, **changes: Any) -> None:
    timeouts = changes.pop("timeouts", {})
    provider.config = dataclasses.replace(
        provider.config, timeouts=dataclasses.replace(provider.config.timeouts, **timeouts), **changes
    )


def test_readiness_needs_no_agent_of_ours(tmp_path: Path, emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """Default (boot_check auto, no phone-home; the DHCP case is test_vm_lifecycle_with_disks): without the OS's
    DHCP request create_vm fails naming the NIC and the timeout, and cleans; boot_check power needs none; auto
    falls back to the BMC's power state when the deploy saw no lease on the VM's dynamic NIC. The deploy's
    disk-selected report corrects a plan that names another root disk."""
    caplog.set_level(logging.INFO, logger=log.name)
    with lab(tmp_path, emulator, nodes=2) as (provider, store, ramdisk):
        assert provider.config.phone_home is False and provider.config.boot_check == "auto"
        stemcell = make_stemcell(provider, tmp_path)
        ramdisk.phone_home = False  # a stock agent: reads the config drive, calls nothing
        ramdisk.os_dhcp = False  # the disk does not boot (or its OS never asks)

        _config(provider, timeouts={"boot_to_disk": 3})
        with pytest.raises(VMCreationFailed, match=r"no DHCP request from 52:54:00:10:00:0a reached metal serve "
                           r"within 3 s \(timeouts.boot_to_disk; power now on\)"):  # fmt: skip
            provider.create_vm(VmRequest("agent-1", stemcell, {"node": "node-a"}, NETWORKS, [], AGENT_ENV))
        node = store.get_node("node-a")
        assert node.provision_state == "available" and node.claimed_by is None and store.vms() == []

        _config(provider, boot_check="power")  # the operator knows the OS never asks metal serve
        vm, _ = provider.create_vm(VmRequest("agent-2", stemcell, {"node": "node-a"}, NETWORKS, [], AGENT_ENV))
        assert store.get_node("node-a").provision_state == "active"
        assert "is on and booting its disk (boot_check: power)" in caplog.text

        _config(provider, boot_check="auto")
        ramdisk.deploy_dhcp = False  # the NIC of the dynamic network is served by another DHCP server
        ramdisk.selected_serial = "not-in-the-plan"  # and the plan does not describe the server's disks
        vm, _ = provider.create_vm(VmRequest("agent-3", stemcell, {"node": "node-b"}, NETWORKS, [], AGENT_ENV))
        assert store.get_node("node-b").provision_state == "active"
        assert "got no lease from metal serve during the deploy" in caplog.text
        assert store.events("node-b", kinds=["phone-home"]) == []
        record = store.vm(vm)
        assert record is not None
        assert record["settings"]["disks"]["system"] == "/dev/disk/by-id/virtio-not-in-the-plan"


def test_system_disk_hint_is_the_stable_by_id_name() -> None:
    from cpi.providers.baremetal.plan_disks import by_id_path, system_disk_hint

    table: list[tuple[dict[str, Any], str | None]] = [
        ({"name": "/dev/vda", "serial": "SF0A1B2CS0D0"}, "/dev/disk/by-id/virtio-SF0A1B2CS0D0"),
        ({"name": "vdb", "serial": " odd serial/1 "}, "/dev/disk/by-id/virtio-odd_serial_1"),
        ({"name": "/dev/nvme0n1", "serial": "S4EWNX0R123", "model": "Samsung SSD 970 EVO 1TB"},
         "/dev/disk/by-id/nvme-Samsung_SSD_970_EVO_1TB_S4EWNX0R123"),
        ({"name": "/dev/sda", "serial": "Z1D2", "wwn": "0x5000C500A1B2C3D4"}, "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"),
        ({"name": "/dev/sdb", "wwn": "naa.5000c500a1b2c3d5"}, "/dev/disk/by-id/wwn-0x5000c500a1b2c3d5"),
        ({"name": "/dev/sda", "serial": "Z1D2"}, None),  # ATA or SCSI: the link name needs the transport
        ({"name": "/dev/nvme0n1", "serial": "S4EW"}, None),  # nvme-<model>_<serial> needs the model
        ({"size_gib": 4}, None),
    ]  # fmt: skip
    for disk, expected in table:
        assert by_id_path(disk) == expected, disk
    assert system_disk_hint({"name": "/dev/sda", "serial": "Z1D2"}) == "/dev/sda"  # the kernel name as a last resort
    assert system_disk_hint({}) == ""


def test_dhcp_seen_turns_dnsmasq_acks_into_node_events(tmp_path: Path) -> None:
    """``metal serve``'s DHCP-seen signal on dnsmasq's own log lines (plain and ``--log-dhcp`` forms)."""
    from cpi.providers.baremetal.serve.dhcp_seen import DhcpAck, parse_ack, recorder
    from cpi.providers.baremetal.serve.shared_store import SharedStore

    assert parse_ack("DHCPACK(sfbr0) 10.95.17.100 52:54:00:5F:11:10 sf-lab-5f1100-s0") == DhcpAck(
        "sfbr0", "10.95.17.100", "52:54:00:5f:11:10"
    )
    assert parse_ack("2877381571 DHCPACK(br0) 10.0.0.5 52:54:00:aa:bb:cc") == DhcpAck(
        "br0", "10.0.0.5", "52:54:00:aa:bb:cc"
    )
    for other in (
        "DHCPREQUEST(br0) 10.0.0.5 52:54:00:aa:bb:cc",
        "DHCPOFFER(br0) 10.0.0.5 52:54:00:aa:bb:cc",
        "DHCPNAK(br0) 10.0.0.5 52:54:00:aa:bb:cc wrong address",
        "sent size:  1 option: 53 message-type  5",
    ):
        assert parse_ack(other) is None, other
    store = MetalStore(tmp_path / "metal")
    store.enroll(
        [NodeSpec("n1", Bmc("redfish", "http://127.0.0.1:9", "n1", "u", "p"), ("52:54:00:aa:bb:cc",),
                  {"arch": "x86_64", "cpus": 1, "memory_mib": 512, "disks": [{"size_gib": 4}]})],
        who="test",
    )  # fmt: skip
    on_line = recorder(SharedStore(store))
    on_line("DHCPACK(br0) 10.0.0.5 52:54:00:AA:BB:CC n1")
    on_line("DHCPACK(br0) 10.0.0.6 52:54:00:00:00:01")  # not enrolled: ignored
    on_line("DHCPDISCOVER(br0) 52:54:00:aa:bb:cc")
    events = store.events("n1", kinds=["dhcp"])
    assert [e.data for e in events] == [
        {"kind": "dhcp", "mac": "52:54:00:aa:bb:cc", "ip": "10.0.0.5", "interface": "br0"}
    ]


def test_which_dhcp_requests_prove_the_boot(tmp_path: Path) -> None:
    """boot_check's choice of NICs: power → none; dhcp → every NIC of the server; auto → the VM's dynamic
    networks' NICs that got a lease from metal serve during the deploy (only leases before the reboot mark count),
    none (power state alone) for manual networks or NICs another DHCP server serves."""
    from cpi.providers.baremetal.interfaces.base import Task
    from cpi.providers.baremetal.provider import _VmPlan, _WaitBooted

    state_dir = tmp_path / "metal"
    store = MetalStore(state_dir)
    macs = ("52:54:00:30:00:01", "52:54:00:30:00:02")
    store.enroll(
        [NodeSpec("n1", Bmc("redfish", "http://127.0.0.1:9", "n1", "u", "p"), macs,
                  {"arch": "x86_64", "cpus": 1, "memory_mib": 512, "disks": [{"size_gib": 4}]})],
        who="test",
    )  # fmt: skip
    provider = BareMetalProvider({"baremetal": {"state_dir": str(state_dir)}}, log)
    task = Task(store, store.get_node("n1"), provider.config, log)
    deploy_after = store.last_event_id("n1")
    store.add_event("n1", "dhcp", {"mac": macs[0], "ip": "10.0.0.5"})  # iPXE / the ramdisk on NIC 0
    boot_after = store.add_event("n1", "stage", {"stage": "done"})
    store.add_event("n1", "dhcp", {"mac": macs[1], "ip": "10.0.0.6"})  # after the mark: not evidence of reach
    state = {"deploy_after": deploy_after, "boot_after": boot_after}

    def macs_for(mode: str, networks: dict[str, Any]) -> tuple[set[str], str]:
        _config(provider, boot_check=mode)
        plan = _VmPlan("vm-1", "agent", {}, {}, networks, {})
        plan.networks = networks
        return _WaitBooted(provider, task, plan)._dhcp_macs(state)

    dyn0 = {"a": {"type": "dynamic", "mac": macs[0]}}
    dyn1 = {"b": {"type": "dynamic", "mac": macs[1]}}
    manual = {"m": {"type": "manual", "mac": macs[0], "ip": "10.0.0.9"}}
    assert macs_for("power", dyn0) == (set(), "boot_check: power")
    assert macs_for("dhcp", manual) == (set(macs), "")
    assert macs_for("auto", dyn0) == ({macs[0]}, "")
    assert macs_for("auto", {**dyn0, **dyn1}) == ({macs[0]}, "")
    assert macs_for("auto", dyn1)[0] == set() and "no lease from metal serve" in macs_for("auto", dyn1)[1]
    assert macs_for("auto", manual)[0] == set() and "no dynamic network" in macs_for("auto", manual)[1]


# -- storage: plans, layouts, inspection (placement.py); no BMC is ever called in this test --------------------------
def _layout(disks: int, boot: str = "uefi", level: int = 1, esp: bool = True, root_mib: int | str = "fill") -> Any:
    def partitions(i: int) -> list[dict[str, Any]]:
        mount = {"mount": "/boot/efi"} if i == 0 else {}
        boot_part = (
            {"id": f"esp{i}", "size": 64, "filesystem": "vfat", "esp": True, **mount}
            if boot == "uefi" else {"id": f"grub{i}", "size": 1, "bios_grub": True}
        )  # fmt: skip
        return [boot_part] if esp or boot == "bios" else []

    out: dict[str, Any] = {
        "boot_mode": boot,
        "disks": [
            {"id": f"d{i}", "partitions": [*partitions(i), {"id": f"r{i}", "size": "fill"}]} for i in range(disks)
        ],
    }
    if disks == 1:
        out["disks"][0]["partitions"][-1].update(filesystem="ext4", mount="/", size=root_mib)
    else:
        out["raid"] = [{"id": "md0", "level": level, "devices": [f"r{i}" for i in range(disks)]}]
        out["lvm"] = [
            {
                "id": "vg0",
                "devices": ["md0"],
                "lvs": [{"id": "root", "size": root_mib, "filesystem": "ext4", "mount": "/"}],
            }
        ]
    return out  # fmt: skip


def _fleet(tmp_path: Path) -> tuple[BareMetalProvider, MetalStore, str]:
    """bios1 (1 x 8 GiB, BIOS), uefi2 (2 x 8 GiB, UEFI: storage plan raid1 by match), hints3 (5/6/10 GiB, hints
    on the 6 GiB disk), fresh (never inspected); a stemcell with a root partition record and one without."""
    from cpi.providers.baremetal.inventory import parse_inventory

    def node(i: int, name: str, boot: str, sizes: list[int], **extra: Any) -> dict[str, Any]:
        disks = [{"size_gib": g, "serial": f"{name}-{j}"} for j, g in enumerate(sizes)]
        return {"name": name, "bmc": {"driver": "redfish", "address": "http://127.0.0.1:9", "system_id": name},
                "macs": [f"52:54:00:30:00:0{i}"], "plan": {"arch": "x86_64", "cpus": 1 + i, "memory_mib": 512,
                                                         "disks": disks, "boot_mode": boot}, **extra}  # fmt: skip

    document = {
        "nodes": [node(0, "bios1", "bios", [8]), node(1, "uefi2", "uefi", [8, 8]),
                  node(2, "hints3", "bios", [5, 6, 10], root_hints={"serial": "hints3-1"}),
                  node(3, "fresh", "bios", [8])],
        "storage_plans": [
            {"name": "raid1", "match": {"boot_mode": "uefi", "min_disks": 2}, "layout": _layout(2)},
            {"name": "bios-one", "layout": _layout(1, "bios")},
            {"name": "nope-hints", "root_hints": {"serial": "NOPE"}},
        ],
    }  # fmt: skip
    state = tmp_path / "metal"
    store = MetalStore(state)
    store.enroll(parse_inventory(json.dumps(document)), who="test")
    for spec in document["nodes"]:
        name = str(spec["name"])
        if name != "fresh":
            inspect_as_planned(store, name, boot_mode=str(spec["plan"]["boot_mode"]))
        for verb, to in (("manage", "manageable"), ("provide", "cleaning"), ("done", "available")):
            store.transition(name, verb, [store.get_node(name).provision_state], to, "test", "test")
    provider = BareMetalProvider({"baremetal": {"state_dir": str(state), "provisioning_url": "http://127.0.0.1:1"},
                                  "agent": {"mbus": "nats://127.0.0.1:4222"}}, log)  # fmt: skip
    return provider, store, make_stemcell(provider, tmp_path)


def test_storage_requests_pick_servers_and_bad_input_fails_before_any_write(tmp_path: Path) -> None:
    """calculate_vm_cloud_properties/create_vm with a storage plan or an inline layout: only servers whose
    inspection satisfies it are candidates; a layout that does not fit, hints matching nothing, a RAID level with
    too few disks, a UEFI layout without an ESP, a missing or stale inspection: each VMCreationFailed naming what
    is missing, before any job, power or disk change, and the servers stay available."""
    from cpi.providers.baremetal import placement

    provider, store, stemcell = _fleet(tmp_path)
    resources = {"cpu": 1, "ram": 256, "ephemeral_disk_size": 1024}
    assert provider.calculate_vm_cloud_properties({**resources, "plan": "raid1"})["cpu"] == 2  # uefi2
    assert provider.calculate_vm_cloud_properties({**resources, "plan": "bios-one"})["cpu"] == 1  # bios1
    assert provider.calculate_vm_cloud_properties({**resources, "plan": "raid1"})["plan"] == "raid1"  # passed on
    with pytest.raises(CpiError, match="plan"):
        provider.calculate_vm_cloud_properties({**resources, "plan": 5})
    with pytest.raises(VMCreationFailed, match=r"no server satisfies layout \(cloud_properties\): bios1: layout "
                       r"\(cloud_properties\): disks/1/hints: no free inspected disk matches \(no hints\) \(taken: "
                       r"vda by d0\); disks seen: vda \(8.0 GiB, serial bios1-0\);.* hints3: .*disks/3/hints.*; "
                       r"uefi2: .*disks/2/hints"):  # fmt: skip
        provider.calculate_vm_cloud_properties({**resources, "layout": _layout(4, "bios", level=10)})
    # the placement of each server: uefi2 by its matched storage plan (a layout deploy), hints3 by its hints
    raid1 = placement.check(store, store.get_node("uefi2"), {})
    assert raid1.source == "storage plan raid1" and raid1.boot_mode == "uefi" and raid1.root_fs == "ext4"
    rootfs = {"offset": 1 << 20, "size": 4 << 20, "sha256": "cd" * 32, "fstype": "ext4"}
    record = {**(store.stemcell(stemcell) or {}), "rootfs": rootfs, "streams": {}}  # recorded before streams
    job = placement.deploy_instructions(raid1, record, "http://s/images/", "http://s/cd", 5)
    assert job["deploy_kind"] == "layout" and job["rootfs_offset"] == 1 << 20 and job["layout"] == _layout(2)
    assert job["rootfs_format"] == "raw" and job["rootfs_url"] == job["image_url"] == f"http://s/images/{stemcell}.raw"
    assert job["boot_mode"] == "uefi" and "root_hints" not in job
    shrunk = {"path": f"{stemcell}.rootfs.gz", "sha256": "ef" * 32, "bytes": 1 << 20, "size": 3 << 20}
    disk = {"path": f"{stemcell}.raw.gz", "sha256": "ab" * 32, "bytes": 1 << 20, "format": "gzip"}
    streamed = {**record, "streams": {"disk": disk, "rootfs": shrunk}}
    job = placement.deploy_instructions(raid1, streamed, "http://s/images/", "http://s/cd", 5)
    assert (job["rootfs_url"], job["rootfs_offset"], job["rootfs_size"], job["rootfs_sha256"], job["rootfs_format"]) \
        == (f"http://s/images/{stemcell}.rootfs.gz", 0, 3 << 20, "ef" * 32, "gzip")  # fmt: skip
    whole = placement.check(store, store.get_node("hints3"), {})
    job = placement.deploy_instructions(whole, streamed, "http://s/images/", "http://s/cd", 5)
    assert "deploy_kind" not in job and job["root_hints"] == {"serial": "hints3-1"}
    assert (job["image_url"], job["image_sha256"], job["image_format"]) == (
        f"http://s/images/{stemcell}.raw.gz", "ab" * 32, "gzip")  # fmt: skip

    def refused(props: dict[str, Any], *patterns: str) -> None:
        with pytest.raises(VMCreationFailed) as info:
            provider.create_vm(VmRequest("agent-x", stemcell, props, NETWORKS, [], AGENT_ENV))
        for pattern in patterns:
            assert pattern in str(info.value), str(info.value)
        for node in store.nodes():
            assert node.provision_state == "available" and node.claimed_by is None and not node.maintenance
            assert store.job(node.name) is None
        assert store.vms() == []

    # a layout that does not fit (30 GiB of / on 8 GiB disks)
    refused(
        {"layout": _layout(1, "bios", root_mib=30 * 1024)},
        "no available server satisfies layout=(inline) (layout (cloud_properties)): bios1: layout "
        "(cloud_properties): disks/0/partitions: 30721 MiB of partitions + 66 MiB of GPT and config drive do not "
        "fit on vda (8.0 GiB, serial bios1-0) (8192 MiB)",
        "fresh: not inspected (stemforge metal inspect fresh)",
    )
    # hints that match nothing
    refused(
        {"plan": "nope-hints"},
        "bios1: storage plan nope-hints: no disk matches the root device hints "
        "serial=NOPE; disks seen: vda (8.0 GiB, serial bios1-0)",
    )
    # a RAID level with too few disks
    refused(
        {"layout": _layout(2, "uefi", level=10)},
        "uefi2: layout (cloud_properties): raid/0/devices: RAID 10 needs at least 4 devices, md0 has 2",
    )
    # a UEFI layout without an ESP
    refused(
        {"layout": _layout(2, "uefi", esp=False), "node": "uefi2"},
        "uefi2: layout (cloud_properties): disks/0/partitions: UEFI boot: disk d0 holds / and needs an ESP",
    )
    # a UEFI layout for a BIOS server; a storage plan the server was not enrolled with
    refused(
        {"layout": _layout(1, "uefi"), "node": "bios1"},
        "bios1: layout (cloud_properties): boot_mode: the layout is for uefi, it boots bios",
    )
    refused(
        {"plan": "raid9", "node": "bios1"},
        "storage plan 'raid9' is not one it was enrolled with (its storage plans: bios-one, nope-hints, raid1)",
    )
    # never inspected; a hardware change seen after the inspection; a plan that says UEFI on a BIOS server
    refused({"node": "fresh"}, "fresh: not inspected")
    store.add_event("bios1", "hardware-change", {"message": "node bios1: its disks changed since ..."})
    refused(
        {"node": "bios1"},
        "bios1: hardware changed at 20",
        "after its inspection of 20",
        "inspect it again (stemforge metal inspect bios1)",
    )
    inspect_as_planned(store, "bios1", boot_mode="uefi")
    refused({"node": "bios1"}, "bios1: its plan says boot_mode bios, its inspection found uefi")
    # a layout deploy of an image without a root partition: refused after the claim, before anything touched
    # the server (no power, boot or disk change): straight back to the pool
    refused(
        {"node": "uefi2"},
        f"server uefi2: storage plan raid1 needs a file-based deploy, but stemcell {stemcell} "
        "has no ext4 root partition",
    )
    assert [t.verb for t in store.transitions("uefi2")][-4:] == ["fail", "undeploy", "clean", "done"]


def test_a_layout_deploy_job_is_what_the_layout_route_answers(tmp_path: Path, emulator: Emulator) -> None:
    """create_vm with an inline layout and a stemcell with a root partition: the deploy job is a layout deploy
    (SF_DEPLOY_KIND, SF_ROOTFS_* of the stemcell record), and metal serve's POST layout answers it for the disks the
    ramdisk reports (those of the inspection) with the lay_* lines; the same disks with one replaced: an
    SF_LAYOUT_ERROR and a hardware-change event, after which the server is refused until inspected again."""
    from cpi.providers.baremetal.instructions import render_instructions
    from cpi.providers.baremetal.serve.callbacks import Callbacks, Caller
    from cpi.providers.baremetal.serve.shared_store import SharedStore

    layout = {"boot_mode": "bios", "disks": [{"id": "d0", "hints": {"serial": "node-a-root"}, "partitions": [
        {"id": "grub", "size": 1, "bios_grub": True}, {"id": "root", "size": "fill", "filesystem": "ext4",
                                                      "mount": "/"}]}]}  # fmt: skip
    with lab(tmp_path, emulator, nodes=1) as (provider, store, ramdisk):
        _config(provider, boot_check="power")
        image = tmp_path / "gpt.raw"
        found = _disk_image(image, "gpt", [(1, "21686148-6449-6E6F-744E-656564454649", ""), (20, "L", "ext4")])
        stemcell = provider.create_stemcell(str(image), {}, {})
        callbacks = Callbacks(SharedStore(MetalStore(tmp_path / "metal")), tmp_path / "metal")
        inspected = store.inspection("node-a")
        assert inspected is not None
        seen: dict[str, Any] = {}

        def ask(node: str) -> None:
            job = store.job(node)
            assert job is not None
            seen["lines"] = render_instructions(node, job.kind, job.instructions)
            caller = Caller(node, job.token, "127.0.0.1")
            seen["answer"] = callbacks.layout(caller, json.dumps({"disks": inspected.data["disks"]}).encode())
            changed = [inspected.data["disks"][0], {**inspected.data["disks"][1], "serial": "NEW"}]
            seen["changed"] = callbacks.layout(caller, json.dumps({"disks": changed}).encode())

        ramdisk.on_deploy = ask
        vm, _ = provider.create_vm(VmRequest("agent-1", stemcell, {"layout": layout}, NETWORKS, [], AGENT_ENV))
        assert store.get_node("node-a").provision_state == "active"
        assert "SF_DEPLOY_KIND='layout'\n" in seen["lines"] and "SF_ROOTFS_FSTYPE='ext4'\n" in seen["lines"]
        shrunk = (store.stemcell(stemcell) or {})["streams"]["rootfs"]  # the partition shrunk, gzipped
        assert 0 < shrunk["size"] < found[1][1]
        lines = seen["lines"]
        assert f"/images/{stemcell}.rootfs.gz'\nSF_ROOTFS_OFFSET='0'\nSF_ROOTFS_SIZE='{shrunk['size']}'\n" in lines
        assert f"SF_ROOTFS_SHA256='{shrunk['sha256']}'\n" in lines and "SF_ROOTFS_FORMAT='gzip'\n" in lines
        assert "SF_ROOT_HINTS" not in seen["lines"]
        assert seen["answer"].splitlines() == [
            "lay_boot_mode 'bios'", "lay_disk 'd0' 'vda'", "lay_part 'd0' '1' 'grub' '1' 'bios_grub'",
            "lay_part 'd0' '2' 'root' 'fill' 'linux'", "lay_configdrive 'd0' '3'", "lay_fs 'root' 'ext4' '/'",
            "lay_go"]  # fmt: skip
        assert seen["changed"].startswith("SF_LAYOUT_ERROR='node node-a: its disks changed since the inspection")
        provider.delete_vm(vm)
        with pytest.raises(VMCreationFailed, match="node-a: hardware changed at .* inspect it again"):
            provider.create_vm(VmRequest("agent-2", stemcell, {}, NETWORKS, [], AGENT_ENV))
