"""EC2 instance types: the smallest that meets ``vm_resources`` (calculate_vm_cloud_properties) and which families
expose EBS volumes as NVMe devices (the disk hint).

Disk hints follow bosh-aws-cpi (``src/bosh_aws_cpi/lib/cloud/aws/block_device_manager.rb`` ``device_path``, with
``static_instance_type_info.rb`` / ``instance_type_info.rb`` deciding "NVMe"): a persistent disk attached at
``/dev/sdX`` is hinted as ``/dev/sdX`` on Xen types and as ``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<volume
id without its dash>`` on Nitro types. How the stock AWS stemcell's agent resolves that (bosh-agent
``infrastructure/devicepathresolver/virtio_device_path_resolver.go``: the ID resolver first, on the disk CID
transformed by ``agent.json``'s ``DiskIDTransformPattern "^vol-(.+)$"`` -> ``nvme-Amazon_Elastic_Block_Store_vol${1}``,
then ``mapped_device_path_resolver.go`` on the hint's path, ``/dev/sdX`` -> ``/dev/xvdX``/``/dev/vdX``/``/dev/sdX``):
on Nitro the CID's by-id link (or, with an agent.json without the transform, the hinted by-id path), on Xen
``/dev/xvdX``. tests/aws/test_aws_cpi_units.py replays both against recorded ``/dev`` layouts.

One deliberate difference: bosh-aws-cpi's static list names the Nitro families it knew (and answers ``/dev/sdX``
for any other), while the Xen generation is closed (no Xen family has been released since 2017), so this module
lists the Xen families and treats every other family as Nitro. For every family on bosh-aws-cpi's list both give
the same hint; for a newer Nitro family (``m8g``, ``c8i``, ...) ours still resolves with an agent.json that has no
ID transform, where ``/dev/sdX`` would not exist.

The table is static, as in bosh-aws-cpi's ``InstanceTypeMapper`` (the director calls calculate_vm_cloud_properties
without any deployment context; asking the region's ``DescribeInstanceTypes`` would make a cheap call slow). It
lists current general-purpose (burstable, then fixed-performance) families; among the types that have at least the
requested vCPUs and MiB of RAM, the one with the least RAM, then the fewest vCPUs, then the earliest in the table
wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cpi.errors import CloudError


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpu: int
    ram_mib: int


def _family(name: str, sizes: list[tuple[str, int, float]]) -> list[InstanceType]:
    return [InstanceType(f"{name}.{size}", cpu, int(ram_gib * 1024)) for size, cpu, ram_gib in sizes]


#: Preference order among equal (ram, cpu): burstable t3 first, then compute, general and memory optimised.
INSTANCE_TYPES: tuple[InstanceType, ...] = tuple(
    _family(
        "t3",
        [
            ("nano", 2, 0.5),
            ("micro", 2, 1),
            ("small", 2, 2),
            ("medium", 2, 4),
            ("large", 2, 8),
            ("xlarge", 4, 16),
            ("2xlarge", 8, 32),
        ],
    )
    + _family(
        "c5",
        [
            ("large", 2, 4),
            ("xlarge", 4, 8),
            ("2xlarge", 8, 16),
            ("4xlarge", 16, 32),
            ("9xlarge", 36, 72),
            ("12xlarge", 48, 96),
            ("18xlarge", 72, 144),
            ("24xlarge", 96, 192),
        ],
    )
    + _family(
        "m5",
        [
            ("large", 2, 8),
            ("xlarge", 4, 16),
            ("2xlarge", 8, 32),
            ("4xlarge", 16, 64),
            ("8xlarge", 32, 128),
            ("12xlarge", 48, 192),
            ("16xlarge", 64, 256),
            ("24xlarge", 96, 384),
        ],
    )
    + _family(
        "r5",
        [
            ("large", 2, 16),
            ("xlarge", 4, 32),
            ("2xlarge", 8, 64),
            ("4xlarge", 16, 128),
            ("8xlarge", 32, 256),
            ("12xlarge", 48, 384),
            ("16xlarge", 64, 512),
            ("24xlarge", 96, 768),
        ],
    )
)

#: Families before the Nitro generation: EBS volumes keep their /dev/sdX (xvdX) device names.
_XEN_FAMILIES = frozenset(
    {
        "t1",
        "t2",
        "m1",
        "m2",
        "m3",
        "m4",
        "c1",
        "c3",
        "c4",
        "r3",
        "r4",
        "i2",
        "i3",
        "d2",
        "g2",
        "g3",
        "g3s",
        "p2",
        "p3",
        "x1",
        "x1e",
        "h1",
        "f1",
        "cc1",
        "cc2",
        "cg1",
        "cr1",
        "hi1",
        "hs1",
    }
)
_NVME_EXCEPTIONS = frozenset({"p3dn.24xlarge", "i3.metal"})
_FAMILY = re.compile(r"^(?:u-\d+tb\d+|([a-z]+)(\d+)([a-z0-9-]*))\.")


def smallest_for(vm_resources: Mapping[str, int]) -> InstanceType:
    """The smallest known type with at least ``cpu`` vCPUs and ``ram`` MiB; CloudError naming the largest known
    type when nothing fits."""
    cpu, ram = int(vm_resources["cpu"]), int(vm_resources["ram"])
    fitting = [(t.ram_mib, t.cpu, i, t) for i, t in enumerate(INSTANCE_TYPES) if t.cpu >= cpu and t.ram_mib >= ram]
    if not fitting:
        largest = max(INSTANCE_TYPES, key=lambda t: (t.ram_mib, t.cpu))
        raise CloudError(
            f"calculate_vm_cloud_properties: no known instance type has {cpu} vCPU and {ram} MiB RAM "
            f"(largest known: {largest.name}, {largest.cpu} vCPU, {largest.ram_mib} MiB)"
        )
    return min(fitting, key=lambda entry: entry[:3])[3]


def uses_nvme(instance_type: str | None) -> bool:
    """True when EBS volumes appear as NVMe devices on ``instance_type`` (Nitro): the agent must find them by
    ``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<volume id without dash>``."""
    if not instance_type:
        return False
    if instance_type in _NVME_EXCEPTIONS:
        return True
    match = _FAMILY.match(instance_type)
    if match is None:
        return False
    if match.group(1) is None:  # u-<n>tb1: the high-memory families are Nitro
        return True
    return f"{match.group(1)}{match.group(2)}{match.group(3)}" not in _XEN_FAMILIES


def device_hint(device_name: str, instance_type: str | None, volume_id: str) -> str:
    """The disk hint bosh-aws-cpi returns from attach_disk (``BlockDeviceManager.device_path``): the device name,
    or the NVMe by-id path on Nitro (the volume id without its first dash: ``vol-0abc`` -> ``vol0abc``)."""
    if uses_nvme(instance_type):
        return "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "", 1)
    return device_name
