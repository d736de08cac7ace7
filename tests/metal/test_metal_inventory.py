"""``stemforge metal`` inventory verbs end to end (in-process CLI) against a real sushy-emulator (fake driver):
enroll validation naming the field with nothing half-enrolled, list/show with credentials masked, manage reading the
BMC (unreachable -> maintenance with the reason) then inspecting (unless --no-inspect), provide/clean through the
deploy interface, maintenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpi.providers.baremetal.store import MetalStore
from stemforge.cli import main
from tests.harness.redfish import PASSWORD, SYSTEMS, Emulator, free_port, ramdisk_player


def inventory(address: str, nodes: int = 2) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "name": name,
                "bmc": {
                    "driver": "redfish",
                    "address": address,
                    "system_id": f"/redfish/v1/Systems/{uuid}",
                    "username": "admin",
                    "password": PASSWORD,
                },  # fmt: skip
                "macs": [mac.upper()],
                "plan": {
                    "arch": "x86_64",
                    "cpus": 1,
                    "memory_mib": 512,
                    "disks": [{"size_gib": 4, "serial": f"{name}-root"}, {"size_gib": 1, "serial": f"{name}-d1"}],
                    "labels": {"rack": "r1"},
                },  # fmt: skip
                "root_hints": {"serial": f"{name}-root"},
            }
            for uuid, name, mac in SYSTEMS[:nodes]
        ]
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["metal", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path: Path, data: Any, name: str = "inventory.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return str(path)


def test_enroll_list_show_mask_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = str(tmp_path / "sd")
    status, out, err = run(capsys, "enroll", write(tmp_path, inventory("http://127.0.0.1:9")), "--state-dir", sd)
    assert status == 0, err
    assert "enrolled node-a" in out and "enrolled node-b" in out
    status, out, _ = run(capsys, "list", "--state-dir", sd)
    assert status == 0 and "node-a" in out and "enroll" in out and "x86_64 1cpu 512MiB 4G+1G" in out
    status, out, _ = run(capsys, "show", "node-a", "--state-dir", sd)
    shown = json.loads(out)
    assert shown["bmc"]["password"] == "***" and shown["macs"] == [SYSTEMS[0][2]]
    assert shown["transitions"][0]["verb"] == "enroll" and shown["transitions"][0]["who"].startswith("cli")
    assert PASSWORD not in out
    status, _, err = run(capsys, "show", "nope", "--state-dir", sd)
    assert status == 1 and "node 'nope' is not enrolled" in err


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["nodes"][1]["bmc"].pop("address"), "'nodes/1/bmc' 'address' is a required property"),
        (lambda d: d["nodes"][1]["bmc"].update(address="127.0.0.1:8000"), "'nodes/1/bmc/address'"),
        (lambda d: d["nodes"][1]["macs"].__setitem__(0, "zz:zz"), "'nodes/1/macs/0'"),
        (lambda d: d["nodes"][1]["macs"].__setitem__(0, d["nodes"][0]["macs"][0]), "'nodes/1/macs/0'"),
        (lambda d: d["nodes"][1].update(name="node-a"), "'nodes/1/name' 'node-a' is already used by nodes/0"),
        (lambda d: d["nodes"][0]["plan"]["disks"][0].pop("size_gib"), "'nodes/0/plan/disks/0'"),
        (lambda d: d["nodes"][0]["plan"].update(erase="shred"), "'nodes/0/plan/erase'"),
        (lambda d: d["nodes"][0].update(colour="red"), "unknown key(s) 'colour' at 'nodes/0'"),
        (lambda d: d["nodes"][1]["root_hints"].update(size=">= x"), "'nodes/1/root_hints/size'"),
        (lambda d: d["nodes"][1]["root_hints"].update(rotational="maybe"), "'nodes/1/root_hints/rotational'"),
        (lambda d: d["nodes"][1]["root_hints"].update(serial="<range-in> [ 1 2 ]"), "'nodes/1/root_hints/serial'"),
    ],
)
def test_enroll_rejects_bad_files_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, message: str
) -> None:
    data = inventory("http://127.0.0.1:9")
    mutate(data)
    sd = str(tmp_path / "sd")
    status, _, err = run(capsys, "enroll", write(tmp_path, data, "inv.json"), "--state-dir", sd)
    assert status == 1 and message in err, err
    assert PASSWORD not in err
    assert MetalStore(sd).nodes() == []  # nothing half-enrolled


RAID1: dict[str, Any] = {
    "boot_mode": "uefi",
    "disks": [
        {"id": "d0", "hints": {"serial": "node-a-root"}, "partitions": [
            {"id": "esp0", "size": 256, "filesystem": "vfat", "mount": "/boot/efi", "esp": True},
            {"id": "r0", "size": "fill"}]},
        {"id": "d1", "hints": {"serial": "node-a-d1"}, "partitions": [
            {"id": "esp1", "size": 256, "filesystem": "vfat", "esp": True}, {"id": "r1", "size": "fill"}]},
    ],
    "raid": [{"id": "md0", "level": 1, "devices": ["r0", "r1"]}],
    "lvm": [{"id": "vg0", "devices": ["md0"], "lvs": [{"id": "root", "size": "fill", "filesystem": "ext4",
                                                     "mount": "/"}]}],
}  # fmt: skip


def _with_storage(data: dict[str, Any]) -> dict[str, Any]:
    """node-a: UEFI with plan.storage raid1; node-b: BIOS, no storage named: takes the hints plan by match."""
    data["storage_plans"] = [
        {"name": "raid1", "match": {"boot_mode": "uefi", "min_disks": 2}, "layout": RAID1},
        {"name": "small-root", "match": {"boot_mode": "bios"}, "root_hints": {"size": "<= 4"}},
    ]
    data["nodes"][0]["plan"].update(boot_mode="uefi", storage="raid1")
    data["nodes"][0].pop("root_hints")
    data["nodes"][1]["plan"]["boot_mode"] = "bios"
    data["nodes"][1].pop("root_hints")
    return data


def test_enroll_storage_plans_and_layouts_show_prints_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cpi.providers.baremetal.inventory import node_layout

    sd = str(tmp_path / "sd")
    data = _with_storage(inventory("http://127.0.0.1:9"))
    status, _, err = run(capsys, "enroll", write(tmp_path, data), "--state-dir", sd)
    assert status == 0, err
    store = MetalStore(sd)
    a, b = store.get_node("node-a"), store.get_node("node-b")
    assert node_layout(a) == RAID1 and a.extra["storage"]["plan"] == "raid1" and a.plan["boot_mode"] == "uefi"
    assert node_layout(b) is None and b.root_hints == {"size": "<= 4"} and b.extra["storage"]["plan"] == "small-root"
    shown = json.loads(run(capsys, "show", "node-a", "--state-dir", sd)[1])
    assert shown["storage"].startswith("file-based deploy (storage plan raid1), uefi: uefi, disks d0 (serial=node-a-")
    assert "raid md0 level 1 [r0 r1], vg vg0 [md0]: root fill ext4 /, config drive on d0" in shown["storage"]
    assert shown["deployable"] == "no: not inspected (stemforge metal inspect node-a)"
    shown = json.loads(run(capsys, "show", "node-b", "--state-dir", sd)[1])
    assert shown["storage"] == "whole-disk image (storage plan small-root), bios, root hints size=<=4"
    # an inline layout; a node matching no storage plan keeps the whole-disk default
    data = inventory("http://127.0.0.1:9")
    data["nodes"][0]["layout"] = RAID1
    data["nodes"][1].pop("root_hints")
    status, _, err = run(capsys, "enroll", write(tmp_path, data), "--state-dir", str(tmp_path / "sd2"))
    assert status == 0, err
    store = MetalStore(tmp_path / "sd2")
    assert node_layout(store.get_node("node-a")) == RAID1 and store.get_node("node-b").extra == {}
    shown = json.loads(run(capsys, "show", "node-b", "--state-dir", str(tmp_path / "sd2"))[1])
    assert shown["storage"] == (
        "whole-disk image, boot mode from the inspection, root hints none (the smallest disk >= 4 GiB)"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["nodes"][0]["plan"].update(storage="raid9"),
         "'nodes/0/plan/storage' no storage plan named 'raid9' (storage_plans: raid1, small-root)"),
        (lambda d: d["nodes"][0]["plan"].update(boot_mode="efi"), "'nodes/0/plan/boot_mode'"),
        (lambda d: d["nodes"][1].update(layout={"disks": [{"id": "d0", "partitions": [{"id": "r", "size": 0}]}]}),
         "'nodes/1/layout/disks/0/partitions/0/size'"),
        (lambda d: d["nodes"][1].update(layout={"disks": [], "colour": 1}), "'nodes/1/layout' unknown key(s) 'colour'"),
        (lambda d: d["nodes"][0].update(layout=RAID1), "'nodes/0/layout' give either an inline layout or plan.storage"),
        (lambda d: d["nodes"][1].update(layout=RAID1), "'nodes/1/layout/boot_mode' uefi but plan.boot_mode is bios"),
        (lambda d: d["nodes"][1]["plan"].update(storage="raid1"),
         "'nodes/1/plan/storage' storage plan 'raid1' is for uefi, plan.boot_mode is bios"),
        (lambda d: d["storage_plans"][1].update(name="raid1"),
         "'storage_plans/1/name' 'raid1' is already the name of another storage plan"),
        (lambda d: d["storage_plans"][0]["layout"].update(raid=[{"id": "md0", "level": 5, "devices": ["r0"]}]),
         "'storage_plans/0/layout/raid/0/level'"),
        (lambda d: d["storage_plans"][1].update(root_hints={"size": "huge"}), "'storage_plans/1/root_hints/size'"),
        (lambda d: d["storage_plans"][1].pop("root_hints"), "'storage_plans/1'"),
        (lambda d: d["storage_plans"][0]["match"].update(min_disks=0), "'storage_plans/0/match/min_disks'"),
    ],
)  # fmt: skip
def test_enroll_rejects_bad_storage_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, message: str
) -> None:
    import copy

    data = copy.deepcopy(_with_storage(inventory("http://127.0.0.1:9")))
    mutate(data)
    sd = str(tmp_path / "sd")
    status, _, err = run(capsys, "enroll", write(tmp_path, data, "inv.json"), "--state-dir", sd)
    assert status == 1 and message in err, err
    assert MetalStore(sd).nodes() == []


def test_enroll_is_atomic_against_existing_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = str(tmp_path / "sd")
    one = inventory("http://127.0.0.1:9", nodes=1)
    assert run(capsys, "enroll", write(tmp_path, one, "one.yaml"), "--state-dir", sd)[0] == 0
    status, _, err = run(capsys, "enroll", write(tmp_path, inventory("http://127.0.0.1:9")), "--state-dir", sd)
    assert status == 1 and "node 'node-a' is already enrolled" in err
    assert [n.name for n in MetalStore(sd).nodes()] == ["node-a"]
    status, _, err = run(capsys, "enroll", str(tmp_path / "missing.yaml"), "--state-dir", sd)
    assert status == 1 and "cannot read" in err
    (tmp_path / "bad.yaml").write_text("nodes: [\n  - {name: x")
    status, _, err = run(capsys, "enroll", str(tmp_path / "bad.yaml"), "--state-dir", sd)
    assert status == 1 and "not valid YAML or JSON at line" in err


def test_state_dir_from_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    import argparse

    from cpi.providers.baremetal import cli

    monkeypatch.setenv("STEMFORGE_METAL_STATE_DIR", str(tmp_path / "env-sd"))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    assert parser.parse_args(["metal", "list"]).state_dir == str(tmp_path / "env-sd")


def test_manage_provide_clean_maintenance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: Emulator
) -> None:
    sd = str(tmp_path / "sd")
    assert run(capsys, "enroll", write(tmp_path, inventory(emulator.url)), "--state-dir", sd)[0] == 0
    status, _, err = run(capsys, "provide", "node-a", "--state-dir", sd)
    assert status == 1 and "node 'node-a' is in state 'enroll': cannot provide (allowed in this state: manage)" in err
    status, out, err = run(capsys, "manage", "node-a", "node-b", "--no-inspect", "--state-dir", sd)
    assert status == 0, err
    assert "node-a: manage: manageable" in out and "node-b: manage: manageable" in out
    store = MetalStore(sd)
    assert "BMC answered (power off)" in store.transitions("node-a")[-1].why
    # provide with cleaning: a ramdisk (played here) reports the disks wiped; the node ends available and off
    player = ramdisk_player(
        store, "node-a",
        [("stage", {"stage": "booted", "ok": True}), ("stage", {"stage": "disk-wiped", "message": "/dev/vda"}),
         ("result", {"stage": "done", "ok": True})],
    )  # fmt: skip
    status, out, err = run(capsys, "provide", "node-a", "--state-dir", sd)
    player.join(10)
    assert status == 0, err
    assert "disk-wiped" in out and "node-a: provide: available" in out
    assert store.job("node-a") is None
    # provide --skip-cleaning for a blank server
    status, out, _ = run(capsys, "provide", "node-b", "--skip-cleaning", "--state-dir", sd)
    assert status == 0 and "node-b: provide: available" in out
    # maintenance
    status, _, err = run(capsys, "maintenance", "set", "node-b", "--state-dir", sd)
    assert status == 1 and "needs a --reason" in err
    status, out, _ = run(capsys, "maintenance", "set", "node-b", "--reason", "fan broken", "--state-dir", sd)
    assert status == 0 and "in maintenance (fan broken)" in out
    assert store.get_node("node-b").maintenance_reason == "fan broken"
    assert run(capsys, "maintenance", "unset", "node-b", "--state-dir", sd)[0] == 0
    assert not store.get_node("node-b").maintenance


def test_cleaning_failure_is_clean_failed_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: Emulator
) -> None:
    sd = str(tmp_path / "sd")
    assert run(capsys, "enroll", write(tmp_path, inventory(emulator.url, nodes=1)), "--state-dir", sd)[0] == 0
    assert run(capsys, "manage", "node-a", "--no-inspect", "--state-dir", sd)[0] == 0
    store = MetalStore(sd)
    player = ramdisk_player(
        store, "node-a",
        [("stage", {"stage": "booted", "ok": True}),
         ("result", {"stage": "disk-wiped", "ok": False, "message": "wipefs /dev/vda: device busy"})],
    )  # fmt: skip
    status, _, err = run(capsys, "clean", "node-a", "--state-dir", sd)
    player.join(10)
    assert status == 1
    assert "cleaning node node-a failed: node node-a: clean failed at stage disk-wiped: wipefs /dev/vda" in err
    node = store.get_node("node-a")
    assert node.provision_state == "clean failed" and "device busy" in node.last_error
    assert store.job("node-a") is None


def test_manage_with_bmc_down_goes_to_maintenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = str(tmp_path / "sd")
    data = inventory(f"http://127.0.0.1:{free_port()}", nodes=1)
    assert run(capsys, "enroll", write(tmp_path, data), "--state-dir", sd)[0] == 0
    status, _, err = run(capsys, "manage", "node-a", "--state-dir", sd)
    assert status == 1 and "unreachable" in err and PASSWORD not in err
    node = MetalStore(sd).get_node("node-a")
    assert node.provision_state == "enroll" and node.maintenance and "unreachable" in node.maintenance_reason


INVENTORY_REPORT: dict[str, Any] = {
    "inventory": {
        "disks": [
            {"name": "vda", "device": "/dev/vda", "size": 4 << 30, "serial": "node-a-root", "model": "",
             "vendor": "0x1af4", "wwn": "", "rotational": True, "hctl": "",
             "by_path": "/dev/disk/by-path/pci-0000:00:04.0"},
        ],
        "nics": [
            {"name": "eth0", "mac": "52:54:00:00:00:01", "link": True, "speed_mbps": None, "driver": "virtio_net"},
        ],
        "cpu": {"count": 1, "arch": "x86_64", "model": "QEMU Virtual CPU"},
        "memory": {"total_bytes": 500 << 20, "physical_mib": 512},
        "boot": {"mode": "bios"},
        "firmware": {"bios_vendor": "SeaBIOS", "sys_vendor": "QEMU"},
        "kernel": "6.1.0",
    }
}  # fmt: skip


def test_manage_inspects_show_prints_it_and_a_bad_report_is_inspect_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], emulator: Emulator
) -> None:
    sd = str(tmp_path / "sd")
    assert run(capsys, "enroll", write(tmp_path, inventory(emulator.url, nodes=1)), "--state-dir", sd)[0] == 0
    store = MetalStore(sd)
    player = ramdisk_player(
        store, "node-a",
        [("stage", {"stage": "booted", "ok": True}), ("stage", {"stage": "inspected", "ok": True}),
         ("result", {"stage": "done", "ok": True, "data": INVENTORY_REPORT})],
    )  # fmt: skip
    status, out, err = run(capsys, "manage", "node-a", "--state-dir", sd)
    player.join(10)
    assert status == 0, err
    assert "node-a: manage: manageable" in out and "inspected: bios, 1 x86_64 CPU(s), 512 MiB" in out
    assert store.job("node-a") is None and store.get_node("node-a").provision_state == "manageable"
    verbs = [(t.verb, t.to_state) for t in store.transitions("node-a")]
    assert verbs[-5:] == [("manage", "manageable"), ("inspect", "inspecting"), ("wait", "inspect wait"),
                          ("resume", "inspecting"), ("done", "manageable")]  # fmt: skip
    status, out, _ = run(capsys, "show", "node-a", "--state-dir", sd)
    assert json.loads(out)["deployable"] == "yes"  # inspected; its root hints select vda
    shown = json.loads(out)["inspection"]
    assert shown["disks"] == INVENTORY_REPORT["inventory"]["disks"] and shown["boot"] == {"mode": "bios"}
    assert shown["ts"].endswith("Z") and 0 <= shown["age_s"] < 60
    first = store.inspection("node-a")
    assert first is not None
    # a report that is not an inventory: inspect failed naming the field, the old inspection kept, then manage
    bad = json.loads(json.dumps(INVENTORY_REPORT))
    bad["inventory"]["disks"][0]["size"] = "4G"
    player = ramdisk_player(store, "node-a", [("result", {"stage": "done", "ok": True, "data": bad})])
    status, _, err = run(capsys, "inspect", "node-a", "--state-dir", sd)
    player.join(10)
    assert status == 1 and "inspecting node node-a failed" in err and "inventory/disks/0/size" in err, err
    node = store.get_node("node-a")
    assert node.provision_state == "inspect failed" and "inventory/disks/0/size" in node.last_error
    assert store.inspection("node-a") == first and store.job("node-a") is None
    status, _, err = run(capsys, "provide", "node-a", "--state-dir", sd)
    assert status == 1 and "allowed in this state: inspect, manage" in err
    assert run(capsys, "manage", "node-a", "--no-inspect", "--state-dir", sd)[0] == 0
