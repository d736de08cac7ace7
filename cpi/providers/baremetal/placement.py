"""Can this server take this create_vm? Its last inspection, its boot mode and its storage, judged before a claim.

A server is a candidate for a request (cloud_properties, or calculate_vm_cloud_properties' vm_resources) only when:

* it was inspected (``stemforge metal inspect``, or ``manage`` without ``--no-inspect``) and no hardware change was
  seen since. How a change is detected: every deploy ramdisk reports the disks it finds (``POST root-device`` or
  ``POST layout``) before it writes; ``metal serve`` compares their set (:func:`.inspection.disk_set`: serial, or
  kernel name without one, and size) with the inspection's and, when they differ, fails that deploy and records an
  event ``hardware-change`` (:data:`HARDWARE_CHANGE`) naming the missing and the new disks. A server whose last
  ``hardware-change`` is newer than its inspection is refused until it is inspected again. The BMC is not asked:
  Redfish has no standard "hardware changed" signal (sushy-tools' emulator reports none), so the disks the
  ramdisk sees are the truth, as for Ironic's inspector-driven re-inspection;
* its ``plan.boot_mode`` (when given) is what the inspection found (``boot.mode``);
* its storage fits its inspected disks (Ironic's software-RAID and root-device-hint checks done before any write):
  the layout -- ``cloud_properties.layout`` (inline), else the layout of ``cloud_properties.plan`` (a storage plan
  the server was enrolled with, ``inventory.py``), else the server's own (``extra.storage``) -- validated by
  :func:`.layout.validate_layout` against the inspected disks and boot mode; without a layout, the root-device
  hints (the plan's, else the server's) must select a disk (:func:`.root_hints.select_root_device`).

A layout makes the deploy file-based (``deploy_kind: layout``: the ramdisk builds the layout and streams the
image's root partition, :mod:`.instructions`); without one it is today's whole-disk deploy with ``root_hints``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cpi.providers.baremetal import layout, root_hints
from cpi.providers.baremetal.store import MetalStore, Node

#: The event kind ``metal serve`` records when a deploy ramdisk found other disks than the inspection.
HARDWARE_CHANGE: Final = "hardware-change"


@dataclass(frozen=True)
class Storage:
    """How a server is to be deployed: ``layout`` (file-based) or ``root_hints`` (whole-disk), where it came from
    (``source``, for messages) and the boot mode the inspection found."""

    layout: Mapping[str, Any] | None
    root_hints: Mapping[str, Any] = field(default_factory=dict)
    source: str = "default"
    boot_mode: str = ""
    root_fs: str = ""  # the filesystem of the layout's /


class NotPlaceable(Exception):  # noqa: N818 - a condition, like VMCreationFailed's reasons
    """This server cannot take the request; the message says what is missing (safe to show)."""


def requested(props: Mapping[str, Any]) -> str:
    """The storage part of a request as messages show it (``layout (cloud_properties)``, ``plan raid1``, or '')."""
    if props.get("layout") is not None:
        return "layout (cloud_properties)"
    return f"plan {props['plan']}" if props.get("plan") else ""


def storage_for(node: Node, props: Mapping[str, Any]) -> Storage:
    """The storage a deploy of ``node`` for ``props`` uses (inspection not consulted); NotPlaceable when the node
    does not know the requested storage plan."""
    own = node.extra.get("storage") or {}
    if props.get("layout") is not None:
        return Storage(props["layout"], {}, "layout (cloud_properties)")
    name = props.get("plan")
    if name:
        plans = node.extra.get("storage_plans") or {}
        if name not in plans:
            known = ", ".join(sorted(plans)) or "none"
            raise NotPlaceable(f"storage plan {name!r} is not one it was enrolled with (its storage plans: {known})")
        chosen = plans[name]
        return Storage(chosen.get("layout"), chosen.get("root_hints") or node.root_hints, f"storage plan {name}")
    if own.get("layout") is not None:
        source = f"storage plan {own['plan']}" if own.get("plan") else "its inventory layout"
        return Storage(own["layout"], {}, source)
    return Storage(None, node.root_hints, "root_hints" if node.root_hints else "default root disk")


def check(store: MetalStore, node: Node, props: Mapping[str, Any]) -> Storage:
    """The storage of ``node`` for ``props`` once its inspection says it fits; NotPlaceable naming what is
    missing (no inspection, a hardware change since, the wrong boot mode, a layout or hints that do not fit)."""
    record = store.inspection(node.name)
    if record is None:
        raise NotPlaceable(f"not inspected (stemforge metal inspect {node.name})")
    changes = store.events(node.name, kinds=[HARDWARE_CHANGE])
    if changes and changes[-1].ts > record.ts:
        change = changes[-1].data.get("message") or "its disks changed"
        raise NotPlaceable(
            f"hardware changed at {_when(changes[-1].ts)}, after its inspection of {_when(record.ts)} ({change}); "
            f"inspect it again (stemforge metal inspect {node.name})"
        )
    found = str((record.data.get("boot") or {}).get("mode") or "")
    wanted = str(node.plan.get("boot_mode") or found)
    if wanted != found:
        raise NotPlaceable(f"its plan says boot_mode {wanted}, its inspection found {found}")
    storage = storage_for(node, props)
    disks = list(record.data.get("disks") or [])
    if storage.layout is not None:
        try:
            plan = layout.validate_layout(storage.layout, disks, found)
        except layout.LayoutError as exc:
            raise NotPlaceable(f"{storage.source}: {str(exc).removeprefix('layout: ')}") from None
        if plan.boot_mode != found:
            raise NotPlaceable(f"{storage.source}: boot_mode: the layout is for {plan.boot_mode}, it boots {found}")
        root_fs = str(plan.devices[plan.root].spec.get("filesystem"))
        return Storage(storage.layout, {}, storage.source, found, root_fs)
    else:
        try:
            root_hints.select_root_device(disks, storage.root_hints)
        except (root_hints.NoRootDevice, root_hints.RootHintsError) as exc:
            raise NotPlaceable(f"{storage.source}: {exc}") from None
    return Storage(storage.layout, storage.root_hints, storage.source, found)


def fitting(store: MetalStore, nodes: list[Node], props: Mapping[str, Any]) -> tuple[list[Node], dict[str, str]]:
    """``nodes`` split by :func:`check`: those that fit, and why each other one does not (by name)."""
    fits: list[Node] = []
    unfit: dict[str, str] = {}
    for node in nodes:
        try:
            check(store, node, props)
        except NotPlaceable as exc:
            unfit[node.name] = str(exc)
            continue
        fits.append(node)
    return fits, unfit


def reasons(unfit: Mapping[str, str]) -> str:
    """``node-a: not inspected (...); node-b: layout (cloud_properties): ...``: what each server lacks."""
    return "; ".join(f"{name}: {reason}" for name, reason in sorted(unfit.items()))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def deploy_instructions(
    storage: Storage, stemcell: Mapping[str, Any], images_url: str, configdrive_url: str, heartbeat_s: int
) -> dict[str, Any]:
    """A deploy job's instructions (:mod:`.instructions`): whole-disk with ``root_hints``, or ``deploy_kind:
    layout`` with the layout, the boot mode and the image's root filesystem (``rootfs`` of the stemcell record,
    found at create_stemcell); NotPlaceable when a layout is asked of an image without an ext4 root partition.
    ``images_url`` is where ``metal serve`` serves the images directory (ends with ``/``). What is streamed: the
    stemcell's gzip files (``streams`` of the record, :func:`.stemcell_images.streams`) when it has them, else the
    raw image (and its root partition as a byte range of it)."""
    streams = stemcell.get("streams") or {}
    disk = streams.get("disk")
    raw_url = images_url + Path(stemcell["path"]).name
    out: dict[str, Any] = {
        "image_url": images_url + disk["path"] if disk else raw_url,
        "image_sha256": disk["sha256"] if disk else stemcell["sha256"],
        "image_size": int(stemcell["size"]),
        "image_format": "gzip" if disk else "raw",
        "configdrive_url": configdrive_url,
        "heartbeat_s": heartbeat_s,
    }
    if storage.layout is None:
        if storage.root_hints:
            out["root_hints"] = dict(storage.root_hints)
        return out
    rootfs = stemcell.get("rootfs")
    if not rootfs:
        raise NotPlaceable(
            f"{storage.source} needs a file-based deploy, but stemcell {stemcell['cid']} has no ext4 root partition "
            "(a raw MBR or GPT disk image is needed)"
        )
    if storage.root_fs and storage.root_fs != rootfs.get("fstype", "ext4"):
        raise NotPlaceable(
            f"{storage.source}: / is {storage.root_fs}, the stemcell's root filesystem is {rootfs.get('fstype')} "
            "(it is streamed onto / and grown, not copied file by file)"
        )
    shrunk = streams.get("rootfs")
    if shrunk:  # a gzip file of its own
        stream = {"rootfs_url": images_url + shrunk["path"], "rootfs_offset": 0, "rootfs_size": int(shrunk["size"]),
                  "rootfs_sha256": str(shrunk["sha256"]), "rootfs_format": "gzip"}  # fmt: skip
    else:  # a byte range of the raw image, which the job then names as its (raw) image
        stream = {"rootfs_url": raw_url, "rootfs_offset": int(rootfs["offset"]), "rootfs_size": int(rootfs["size"]),
                  "rootfs_sha256": str(rootfs["sha256"]), "rootfs_format": "raw"}  # fmt: skip
        out.update(image_url=raw_url, image_sha256=stemcell["sha256"], image_format="raw")
    out.update(
        deploy_kind="layout",
        **stream,
        rootfs_fstype=str(rootfs.get("fstype") or "ext4"),
        layout=dict(storage.layout),
        boot_mode=storage.boot_mode,
    )
    return out
