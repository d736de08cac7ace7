"""libvirt XML documents for the provider: domains, disks, NICs, storage volumes and pools.

Pure functions from plain values to XML text (``xml.etree``); no libvirt calls, so they are unit-testable and
cheap. Element choices: q35 machine, virtio disks with a 20-character serial (what QEMU keeps), the config drive
as a SATA CD-ROM (so its media can be swapped live), spare PCIe root ports for hot-plug, the serial console
logged to a file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

METADATA_NS = "https://stemforge.dev/xmlns/libvirt-cpi/1"
METADATA_PREFIX = "stemforge"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    target: str
    fmt: str = "qcow2"
    serial: str | None = None
    bus: str = "virtio"


@dataclass(frozen=True)
class NicSpec:
    mac: str
    kind: str = "user"  # user | network | bridge
    source: str | None = None
    model: str = "virtio"
    #: user-mode only: QEMU's restrict=on (no traffic leaves the guest except through ``port_forwards``)
    restrict: bool = False
    #: user-mode only: (host address, host port, guest port) TCP forwards; the address must be loopback
    port_forwards: tuple[tuple[str, int, int], ...] = ()

    @property
    def needs_qemu_netdev(self) -> bool:
        """libvirt's ``<interface type='user'>`` (slirp) has neither restrict nor port forwards: such NICs are
        passed to QEMU directly (``<qemu:commandline>``)."""
        return self.kind == "user" and (self.restrict or bool(self.port_forwards))


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    domain_type: str
    memory_mib: int
    vcpus: int
    machine: str
    disks: Sequence[DiskSpec]
    cdrom: str
    nics: Sequence[NicSpec]
    console_log: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    spare_pcie_ports: int = 8


def domain(spec: DomainSpec) -> str:
    root = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "uuid").text = spec.uuid
    if spec.title:
        ET.SubElement(root, "title").text = spec.title
    md = ET.SubElement(root, "metadata")
    md.append(ET.fromstring(metadata(spec.metadata)))
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine=spec.machine).text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    platform(root, spec.domain_type)
    devices = ET.SubElement(root, "devices")
    for d in spec.disks:
        devices.append(ET.fromstring(disk(d)))
    devices.append(ET.fromstring(cdrom(spec.cdrom)))
    for nic in spec.nics:
        if not nic.needs_qemu_netdev:
            devices.append(ET.fromstring(interface(nic)))
    serial_console(devices, spec.console_log)
    if spec.machine.startswith("pc-q35") or spec.machine == "q35":
        ET.SubElement(devices, "controller", type="pci", index="0", model="pcie-root")
        for index in range(1, spec.spare_pcie_ports + 1):
            ET.SubElement(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
    ET.SubElement(devices, "memballoon", model="none")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    qemu_args = [
        arg
        for index, nic in enumerate(spec.nics)
        if nic.needs_qemu_netdev
        for arg in qemu_nic_args(nic, index, spec.machine)
    ]
    if qemu_args:
        ET.register_namespace("qemu", QEMU_NS)
        cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        for arg in qemu_args:
            ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(root, encoding="unicode")


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_QEMU_NIC_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}


def platform(root: ET.Element, domain_type: str) -> None:
    """Append what every stemforge domain has after ``<os>``: ACPI and APIC, the host CPU under KVM, a UTC clock,
    and the lifecycle actions (destroy on power-off and crash, restart on reboot). Shared with the bare-metal lab's
    servers (``cpi/providers/baremetal/lab/domain.py``)."""
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if domain_type == "kvm":
        ET.SubElement(root, "cpu", mode="host-passthrough")
    ET.SubElement(root, "clock", offset="utc")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"


def serial_console(devices: ET.Element, log_path: str) -> None:
    """Append the serial port and its console, both appending to the file ``log_path`` (the guest's console log).
    Shared with the bare-metal lab's servers."""
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=log_path, append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="file")
    ET.SubElement(console, "source", path=log_path, append="on")
    ET.SubElement(console, "target", type="serial", port="0")


def qemu_nic_args(nic: NicSpec, index: int, machine: str = "q35") -> list[str]:
    """QEMU arguments for a user-mode NIC with restrict/port forwards (q35: an integrated device on the root
    complex)."""
    netdev = f"user,id=sfnet{index}"
    if nic.restrict:
        netdev += ",restrict=on"
    for address, host_port, guest_port in nic.port_forwards:
        netdev += f",hostfwd=tcp:{address}:{host_port}-:{guest_port}"
    # an explicit slot on the root complex, clear of libvirt's allocation from slot 1 upwards
    bus = "pcie.0" if "q35" in machine else "pci.0"
    device = f"{_QEMU_NIC_MODELS[nic.model]},netdev=sfnet{index},mac={nic.mac},bus={bus},addr={0x10 + index:#x}"
    return ["-netdev", netdev, "-device", device]


def disk(d: DiskSpec) -> str:
    el = ET.Element("disk", type="file", device="disk")
    ET.SubElement(el, "driver", name="qemu", type=d.fmt, cache="none" if d.fmt == "raw" else "writeback")
    ET.SubElement(el, "source", file=d.path)
    ET.SubElement(el, "target", dev=d.target, bus=d.bus)
    if d.serial:
        ET.SubElement(el, "serial").text = d.serial
    return ET.tostring(el, encoding="unicode")


