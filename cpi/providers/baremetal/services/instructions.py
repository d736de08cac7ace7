"""A job's instructions as the shell assignments the deploy ramdisk sources (``GET /v1/nodes/<node>/instructions``).

The source is ``Job.instructions`` (keys: the lower-case names below without ``SF_``). The output is one assignment
per line, every value single-quoted with ``'`` written as ``'\\''``, so busybox ``sh`` can ``.`` it safely::

    SF_MODE='deploy'
    SF_IMAGE_URL='http://10.1.2.1:8080/images/sc-1/root.img'
    SF_IMAGE_SHA256='<64 hex>'
    SF_IMAGE_SIZE='4294967296'
    SF_IMAGE_FORMAT='raw'
    SF_CONFIGDRIVE_URL='http://10.1.2.1:8080/v1/nodes/n1/configdrive'
    SF_ROOT_HINTS='size=>=4 serial=QM0001'
    SF_HEARTBEAT_S='10'
    SF_ERASE='full'            (clean jobs: metadata | full)

Contract of :func:`render_instructions`: an unknown key, a missing required key (deploy: image_url, image_sha256,
image_size) or a value of the wrong type raises :class:`InstructionsError` naming the node and the key; nothing is
dropped silently. CORE may call :func:`validate_instructions` before ``start_job`` to fail early.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

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
ROOT_HINT_KEYS: Final = ("size", "name", "serial", "wwn", "model")
IMAGE_FORMATS: Final = ("raw", "gzip")
MODES: Final = ("deploy", "clean")
#: Cleaning depth (``erase``, clean jobs only): ``metadata`` (default: config drives, every filesystem/RAID/LVM
#: signature and ext superblock copy, first MiB, last 66 MiB) or ``full`` (also the whole disk: discard + zeroing).
ERASE_MODES: Final = ("metadata", "full")

_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_SIZE_HINT_RE: Final = re.compile(r"^(>=|<=|>|<)?\s*([0-9]+)$")
#: Hint values are words of an unquoted ``for h in $SF_ROOT_HINTS`` in the ramdisk: no spaces, quotes, '=',
#: backslashes or glob characters.
_HINT_VALUE_RE: Final = re.compile(r"^[^\s'\"\\=*?\[\]]+$")


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
    """``{"serial": "X", "size": ">=4"}`` (or ``"size=>=4 serial=X"``) → ``size=>=4 serial=X`` (fixed order)."""
    if isinstance(value, str):
        pairs: list[tuple[str, Any]] = []
        for word in value.split():
            name, sep, hint = word.partition("=")
            if not sep:
                raise fail("root_hints", f"{word!r} is not key=value")
            pairs.append((name, hint))
    elif isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        raise fail("root_hints", f"must be a mapping or 'key=value ...', not {type(value).__name__}")
    words: list[tuple[int, str]] = []
    for name, hint in pairs:
        if name not in ROOT_HINT_KEYS:
            raise fail(f"root_hints.{name}", f"unknown root-device hint; allowed: {', '.join(ROOT_HINT_KEYS)}")
        if isinstance(hint, bool) or not isinstance(hint, str | int):
            raise fail(f"root_hints.{name}", f"must be a string or an integer, not {type(hint).__name__}")
        text = str(hint).strip()
        if name == "size":
            size = _SIZE_HINT_RE.match(text)
            if not size:
                raise fail("root_hints.size", f"must be GiB as N, >=N, <=N, >N or <N, got {text!r}")
            text = f"{size.group(1) or ''}{size.group(2)}"
        elif not _HINT_VALUE_RE.match(text):
            raise fail(
                f"root_hints.{name}", f"must be one word without spaces, quotes, '=', '\\' or '*?[]', got {text!r}"
            )
        words.append((ROOT_HINT_KEYS.index(name), f"{name}={text}"))
    return " ".join(word for _, word in sorted(words))


def render_instructions(node: str, kind: str, instructions: Mapping[str, Any]) -> str:
    """The ``text/plain`` body of ``/v1/nodes/<node>/instructions``: ``SF_<KEY>='value'`` lines."""
    rendered = validate_instructions(node, kind, instructions)
    return "".join(f"SF_{key.upper()}={shell_quote(text)}\n" for key, text in rendered.items())
