"""Storage layouts (cpi/providers/baremetal/layout.py) validated against inspected disks before any disk is
touched: good layouts resolve to disks and sizes; every bad layout in the table fails naming its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cpi.providers.baremetal.layout import LayoutError, validate_layout

GIB = 1 << 30
DISKS: list[dict[str, Any]] = [
    {"name": "vdc", "size": 20 * GIB, "serial": "SF-C", "rotational": True},
    {"name": "vda", "size": 10 * GIB, "serial": "SF-A", "rotational": False},
    {"name": "vdb", "size": 10 * GIB, "serial": "SF-B", "rotational": False},
    {"name": "vdd", "size": 10 * GIB, "serial": "SF-D", "rotational": False},
]

RAID1_LVM_UEFI: dict[str, Any] = {
    "boot_mode": "uefi",
    "disks": [
        {"id": "d0", "hints": {"serial": "SF-A"}, "partitions": [
            {"id": "esp0", "size": 512, "filesystem": "vfat", "mount": "/boot/efi", "esp": True},
            {"id": "r0", "size": "fill"}]},
        {"id": "d1", "hints": {"serial": "sf-b"}, "partitions": [
            {"id": "esp1", "size": 512, "filesystem": "vfat", "esp": True},
            {"id": "r1", "size": "fill"}]},
    ],
    "raid": [{"id": "md0", "level": 1, "devices": ["r0", "r1"]}],
    "lvm": [{"id": "vg0", "devices": ["md0"], "lvs": [
        {"id": "swap", "size": 1024, "filesystem": "swap"},
        {"id": "var", "size": 1000, "filesystem": "xfs", "mount": "/var"},
        {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"}]}],
}  # fmt: skip

BIOS_ONE_DISK: dict[str, Any] = {
    "disks": [
        {"id": "d0", "hints": {"size": ">= 15"}, "partitions": [
            {"id": "grub", "size": 1, "bios_grub": True},
            {"id": "boot", "size": 512, "filesystem": "ext4", "mount": "/boot"},
            {"id": "root", "size": "fill", "filesystem": "ext4", "mount": "/"}]},
    ],
}  # fmt: skip


def test_raid1_lvm_uefi_resolves_disks_and_sizes() -> None:
    plan = validate_layout(RAID1_LVM_UEFI, DISKS)
    assert plan.boot_mode == "uefi" and plan.root == "root" and plan.configdrive == "d0"
    assert {k: v["name"] for k, v in plan.disks.items()} == {"d0": "vda", "d1": "vdb"}
    sizes = {k: d.size_mib for k, d in plan.devices.items()}
    # d0: 10240 MiB - 2 (GPT) - 64 (config drive) - 512 (ESP); d1 has no config drive
    assert sizes["r0"] == 10240 - 2 - 64 - 512 and sizes["r1"] == 10240 - 2 - 512
    assert sizes["md0"] == sizes["r0"]  # RAID 1: the smallest member
    capacity = (sizes["md0"] - 1) // 4 * 4  # 1 MiB of PV metadata, 4 MiB extents
    assert sizes["swap"] == 1024 and sizes["var"] == 1000 and sizes["root"] == capacity - 1024 - 1000
    assert plan.mounts == {"/boot/efi": "esp0", "/var": "var", "/": "root"}
    assert plan.devices["root"].disks == {"d0", "d1"} and plan.devices["r0"].used_by == "array md0"


def test_bios_single_disk_by_size_hint_and_the_inspected_boot_mode() -> None:
    plan = validate_layout(BIOS_ONE_DISK, DISKS, boot_mode="bios")
    assert plan.disks["d0"]["name"] == "vdc" and plan.devices["root"].size_mib == 20480 - 2 - 64 - 1 - 512


def test_raid10_and_raid0_sizes() -> None:
    layout: dict[str, Any] = {
        "boot_mode": "bios",
        "disks": [],
        "raid": [{"id": "md0", "level": 10, "devices": ["p0", "p1", "p2", "p3"], "filesystem": "ext4", "mount": "/"}],
    }
    for i, serial in enumerate(("SF-A", "SF-B", "SF-C", "SF-D")):
        layout["disks"].append(
            {
                "id": f"d{i}",
                "hints": {"serial": serial},
                "partitions": [{"id": f"g{i}", "size": 1, "bios_grub": True}, {"id": f"p{i}", "size": 4096}],
            }
        )
    assert validate_layout(layout, DISKS).devices["md0"].size_mib == 2 * 4096
    layout["raid"][0].update(level=0)
    assert validate_layout(layout, DISKS).devices["md0"].size_mib == 4 * 4096
    # the config drive goes where it is told
    layout["configdrive"] = {"disk": "d2"}
    assert validate_layout(layout, DISKS).configdrive == "d2"


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        # shape
        (_set("disks/0/colour", "red"), "disks/0", "unknown key(s) 'colour'"),
        (_set("disks/0/partitions/0/size", 0), "disks/0/partitions/0/size", ""),
        (_set("raid/0/level", 5), "raid/0/level", ""),
        (_set("disks/1/partitions/1/id", "r0"), "disks/1/partitions/1/id", "already used at disks/0/partitions/1/id"),
        (_set("boot_mode", _DELETE), "boot_mode", "inspect the server first"),
        # disks by hint
        (_set("disks/0/hints", {"serial": "NOPE"}), "disks/0/hints", "no free inspected disk matches serial=NOPE"),
        (_set("disks/1/hints", {"serial": "SF-A"}), "disks/1/hints", "taken: vda by d0"),
        (_set("disks/0/hints", {"size": "huge"}), "disks/0/hints/size", "not an integer"),
        # sizes
        (_set("disks/0/partitions/0/size", 10200), "disks/0/partitions", "do not fit on vda (10.0 GiB"),
        (_set("disks/0/partitions/0/size", "fill"), "disks/0/partitions/1/size", "only one partition"),
        (
            _set(
                "disks/0/partitions",
                [
                    {"id": "r0", "size": "fill"},
                    {"id": "esp0", "size": 512, "esp": True, "filesystem": "vfat", "mount": "/boot/efi"},
                ],
            ),
            "disks/0/partitions/0/size",
            "must be the disk's last",
        ),
        (_set("lvm/0/lvs/0/size", 20000), "lvm/0/lvs", "do not fit in volume group vg0"),
        (_set("lvm/0/lvs/1/size", "fill"), "lvm/0/lvs/2/size", "only one LV"),
        (_set("lvm/0/lvs/1/size", 200), "lvm/0/lvs/1/size", "xfs needs at least 300 MiB"),
        # RAID
        (_set("raid/0/devices", ["r0"]), "raid/0/devices", "RAID 1 needs at least 2 devices, md0 has 1"),
        (_set("raid/0/level", 10), "raid/0/devices", "RAID 10 needs at least 4 devices"),
        (_set("raid/0/devices", ["r0", "esp1"]), "raid/0/devices", "'esp1' is a boot partition"),
        (_set("raid/0/devices", ["r0", "nothing"]), "raid/0/devices", "'nothing' is not a partition, array or LV"),
        # use once
        (_set("lvm/0/devices", ["md0", "r1"]), "lvm/0/devices", "'r1' is already used by array md0"),
        (_set("disks/1/partitions/1/filesystem", "ext4"), "raid/0/devices", "'r1' already holds a ext4 filesystem"),
        # filesystems and mounts
        (_set("lvm/0/lvs/2/mount", "/var"), "lvm/0/lvs/2/mount", "/var is already mounted from var"),
        (_set("lvm/0/lvs/2/mount", _DELETE), "layout", "no filesystem is mounted at /"),
        (_set("lvm/0/lvs/2/filesystem", "vfat"), "lvm/0/lvs/2/filesystem", "/ must be ext4 or xfs"),
        (_set("lvm/0/lvs/0/mount", "/swap"), "lvm/0/lvs/0/mount", "swap has no mount point"),
        (_set("lvm/0/lvs/1/mount", "var"), "lvm/0/lvs/1/mount", "not an absolute path"),
        (_set("lvm/0/lvs/1/filesystem", _DELETE), "lvm/0/lvs/1/mount", "needs a filesystem"),
        # boot loader
        (_set("disks/1/partitions/0/esp", False), "disks/1/partitions", "UEFI boot: disk d1 holds / and needs an ESP"),
        (_set("disks/0/partitions/0/mount", "/efi"), "disks", "one ESP must be mounted at /boot/efi"),
        (_set("disks/0/partitions/0/filesystem", "ext4"), "disks/0/partitions/0/esp", "vfat"),
        (_set("boot_mode", "bios"), "disks/0/partitions", "BIOS boot: disk d0 holds / and needs a bios_grub"),
        (_set("configdrive", {"disk": "d9"}), "configdrive/disk", "'d9' is not a disk of the layout"),
    ],
)
def test_bad_layouts_fail_naming_the_field(mutate: Any, field: str, problem: str) -> None:
    layout = copy.deepcopy(RAID1_LVM_UEFI)
    mutate(layout)
    with pytest.raises(LayoutError) as err:
        validate_layout(layout, DISKS)
    assert err.value.field == field, str(err.value)
    assert problem in str(err.value)


def test_a_bad_layout_mutates_nothing() -> None:
    layout = copy.deepcopy(RAID1_LVM_UEFI)
    layout["raid"][0]["devices"] = ["r0"]
    before = copy.deepcopy(layout)
    disks = copy.deepcopy(DISKS)
    with pytest.raises(LayoutError):
        validate_layout(layout, disks)
    assert layout == before and disks == DISKS


def test_raid1_members_on_one_disk_are_refused() -> None:
    layout = copy.deepcopy(RAID1_LVM_UEFI)
    layout["disks"][0]["partitions"][1]["size"] = 4000
    layout["disks"][0]["partitions"].append({"id": "r2", "size": 4000})
    layout["raid"][0]["devices"] = ["r0", "r2"]
    with pytest.raises(LayoutError) as err:
        validate_layout(layout, DISKS)
    assert err.value.field == "raid/0/devices" and "r0 and r2 are both on disk d0" in str(err.value)


# -- the ramdisk's answer (instructions.render_layout_answer) -------------------------------------------------------
LAYOUT_JOB: dict[str, Any] = {
    "deploy_kind": "layout",
    "layout": RAID1_LVM_UEFI,
    "rootfs_fstype": "ext4",
}


def test_layout_answer_is_the_grammar_in_order_and_sources_in_sh(tmp_path: Any) -> None:
    """The lay_* lines of a RAID1 + LVM UEFI layout, exactly: disks by kernel name, GPT partitions numbered per
    disk, the config drive after them on d0, the array, the VG, sized LVs before the fill one, / first among the
    filesystems (then by mount depth), both ESPs (the mounted one first), lay_go last; every argument survives sh
    quoting."""
    import subprocess

    from cpi.providers.baremetal.instructions import render_layout_answer

    text = render_layout_answer("n1", LAYOUT_JOB, {"disks": DISKS})
    r0, r1 = 10240 - 2 - 64 - 512, 10240 - 2 - 512
    assert text.splitlines() == [
        "lay_boot_mode 'uefi'",
        "lay_disk 'd0' 'vda'",
        "lay_disk 'd1' 'vdb'",
        "lay_part 'd0' '1' 'esp0' '512' 'esp'",
        "lay_part 'd0' '2' 'r0' 'fill' 'raid'",
        "lay_part 'd1' '1' 'esp1' '512' 'esp'",
        "lay_part 'd1' '2' 'r1' 'fill' 'raid'",
        "lay_configdrive 'd0' '3'",
        "lay_raid 'md0' '1' 'r0' 'r1'",
        "lay_vg 'vg0' 'md0'",
        "lay_lv 'vg0' 'swap' '1024'",
        "lay_lv 'vg0' 'var' '1000'",
        "lay_lv 'vg0' 'root' 'fill'",
        "lay_fs 'root' 'ext4' '/'",
        "lay_fs 'var' 'xfs' '/var'",
        "lay_fs 'esp0' 'vfat' '/boot/efi'",
        "lay_fs 'esp1' 'vfat' '-'",
        "lay_fs 'swap' 'swap' '-'",
        "lay_esp 'esp0' 'esp1'",
        "lay_go",
    ]
    assert r0 < r1  # the config drive only on d0
    script = tmp_path / "answer"
    script.write_text(text)
    quiet = ("lay_boot_mode", "lay_disk", "lay_configdrive", "lay_raid", "lay_vg", "lay_lv", "lay_fs", "lay_esp")
    shell = 'lay_part() { echo "P|$1|$2|$3|$4|$5"; }; lay_go() { echo GO; }; ' + "".join(
        f"{w}() {{ :; }}; " for w in quiet
    )
    out = subprocess.run(["busybox", "sh", "-c", f"{shell} . {script}"], capture_output=True, text=True, check=True,
                         timeout=10)  # fmt: skip
    assert out.stdout.splitlines()[0] == "P|d0|1|esp0|512|esp" and out.stdout.splitlines()[-1] == "GO"


def test_bios_layout_answer_types_and_numbers() -> None:
    from cpi.providers.baremetal.instructions import render_layout_answer

    job = {**LAYOUT_JOB, "layout": BIOS_ONE_DISK}
    inventory = {"disks": DISKS, "boot": {"mode": "bios"}}
    text = render_layout_answer("n1", job, {"disks": DISKS}, inventory, "2026-01-01T00:00:00Z")
    assert text.splitlines()[:6] == [
        "lay_boot_mode 'bios'",
        "lay_disk 'd0' 'vdc'",  # size >= 15: the 20 GiB disk
        "lay_part 'd0' '1' 'grub' '1' 'bios_grub'",
        "lay_part 'd0' '2' 'boot' '512' 'linux'",
        "lay_part 'd0' '3' 'root' 'fill' 'linux'",
        "lay_configdrive 'd0' '4'",
    ]
    assert "lay_esp" not in text and text.endswith("lay_go\n")


@pytest.mark.parametrize(
    ("job", "inspected", "reported", "problem"),
    [
        # a disk replaced since the inspection: both sets named
        ({}, {"disks": DISKS, "boot": {"mode": "uefi"}}, DISKS[:3] + [{**DISKS[3], "serial": "NEW"}],
         "its disks changed since the inspection of T: missing SF-D (10.0 GiB); new NEW (10.0 GiB)"),
        # the layout asks for UEFI, the inspection found BIOS
        ({}, {"disks": DISKS, "boot": {"mode": "bios"}}, DISKS, "the layout is for uefi but the server boots bios"),
        # a hint that matches nothing
        ({"layout": {**RAID1_LVM_UEFI, "disks": [{**RAID1_LVM_UEFI["disks"][0], "hints": {"serial": "NOPE"}},
                                                 RAID1_LVM_UEFI["disks"][1]]}},
         None, DISKS, "layout: disks/0/hints: no free inspected disk matches serial=NOPE"),
        # one disk only: the RAID1 set cannot be built
        ({}, None, DISKS[1:2], "disks/1/hints: no free inspected disk matches serial=sf-b"),
        # / is xfs, the image's root is ext4
        ({"layout": BIOS_ONE_DISK | {"disks": [{**BIOS_ONE_DISK["disks"][0], "partitions": [
            *BIOS_ONE_DISK["disks"][0]["partitions"][:2], {"id": "root", "size": "fill", "filesystem": "xfs",
                                                           "mount": "/"}]}]}, "boot_mode": "bios"},
         None, DISKS, "/ is xfs but the root filesystem of the image is ext4"),
        ({"layout": None, "deploy_kind": "whole-disk"}, None, DISKS, "the deploy job has no layout"),
    ],
)  # fmt: skip
def test_layout_answer_errors_are_one_quoted_line(job: Any, inspected: Any, reported: Any, problem: str) -> None:
    from cpi.providers.baremetal.instructions import render_layout_answer

    text = render_layout_answer("n1", {**LAYOUT_JOB, **job}, {"disks": reported}, inspected, "T")
    assert text.startswith("SF_LAYOUT_ERROR='node n1: ") and text.endswith("'\n") and text.count("\n") == 1, text
    assert problem in text, text
    with pytest.raises(ValueError, match=r"disks\[0\].name"):
        render_layout_answer("n1", LAYOUT_JOB, {"disks": [{"name": "/dev/x", "size": 1}]})