def cdrom(path: str) -> str:
    el = ET.Element("disk", type="file", device="cdrom")
    ET.SubElement(el, "driver", name="qemu", type="raw")
    ET.SubElement(el, "source", file=path)
    ET.SubElement(el, "target", dev="sda", bus="sata")
    ET.SubElement(el, "readonly")
    return ET.tostring(el, encoding="unicode")


def interface(nic: NicSpec) -> str:
    el = ET.Element("interface", type=nic.kind)
    ET.SubElement(el, "mac", address=nic.mac)
    if nic.kind == "network":
        ET.SubElement(el, "source", network=nic.source or "")
    elif nic.kind == "bridge":
        ET.SubElement(el, "source", bridge=nic.source or "")
    ET.SubElement(el, "model", type=nic.model)
    return ET.tostring(el, encoding="unicode")


def metadata(values: Mapping[str, Any]) -> str:
    """Our metadata element: ``<stemforge:instance><stemforge:item key=..>value</..>...``."""
    el = ET.Element(f"{{{METADATA_NS}}}instance")
    for key in sorted(values):
        item = ET.SubElement(el, f"{{{METADATA_NS}}}item", key=str(key))
        item.text = str(values[key])
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    return ET.tostring(el, encoding="unicode")


def metadata_body(values: Mapping[str, Any]) -> str:
    """The element ``virDomainSetMetadata`` wants (it adds the namespace itself from the prefix/URI)."""
    el = ET.Element("instance")
    for key in sorted(values):
        ET.SubElement(el, "item", key=str(key)).text = str(values[key])
    return ET.tostring(el, encoding="unicode")


def parse_metadata(xml_text: str) -> dict[str, str]:
    el = ET.fromstring(xml_text)
    return {item.get("key", ""): item.text or "" for item in el.iter() if item.tag.endswith("item")}


def volume(name: str, capacity_bytes: int, fmt: str, backing: tuple[str, str] | None = None) -> str:
    el = ET.Element("volume", type="file")
    ET.SubElement(el, "name").text = name
    ET.SubElement(el, "capacity", unit="bytes").text = str(capacity_bytes)
    ET.SubElement(el, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(el, "target")
    ET.SubElement(target, "format", type=fmt)
    perms = ET.SubElement(target, "permissions")
    ET.SubElement(perms, "mode").text = "0644"
    if backing:
        bs = ET.SubElement(el, "backingStore")
        ET.SubElement(bs, "path").text = backing[0]
        ET.SubElement(bs, "format", type=backing[1])
    return ET.tostring(el, encoding="unicode")


def dir_pool(name: str, path: str) -> str:
    el = ET.Element("pool", type="dir")
    ET.SubElement(el, "name").text = name
    target = ET.SubElement(el, "target")
    ET.SubElement(target, "path").text = path
    return ET.tostring(el, encoding="unicode")


@dataclass(frozen=True)
class AttachedDisk:
    target: str
    path: str
    serial: str | None
    device: str


def attached_disks(domain_xml: str) -> list[AttachedDisk]:
    """The disks (and CD-ROMs) in a domain's XML."""
    out = []
    for el in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        target = el.find("target")
        source = el.find("source")
        serial = el.find("serial")
        out.append(AttachedDisk(
            target=target.get("dev", "") if target is not None else "",
            path=(source.get("file", "") if source is not None else ""),
            serial=serial.text if serial is not None else None,
            device=el.get("device", "disk"),
        ))
    return out


def macs(domain_xml: str) -> list[str]:
    return [m.get("address", "") for m in ET.fromstring(domain_xml).iterfind("./devices/interface/mac")]


def virtio_boot_names(domain_xml: str) -> dict[str, str]:
    """What a Linux guest will call each virtio-blk disk (by serial) after its next boot: ``/dev/vda``,
    ``/dev/vdb``, ... in PCI order (virtio_blk takes the lowest free index as it probes the devices, which the
    PCI bus enumerates by domain/bus/slot/function). Disks without a PCI address or serial are ranked but not
    returned (they still take a name)."""
    ranked: list[tuple[tuple[int, int, int, int], int, str | None]] = []
    for position, el in enumerate(ET.fromstring(domain_xml).iterfind("./devices/disk")):
        target = el.find("target")
        if el.get("device", "disk") != "disk" or target is None or target.get("bus") != "virtio":
            continue
        address = el.find("address")
        key = (1 << 30, 0, 0, 0)
        if address is not None and address.get("type") == "pci":
            key = tuple(int(address.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))  # type: ignore[assignment]
        serial_el = el.find("serial")
        ranked.append((key, position, serial_el.text if serial_el is not None else None))
    names: dict[str, str] = {}
    for index, (_key, _pos, serial) in enumerate(sorted(ranked, key=lambda r: (r[0], r[1]))):
        if serial:
            names[serial] = f"/dev/{virtio_name(index)}"
    return names


def virtio_name(index: int) -> str:
    """The kernel's name for virtio_blk index ``index`` (virtblk_name_format: vda..vdz, vdaa..)."""
    letters = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return f"vd{letters}"
