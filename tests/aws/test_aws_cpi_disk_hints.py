"""The AWS provider's disk hints against what bosh-aws-cpi produces and what the stock AWS stemcell's agent resolves.

Upstream files the tables follow (cloudfoundry/bosh-aws-cpi-release, ``src/bosh_aws_cpi/lib/cloud/aws/``):
``block_device_manager.rb`` (``device_path``: ``/dev/sdX``, or ``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_`` +
the volume id without its first dash on NVMe types; ephemeral ``/dev/sdb``), ``static_instance_type_info.rb``
(``NVME_EBS_FAMILIES``), ``agent_settings.rb`` + ``cloud_core.rb`` (``disks.system`` is the AMI's
``root_device_name``, ``disks.ephemeral`` the first ephemeral path as a string), ``sdk_helpers/volume_manager.rb``
(``select_device_name``: ``/dev/sdf``..``/dev/sdp``).

The agent side replays cloudfoundry/bosh-agent ``infrastructure/devicepathresolver/virtio_device_path_resolver.go``
(``DevicePathResolutionType: virtio``): ``id_device_path_resolver.go`` (disk ID >= 20 chars; with
``DiskIDTransformPattern`` the glob is ``/dev/disk/by-id/<transformed>``, else ``/dev/disk/by-id/*<id>``; exactly one
match, its link followed) then ``mapped_device_path_resolver.go`` (``/dev/sdX`` tried as ``/dev/xvdX``, ``/dev/vdX``,
``/dev/sdX``; another path as it is, one symlink followed), with ``settings/settings.go`` deciding the inputs (a
persistent disk's ID is its CID; the ephemeral disk has no ID, a string hint is its path). The stock AWS
``agent.json`` is bosh-linux-stemcell-builder ``stemcell_builder/stages/bosh_aws_agent_settings/assets/agent.json``;
the recorded Nitro ``/dev/disk/by-id`` listing is from its ``agent.md``. Waiting is not modelled: "not found"
stands for the resolver's timeout.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Any

import pytest

from cpi.providers.aws import instance_types, vms
from cpi.providers.aws.provider import PERSISTENT_DEVICES

STOCK_AWS_AGENT = {  # bosh_aws_agent_settings/assets/agent.json (Platform.Linux)
    "DevicePathResolutionType": "virtio",
    "DiskIDTransformPattern": "^vol-(.+)$",
    "DiskIDTransformReplacement": "nvme-Amazon_Elastic_Block_Store_vol${1}",
}
OLD_AWS_AGENT = {"DevicePathResolutionType": "virtio"}  # the same stage before the transform was added

#: bosh-aws-cpi static_instance_type_info.rb NVME_EBS_FAMILIES
UPSTREAM_NVME_FAMILIES = [
    "a1", "c5", "c5a", "c5ad", "c5d", "c5n", "c6a", "c6g", "c6gd", "c6gn", "c6i", "c6id", "c6in", "c7a", "c7g",
    "c7gd", "c7gn", "c7i", "c7in", "d3", "d3en", "g4ad", "g4dn", "g5", "g5g", "g6", "g6e", "g6g", "hpc7a", "hpc7g",
    "i3en", "i4g", "i4i", "i7ie", "i8g", "im4gn", "is4gen", "inf1", "inf2", "m5", "m5a", "m5ad", "m5d", "m5dn",
    "m5n", "m5zn", "m6a", "m6g", "m6gd", "m6i", "m6id", "m6idn", "m6in", "m7a", "m7g", "m7gd", "m7i", "m7i-flex",
    "p3dn", "p4d", "p4de", "p5", "p5e", "r5", "r5a", "r5ad", "r5b", "r5d", "r5dn", "r5n", "r6a", "r6g", "r6gd",
    "r6i", "r6id", "r6idn", "r6in", "r7a", "r7g", "r7gd", "r7i", "r7iz", "t3", "t3a", "t4g", "t4gn", "trn1",
    "trn1n", "u-3tb1", "u-6tb1", "u-9tb1", "u-12tb1", "u-18tb1", "u-24tb1", "vt1", "x2gd", "x2idn", "x2iedn",
    "x2iezn", "z1d",
]
#: Xen-generation families (EBS as /dev/xvdX; DescribeInstanceTypes EbsInfo.NvmeSupport "unsupported")
XEN_FAMILIES = [
    "t1", "t2", "m1", "m2", "m3", "m4", "c1", "c3", "c4", "r3", "r4", "i2", "i3", "d2", "g2", "g3", "g3s", "p2",
    "p3", "x1", "x1e", "h1", "f1", "cc2", "cr1", "hs1",
]


def upstream_device_path(device_name: str, instance_type: str, volume_id: str) -> str:
    """block_device_manager.rb ``device_path`` with the static family list."""
    family = instance_type.split(".")[0]
    if family in UPSTREAM_NVME_FAMILIES:
        return "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "", 1)
    return device_name


# -- the agent's resolution ------------------------------------------------------------------------------------------

Layout = dict[str, Any]  # path -> None (a device node) or str (a symlink target, relative or absolute)


def _follow(layout: Layout, path: str) -> str:
    target = layout[path]
    return path if target is None else posixpath.normpath(posixpath.join(posixpath.dirname(path), target))


def agent_resolve(layout: Layout, linux: dict[str, str], disk_id: str, hint: Any) -> str | None:
    """The device bosh-agent's virtio resolver finds for a disk (None: both resolvers time out)."""
    path = hint if isinstance(hint, str) else hint.get("path", "")
    if disk_id and len(disk_id) >= 20:  # id_device_path_resolver.go
        pattern = linux.get("DiskIDTransformPattern", "")
        transformed = disk_id
        if pattern and re.search(pattern, disk_id):  # Go's ReplaceAllString; ${1} is \g<1>
            transformed = re.sub(pattern, linux["DiskIDTransformReplacement"].replace("${1}", r"\g<1>"), disk_id)
        glob = "/dev/disk/by-id/" + (transformed if pattern else "*" + transformed)
        matches = [p for p in layout if p.startswith("/dev/disk/by-id/") and fnmatch.fnmatchcase(p, glob)]
        if len(matches) == 1:
            return _follow(layout, matches[0])
        assert len(matches) == 0, f"more than one disk matched {glob}"
    if not path:  # mapped_device_path_resolver.go
        return None
    if path.startswith("/dev/sd"):
        for prefix in ("/dev/xvd", "/dev/vd", "/dev/sd"):
            if prefix + path[len("/dev/sd"):] in layout:
                return prefix + path[len("/dev/sd"):]
        return None
    return _follow(layout, path) if path in layout else None


