"""The OpenStack CPI's lifecycle order against real libvirt (TCG), with the guest agent confirming what it saw."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from cpi import configdrive
from stemcells.testimage.agent_events import read_events, wait_for
from tests.harness.libvirt import USER_NET, CpiResult, LibvirtCpi

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

AGENT_TIMEOUT = 240
SECRETS = ("env-SECRET-password", "MBUS-CERT-SECRET-PEM", "blobstore-env-SECRET", "mbus-SECRET-pw",
           "blobstore-SECRET-pw")


def _env() -> dict[str, Any]:
    return {"bosh": {"password": "env-SECRET-password",
                     "mbus": {"cert": {"ca": "MBUS-CERT-SECRET-PEM", "private_key": "MBUS-CERT-SECRET-PEM"}},
                     "blobstores": [{"provider": "dav", "options": {"password": "blobstore-env-SECRET"}}],
                     "group": "lifecycle"}}


def _no_secrets(results: list[CpiResult]) -> None:
    for r in results:
        text = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        for secret in SECRETS:
            assert secret not in text, f"secret {secret!r} leaked in a CPI call's output"


def test_lifecycle_in_the_openstack_order(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    cpi = libvirt_cpi
    calls: list[CpiResult] = []

    def ok(method: str, *args: Any, api_version: int = 2) -> Any:
        r = cpi.call(method, *args, api_version=api_version)
        calls.append(r)
        return r.result

    networks = {"private": {"type": "manual", "ip": "10.0.2.15", "netmask": "255.255.255.0", "gateway": "10.0.2.2",
                            "dns": ["10.0.2.3"], "default": ["dns", "gateway"], **USER_NET}}
    agent_id = "agent-lifecycle-0001"
    vm_cid, nets = ok("create_vm", agent_id, stemcell_cid, {"cpu": 1, "ram": 256, "ephemeral_disk_size": 64},
                      networks, [], _env())
    try:
        mac = nets["private"]["mac"]
        assert ok("has_vm", vm_cid) is True
        console = cpi.console(vm_cid)
        ready, _ = wait_for(console, lambda e: e.get("event") == "ready", AGENT_TIMEOUT, what="agent ready")
        events = read_events(console)
        settings = next(e for e in events if e.get("event") == "settings")
        assert settings["agent_id"] == agent_id and settings["hostname"] == agent_id
        assert settings["vm_name"] == vm_cid
        # the agent read exactly the settings the CPI recorded
        vm_row = next(r for r in cpi.state_rows("vms") if r["cid"] == vm_cid)
        user_data = configdrive.read_iso_file(vm_row["config_drive"], "ec2/latest/user-data")
        assert settings["settings_sha256"] == hashlib.sha256(user_data).hexdigest()
        written = json.loads(user_data)
        assert written["env"] == _env(), "env must reach the agent verbatim"
        assert written["networks"]["private"]["mac"] == mac
        net = next(e for e in events if e.get("event") == "network")
        assert (net["mac"], net["ip"], net["configured"]) == (mac, "10.0.2.15", True)
        eph = next(e for e in events if e.get("event") == "disk" and e.get("kind") == "ephemeral")
        # bosh-agent gives the ephemeral disk no ID: its hint path decides (the mapped resolver)
        assert eph["resolved_by"] == "mapped" and eph["device"] == "/dev/vdb" and eph["size_mib"] == 64

        ok("set_vm_metadata", vm_cid, {"director": "d", "deployment": "dep", "job": "web", "index": "0",
                                       "name": "web/7d3a", "created_at": "2026-11-23T00:00:00Z"})
        conn = cpi.libvirt()
        try:
            dom = conn.lookupByName(vm_cid)
            xml = dom.XMLDesc(0)
            assert "web/7d3a" in xml and "<title>web/7d3a" in xml
            assert 'key="deployment">dep<' in xml
        finally:
            conn.close()

        disk_cid = ok("create_disk", 100, {}, vm_cid)
        assert ok("has_disk", disk_cid) is True
        hint = ok("attach_disk", vm_cid, disk_cid)
        assert hint and hint["id"] and hint["path"].startswith("/dev/vd")
        seen, index = wait_for(console, lambda e: e.get("event") == "disk" and e.get("cid") == disk_cid,
                               AGENT_TIMEOUT, what="persistent disk mounted")
        assert seen["resolved_by"] == "id" and seen["mounted"] == "/var/vcap/store" and seen["size_mib"] == 100
        assert ok("get_disks", vm_cid) == [disk_cid]

        # reboot: the agent comes back and, from the rewritten config drive, finds the disk again
        ok("reboot_vm", vm_cid)
        again, _ = wait_for(console, lambda e: e.get("event") == "disk" and e.get("cid") == disk_cid,
                            AGENT_TIMEOUT, after=index + 1, what="disk after reboot")
        assert again["marker_existed"] is True, "the persistent disk must keep its data across a reboot"
        wait_for(console, lambda e: e.get("event") == "ready" and e.get("boot", 0) >= 2, AGENT_TIMEOUT,
                 what="agent ready after the reboot")

        ok("detach_disk", vm_cid, disk_cid)
        assert ok("get_disks", vm_cid) == []
        snap = ok("snapshot_disk", disk_cid, {"deployment": "dep"})
        assert snap
        ok("delete_snapshot", snap)
        ok("delete_disk", disk_cid)
        assert ok("has_disk", disk_cid) is False
    finally:
        ok("delete_vm", vm_cid)
    assert ok("has_vm", vm_cid) is False
    assert vm_cid not in cpi.our_domains()
    assert not [v for v in cpi.volumes() if v.startswith(vm_cid)]
    _no_secrets(calls)


def test_v1_shapes_and_idempotent_deletes(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    cpi = libvirt_cpi
    vm_cid = cpi.ok("create_vm", "agent-v1", stemcell_cid, {"ram": 128}, {"n": {"type": "dynamic", **USER_NET}},
                    None, {}, api_version=1)
    assert isinstance(vm_cid, str) and vm_cid.startswith("vm-")
    disk = cpi.ok("create_disk", 16, {}, None, api_version=1)
    try:
        assert cpi.ok("attach_disk", vm_cid, disk, api_version=1) is None
        assert cpi.ok("get_disks", vm_cid, api_version=1) == [disk]
        # deleting a VM with its disk still attached works and frees the disk
        cpi.ok("delete_vm", vm_cid)
        cpi.ok("delete_vm", vm_cid)  # again: nothing to do, no error
        assert cpi.ok("has_disk", disk) is True
        assert cpi.call("detach_disk", vm_cid, disk).error["type"] == "Bosh::Clouds::VMNotFound"
    finally:
        cpi.call("delete_vm", vm_cid)
        cpi.ok("delete_disk", disk)
    assert cpi.call("delete_disk", disk).error["type"] == "Bosh::Clouds::DiskNotFound"


def test_disk_operations(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    cpi = libvirt_cpi
    vm_cid, _ = cpi.ok("create_vm", "agent-disks", stemcell_cid, {"ram": 128},
                       {"n": {"type": "dynamic", **USER_NET}}, [], {})
    disk = cpi.ok("create_disk", 32, {"format": "qcow2"}, vm_cid)
    other = cpi.ok("create_disk", 8, {}, None)
    # as with the director, disks are attached to and detached from a VM whose agent is up
    wait_for(cpi.console(vm_cid), lambda e: e.get("event") == "ready", AGENT_TIMEOUT, what="agent ready")
    try:
        conn = cpi.libvirt()
        try:
            vol = conn.storagePoolLookupByName(cpi.pool_name).storageVolLookupByName(f"{disk}.qcow2")
            assert vol.info()[1] == 32 * 1024 * 1024, "create_disk must honour the size exactly"
        finally:
            conn.close()
        err = cpi.call("detach_disk", vm_cid, disk).error
        assert err["type"] == "Bosh::Clouds::DiskNotAttached" and disk in err["message"]
        cpi.ok("resize_disk", disk, 48)
        err = cpi.call("resize_disk", disk, 16).error
        assert err["type"] == "Bosh::Clouds::NotSupported" and "shrink" in err["message"]
        new = cpi.ok("update_disk", disk, 64, {"format": "raw"})
        assert new and new != disk and cpi.ok("has_disk", disk) is False
        disk = new
        assert cpi.ok("update_disk", disk, 64, {"format": "raw"}) is None
        cpi.ok("set_disk_metadata", disk, {"deployment": "dep", "instance_index": "0"})
        cpi.ok("attach_disk", vm_cid, disk)
        err = cpi.call("attach_disk", "vm-00000000-0000-0000-0000-000000000000", other).error
        assert err["type"] == "Bosh::Clouds::VMNotFound"
        err = cpi.call("attach_disk", vm_cid, "disk-00000000-0000-0000-0000-000000000000").error
        assert err["type"] == "Bosh::Clouds::DiskNotFound"
        err = cpi.call("delete_disk", disk).error
        assert err["type"] == "Bosh::Clouds::CloudError" and "attached" in err["message"]
        snap = cpi.ok("snapshot_disk", disk, {})  # of an attached disk of a running VM
        cpi.ok("delete_snapshot", snap)
        cpi.ok("delete_snapshot", snap)  # idempotent
        cpi.ok("detach_disk", vm_cid, disk)
    finally:
        cpi.call("delete_vm", vm_cid)
        cpi.call("delete_disk", disk)
        cpi.call("delete_disk", other)
    left = [v for v in cpi.volumes() if v.startswith((disk, other, vm_cid))]
    assert not left, f"volumes left behind: {left}"


def test_calculate_vm_cloud_properties_and_bad_cloud_properties(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    cpi = libvirt_cpi
    props = cpi.ok("calculate_vm_cloud_properties", {"ram": 1024, "cpu": 2, "ephemeral_disk_size": 2048})
    assert props == {"cpu": 2, "ram": 1024, "ephemeral_disk_size": 2048}
    before = (cpi.our_domains(), cpi.volumes())
    err = cpi.call("create_vm", "a", stemcell_cid, {"ram": 128, "cpus": 2}, {}, [], {}).error
    assert "cpus" in err["message"]
    err = cpi.call("create_vm", "a", "sc-does-not-exist", {}, {}, [], {}).error
    assert "sc-does-not-exist" in err["message"]
    err = cpi.call("create_vm", "a", stemcell_cid, {}, {"n": {"type": "manual", "cloud_properties":
                                                             {"network": "no-such-net"}}}, [], {}).error
    assert err["type"] == "Bosh::Clouds::NetworkNotFound" and "no-such-net" in err["message"]
    assert (cpi.our_domains(), cpi.volumes()) == before


def test_light_stemcell(libvirt_cpi: LibvirtCpi, stemcell_cid: str, tmp_path: Any) -> None:
    cpi = libvirt_cpi
    empty = tmp_path / "image"
    empty.write_bytes(b"")
    volume = next(v for v in cpi.volumes() if v.startswith(stemcell_cid))
    light = cpi.ok("create_stemcell", str(empty), {"image_id": {cpi.pool_name: volume, "elsewhere": "x"}})
    assert light == f"{volume} light"
    err = cpi.call("create_stemcell", str(empty), {"image_id": {"other-region": "x"}}).error
    assert err["type"] == "Bosh::Clouds::CloudError"
    assert f"Stemcell does not contain an image in region {cpi.pool_name}" in err["message"]
    cpi.ok("delete_stemcell", light)
    assert volume in cpi.volumes(), "deleting a light stemcell never deletes the published image"


def test_restricted_user_nic_with_loopback_port_forward(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    """A user-mode NIC with QEMU's restrict=on and a loopback port forward (what image smoke tests use to reach
    a guest's sshd); the guest agent still configures it by MAC."""
    import socket

    cpi = libvirt_cpi
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    net = {"type": "manual", "ip": "10.0.2.15", "netmask": "255.255.255.0", "gateway": "10.0.2.2",
           "default": ["gateway"], "cloud_properties": {"type": "user", "restrict": True,
                                                        "port_forwards": [{"host_port": port, "guest_port": 22}]}}
    err = cpi.call("create_vm", "a", stemcell_cid, {"ram": 128}, {"n": {**net, "cloud_properties": {
        "type": "user", "port_forwards": [{"host_address": "10.1.1.1", "host_port": port, "guest_port": 22}]}}},
        [], {}).error
    assert "host_address" in err["message"]
    vm_cid, nets = cpi.ok("create_vm", "agent-fwd", stemcell_cid, {"ram": 128}, {"n": net}, [], {})
    try:
        conn = cpi.libvirt()
        try:
            xml = conn.lookupByName(vm_cid).XMLDesc(0)
        finally:
            conn.close()
        assert f"restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22" in xml
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # QEMU listens on the loopback port
        seen, _ = wait_for(cpi.console(vm_cid), lambda e: e.get("event") == "network", AGENT_TIMEOUT,
                           what="network configured")
        assert seen["mac"] == nets["n"]["mac"] and seen["configured"] is True
    finally:
        cpi.ok("delete_vm", vm_cid)
