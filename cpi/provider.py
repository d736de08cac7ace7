"""The provider interfaces: what a cloud must implement, split by concern (as in bosh-cpi-go's ``apiv1``).

A provider is one class implementing ``Stemcells``, ``VMs`` and ``Disks``; ``Snapshots``, ``DiskResizer`` and
``DiskUpdater`` are optional capabilities the dispatcher detects with ``isinstance`` and answers
``NotImplemented``/``NotSupported`` for when missing. Providers receive plain Python values that the dispatcher has
already validated against the method's JSON schema; they raise only ``cpi.errors`` types and know nothing of the
wire format, API versions or logging destinations.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: A network as the director sends it: type, ip, netmask, gateway, dns, default, cloud_properties, ...
Network = dict[str, Any]
#: Network name -> network.
Networks = dict[str, Network]
#: What ``attach_disk`` returns so the agent can find the disk: a device path or an object with path/id/...
DiskHint = str | dict[str, Any]


class ProviderBase:
    """Common construction. ``properties`` is the merged ``cloud.properties`` (file config + context overrides)."""

    #: The plugin name used in ``cloud.plugin``.
    name: str = ""

    def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
        self.properties = properties
        self.log = logger


class Stemcells(ABC):
    @abstractmethod
    def create_stemcell(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Import the stemcell image at ``image_path`` (the extracted ``image`` file; empty for a light
        stemcell) and return its CID. ``tags`` (API v3 ``env.tags``) are stored as image metadata.
        Raises CloudError when the image is unreadable or of an unsupported format."""

    @abstractmethod
    def delete_stemcell(self, stemcell_cid: str) -> None:
        """Remove the stemcell image. Idempotent: an unknown CID is not an error."""


@dataclass(frozen=True)
class VmRequest:
    """create_vm's arguments as the director sent them (validated; ``null`` already turned into ``{}``/``[]``)."""

    agent_id: str
    stemcell_cid: str
    cloud_properties: Mapping[str, Any]
    networks: Networks
    disk_cids: list[str]
    env: Mapping[str, Any]


class VMs(ABC):
    @abstractmethod
    def create_vm(self, request: VmRequest) -> tuple[str, Networks]:
        """Create and start a VM whose agent will read ``request.agent_id``, ``networks`` and ``env`` (verbatim).
        Returns the VM CID and the networks as configured (e.g. with MACs). On any failure everything created
        is removed before raising VMCreationFailed (ok_to_retry only if a retry can help):
        :func:`cpi.provider_steps.run_create_vm` does that for a provider's steps."""

    @abstractmethod
    def delete_vm(self, vm_cid: str) -> None:
        """Stop and remove the VM and its ephemeral resources (not persistent disks). The VM must really be gone
        on return. Raises VMNotFound when the CID is unknown (the director treats that as deleted)."""

    @abstractmethod
    def has_vm(self, vm_cid: str) -> bool:
        """True if the VM exists; False (not an error) when it does not."""

    @abstractmethod
    def reboot_vm(self, vm_cid: str) -> None:
        """Reboot the VM. Raises VMNotFound when unknown."""

    @abstractmethod
    def set_vm_metadata(self, vm_cid: str, metadata: Mapping[str, str]) -> None:
        """Record director metadata (director, deployment, job, index, name, tags) on the VM."""

    @abstractmethod
    def get_disks(self, vm_cid: str) -> list[str]:
        """CIDs of the persistent disks attached to the VM."""

    @abstractmethod
    def calculate_vm_cloud_properties(self, vm_resources: Mapping[str, int]) -> dict[str, Any]:
        """Map ``{ram, cpu, ephemeral_disk_size}`` to this provider's VM cloud_properties."""


class Disks(ABC):
    @abstractmethod
    def create_disk(self, size_mib: int, cloud_properties: Mapping[str, Any], vm_locality: str | None) -> str:
        """Create a persistent disk of exactly ``size_mib`` MiB and return its CID."""

    @abstractmethod
    def delete_disk(self, disk_cid: str) -> None:
        """Delete the disk. Raises DiskNotFound when unknown."""

    @abstractmethod
    def has_disk(self, disk_cid: str) -> bool:
        """True if the disk exists."""

    @abstractmethod
    def attach_disk(self, vm_cid: str, disk_cid: str) -> DiskHint:
        """Attach the disk to the (running) VM and return a non-empty hint the agent can resolve; also update the
        settings the agent reads so that a rebooted agent sees the disk."""

    @abstractmethod
    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        """Detach; DiskNotAttached when the disk is not attached to that VM."""

    @abstractmethod
    def set_disk_metadata(self, disk_cid: str, metadata: Mapping[str, str]) -> None:
        """Record director metadata on the disk."""


class DiskResizer(ABC):
    """Optional: grow a detached disk in place."""

    @abstractmethod
    def resize_disk(self, disk_cid: str, new_size_mib: int) -> None:
        """Grow to ``new_size_mib``; raises NotSupported for a shrink or an attached disk."""


class DiskUpdater(ABC):
    """Optional: change a disk's size and/or cloud_properties."""

    @abstractmethod
    def update_disk(self, disk_cid: str, new_size_mib: int, cloud_properties: Mapping[str, Any]) -> str | None:
        """Return the new CID, or None when the disk kept its CID; NotSupported when it cannot."""


class Snapshots(ABC):
    """Optional: disk snapshots."""

    @abstractmethod
    def snapshot_disk(self, disk_cid: str, metadata: Mapping[str, Any]) -> str:
        """Snapshot the disk and return the snapshot CID."""

    @abstractmethod
    def delete_snapshot(self, snapshot_cid: str) -> None:
        """Delete the snapshot; idempotent."""


class Provider(ProviderBase, Stemcells, VMs, Disks):
    """A full provider: every required concern. Mix in the optional capability classes as supported."""