ROOT, EPHEMERAL = "vol-0aaaaaaaaaaaaaaaa", "vol-0bbbbbbbbbbbbbbbb"
DISK_1, DISK_2 = "vol-04b2a40747d7e9625", "vol-0c2ee6da5d33b8f8b"  # the volume ids of agent.md's listing


def nitro_layout(order: list[str]) -> Layout:
    """NVMe namespaces in the order the driver found them (not the attach order) and the by-id links udev makes
    (plus the ``_1`` duplicates agent.md recorded)."""
    layout: Layout = {}
    for index, volume in enumerate(order):
        node = f"/dev/nvme{index}n1"
        layout[node] = None
        name = "nvme-Amazon_Elastic_Block_Store_" + volume.replace("-", "", 1)
        layout[f"/dev/disk/by-id/{name}"] = f"../../nvme{index}n1"
        layout[f"/dev/disk/by-id/{name}_1"] = f"../../nvme{index}n1"
    return layout


def xen_layout(devices: dict[str, str]) -> Layout:
    """/dev/xvdX per attached device name /dev/sdX (the Xen blkfront naming)."""
    return {device.replace("/dev/sd", "/dev/xvd"): None for device in devices}


# -- tables ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", UPSTREAM_NVME_FAMILIES)
def test_nitro_families_get_the_hint_bosh_aws_cpi_gives(family: str) -> None:
    instance_type = f"{family}.56xlarge" if family.startswith("u-") else f"{family}.large"
    assert instance_types.uses_nvme(instance_type)
    assert instance_types.device_hint("/dev/sdf", instance_type, DISK_1) == upstream_device_path(
        "/dev/sdf", instance_type, DISK_1
    ) == "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol04b2a40747d7e9625"


@pytest.mark.parametrize("family", XEN_FAMILIES)
def test_xen_families_get_the_device_name(family: str) -> None:
    instance_type = f"{family}.xlarge"
    assert not instance_types.uses_nvme(instance_type)
    assert instance_types.device_hint("/dev/sdg", instance_type, DISK_1) == "/dev/sdg"
    assert upstream_device_path("/dev/sdg", instance_type, DISK_1) == "/dev/sdg"


@pytest.mark.parametrize("instance_type", ["i3.metal", "m8g.large", "c8i.xlarge", "u7i-12tb.224xlarge"])
def test_nitro_types_outside_the_upstream_list(instance_type: str) -> None:
    """Nitro types bosh-aws-cpi's static list does not (yet) name: ours still hints the by-id path."""
    assert instance_types.uses_nvme(instance_type)


