"""Root-device hints (cpi/providers/baremetal/root_hints.py) against Ironic's semantics, table-driven.

The expected rows follow ironic-lib's ``ironic_lib/utils.py`` tests' cases (``find_devices_by_hints`` /
``match_root_device_hints``: every hint must match, case-insensitive strings, size in GiB, ``<or>``, ``<in>``,
``s!=``, booleans) and oslo.utils' ``specs_matcher`` operators.
"""

from __future__ import annotations

from typing import Any

import pytest

from cpi.providers.baremetal import root_hints as rh

GIB = 1 << 30

DISKS: list[dict[str, Any]] = [
    {"name": "/dev/sda", "size": 64 * GIB, "model": "small", "vendor": "fake-vendor", "serial": "hello",
     "wwn": "wwn0", "wwn_with_extension": "wwn0ven0", "wwn_vendor_extension": "ven0", "rotational": True,
     "hctl": "1:0:0:0", "by_path": "/dev/disk/by-path/1:0:0:0"},
    {"name": "/dev/sdb", "size": 128 * GIB, "model": "big", "vendor": "fake-vendor", "serial": "yes",
     "wwn": "fake-wwn", "wwn_with_extension": "fake-wwnven0", "wwn_vendor_extension": "ven0", "rotational": False,
     "hctl": "1:0:0:1", "by_path": "/dev/disk/by-path/1:0:0:1"},
    {"name": "/dev/sdc", "size": 10 * GIB, "model": "Fake Model", "vendor": "SmallVendor", "serial": "fake-serial",
     "wwn": "wwn-b", "wwn_with_extension": "wwn-bven1", "wwn_vendor_extension": "ven1", "rotational": True,
     "hctl": "1:0:0:2", "by_path": "/dev/disk/by-path/1:0:0:2"},
    {"name": "/dev/sdd", "size": 3 * GIB + GIB // 2, "model": "", "vendor": "", "serial": "", "rotational": "1"},
]  # fmt: skip


def names(hints: Any, disks: list[dict[str, Any]] | None = None) -> list[str]:
    return [str(d["name"]) for d in rh.find_devices_by_hints(disks if disks is not None else DISKS, hints)]


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        # size: GiB, plain means ==, compared as a float (3.5 GiB is not 3)
        ({"size": 64}, ["/dev/sda"]),
        ({"size": "64"}, ["/dev/sda"]),
        ({"size": "== 128"}, ["/dev/sdb"]),
        ({"size": ">= 64"}, ["/dev/sda", "/dev/sdb"]),
        ({"size": ">=64"}, ["/dev/sda", "/dev/sdb"]),
        ({"size": "<= 10"}, ["/dev/sdc", "/dev/sdd"]),
        ({"size": "!= 64"}, ["/dev/sdb", "/dev/sdc", "/dev/sdd"]),
        ({"size": "> 64"}, ["/dev/sdb"]),
        ({"size": "< 10"}, ["/dev/sdd"]),
        ({"size": "= 64"}, ["/dev/sda", "/dev/sdb"]),  # oslo's legacy '=' is >=
        ({"size": 3}, []),
        ({"size": "<or> 10 <or> 128"}, ["/dev/sdb", "/dev/sdc"]),
        ({"size": "<in> 10 64"}, ["/dev/sda", "/dev/sdc"]),
        ({"size": "<range-in> [ 10 64 ]"}, ["/dev/sda", "/dev/sdc"]),
        ({"size": "<range-in> ( 10 64 ]"}, ["/dev/sda"]),
        ({"size": "<range-in> ( 10 64 )"}, []),
        # strings: s== by default, case-insensitive, spaces allowed
        ({"model": "big"}, ["/dev/sdb"]),
        ({"model": "BIG"}, ["/dev/sdb"]),
        ({"model": "fake model"}, ["/dev/sdc"]),
        ({"model": "s== Fake Model"}, ["/dev/sdc"]),
        ({"model": "s!= big"}, ["/dev/sda", "/dev/sdc"]),  # sdd's empty model never matches
        ({"model": "<in> fake"}, ["/dev/sdc"]),
        ({"model": "<or> small <or> big"}, ["/dev/sda", "/dev/sdb"]),
        ({"model": "<or> fake model <or> nope"}, ["/dev/sdc"]),
        ({"model": "<all-in> fake model"}, ["/dev/sdc"]),
        ({"model": "s>= c"}, ["/dev/sda", "/dev/sdc"]),
        ({"model": "s< c"}, ["/dev/sdb"]),
        ({"vendor": "fake-vendor"}, ["/dev/sda", "/dev/sdb"]),
        ({"vendor": "<in> small"}, ["/dev/sdc"]),
        ({"serial": "fake-serial"}, ["/dev/sdc"]),
        ({"serial": "FAKE-SERIAL"}, ["/dev/sdc"]),
        ({"wwn": "wwn0"}, ["/dev/sda"]),
        ({"wwn_with_extension": "fake-wwnven0"}, ["/dev/sdb"]),
        ({"wwn_vendor_extension": "ven0"}, ["/dev/sda", "/dev/sdb"]),
        ({"hctl": "1:0:0:2"}, ["/dev/sdc"]),
        ({"by_path": "/dev/disk/by-path/1:0:0:1"}, ["/dev/sdb"]),
        ({"by_path": "1:0:0:1"}, ["/dev/sdb"]),  # without the /dev/disk/by-path/ prefix
        ({"name": "/dev/sdb"}, ["/dev/sdb"]),
        ({"name": "sdb"}, ["/dev/sdb"]),  # without /dev/
        ({"name": "<or> sda <or> /dev/sdc"}, ["/dev/sda", "/dev/sdc"]),
        # booleans (strutils.bool_from_string)
        ({"rotational": True}, ["/dev/sda", "/dev/sdc", "/dev/sdd"]),
        ({"rotational": "false"}, ["/dev/sdb"]),
        ({"rotational": "no"}, ["/dev/sdb"]),
        # combinations: every hint must match
        ({"size": ">= 64", "vendor": "fake-vendor", "rotational": False}, ["/dev/sdb"]),
        ({"size": 64, "serial": "yes"}, []),
        ({"model": "big", "name": "sda"}, []),
        ({"serial": "hello", "wwn": "wwn0", "hctl": "1:0:0:0", "model": "small"}, ["/dev/sda"]),
        # the string form the ramdisk's SF_ROOT_HINTS used ("key=value ...")
        ("size=>=64 serial=yes", ["/dev/sdb"]),
        ("", ["/dev/sda", "/dev/sdb", "/dev/sdc", "/dev/sdd"]),
    ],
)
def test_find_devices_by_hints(hints: Any, expected: list[str]) -> None:
    assert names(hints) == expected


