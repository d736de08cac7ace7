"""A job's instructions as the shell assignments the deploy ramdisk sources (``GET /v1/nodes/<node>/instructions``).

The source is ``Job.instructions`` (keys: the lower-case names below without ``SF_``). The output is one assignment
per line, every value single-quoted with ``'`` written as ``'\\''``, so busybox ``sh`` can ``.`` it safely::

    SF_MODE='deploy'
    SF_IMAGE_URL='http://10.1.2.1:8080/images/sc-1/root.img'
    SF_IMAGE_SHA256='<64 hex>'
    SF_IMAGE_SIZE='4294967296'
    SF_IMAGE_FORMAT='raw'
    SF_CONFIGDRIVE_URL='http://10.1.2.1:8080/v1/nodes/n1/configdrive'
    SF_ROOT_HINTS='size=>=4 serial=QM0001'   (shown only: the ramdisk asks for its root disk, see below)
    SF_HEARTBEAT_S='10'
    SF_ERASE='full'            (clean jobs: metadata | full)
    SF_DEPLOY_KIND='layout'    (absent or whole-disk: the image onto the root disk; layout: file-based, below)
    SF_ROOTFS_URL=...  SF_ROOTFS_OFFSET=...  SF_ROOTFS_SIZE=...  SF_ROOTFS_SHA256=...  SF_ROOTFS_FSTYPE='ext4'
    SF_ROOTFS_FORMAT='gzip'    (layout deploys: the image's root filesystem; raw: the partition's bytes of the
                               image, fetched with Range: bytes=OFF-END; gzip: a file of its own, offset 0, SIZE
                               the inflated bytes, SHA256 of the gzip bytes, as SF_IMAGE_FORMAT=gzip)

A layout deploy's job also carries ``layout`` (the document, :mod:`.layout`) and ``boot_mode``; they are not
written as lines: the ramdisk POSTs its disks to ``/v1/nodes/<node>/layout`` and gets :func:`render_layout_answer`
(``lay_*`` lines, or ``SF_LAYOUT_ERROR='...'``).

Contract of :func:`render_instructions`: an unknown key, a missing required key (deploy: image_url, image_sha256,
image_size) or a value of the wrong type raises :class:`InstructionsError` naming the node and the key; nothing is
dropped silently. CORE may call :func:`validate_instructions` before ``start_job`` to fail early.

Root disk (``POST /v1/nodes/<node>/root-device``): a deploy ramdisk reports the disks it sees
(``{"disks": [{"name": "vda", "size": <bytes>, "serial": ..., "model": ..., "vendor": ..., "wwn": ...,
"rotational": ..., "hctl": ..., "by_path": ...}]}``) and :func:`render_root_device` answers with the disk
:mod:`cpi.providers.baremetal.root_hints` selects for the job's ``root_hints`` (``SF_ROOT_DEVICE='vda'``), or why
none qualifies (``SF_ROOT_ERROR='no disk matches the root device hints ...; disks seen: ...'``). The hint rules
exist once, in Python; the ramdisk never interprets hints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from cpi.providers.baremetal import layout
from cpi.providers.baremetal import root_hints as rh
from cpi.providers.baremetal.inspection import disk_set

#: Keys a job may carry, in the order they are written.
KEYS: Final = (
    "mode",
    "image_url",
    "image_sha256",
    "image_size",
    "image_format",
    "configdrive_url",
    "root_hints",
    "heartbeat_s",
    "erase",
    "deploy_kind",
    "rootfs_url",
    "rootfs_offset",
    "rootfs_size",
    "rootfs_sha256",
    "rootfs_fstype",
    "rootfs_format",
)
#: Keys a job may carry that are not written as ``SF_*`` lines: a layout deploy's layout document and the boot
#: mode the provider expects, read by :func:`render_layout_answer` when the ramdisk asks (``POST layout``).
HIDDEN_KEYS: Final = ("layout", "boot_mode")
REQUIRED_FOR_DEPLOY: Final = ("image_url", "image_sha256", "image_size")
REQUIRED_FOR_LAYOUT: Final = ("rootfs_url", "rootfs_offset", "rootfs_size", "rootfs_sha256", "rootfs_fstype", "layout")
DEPLOY_KINDS: Final = ("whole-disk", "layout")
#: The filesystems a layout deploy can stream as the image's root partition (then grown with resize2fs).
ROOTFS_TYPES: Final = ("ext4",)
ROOT_HINT_KEYS: Final = rh.HINT_ORDER
IMAGE_FORMATS: Final = ("raw", "gzip")
MODES: Final = ("deploy", "clean", "inspect")
#: Cleaning depth (``erase``, clean jobs only): ``metadata`` (default: config drives, every filesystem/RAID/LVM
#: signature and ext superblock copy, first MiB, last 66 MiB) or ``full`` (also the whole disk: discard + zeroing).
ERASE_MODES: Final = ("metadata", "full")

_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
#: A disk's kernel name as the ramdisk reports it (also safe in a shell word).
_KERNEL_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9]{0,31}$")
MAX_REPORTED_DISKS: Final = 256


class InstructionsError(ValueError):
    """Instructions the ramdisk cannot be given; the message names the node and the key."""


def shell_quote(value: str) -> str:
    """``value`` single-quoted for ``sh`` (``'`` becomes ``'\\''``)."""
    return "'" + value.replace("'", "'\\''") + "'"


def validate_instructions(node: str, kind: str, instructions: Mapping[str, Any]) -> dict[str, str]:
    """The instructions as ``{KEY: text}`` in :data:`KEYS` order (``mode`` defaults to ``kind``); raises if bad."""

    def fail(key: str, problem: str) -> InstructionsError:
        return InstructionsError(f"job instructions of node {node!r}: {key}: {problem}")

    unknown = sorted(str(k) for k in instructions if k not in KEYS and k not in HIDDEN_KEYS)
    if unknown:
        raise fail(", ".join(unknown), f"unknown key(s); allowed: {', '.join((*KEYS, *HIDDEN_KEYS))}")
    mode = instructions.get("mode", kind)
    if mode not in MODES:
        raise fail("mode", f"must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != kind:
        raise fail("mode", f"{mode!r} does not match the job kind {kind!r}")
    if mode == "deploy":
        missing = [k for k in REQUIRED_FOR_DEPLOY if instructions.get(k) in (None, "")]
        if missing:
            raise fail(", ".join(missing), "required for a deploy job")
    out: dict[str, str] = {}
    for key in KEYS:
        value = mode if key == "mode" else instructions.get(key)
        if value is None:
            continue
        text = _render_value(key, value, fail)
        if "\n" in text or "\r" in text or "\x00" in text:
            raise fail(key, "must not contain newlines or NUL bytes")
        out[key] = text
    if mode != "clean" and "erase" in out:
        raise fail("erase", "only a clean job erases disks")
    if mode == "deploy" and "image_format" not in out:
        out["image_format"] = "raw"
    _check_deploy_kind(mode, out, instructions, fail)
    return {k: out[k] for k in KEYS if k in out}


def _check_deploy_kind(mode: str, out: Mapping[str, str], instructions: Mapping[str, Any], fail: Any) -> None:
    """A layout deploy has the SF_ROOTFS_* keys, a layout (shape-checked) and, unless its root filesystem is a gzip
    file of its own (``rootfs_format: gzip``, offset 0), a raw image; other jobs have none."""
    layout_keys = [k for k in (*REQUIRED_FOR_LAYOUT, "rootfs_format", "boot_mode") if instructions.get(k) is not None]
    if out.get("deploy_kind") != "layout":
        if mode != "deploy" and "deploy_kind" in out:
            raise fail("deploy_kind", "only a deploy job has a deploy kind")
        if layout_keys:
            raise fail(", ".join(layout_keys), "only a layout deploy (deploy_kind: layout) takes these")
        return
    if mode != "deploy":
        raise fail("deploy_kind", "only a deploy job has a deploy kind")
    missing = [k for k in REQUIRED_FOR_LAYOUT if instructions.get(k) in (None, "")]
    if missing:
        raise fail(", ".join(missing), "required for a layout deploy (deploy_kind: layout)")
    if out.get("rootfs_format", "raw") == "gzip":
        if out["rootfs_offset"] != "0":
            raise fail("rootfs_offset", "a gzip root filesystem is a file of its own: its offset must be 0")
    elif out.get("image_format") != "raw":
        raise fail("image_format", "a layout deploy reads the image's root partition by range: it must be raw")
    if instructions.get("boot_mode") not in (None, "uefi", "bios"):
        raise fail("boot_mode", f"must be uefi or bios, not {instructions['boot_mode']!r}")
    try:
        layout.check_shape(instructions["layout"], "layout/")
    except layout.LayoutError as exc:
        raise fail("layout", str(exc).removeprefix("layout: ")) from None


def _render_value(key: str, value: Any, fail: Any) -> str:
    if key == "mode":
        return str(value)  # checked against MODES and the job kind by the caller
    if key in ("image_url", "configdrive_url"):
        if not isinstance(value, str):
            raise fail(key, f"must be a string URL, not {type(value).__name__}")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise fail(key, f"must be an http(s) URL, got {value!r}")
        return value
    if key == "image_sha256":
        if not isinstance(value, str) or not _SHA256_RE.match(value.lower()):
            raise fail(key, "must be 64 hex digits")
        return value.lower()
    if key == "image_size":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise fail(key, f"must be a positive integer (bytes), got {value!r}")
        return str(value)
    if key == "image_format":
        if value not in IMAGE_FORMATS:
            raise fail(key, f"must be one of {', '.join(IMAGE_FORMATS)}, not {value!r}")
        return str(value)
    if key == "heartbeat_s":
        number_ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not number_ok or value <= 0:
            raise fail(key, f"must be a positive number of seconds, got {value!r}")
        return str(math.ceil(value))  # the ramdisk counts whole seconds
    if key == "root_hints":
        return _render_root_hints(value, fail)
    if key == "deploy_kind":
        if value not in DEPLOY_KINDS:
            raise fail(key, f"must be one of {', '.join(DEPLOY_KINDS)}, not {value!r}")
        return str(value)
    if key == "rootfs_url":
        return _render_value("image_url", value, lambda _k, problem: fail(key, problem))
    if key == "rootfs_sha256":
        return _render_value("image_sha256", value, lambda _k, problem: fail(key, problem))
    if key in ("rootfs_offset", "rootfs_size"):
        low = 0 if key == "rootfs_offset" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise fail(key, f"must be an integer >= {low} (bytes), got {value!r}")
        return str(value)
    if key == "rootfs_fstype":
        if value not in ROOTFS_TYPES:
            raise fail(key, f"must be one of {', '.join(ROOTFS_TYPES)}, not {value!r}")
        return str(value)
    if key == "rootfs_format":
        if value not in IMAGE_FORMATS:
            raise fail(key, f"must be one of {', '.join(IMAGE_FORMATS)}, not {value!r}")
        return str(value)
    if key == "erase":
        if value not in ERASE_MODES:
            raise fail(key, f"must be one of {', '.join(ERASE_MODES)}, not {value!r}")
        return str(value)
    raise fail(key, "unknown key")  # unreachable: keys are checked first


def _render_root_hints(value: Any, fail: Any) -> str:
    """Hints (a mapping or ``"key=value ..."``) validated with Ironic's rules, shown as ``size=>=4 serial=X``."""
    try:
        return rh.format_hints(value)
    except rh.RootHintsError as exc:
        raise fail(exc.field, str(exc).split(": ", 1)[1]) from None


