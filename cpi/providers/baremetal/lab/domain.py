"""The lab's emulated servers as libvirt documents: names, MACs, disk serials and the domain XML.

Pure functions from plain values to text (no libvirt calls). A lab server is a q35 domain with blank raw disks
(virtio-blk, or SCSI on a virtio-scsi controller with INQUIRY vendor/model; 20-character serials), one virtio NIC per
MAC, its serial console logged to a file (SeaBIOS/OVMF and iPXE print there too) and network boot first: the NICs
have boot orders 1..n and EVERY disk one after them, so the server still boots when a disk is removed. Firmware
SeaBIOS, or OVMF (``<loader type='pflash'>`` read-only code plus the domain's own NVRAM file; sushy-tools' libvirt
driver reads the loader type as the Redfish boot mode UEFI).

The NIC: sushy-tools' libvirt driver switches Pxe/Hdd by moving ``<boot order>`` between ``<interface>`` and
``<disk>`` elements, so each NIC must be a libvirt ``<interface>``. It is declared ``type='user'`` (MAC, model,
boot order, alias ``ua-sfnic<N>``) and its backend is re-pointed by ``<qemu:override>`` (the frontend property
``netdev``) to a ``-netdev vde,id=sfvde<N>,sock=<switch>`` passed in ``<qemu:commandline>``: the NIC's frames go to
the lab's VDE switch, which lives in the lab's network namespace. The unused user-mode netdev libvirt still creates
has no peer (QEMU warns once) and carries no traffic.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from cpi.providers.libvirt import domain_xml

LAB_ID_RE = re.compile(r"^[0-9a-f]{6}$")
NAMESPACE_PREFIX = "sf-lab-"
BRIDGE = "sfbr0"
VDE_TAP = "sfvde0"
GIB = 1024**3


def namespace(lab_id: str) -> str:
    return f"{NAMESPACE_PREFIX}{lab_id}"


def domain_prefix(lab_id: str) -> str:
    """Every domain (and volume) of a lab starts with this, so ``down`` finds them without any record."""
    return f"{NAMESPACE_PREFIX}{lab_id}-"


def server_name(lab_id: str, index: int) -> str:
    return f"{domain_prefix(lab_id)}s{index}"


def pool_name(lab_id: str) -> str:
    return f"{NAMESPACE_PREFIX}{lab_id}"


def subnet(lab_id: str) -> tuple[int, int]:
    """The lab's ``10.a.b.0/24``: ``a`` and ``b`` are the first two bytes of the id."""
    check_lab_id(lab_id)
    return int(lab_id[0:2], 16), int(lab_id[2:4], 16)


def bridge_ip(lab_id: str) -> str:
    a, b = subnet(lab_id)
    return f"10.{a}.{b}.1"


def bridge_ula(lab_id: str) -> str:
    """The bridge's IPv6 unique local address with prefix length (``fd5f:<id0-1>:<id2>00::1/64``)."""
    check_lab_id(lab_id)
    return f"fd5f:{lab_id[0:4]}:{lab_id[4:6]}00::1/64"


def dhcp_range(lab_id: str) -> tuple[str, str]:
    a, b = subnet(lab_id)
    return f"10.{a}.{b}.100", f"10.{a}.{b}.199"


def mac(lab_id: str, server: int, nic: int = 0) -> str:
    """A fixed, locally administered MAC per (lab, server, NIC): ``52:54:00:<id0>:<id1>:<server*4+nic+16>``."""
    check_lab_id(lab_id)
    if not 0 <= server < 60 or not 0 <= nic < 4:
        raise ValueError(f"server index {server} / nic {nic} out of range")
    return f"52:54:00:{lab_id[0:2]}:{lab_id[2:4]}:{server * 4 + nic + 0x10:02x}"


def disk_serial(lab_id: str, server: int, disk: int) -> str:
    """Distinct per disk, at most 20 characters (what QEMU keeps): ``SF<id>S<n>D<d>``."""
    return f"SF{lab_id.upper()}S{server}D{disk}"