@pytest.mark.parametrize(
    ("hints", "field", "problem"),
    [
        ({"colour": "red"}, "root_hints.colour", "unknown root-device hint"),
        ({"size": "big"}, "root_hints.size", "not an integer"),
        ({"size": 0}, "root_hints.size", "positive"),
        ({"size": "-4"}, "root_hints.size", "positive"),
        ({"size": ">= x"}, "root_hints.size", "not an integer"),
        ({"size": "s== 4"}, "root_hints.size", "not for a number"),
        ({"size": "<in> 10"}, "root_hints.size", "two sizes"),
        ({"size": "<in> 20 10"}, "root_hints.size", "empty"),
        ({"size": "<range-in> 10 20 30 40"}, "root_hints.size", "'[ a b ]'"),
        ({"size": True}, "root_hints.size", "not bool"),
        ({"size": ""}, "root_hints.size", "empty"),
        ({"model": 42}, "root_hints.model", "string"),
        ({"model": ""}, "root_hints.model", "empty"),
        ({"model": "   "}, "root_hints.model", "empty"),
        ({"serial": ">= 4"}, "root_hints.serial", "not for strings"),
        ({"rotational": "maybe"}, "root_hints.rotational", "Boolean"),
        ("serial", "root_hints", "key=value"),
        (["serial"], "root_hints", "mapping"),
    ],
)
def test_bad_hints_name_the_field(hints: Any, field: str, problem: str) -> None:
    with pytest.raises(rh.RootHintsError) as err:
        rh.parse_root_device_hints(hints)
    assert err.value.field == field
    assert problem in str(err.value)


def test_match_is_the_first_in_the_given_order_like_ironic() -> None:
    assert rh.match_root_device_hints(DISKS, {"vendor": "fake-vendor"}) is DISKS[0]
    assert rh.match_root_device_hints(list(reversed(DISKS)), {"vendor": "fake-vendor"}) is DISKS[1]
    assert rh.match_root_device_hints(DISKS, {"serial": "nobody"}) is None


