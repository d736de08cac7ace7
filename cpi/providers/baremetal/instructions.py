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
)
REQUIRED_FOR_DEPLOY: Final = ("image_url", "image_sha256", "image_size")
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

    unknown = sorted(str(k) for k in instructions if k not in KEYS)
    if unknown:
        raise fail(", ".join(unknown), f"unknown key(s); allowed: {', '.join(KEYS)}")
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
    return {k: out[k] for k in KEYS if k in out}


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
    if inspected is not None:
        before, now = disk_set(inspected), disk_set({"disks": disks})
        if before != now:
            gone = ", ".join(f"{k} ({v / rh.GIB:.1f} GiB)" for k, v in before if (k, v) not in now) or "none"
            new = ", ".join(f"{k} ({v / rh.GIB:.1f} GiB)" for k, v in now if (k, v) not in before) or "none"
            why = (f"node {node}: its disks changed since the inspection{' of ' + inspected_at if inspected_at else ''}"
                   f": missing {gone}; new {new}; inspect it again (stemforge metal inspect {node})")  # fmt: skip
            return f"SF_ROOT_ERROR={shell_quote(why)}\n"
    try:
        chosen = rh.select_root_device(disks, instructions.get("root_hints"))
    except (rh.NoRootDevice, rh.RootHintsError) as exc:
        return f"SF_ROOT_ERROR={shell_quote(f'node {node}: {exc}')}\n"
    return f"SF_ROOT_DEVICE={shell_quote(str(chosen['name']))}\n"