def check_lab_id(lab_id: str) -> str:
    if not LAB_ID_RE.match(lab_id):
        raise ValueError(f"lab name {lab_id!r} is not 6 lower-case hex characters (e.g. 3fa2c1)")
    return lab_id


@dataclass(frozen=True)
class LabDiskSpec:
    path: str
    target: str
    serial: str
    size_bytes: int
    bus: str = "virtio"  # virtio | scsi
    vendor: str = ""  # SCSI only (INQUIRY vendor, <= 8 characters)
    model: str = ""  # SCSI only (INQUIRY product, <= 16 characters)


@dataclass(frozen=True)
class LabDomainSpec:
    name: str
    uuid: str
    domain_type: str  # "kvm" | "qemu" (TCG)
    memory_mib: int
    vcpus: int
    disks: Sequence[LabDiskSpec]
    macs: Sequence[str]
    vde_socket: str
    console_log: str
    #: None: SeaBIOS; else OVMF: (read-only code path, this domain's NVRAM file path)
    uefi: tuple[str, str] | None = None


def nic_alias(index: int) -> str:
    """libvirt user aliases must start with ``ua-``."""
    return f"ua-sfnic{index}"


def vde_netdev_id(index: int) -> str:
    return f"sfvde{index}"


def domain(spec: LabDomainSpec) -> str:
    """The domain XML: network boot first (boot orders 1..n on the NICs), then every disk in order."""
    ET.register_namespace("qemu", domain_xml.QEMU_NS)
    root = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "uuid").text = spec.uuid
    ET.SubElement(root, "title").text = "stemforge bare-metal lab server"
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    if spec.uefi is None:
        ET.SubElement(os_el, "bios", useserial="yes", rebootTimeout="5000")
    else:
        ET.SubElement(os_el, "loader", readonly="yes", type="pflash").text = spec.uefi[0]
        ET.SubElement(os_el, "nvram").text = spec.uefi[1]
        ET.SubElement(os_el, "bios", rebootTimeout="5000")
    domain_xml.platform(root, spec.domain_type)
    devices = ET.SubElement(root, "devices")
    if any(d.bus == "scsi" for d in spec.disks):
        ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for index, d in enumerate(spec.disks):
        devices.append(_disk(d, len(spec.macs) + 1 + index))
    for index, address in enumerate(spec.macs):
        nic = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(nic, "mac", address=address)
        ET.SubElement(nic, "model", type="virtio")
        ET.SubElement(nic, "boot", order=str(index + 1))
        ET.SubElement(nic, "alias", name=nic_alias(index))
    domain_xml.serial_console(devices, spec.console_log)
    ET.SubElement(devices, "memballoon", model="none")
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    q = domain_xml.QEMU_NS
    cmdline = ET.SubElement(root, f"{{{q}}}commandline")
    for index in range(len(spec.macs)):
        ET.SubElement(cmdline, f"{{{q}}}arg", value="-netdev")
        ET.SubElement(cmdline, f"{{{q}}}arg", value=f"vde,id={vde_netdev_id(index)},sock={spec.vde_socket}")
    override = ET.SubElement(root, f"{{{q}}}override")
    for index in range(len(spec.macs)):
        device = ET.SubElement(override, f"{{{q}}}device", alias=nic_alias(index))
        frontend = ET.SubElement(device, f"{{{q}}}frontend")
        ET.SubElement(frontend, f"{{{q}}}property", name="netdev", type="string", value=vde_netdev_id(index))
    return ET.tostring(root, encoding="unicode")


def _disk(d: LabDiskSpec, boot_order: int) -> ET.Element:
    el = ET.fromstring(
        domain_xml.disk(domain_xml.DiskSpec(path=d.path, target=d.target, fmt="raw", serial=d.serial, bus=d.bus))
    )
    if d.bus == "scsi":
        if d.vendor:
            ET.SubElement(el, "vendor").text = d.vendor
        if d.model:
            ET.SubElement(el, "product").text = d.model
    ET.SubElement(el, "boot", order=str(boot_order))
    return el


def raw_volume(name: str, size_bytes: int) -> str:
    """A sparse raw volume (allocation 0)."""
    return domain_xml.volume(name, size_bytes, "raw")