def test_select_orders_by_kernel_name_and_defaults_to_the_smallest_of_4_gib() -> None:
    shuffled = [DISKS[2], DISKS[1], DISKS[3], DISKS[0]]
    assert rh.select_root_device(shuffled, {"vendor": "fake-vendor"})["name"] == "/dev/sda"
    assert rh.select_root_device(shuffled, None)["name"] == "/dev/sdc"  # 10 GiB; sdd (3.5 GiB) is too small
    assert rh.select_root_device(shuffled, {})["name"] == "/dev/sdc"
    kernel_names = [
        {"name": "vdaa", "size": 8 * GIB},
        {"name": "vdb", "size": 8 * GIB},
        {"name": "vda", "size": 9 * GIB},
    ]
    assert rh.select_root_device(kernel_names, {"size": 8})["name"] == "vdb"  # vdb probes before vdaa
    assert rh.select_root_device(kernel_names, None)["name"] == "vdb"


def test_no_match_names_the_hints_and_every_disk_seen() -> None:
    with pytest.raises(rh.NoRootDevice) as err:
        rh.select_root_device(DISKS, {"serial": "nope", "size": ">= 100"})
    text = str(err.value)
    assert "size=>=100 serial=nope" in text
    for disk in ("sda (64.0 GiB, serial hello", "sdb (128.0 GiB, serial yes", "sdc (10.0 GiB", "sdd (3.5 GiB"):
        assert disk in text
    with pytest.raises(rh.NoRootDevice, match="no disk of at least 4 GiB.*sdd"):
        rh.select_root_device([DISKS[3]], None)
    with pytest.raises(rh.NoRootDevice, match="disks seen: none"):
        rh.select_root_device([], {"size": 4})


def test_devices_with_missing_or_odd_values_never_match() -> None:
    odd = [
        {"name": "/dev/x", "size": "lots"},
        {"name": "/dev/y"},
        {"name": "/dev/z", "size": 8 * GIB, "rotational": "?"},
    ]
    assert names({"size": ">= 1"}, odd) == ["/dev/z"]
    assert names({"rotational": True}, odd) == []
    assert names({"serial": "s!= x"}, odd) == []


def test_format_hints_is_what_messages_show() -> None:
    hints = {"model": "QM-1", "size": ">= 4", "wwn": "0x5000c5", "serial": "S1", "name": "/dev/sda"}
    assert rh.format_hints(hints) == "size=>=4 name=/dev/sda serial=S1 wwn=0x5000c5 model=QM-1"
    assert rh.format_hints({"model": "s==  QEMU   HARDDISK"}) == "model=s== QEMU HARDDISK"
    assert rh.format_hints(None) == ""


def test_the_providers_plan_root_disk_follows_the_same_rules(tmp_path: Any) -> None:
    """provider._root_disk (disks.system in the agent settings, room for create_vm, extra disks) chooses among the
    plan's disks with root_hints.py: case-insensitive serials, operators, the default; a plan that does not
    describe the hinted field falls back to the default."""
    from cpi.providers.baremetal.plan_disks import root_disk
    from cpi.providers.baremetal.store import Bmc, MetalStore, NodeSpec

    store = MetalStore(tmp_path / "sd")
    plan = {"arch": "x86_64", "cpus": 1, "memory_mib": 512, "labels": {},
            "disks": [{"size_gib": 20, "serial": "BIG-1"}, {"size_gib": 4, "serial": "SMALL-1"},
                      {"size_gib": 8, "serial": "MID-1", "model": "Fast SSD"}]}  # fmt: skip
    cases: list[tuple[dict[str, Any], str]] = [
        ({"serial": "mid-1"}, "MID-1"),
        ({"size": ">= 10"}, "BIG-1"),
        ({"model": "<in> ssd"}, "MID-1"),
        ({"size": "<range-in> [ 5 25 ]"}, "BIG-1"),  # the first in plan order, as Ironic's first match
        ({}, "SMALL-1"),  # the smallest of at least 4 GiB
        ({"wwn": "0x5000"}, "SMALL-1"),  # the plan names no WWNs: the default
    ]
    for i, (hints, serial) in enumerate(cases):
        name = f"n{i}"
        bmc = Bmc("redfish", "http://127.0.0.1:9", f"/redfish/v1/Systems/{name}", "u", "p")
        store.enroll([NodeSpec(name=name, bmc=bmc, macs=(f"52:54:00:00:00:{i:02x}",), plan=plan, root_hints=hints)],
                     who="t")  # fmt: skip
        node = store.get_node(name)
        chosen = root_disk(node)
        assert chosen["serial"] == serial, (hints, chosen)
        assert any(chosen is d for d in node.plan["disks"])  # create_disk skips the root by identity
    store.close()
