"""Inspection reports (Ironic's inspector, MAAS commissioning): what the ramdisk's inspect mode found.

The ramdisk (``ramdisk/inspect.sh``) sends ``{"inventory": {...}}`` as the data of its ``result`` event;
:func:`parse_report` checks it against :data:`REPORT_SCHEMA` (jsonschema; errors name the field path, e.g.
``inventory/disks/0/size``) and returns the inventory that ``store.set_inspection`` records with its time:

* ``disks``: Ironic's device fields (``name`` (kernel name), ``size`` (bytes), ``model``, ``vendor``, ``serial``,
  ``wwn``, ``wwn_with_extension``, ``wwn_vendor_extension``, ``rotational``, ``hctl``, ``by_path``) -- exactly what
  root-device hints (:mod:`.root_hints`) match against;
* ``nics``: ``name``, ``mac``, ``link`` (carrier; null when down), ``speed_mbps`` (null when the kernel does not
  know), ``driver``;
* ``cpu`` (``count``, ``arch``, ``model``), ``memory`` (``total_bytes`` = MemTotal, ``physical_mib`` = online
  memory blocks), ``boot`` (``mode``: ``uefi`` | ``bios``), ``firmware`` (DMI strings: ``bios_vendor``,
  ``bios_version``, ``bios_date``, ``sys_vendor``, ``product_name``, ``board_vendor``, ``board_name``), ``kernel``.

Hardware changes: every deploy ramdisk reports the disks it finds (``POST root-device``) before it writes; when
the node has an inspection, :func:`disk_set` of both (serial, or the kernel name of a disk without one, and size)
must be equal, else the deploy fails at ``disk-select`` naming the missing and the new disks (a replaced, added or
removed disk); ``stemforge metal inspect NODE`` records the new hardware. ``metal serve`` also records the change
as event ``hardware-change``, and ``placement.py`` refuses the server for new VMs until it is inspected again
(likewise a server never inspected).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from cpi.errors import CpiError
from cpi.providers.baremetal.root_hints import GIB
from cpi.validation import validate

_STR: Final = {"type": "string", "maxLength": 512}
_MAC: Final = "^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
_DISK_TEXT: Final = (
    "model",
    "vendor",
    "serial",
    "wwn",
    "wwn_with_extension",
    "wwn_vendor_extension",
    "hctl",
    "by_path",
)

REPORT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["inventory"],
    "properties": {
        "inventory": {
            "type": "object",
            "required": ["disks", "nics", "cpu", "memory", "boot"],
            "properties": {
                "disks": {
                    "type": "array",
                    "maxItems": 256,
                    "items": {
                        "type": "object",
                        "required": ["name", "size"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[a-z][a-z0-9]{0,31}$"},
                            "device": _STR,
                            "size": {"type": "integer", "minimum": 1},
                            "rotational": {"type": ["boolean", "null"]},
                            **{k: _STR for k in _DISK_TEXT},
                        },
                    },
                },
                "nics": {
                    "type": "array",
                    "maxItems": 64,
                    "items": {
                        "type": "object",
                        "required": ["name", "mac"],
                        "properties": {
                            "name": _STR,
                            "mac": {"type": "string", "pattern": _MAC},
                            "link": {"type": ["boolean", "null"]},
                            "speed_mbps": {"type": ["integer", "null"], "minimum": 0},
                            "driver": _STR,
                        },
                    },
                },
                "cpu": {
                    "type": "object",
                    "required": ["count", "arch"],
                    "properties": {"count": {"type": "integer", "minimum": 1}, "arch": _STR, "model": _STR},
                },
                "memory": {
                    "type": "object",
                    "required": ["total_bytes"],
                    "properties": {
                        "total_bytes": {"type": "integer", "minimum": 0},
                        "physical_mib": {"type": ["integer", "null"], "minimum": 0},
                    },
                },
                "boot": {
                    "type": "object",
                    "required": ["mode"],
                    "properties": {"mode": {"enum": ["uefi", "bios"]}},
                },
                "firmware": {"type": "object", "additionalProperties": _STR},
                "kernel": _STR,
            },
        }
    },
}


class InspectionError(ValueError):
    """A report that is not an inspection inventory; the message names the field."""


def parse_report(data: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The ``inventory`` of a ramdisk's inspection ``result`` data, validated; raises InspectionError."""
    try:
        validate(f"inspection report of node {node}", REPORT_SCHEMA, dict(data))
    except CpiError as exc:
        raise InspectionError(exc.message) from None
    return dict(data["inventory"])


def disk_set(inventory: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The disks as (serial or kernel name, size) pairs, sorted: what a hardware change is judged by."""
    return sorted((str(d.get("serial") or d["name"]), int(d["size"])) for d in inventory.get("disks", []))


def public(record: Any, now: float | None = None) -> dict[str, Any]:
    """``metal show``'s view of a ``store.Inspection``: the time (UTC, and age) and the inventory."""
    now = time.time() if now is None else now
    return {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.ts)),
        "age_s": round(now - record.ts, 1),
        **record.data,
    }


def summary(inventory: Mapping[str, Any]) -> str:
    """One line: ``bios, 1 x86_64 CPU(s), 512 MiB, disks vda 4.0 GiB (serial S), NICs 52:54:..``."""
    cpu, memory = inventory.get("cpu", {}), inventory.get("memory", {})
    mib = memory.get("physical_mib") or int(memory.get("total_bytes", 0)) // (1 << 20)
    disks = ", ".join(
        f"{d['name']} {int(d['size']) / GIB:.1f} GiB" + (f" (serial {d['serial']})" if d.get("serial") else "")
        for d in inventory.get("disks", [])
    )
    nics = ", ".join(str(n["mac"]) for n in inventory.get("nics", []))
    return (
        f"{inventory.get('boot', {}).get('mode', '?')}, {cpu.get('count', '?')} {cpu.get('arch', '?')} CPU(s), "
        f"{mib} MiB, disks {disks or 'none'}, NICs {nics or 'none'}"
    )
