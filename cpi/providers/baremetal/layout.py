"""Declarative storage layouts (OVHcloud's installer, Ironic software RAID, MAAS storage layouts), validated before
any disk is touched against a server's inspected disks.

A layout (YAML/JSON; sizes in MiB or ``"fill"``)::

    boot_mode: uefi                       # or bios; default: the inspection's
    disks:
      - id: d0
        hints: {serial: SF-A}             # root-device hints (root_hints.py); each layout disk is a distinct disk
        partitions:
          - {id: esp0, size: 512, filesystem: vfat, mount: /boot/efi, esp: true}
          - {id: r0, size: fill}          # used by md0 below
      - id: d1
        hints: {serial: SF-B}
        partitions:
          - {id: esp1, size: 512, filesystem: vfat, esp: true}   # kept identical to esp0 (the boot loader on each)
          - {id: r1, size: fill}
    raid:
      - {id: md0, level: 1, devices: [r0, r1]}                  # mdadm levels 0, 1, 10
    lvm:
      - id: vg0
        devices: [md0]
        lvs:
          - {id: swap, size: 1024, filesystem: swap}
          - {id: root, size: fill, filesystem: ext4, mount: /}
    configdrive: {disk: d0}               # the 64 MiB config-2 partition at the end of that disk; default: the
                                          # layout's first disk

Rules (each failure is a :class:`LayoutError` naming the field, e.g. ``raid/0/devices``):

* the document's shape (jsonschema); ids unique over disks, partitions, arrays, VGs and LVs;
* every layout disk's hints match an inspected disk not taken by an earlier layout disk (the first by kernel name,
  as root-device hints choose);
* sizes fit: per disk 1 MiB for the primary GPT and alignment, 1 MiB for the backup GPT, 64 MiB for the config
  drive on its disk, the fixed partitions; at most one ``fill`` per disk (it takes the rest, at least 1 MiB), and
  the same for the LVs of a VG (4 MiB extents, 1 MiB of LVM metadata per physical volume);
* RAID: level 0 and 1 need at least 2 devices, 10 at least 4; members of a 1 or 10 array on distinct disks (else
  one disk failing loses the array); the array's size follows its level (0: n x smallest, 1: smallest,
  10: n/2 x smallest);
* every partition, array and LV is used once: a filesystem, a RAID member or an LVM physical volume, or left unused
  (``esp`` copies and ``bios_grub`` partitions aside);
* mount points absolute and unique; exactly one ``/`` (ext4 or xfs); swap has no mount point; xfs at least 300 MiB
  (mkfs.xfs's minimum), vfat at least 32 MiB;
* UEFI: every disk that holds ``/`` (directly, through its RAID set or its VG's devices) has an ESP (``esp: true``,
  vfat, a plain partition) and one ESP is mounted at ``/boot/efi``; BIOS: every such disk has a ``bios_grub``
  partition (GRUB's core image on GPT), so the boot loader is on every member disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cpi.providers.baremetal import root_hints

MIB: Final = 1 << 20
GPT_HEAD_MIB: Final = 1  # protective MBR + primary GPT + alignment of the first partition
GPT_TAIL_MIB: Final = 1  # backup GPT (33 sectors), rounded up
CONFIGDRIVE_MIB: Final = 64
LVM_EXTENT_MIB: Final = 4
LVM_PV_METADATA_MIB: Final = 1
FILESYSTEMS: Final = ("ext4", "xfs", "vfat", "swap")
MIN_FS_MIB: Final = {"xfs": 300, "vfat": 32}
RAID_MIN_DEVICES: Final = {0: 2, 1: 2, 10: 4}

_ID: Final = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"}
_SIZE: Final = {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "fill"}]}
_USE: Final = {
    "filesystem": {"enum": list(FILESYSTEMS)},
    "mount": {"type": "string", "minLength": 1, "maxLength": 256},
    "label": {"type": "string", "maxLength": 16},
}

LAYOUT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["disks"],
    "properties": {
        "boot_mode": {"enum": ["uefi", "bios"]},
        "disks": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "partitions"],
                "properties": {
                    "id": _ID,
                    "hints": {"type": "object"},
                    "partitions": {
                        "type": "array",
                        "maxItems": 128,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["id", "size"],
                            "properties": {
                                "id": _ID,
                                "size": _SIZE,
                                "esp": {"type": "boolean"},
                                "bios_grub": {"type": "boolean"},
                                **_USE,
                            },
                        },
                    },
                },
            },
        },
        "raid": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "level", "devices"],
                "properties": {
                    "id": _ID,
                    "level": {"enum": [0, 1, 10]},
                    "devices": {"type": "array", "minItems": 1, "items": _ID},
                    **_USE,
                },
            },
        },
        "lvm": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "devices", "lvs"],
                "properties": {
                    "id": _ID,
                    "devices": {"type": "array", "minItems": 1, "items": _ID},
                    "lvs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["id", "size"],
                            "properties": {"id": _ID, "size": _SIZE, **_USE},
                        },
                    },
                },
            },
        },
        "configdrive": {
            "type": "object",
            "additionalProperties": False,
            "required": ["disk"],
            "properties": {"disk": _ID},
        },
    },
}


class LayoutError(ValueError):
    """A layout that cannot be built on the server; ``field`` is the path of the offending part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"layout: {field}: {problem}")
        self.field = field


