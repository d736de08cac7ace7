"""Go standard-library behaviour the template functions print with: ``fmt.Sprint``, ``strings.ToUpper/ToLower/
Split/Replace`` and ``time.Format`` reference layouts."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from typing import Any


def go_sprint(value: Any) -> str:
    """Go's ``fmt.Sprint`` for the values templates produce."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_sprint(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def go_upper(s: str) -> str:
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in s)


def go_lower(s: str) -> str:
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in s)


def go_split(s: str, sep: str) -> list[str]:
    if sep == "":
        return list(s)
    return s.split(sep)


def go_replace(s: str, old: str, new: str, n: int) -> str:
    """Go's ``strings.Replace`` (n < 0 = all; empty ``old`` inserts around every character)."""
    if n == 0 or old == new:
        return s
    if old == "":
        out: list[str] = []
        count = 0
        for ch in s:
            if n < 0 or count < n:
                out.append(new)
                count += 1
            out.append(ch)
        if n < 0 or count < n:
            out.append(new)
        return "".join(out)
    return s.replace(old, new, n if n >= 0 else -1)


MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _h12(t: _dt.datetime) -> int:
    return t.hour % 12 or 12


def _yday(t: _dt.datetime) -> int:
    return t.timetuple().tm_yday


#: Go's ``time.Format`` layout elements (``time/format.go`` ``nextStdChunk``), tried in this order at each position;
#: times are UTC, so zone elements print ``UTC``, ``Z`` or a zero offset.
_LAYOUT: tuple[tuple[str, Callable[[_dt.datetime], str]], ...] = (
    ("January", lambda t: MONTHS[t.month - 1]),
    ("Jan", lambda t: MONTHS[t.month - 1][:3]),
    ("Monday", lambda t: DAYS[t.weekday()]),
    ("Mon", lambda t: DAYS[t.weekday()][:3]),
    ("MST", lambda t: "UTC"),
    ("2006", lambda t: f"{t.year:04d}"),
    ("002", lambda t: f"{_yday(t):03d}"),
    ("01", lambda t: f"{t.month:02d}"),
    ("02", lambda t: f"{t.day:02d}"),
    ("03", lambda t: f"{_h12(t):02d}"),
    ("04", lambda t: f"{t.minute:02d}"),
    ("05", lambda t: f"{t.second:02d}"),
    ("06", lambda t: f"{t.year % 100:02d}"),
    ("15", lambda t: f"{t.hour:02d}"),
    ("__2", lambda t: f"{_yday(t):3d}"),
    ("_2", lambda t: f"{t.day:2d}"),  # not in "_2006" (a literal "_" then the year)
    ("1", lambda t: str(t.month)),
    ("2", lambda t: str(t.day)),
    ("3", lambda t: str(_h12(t))),
    ("4", lambda t: str(t.minute)),
    ("5", lambda t: str(t.second)),
    ("PM", lambda t: "PM" if t.hour >= 12 else "AM"),
    ("pm", lambda t: "pm" if t.hour >= 12 else "am"),
    *((zone, lambda t, z=zone: "+" + z[1:].replace("7", "0"))
      for zone in ("-07:00:00", "-070000", "-07:00", "-0700", "-07")),
    *((zone, lambda t: "Z") for zone in ("Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07")),
)


def _fraction(t: _dt.datetime, rest: str) -> tuple[str, int]:
    """A ``.000``/``,999`` fractional-seconds element at the start of ``rest``: (text, layout characters used);
    a run of 0s or 9s followed by another digit is not one (the separator is literal)."""
    digit = rest[1]
    j = 1
    while j < len(rest) and rest[j] == digit:
        j += 1
    if j < len(rest) and rest[j].isdigit():
        return rest[0], 1
    frac = f"{t.microsecond:06d}000"[:j - 1]
    if digit == "9":
        frac = frac.rstrip("0")
        return (rest[0] + frac if frac else ""), j
    return rest[0] + frac, j


def go_time_format(t: _dt.datetime, layout: str) -> str:
    """Format a UTC time with a Go reference layout (``2006-01-02T15:04:05Z07:00``)."""
    out: list[str] = []
    i = 0
    while i < len(layout):
        rest = layout[i:]
        for token, render in _LAYOUT:
            if rest.startswith(token) and not (token == "_2" and rest.startswith("_2006")):
                out.append(render(t))
                i += len(token)
                break
        else:
            if rest[0] in ".," and len(rest) > 1 and rest[1] in "09":
                text, used = _fraction(t, rest)
            else:
                text, used = rest[0], 1
            out.append(text)
            i += used
    return "".join(out)