def render_instructions(node: str, kind: str, instructions: Mapping[str, Any]) -> str:
    """The ``text/plain`` body of ``/v1/nodes/<node>/instructions``: ``SF_<KEY>='value'`` lines."""
    rendered = validate_instructions(node, kind, instructions)
    return "".join(f"SF_{key.upper()}={shell_quote(text)}\n" for key, text in rendered.items())


def parse_disk_report(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``disks`` of a ramdisk's report, checked: a list of objects, each with a kernel ``name`` and a
    positive integer ``size`` (bytes); other attributes kept as sent. Raises ValueError naming the field."""
    disks = report.get("disks")
    if not isinstance(disks, list) or len(disks) > MAX_REPORTED_DISKS:
        raise ValueError(f"disks: must be a list of at most {MAX_REPORTED_DISKS} objects")
    checked: list[dict[str, Any]] = []
    for i, disk in enumerate(disks):
        if not isinstance(disk, dict):
            raise ValueError(f"disks[{i}]: must be an object")
        name, size = disk.get("name"), disk.get("size")
        if not isinstance(name, str) or not _KERNEL_NAME_RE.match(name):
            raise ValueError(f"disks[{i}].name: must be a kernel disk name like vda, got {name!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"disks[{i}].size: must be a positive integer (bytes), got {size!r}")
        checked.append(dict(disk))
    return checked


def render_root_device(
    node: str,
    instructions: Mapping[str, Any],
    report: Mapping[str, Any],
    inspected: Mapping[str, Any] | None = None,
    inspected_at: str = "",
) -> str:
    """The answer to a deploy ramdisk's ``POST root-device``: ``SF_ROOT_DEVICE='<kernel name>'`` for the disk the
    job's ``root_hints`` select among the reported disks (Ironic's rules, :mod:`..root_hints`), else
    ``SF_ROOT_ERROR='<why, naming the hints and every disk seen>'``. A malformed report raises ValueError.

    Hardware changes: when the node was inspected (``inspected``: its recorded inventory), the disks found now
    must be the inspected ones (by serial, or kernel name without one, and size); otherwise the answer is an
    ``SF_ROOT_ERROR`` naming what was added and what is missing, so the deploy fails before writing."""
    disks = parse_disk_report(report)
    changed = disk_change(node, disks, inspected, inspected_at)
    if changed:
        return f"SF_ROOT_ERROR={shell_quote(changed)}\n"
    try:
        chosen = rh.select_root_device(disks, instructions.get("root_hints"))
    except (rh.NoRootDevice, rh.RootHintsError) as exc:
        return f"SF_ROOT_ERROR={shell_quote(f'node {node}: {exc}')}\n"
    return f"SF_ROOT_DEVICE={shell_quote(str(chosen['name']))}\n"


def disk_change(node: str, disks: list[dict[str, Any]], inspected: Mapping[str, Any] | None, inspected_at: str) -> str:
    """Why the reported ``disks`` are not the inspected ones (:func:`..inspection.disk_set`: serial, or kernel name
    without one, and size), naming what is missing and what is new; ``""`` when equal or never inspected."""
    if inspected is None:
        return ""
    before, now = disk_set(inspected), disk_set({"disks": disks})
    if before == now:
        return ""
    gone = ", ".join(f"{k} ({v / rh.GIB:.1f} GiB)" for k, v in before if (k, v) not in now) or "none"
    new = ", ".join(f"{k} ({v / rh.GIB:.1f} GiB)" for k, v in now if (k, v) not in before) or "none"
    return (f"node {node}: its disks changed since the inspection{' of ' + inspected_at if inspected_at else ''}: "
            f"missing {gone}; new {new}; inspect it again (stemforge metal inspect {node})")  # fmt: skip


def render_layout_answer(
    node: str,
    instructions: Mapping[str, Any],
    report: Mapping[str, Any],
    inspected: Mapping[str, Any] | None = None,
    inspected_at: str = "",
) -> str:
    """The answer to a layout-deploy ramdisk's ``POST layout`` (``{"disks": [...]}`` as for root-device): the
    job's ``layout`` validated against the reported disks (:func:`..layout.validate_layout`) and rendered as the
    ``lay_*`` lines of :func:`render_layout_plan`, or one line ``SF_LAYOUT_ERROR='<why>'`` when the disks differ
    from the node's last inspection (``inspected``), the layout does not fit them, its boot mode is not the
    server's (the inspection's ``boot.mode``, else the job's ``boot_mode``) or its ``/`` is not the image's
    root-filesystem type (``rootfs_fstype``). A malformed report raises ValueError."""
    disks = parse_disk_report(report)

    def error(why: str) -> str:
        return f"SF_LAYOUT_ERROR={shell_quote(f'node {node}: {why}'.replace(chr(10), ' '))}\n"

    changed = disk_change(node, disks, inspected, inspected_at)
    if changed:
        return error(changed.removeprefix(f"node {node}: "))
    document = instructions.get("layout")
    if not isinstance(document, Mapping):
        return error("the deploy job has no layout (deploy_kind is not layout)")
    server_mode = str(((inspected or {}).get("boot") or {}).get("mode") or instructions.get("boot_mode") or "")
    wanted = str(document.get("boot_mode") or server_mode)
    if server_mode and wanted != server_mode:
        return error(f"layout: boot_mode: the layout is for {wanted} but the server boots {server_mode}")
    try:
        plan = layout.validate_layout(document, disks, wanted)
    except layout.LayoutError as exc:
        return error(str(exc))
    fstype = str(instructions.get("rootfs_fstype") or "ext4")
    root = plan.devices[plan.root]
    if root.spec.get("filesystem") != fstype:
        return error(
            f"layout: {root.where}/filesystem: / is {root.spec.get('filesystem')} but the root filesystem of the "
            f"image is {fstype} (it is streamed, not copied file by file)"
        )
    return render_layout_plan(plan)


def _part_type(device: layout.Device) -> str:
    spec = device.spec
    if spec.get("esp"):
        return "esp"
    if spec.get("bios_grub"):
        return "bios_grub"
    if device.used_by.startswith("array "):
        return "raid"
    if device.used_by.startswith("volume group "):
        return "lvm"
    return "swap" if spec.get("filesystem") == "swap" else "linux"


def render_layout_plan(plan: layout.Plan) -> str:
    """A validated plan as the ramdisk's ``lay_*`` lines (the grammar in the project's spec, section 2; every
    argument :func:`shell_quote`-d): boot mode; each layout disk and its kernel name; its GPT partitions in order
    (sizes in MiB, ``fill`` for the rest); the config-drive partition after them; arrays; VGs; LVs (sized, then the
    fill); filesystems (``/`` first, then by mount depth, unmounted ones last); the ESPs (the ``/boot/efi`` one
    first); ``lay_go``."""

    def line(*words: object) -> str:
        return " ".join([str(words[0]), *(shell_quote(str(w)) for w in words[1:])]) + "\n"

    out = [line("lay_boot_mode", plan.boot_mode)]
    out += [line("lay_disk", disk_id, disk["name"]) for disk_id, disk in plan.disks.items()]
    numbers: dict[str, int] = {}
    for device in plan.devices.values():
        if device.kind != "partition":
            continue
        (disk_id,) = device.disks
        numbers[disk_id] = numbers.get(disk_id, 0) + 1
        size = "fill" if device.spec["size"] == "fill" else device.size_mib
        out.append(line("lay_part", disk_id, numbers[disk_id], device.id, size, _part_type(device)))
    out.append(line("lay_configdrive", plan.configdrive, numbers.get(plan.configdrive, 0) + 1))
    for device in plan.devices.values():
        if device.kind == "raid":
            out.append(line("lay_raid", device.id, device.spec["level"], *device.spec["devices"]))
    for vg_id, pvs in plan.volume_groups.items():
        out.append(line("lay_vg", vg_id, *pvs))
    lvs = [d for d in plan.devices.values() if d.kind == "lv"]
    for device in sorted(lvs, key=lambda d: d.spec["size"] == "fill"):
        out.append(
            line("lay_lv", device.group, device.id, "fill" if device.spec["size"] == "fill" else device.size_mib)
        )
    filesystems = [d for d in plan.devices.values() if d.spec.get("filesystem")]

    def order(device: layout.Device) -> tuple[int, int, str]:
        mount = str(device.spec.get("mount") or "")
        return (0 if mount else 1, 0 if mount == "/" else mount.count("/"), mount)

    for device in sorted(filesystems, key=order):
        out.append(line("lay_fs", device.id, device.spec["filesystem"], device.spec.get("mount") or "-"))
    esps = sorted(
        (d for d in plan.devices.values() if d.spec.get("esp")), key=lambda d: d.spec.get("mount") != "/boot/efi"
    )
    if esps:
        out.append(line("lay_esp", *(d.id for d in esps)))
    out.append("lay_go\n")
    return "".join(out)
