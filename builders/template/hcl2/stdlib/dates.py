"""Packer's date and time functions: ``formatdate``, ``timeadd`` and the run clock (``timestamp``,
``legacy_isotime``, ``legacy_strftime``, one time per run).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from builders.template.gotemplate.gostd import go_time_format
from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_string
from stemforge_base.durations import parse_duration

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _parse_rfc3339(s: str, index: int = 0) -> _dt.datetime:
    m = _RFC3339.fullmatch(s)
    if not m:
        raise FunctionArgumentError(f'not a valid RFC3339 timestamp: cannot use "{s}" as year', index)
    tz = _dt.UTC if m.group(8) == "Z" else _dt.datetime.strptime(m.group(8).replace(":", ""), "%z").tzinfo
    frac = m.group(7) or ""
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    return _dt.datetime(y, mo, d, h, mi, sec, micro, tzinfo=tz)


_FORMATDATE = re.compile(r"'(?:[^']|'')*'|YYYY|YY|MMMM|MMM|MM|M|DD|D|EEEE|EEE|hh|h|HH|H|AA|aa|mm|m|ss|s"
                         r"|ZZZZZ|ZZZZ|ZZZ|Z|[A-Za-z]+|[^A-Za-z']+")


def f_formatdate(spec: Any, timestamp: Any) -> Any:
    t = _parse_rfc3339(as_string(timestamp, 1), 1)
    out: list[str] = []
    for m in _FORMATDATE.finditer(as_string(spec)):
        tok = m.group(0)
        off = t.utcoffset() or _dt.timedelta(0)
        mins = int(off.total_seconds() // 60)
        sign = "+" if mins >= 0 else "-"
        hh, mm = divmod(abs(mins), 60)
        table = {
            "YYYY": f"{t.year:04d}", "YY": f"{t.year % 100:02d}", "MMMM": t.strftime("%B"), "MMM": t.strftime("%b"),
            "MM": f"{t.month:02d}", "M": str(t.month), "DD": f"{t.day:02d}", "D": str(t.day),
            "EEEE": t.strftime("%A"), "EEE": t.strftime("%a"), "hh": f"{t.hour:02d}", "h": str(t.hour),
            "HH": f"{(t.hour % 12) or 12:02d}", "H": str((t.hour % 12) or 12), "AA": "PM" if t.hour >= 12 else "AM",
            "aa": "pm" if t.hour >= 12 else "am", "mm": f"{t.minute:02d}", "m": str(t.minute),
            "ss": f"{t.second:02d}", "s": str(t.second),
            "ZZZZZ": "Z" if mins == 0 else f"{sign}{hh:02d}:{mm:02d}",
            "ZZZZ": f"{sign}{hh:02d}{mm:02d}", "ZZZ": "UTC" if mins == 0 else f"{sign}{hh:02d}{mm:02d}",
            "Z": "Z" if mins == 0 else f"{sign}{hh:02d}:{mm:02d}",
        }
        if tok.startswith("'"):
            out.append(tok[1:-1].replace("''", "'"))
        elif tok in table:
            out.append(table[tok])
        elif tok[0].isalpha():
            raise FunctionArgumentError(f'invalid date format verb "{tok}": unrecognized format sequence', 0)
        else:
            out.append(tok)
    return "".join(out)


def f_timeadd(timestamp: Any, duration: Any) -> Any:
    t = _parse_rfc3339(as_string(timestamp))
    d = as_string(duration, 1)
    try:
        seconds = parse_duration(d, mode="go")  # cty's timeadd: time.ParseDuration
    except ValueError:
        raise FunctionArgumentError(f'time: invalid duration "{d}"', 1) from None
    return _rfc3339(t + _dt.timedelta(seconds=seconds))


def _rfc3339(t: _dt.datetime) -> str:
    off = t.utcoffset()
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += ("." + f"{t.microsecond:06d}").rstrip("0")
    if not off:
        return text + "Z"
    mins = int(off.total_seconds() // 60)
    sign = "+" if mins >= 0 else "-"
    hh, mm = divmod(abs(mins), 60)
    return f"{text}{sign}{hh:02d}:{mm:02d}"


def run_clock(now: _dt.datetime) -> dict[str, Function]:
    """``timestamp``, ``legacy_isotime`` and ``legacy_strftime``: the run's one time ``now`` (one value per run)."""
    def f_timestamp() -> Any:
        return _rfc3339(now.replace(microsecond=0))

    def f_legacy_isotime(*fmt: Any) -> Any:
        if not fmt:
            return now.strftime("%Y-%m-%dT%H:%M:%SZ")
        return go_time_format(now, as_string(fmt[0]))

    def f_legacy_strftime(fmt: Any) -> Any:
        return now.strftime(as_string(fmt))

    return {"timestamp": f_timestamp, "legacy_isotime": f_legacy_isotime, "legacy_strftime": f_legacy_strftime}


FUNCTIONS: dict[str, Function] = {
    "formatdate": f_formatdate, "timeadd": f_timeadd,
}