@dataclass
class Device:
    """A block device of the layout: a partition, an md array or an LV, with its size once known."""

    id: str
    kind: str  # "partition" | "raid" | "lv"
    where: str  # the field path of its definition
    spec: Mapping[str, Any]
    disks: frozenset[str]  # the layout disk ids it lives on
    size_mib: int = 0
    used_by: str = ""
    group: str = ""  # an LV's volume group id


@dataclass
class Plan:
    """A validated layout: ``disks`` maps each layout disk id to the inspected disk it is, ``devices`` every
    partition, array and LV by id with its size in MiB, ``configdrive`` the layout disk that holds it."""

    boot_mode: str
    disks: dict[str, Mapping[str, Any]]
    devices: dict[str, Device]
    configdrive: str
    root: str
    mounts: dict[str, str] = field(default_factory=dict)  # mount point -> device id
    volume_groups: dict[str, list[str]] = field(default_factory=dict)  # VG id -> its physical volumes' ids


def check_shape(layout: Any, prefix: str = "") -> None:
    """The document's shape only (:data:`LAYOUT_SCHEMA`, no disks needed): LayoutError naming the field, its path
    prefixed with ``prefix`` (e.g. ``nodes/0/layout/``) when given."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(LAYOUT_SCHEMA).iter_errors(layout))
    if error is None:
        return
    where = prefix + ("/".join(str(p) for p in error.absolute_path) or "layout")
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        raise LayoutError(where, f"unknown key(s) {', '.join(map(repr, extra))}")
    raise LayoutError(where, error.message)


def validate_layout(layout: Any, inspected_disks: Sequence[Mapping[str, Any]], boot_mode: str = "") -> Plan:
    """Check ``layout`` against the inspected disks (Ironic's device dicts: ``name``, ``size`` in bytes, ``serial``
    ...) and the server's boot mode (the layout's ``boot_mode`` wins); the plan, or LayoutError naming the field."""
    check_shape(layout)
    mode = str(layout.get("boot_mode") or boot_mode or "")
    if mode not in ("uefi", "bios"):
        raise LayoutError("boot_mode", "unknown: give boot_mode (uefi or bios) or inspect the server first")
    _unique_ids(layout)
    disks = _match_disks(layout["disks"], inspected_disks)
    configdrive = str((layout.get("configdrive") or {}).get("disk") or "")
    if configdrive and configdrive not in disks:
        raise LayoutError("configdrive/disk", f"{configdrive!r} is not a disk of the layout ({', '.join(disks)})")
    configdrive = configdrive or str(layout["disks"][0]["id"])
    devices: dict[str, Device] = {}
    for i, disk in enumerate(layout["disks"]):
        _partitions(i, disk, disks[disk["id"]], devices, reserve_configdrive=disk["id"] == configdrive)
    for i, array in enumerate(layout.get("raid") or []):
        _raid(i, array, devices)
    for i, vg in enumerate(layout.get("lvm") or []):
        _volume_group(i, vg, devices)
    mounts, root = _filesystems(devices)
    root_disks = sorted(devices[root].disks)
    _boot_loader(mode, layout, devices, root_disks)
    groups = {str(vg["id"]): [str(d) for d in vg["devices"]] for vg in layout.get("lvm") or []}
    return Plan(mode, disks, devices, configdrive, root, mounts, groups)


def _unique_ids(layout: Mapping[str, Any]) -> None:
    seen: dict[str, str] = {}
    paths: list[tuple[str, str]] = []
    for i, disk in enumerate(layout["disks"]):
        paths.append((disk["id"], f"disks/{i}/id"))
        paths += [(p["id"], f"disks/{i}/partitions/{j}/id") for j, p in enumerate(disk["partitions"])]
    paths += [(a["id"], f"raid/{i}/id") for i, a in enumerate(layout.get("raid") or [])]
    for i, vg in enumerate(layout.get("lvm") or []):
        paths.append((vg["id"], f"lvm/{i}/id"))
        paths += [(lv["id"], f"lvm/{i}/lvs/{j}/id") for j, lv in enumerate(vg["lvs"])]
    for ident, where in paths:
        if ident in seen:
            raise LayoutError(where, f"id {ident!r} is already used at {seen[ident]}")
        seen[ident] = where


def _match_disks(
    layout_disks: Sequence[Mapping[str, Any]], inspected: Sequence[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    taken: dict[str, str] = {}
    out: dict[str, Mapping[str, Any]] = {}
    ordered = sorted(inspected, key=lambda d: (len(str(d.get("name"))), str(d.get("name"))))
    seen = "; ".join(root_hints.describe_disk(d) for d in ordered) or "none"
    for i, disk in enumerate(layout_disks):
        hints = disk.get("hints") or {}
        try:
            matches = [d for d in root_hints.find_devices_by_hints(ordered, hints) if str(d["name"]) not in taken]
        except root_hints.RootHintsError as exc:
            raise LayoutError(f"disks/{i}/hints/{exc.field.split('.', 1)[-1]}", str(exc).split(": ", 1)[1]) from None
        if not matches:
            others = f" (taken: {', '.join(f'{n} by {d}' for n, d in taken.items())})" if taken else ""
            raise LayoutError(
                f"disks/{i}/hints",
                f"no free inspected disk matches {root_hints.format_hints(hints) or '(no hints)'}{others}; "
                f"disks seen: {seen}",
            )
        taken[str(matches[0]["name"])] = disk["id"]
        out[disk["id"]] = matches[0]
    return out


def _partitions(
    index: int,
    disk: Mapping[str, Any],
    physical: Mapping[str, Any],
    devices: dict[str, Device],
    reserve_configdrive: bool,
) -> None:
    where = f"disks/{index}"
    total = int(physical["size"]) // MIB
    overhead = GPT_HEAD_MIB + GPT_TAIL_MIB + (CONFIGDRIVE_MIB if reserve_configdrive else 0)
    parts = list(disk["partitions"])
    fills = [j for j, p in enumerate(parts) if p["size"] == "fill"]
    if len(fills) > 1:
        raise LayoutError(f"{where}/partitions/{fills[1]}/size", "only one partition of a disk can fill it")
    if fills and fills[0] != len(parts) - 1:
        raise LayoutError(f"{where}/partitions/{fills[0]}/size", "the fill partition must be the disk's last")
    fixed = sum(int(p["size"]) for p in parts if p["size"] != "fill")
    left = total - overhead - fixed
    name = root_hints.describe_disk(physical)
    if left < (1 if fills else 0):
        raise LayoutError(
            f"{where}/partitions",
            f"{fixed} MiB of partitions{' and a fill' if fills else ''} + {overhead} MiB of GPT"
            f"{' and config drive' if reserve_configdrive else ''} do not fit on {name} ({total} MiB)",
        )
    for j, part in enumerate(parts):
        size = left if part["size"] == "fill" else int(part["size"])
        devices[part["id"]] = Device(
            part["id"], "partition", f"{where}/partitions/{j}", part, frozenset({disk["id"]}), size
        )


def _take(devices: dict[str, Device], ident: str, user: str, where: str) -> Device:
    device = devices.get(ident)
    if device is None:
        raise LayoutError(where, f"{ident!r} is not a partition, array or LV defined before it")
    if device.spec.get("esp") or device.spec.get("bios_grub"):
        raise LayoutError(where, f"{ident!r} is a boot partition ({device.where}); it cannot be used by {user}")
    if device.spec.get("filesystem"):
        raise LayoutError(where, f"{ident!r} already holds a {device.spec['filesystem']} filesystem ({device.where})")
    if device.used_by:
        raise LayoutError(where, f"{ident!r} is already used by {device.used_by}")
    device.used_by = user
    return device


def _raid(index: int, array: Mapping[str, Any], devices: dict[str, Device]) -> None:
    where = f"raid/{index}"
    level, members = int(array["level"]), list(array["devices"])
    if len(members) < RAID_MIN_DEVICES[level]:
        raise LayoutError(
            f"{where}/devices",
            f"RAID {level} needs at least {RAID_MIN_DEVICES[level]} devices, {array['id']} has {len(members)}",
        )
    if len(set(members)) != len(members):
        raise LayoutError(f"{where}/devices", "a device is named twice")
    taken = [_take(devices, m, f"array {array['id']}", f"{where}/devices") for m in members]
    if level in (1, 10):
        by_disk: dict[str, str] = {}
        for device in taken:
            for disk in device.disks:
                if disk in by_disk:
                    raise LayoutError(
                        f"{where}/devices",
                        f"{by_disk[disk]} and {device.id} are both on disk {disk}: a RAID {level} member per disk, "
                        "or one failing disk loses the array",
                    )
                by_disk[disk] = device.id
    smallest = min(d.size_mib for d in taken)
    size = {0: smallest * len(taken), 1: smallest, 10: smallest * len(taken) // 2}[level]
    disks = frozenset().union(*(d.disks for d in taken))
    devices[array["id"]] = Device(array["id"], "raid", where, array, disks, size)


def _volume_group(index: int, vg: Mapping[str, Any], devices: dict[str, Device]) -> None:
    where = f"lvm/{index}"
    if len(set(vg["devices"])) != len(vg["devices"]):
        raise LayoutError(f"{where}/devices", "a device is named twice")
    pvs = [_take(devices, ident, f"volume group {vg['id']}", f"{where}/devices") for ident in vg["devices"]]
    extents = sum((pv.size_mib - LVM_PV_METADATA_MIB) // LVM_EXTENT_MIB for pv in pvs)
    capacity = extents * LVM_EXTENT_MIB
    lvs = list(vg["lvs"])
    fills = [j for j, lv in enumerate(lvs) if lv["size"] == "fill"]
    if len(fills) > 1:
        raise LayoutError(f"{where}/lvs/{fills[1]}/size", "only one LV of a volume group can fill it")
    fixed = sum(-(-int(lv["size"]) // LVM_EXTENT_MIB) * LVM_EXTENT_MIB for lv in lvs if lv["size"] != "fill")
    left = capacity - fixed
    if left < (LVM_EXTENT_MIB if fills else 0):
        raise LayoutError(
            f"{where}/lvs",
            f"{fixed} MiB of LVs{' and a fill' if fills else ''} do not fit in volume group {vg['id']} "
            f"({capacity} MiB on {', '.join(pv.id for pv in pvs)})",
        )
    disks = frozenset().union(*(pv.disks for pv in pvs))
    for j, lv in enumerate(lvs):
        size = left if lv["size"] == "fill" else -(-int(lv["size"]) // LVM_EXTENT_MIB) * LVM_EXTENT_MIB
        devices[lv["id"]] = Device(lv["id"], "lv", f"{where}/lvs/{j}", lv, disks, size, group=str(vg["id"]))


def _filesystems(devices: Mapping[str, Device]) -> tuple[dict[str, str], str]:
    mounts: dict[str, str] = {}
    for device in devices.values():
        fs, mount = device.spec.get("filesystem"), device.spec.get("mount")
        if mount and not fs:
            raise LayoutError(f"{device.where}/mount", "a mount point needs a filesystem")
        if not fs:
            continue
        if fs in MIN_FS_MIB and device.size_mib < MIN_FS_MIB[fs]:
            raise LayoutError(
                f"{device.where}/size", f"{fs} needs at least {MIN_FS_MIB[fs]} MiB, {device.id} has {device.size_mib}"
            )
        if fs == "swap":
            if mount:
                raise LayoutError(f"{device.where}/mount", "swap has no mount point")
            continue
        if not mount:
            continue
        if not mount.startswith("/") or "//" in mount or (mount != "/" and mount.endswith("/")):
            raise LayoutError(f"{device.where}/mount", f"{mount!r} is not an absolute path like /var")
        if mount in mounts:
            raise LayoutError(f"{device.where}/mount", f"{mount} is already mounted from {mounts[mount]}")
        mounts[mount] = device.id
    if "/" not in mounts:
        raise LayoutError("layout", "no filesystem is mounted at / (the root filesystem)")
    root = mounts["/"]
    if devices[root].spec["filesystem"] not in ("ext4", "xfs"):
        raise LayoutError(f"{devices[root].where}/filesystem", "/ must be ext4 or xfs")
    return mounts, root


def _boot_loader(mode: str, layout: Mapping[str, Any], devices: Mapping[str, Device], root_disks: list[str]) -> None:
    flag = "esp" if mode == "uefi" else "bios_grub"
    for device in devices.values():
        spec = device.spec
        if spec.get("esp") and (device.kind != "partition" or spec.get("filesystem") != "vfat"):
            raise LayoutError(f"{device.where}/esp", "an ESP is a plain partition with filesystem vfat")
        if spec.get("bios_grub") and (device.kind != "partition" or spec.get("filesystem") or spec.get("mount")):
            raise LayoutError(f"{device.where}/bios_grub", "a bios_grub partition holds no filesystem")
    for index, disk in enumerate(layout["disks"]):
        if disk["id"] not in root_disks:
            continue
        if not any(p.get(flag) for p in disk["partitions"]):
            what = "an ESP (esp: true, vfat)" if mode == "uefi" else "a bios_grub partition (GRUB on GPT)"
            raise LayoutError(
                f"disks/{index}/partitions",
                f"{mode.upper()} boot: disk {disk['id']} holds / and needs {what}, so it boots alone",
            )
    if mode == "uefi" and not any(d.spec.get("esp") and d.spec.get("mount") == "/boot/efi" for d in devices.values()):
        raise LayoutError("disks", "UEFI boot: one ESP must be mounted at /boot/efi")


def summary(layout: Mapping[str, Any]) -> str:
    """One line: ``uefi, disks d0 (serial=A) [esp0 512, r0 fill], d1 ..., raid md0 level 1 [r0 r1], vg vg0 [md0]:
    swap 256 swap, root fill ext4 /, config drive on d0`` (shape assumed checked)."""

    def use(spec: Mapping[str, Any]) -> str:
        words = [str(spec.get("filesystem") or ""), str(spec.get("mount") or "")]
        return " ".join(w for w in words if w)

    parts = [str(layout.get("boot_mode") or "boot mode of the server")]
    disks = []
    for disk in layout.get("disks") or []:
        hints = root_hints.format_hints(disk.get("hints")) or "any disk"
        inner = ", ".join(" ".join(filter(None, [p["id"], str(p["size"]), use(p)])) for p in disk["partitions"])
        disks.append(f"{disk['id']} ({hints}) [{inner}]")
    parts.append("disks " + "; ".join(disks))
    parts += [f"raid {a['id']} level {a['level']} [{' '.join(a['devices'])}]" for a in layout.get("raid") or []]
    for vg in layout.get("lvm") or []:
        lvs = ", ".join(" ".join(filter(None, [lv["id"], str(lv["size"]), use(lv)])) for lv in vg["lvs"])
        parts.append(f"vg {vg['id']} [{' '.join(vg['devices'])}]: {lvs}")
    first = (layout.get("disks") or [{}])[0].get("id", "?")
    parts.append(f"config drive on {(layout.get('configdrive') or {}).get('disk') or first}")
    return ", ".join(parts)
