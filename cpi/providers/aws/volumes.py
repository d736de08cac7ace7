"""EBS volume parameters: sizes (the director speaks MiB, EBS GiB: rounded up), types and their rules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpi.errors import CloudError

#: GiB limits per volume type (AWS documentation, EBS volume types).
SIZE_LIMITS_GIB: dict[str, tuple[int, int]] = {
    "gp3": (1, 16384),
    "gp2": (1, 16384),
    "io1": (4, 16384),
    "io2": (4, 65536),
    "st1": (125, 16384),
    "sc1": (125, 16384),
    "standard": (1, 1024),
}
IOPS_TYPES = frozenset({"gp3", "io1", "io2"})
DEFAULT_TYPE = "gp3"
#: bosh-aws-cpi's default ephemeral disk (10 GiB) when the VM type does not say.
DEFAULT_EPHEMERAL_MIB = 10 * 1024


def gib(size_mib: int) -> int:
    """MiB rounded up to whole GiB (at least 1)."""
    return max(1, -(-int(size_mib) // 1024))


def ebs_params(
    spec: Mapping[str, Any], *, what: str, size_mib: int | None, encrypted: bool, kms_key_arn: str | None
) -> dict[str, Any]:
    """The ``Ebs`` / CreateVolume parameters for ``spec`` (``type``, ``iops``, ``throughput``); CloudError naming
    ``what`` (e.g. ``cloud_properties.ephemeral_disk``) when the combination is one EBS refuses."""
    kind = str(spec.get("type") or DEFAULT_TYPE)
    out: dict[str, Any] = {"VolumeType": kind}
    if size_mib is not None:
        size = gib(size_mib)
        low, high = SIZE_LIMITS_GIB[kind]
        if not low <= size <= high:
            raise CloudError(f"{what}: a {kind} volume must be {low}-{high} GiB, {size_mib} MiB rounds to {size} GiB")
        out["Size"] = size
    if "iops" in spec:
        if kind not in IOPS_TYPES:
            raise CloudError(f"{what}.iops: only gp3, io1 and io2 volumes take 'iops' (type is {kind})")
        out["Iops"] = int(spec["iops"])
    elif kind in ("io1", "io2"):
        raise CloudError(f"{what}.iops: a {kind} volume needs 'iops'")
    if "throughput" in spec:
        if kind != "gp3":
            raise CloudError(f"{what}.throughput: only gp3 volumes take 'throughput' (type is {kind})")
        out["Throughput"] = int(spec["throughput"])
    if encrypted:
        out["Encrypted"] = True
        if kms_key_arn:
            out["KmsKeyId"] = kms_key_arn
    return out


def block_device(device_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A RunInstances block device mapping from :func:`ebs_params` output (``Size`` becomes ``VolumeSize``)."""
    ebs = {("VolumeSize" if k == "Size" else k): v for k, v in params.items()}
    ebs["DeleteOnTermination"] = True
    return {"DeviceName": device_name, "Ebs": ebs}