@pytest.mark.parametrize("agent", [STOCK_AWS_AGENT, OLD_AWS_AGENT], ids=["transform", "no-transform"])
@pytest.mark.parametrize("instance_type", ["c5.large", "m6i.large", "t3.micro", "m8g.large"])
def test_persistent_disks_resolve_on_nitro_in_any_attach_order(agent: dict[str, str], instance_type: str) -> None:
    """Two persistent disks attached at /dev/sdf and /dev/sdg; the driver enumerated them in the opposite order
    (and the ephemeral disk before them): each CID still resolves to its own namespace."""
    layout = nitro_layout([ROOT, EPHEMERAL, DISK_2, DISK_1])
    hints = {DISK_1: instance_types.device_hint(PERSISTENT_DEVICES[0], instance_type, DISK_1),
             DISK_2: instance_types.device_hint(PERSISTENT_DEVICES[1], instance_type, DISK_2)}
    assert agent_resolve(layout, agent, DISK_1, hints[DISK_1]) == "/dev/nvme3n1"
    assert agent_resolve(layout, agent, DISK_2, hints[DISK_2]) == "/dev/nvme2n1"


@pytest.mark.parametrize("agent", [STOCK_AWS_AGENT, OLD_AWS_AGENT], ids=["transform", "no-transform"])
@pytest.mark.parametrize("instance_type", ["m4.large", "t2.micro", "c4.xlarge"])
def test_persistent_disks_resolve_on_xen(agent: dict[str, str], instance_type: str) -> None:
    """Xen: no NVMe links, the ID resolver finds nothing and the mapped resolver turns /dev/sdX into /dev/xvdX."""
    layout = xen_layout({"/dev/sda": ROOT, "/dev/sdb": EPHEMERAL, "/dev/sdf": DISK_1, "/dev/sdg": DISK_2})
    assert agent_resolve(layout, agent, DISK_1, instance_types.device_hint("/dev/sdf", instance_type, DISK_1)) \
        == "/dev/xvdf"
    assert agent_resolve(layout, agent, DISK_2, instance_types.device_hint("/dev/sdg", instance_type, DISK_2)) \
        == "/dev/xvdg"


def test_an_upstream_hint_for_a_newer_nitro_family_needs_the_transform() -> None:
    """Why ours lists Xen families rather than Nitro ones: for a Nitro type bosh-aws-cpi's static list lacks, its
    /dev/sdf hint resolves only through the stemcell's ID transform; ours resolves with either agent.json."""
    layout = nitro_layout([ROOT, EPHEMERAL, DISK_1])
    upstream = upstream_device_path("/dev/sdf", "m8g.large", DISK_1)
    ours = instance_types.device_hint("/dev/sdf", "m8g.large", DISK_1)
    assert agent_resolve(layout, OLD_AWS_AGENT, DISK_1, upstream) is None
    assert agent_resolve(layout, OLD_AWS_AGENT, DISK_1, ours) == "/dev/nvme2n1"
    assert agent_resolve(layout, STOCK_AWS_AGENT, DISK_1, upstream) == "/dev/nvme2n1"


def test_ephemeral_hint_is_bosh_aws_cpis() -> None:
    """disks.ephemeral is the string /dev/sdb (agent_settings.rb); the agent gives it no ID, so only the mapped
    resolver runs: /dev/xvdb on Xen. On Nitro there is no /dev/sdb-like node and the stock agent puts
    /var/vcap/data on the root disk (CreatePartitionIfNoEphemeralDisk), as it does under bosh-aws-cpi."""
    assert vms.EPHEMERAL_DEVICE == "/dev/sdb"
    xen = xen_layout({"/dev/sda": ROOT, "/dev/sdb": EPHEMERAL})
    assert agent_resolve(xen, STOCK_AWS_AGENT, "", vms.EPHEMERAL_DEVICE) == "/dev/xvdb"
    assert agent_resolve(nitro_layout([ROOT, EPHEMERAL]), STOCK_AWS_AGENT, "", vms.EPHEMERAL_DEVICE) is None


@pytest.mark.parametrize(
    ("image", "system", "override"),
    [
        ({"RootDeviceName": "/dev/sda1", "BlockDeviceMappings": [{"DeviceName": "/dev/sda"}]}, "/dev/sda1", "/dev/sda"),
        ({"RootDeviceName": "/dev/xvda", "BlockDeviceMappings": [{"DeviceName": "/dev/xvda"}]}, "/dev/xvda",
         "/dev/xvda"),
        ({"RootDeviceName": "/dev/sda1", "BlockDeviceMappings": [{"DeviceName": "/dev/sda1"}]}, "/dev/sda1",
         "/dev/sda1"),
        ({"BlockDeviceMappings": []}, "/dev/xvda", "/dev/xvda"),
    ],
)
def test_system_disk_is_the_amis_root_device_name(image: dict[str, Any], system: str, override: str) -> None:
    """cloud_core.rb: settings.root_device_name = stemcell.root_device_name (the AMI's), while the block device
    the root_disk cloud_properties override is the mapping that device is a partition of."""
    assert vms.system_disk_hint(image) == system
    assert vms.root_device_name(image) == override


def test_persistent_device_names_are_bosh_aws_cpis() -> None:
    assert tuple(f"/dev/sd{c}" for c in "fghijklmnop") == PERSISTENT_DEVICES
