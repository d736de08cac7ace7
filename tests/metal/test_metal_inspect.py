"""Inspection on the emulated lab with a real guest: ``metal manage`` (BMC read, then inspection) boots the
ramdisk in inspect mode on a libvirt server through PXE + iPXE from ``metal serve``; what it records in the store
must be the libvirt domain's hardware: every disk (kernel name, size, serial, by-path), every NIC (MAC), the CPU
count and architecture, the RAM, the boot mode (the lab's servers boot SeaBIOS: bios) and the firmware strings.
The server ends powered off and manageable; ``metal show`` prints the inspection.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.metal import Lab, metal_lab, metal_unavailable_reason

pytestmark = [pytest.mark.metal, pytest.mark.slow]
STEMFORGE = [sys.executable, "-m", "stemforge.cli"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = metal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with metal_lab(1) as running:
        yield running


def metal(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEMFORGE, "metal", *args, "--state-dir", str(lab.state_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def domain_hardware(name: str) -> ET.Element:
    import libvirt

    from cpi.providers.baremetal.lab.record import LIBVIRT_URI

    conn = libvirt.open(LIBVIRT_URI)
    try:
        return ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_manage_inspects_a_lab_server_and_records_the_domains_hardware(lab: Lab, tmp_path: Path) -> None:
    server = lab.servers[0]
    proc = metal(lab, "enroll", str(lab.inventory_path))
    assert proc.returncode == 0, proc.stderr
    proc = metal(lab, "manage", server.name, "--timeout", "420")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{lab.diagnostics(server.name)}"
    assert f"{server.name}: manage: manageable" in proc.stdout and "inspected: bios" in proc.stdout
    assert server.password not in proc.stdout + proc.stderr

    store = lab.store()
    record = store.inspection(server.name)
    assert record is not None
    inv = record.data
    xml = domain_hardware(server.name)

    # disks: one per libvirt <disk>, same serial and size, in the guest's kernel names; distinct PCI by-paths
    want = {}
    for disk in xml.findall("./devices/disk[@device='disk']"):
        source = Path(disk.find("source").get("file"))  # type: ignore[union-attr]
        want[disk.find("target").get("dev")] = (disk.findtext("serial"), source.stat().st_size)  # type: ignore[union-attr]
    got = {d["name"]: (d["serial"], d["size"]) for d in inv["disks"]}
    assert got == want and len(want) == len(server.disks) == 2
    assert {d.serial for d in server.disks} == {serial for serial, _ in got.values()}
    paths = [d["by_path"] for d in inv["disks"]]
    assert all(p.startswith("/dev/disk/by-path/pci-0000:") for p in paths) and len(set(paths)) == len(paths)
    assert all(d["vendor"] == "0x1af4" and d["rotational"] in (True, False) for d in inv["disks"])  # virtio-blk

    # NICs: the domain's MACs (the lab gives each server one, on the provisioning network: its link is up)
    macs = sorted(i.find("mac").get("address") for i in xml.findall("./devices/interface"))  # type: ignore[union-attr]
    assert sorted(n["mac"] for n in inv["nics"]) == macs == sorted(server.macs)
    assert all(n["link"] is True for n in inv["nics"])

    # CPU, RAM, boot mode, firmware
    assert inv["cpu"]["count"] == int(xml.findtext("vcpu") or 0) and inv["cpu"]["arch"] == "x86_64"
    memory_mib = int(xml.findtext("memory") or 0) // 1024  # KiB
    assert inv["memory"]["physical_mib"] == memory_mib
    assert 0.7 * memory_mib < inv["memory"]["total_bytes"] / (1 << 20) <= memory_mib
    assert inv["boot"]["mode"] == "bios"
    assert inv["firmware"]["sys_vendor"] == "QEMU" and inv["firmware"]["bios_vendor"]

    # the server is left off and manageable, no job; show prints the inspection
    node = store.get_node(server.name)
    assert node.provision_state == "manageable" and store.job(server.name) is None
    assert lab.power_state(server) == "Off"
    shown = json.loads(metal(lab, "show", server.name).stdout)["inspection"]
    assert shown["disks"] == inv["disks"] and shown["ts"].endswith("Z")
