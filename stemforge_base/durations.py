"""Durations: the one parser of Go's ``time.Duration`` text (``"1h30m"``, ``"500ms"``) and of the looser values
stemforge's own options accept, chosen by an explicit mode.

Contract of :func:`parse_duration` (seconds as a float; ``ValueError`` otherwise):

* ``mode="go"``: exactly Go's ``time.ParseDuration`` on a string (``src/time/format.go``): an optional sign, then
  one or more ``<number><unit>`` parts (units ``ns``, ``us``, ``µs``, ``μs``, ``ms``, ``s``, ``m``, ``h``; a
  number is ``12``, ``1.5``, ``1.`` or ``.5``), or ``"0"`` alone. The error text is Go's (``time: invalid duration
  "x"``, ``time: missing unit in duration "5"``, ``time: unknown unit "d" in duration "5d"``), which Packer prints
  verbatim. Used by template decoding, HCL's ``timeadd`` and pipeline ``timeout`` steps.
* ``mode="packer"``: a builder option as Packer's weak decoding takes it: Go text as above, plus ``""`` and the
  number ``0`` for zero; any other number is refused (Packer reads it as nanoseconds, which is never what a
  template means: write ``"30s"``). Used by the qemu and amazon builders' options and ``<waitXX>`` in boot commands.
* ``mode="seconds"``: a stemforge option: Go text, a bare number (``5``, ``"7"``, ``2.5``) meaning seconds, a
  ``timedelta``, or ``None``/``""`` for zero. Used by provisioner and cpi-test options.

``field_name``, when given, starts the error message (``"pause_after: invalid duration 'soon' ..."``); the
``packer`` and ``seconds`` modes then name the accepted forms. Imports only ``re`` (cheap).
"""

from __future__ import annotations

import re
from typing import Final, Literal

DurationMode = Literal["go", "packer", "seconds"]

#: Seconds per unit, as Go's ``unitMap`` (``µs`` is U+00B5 MICRO SIGN, ``μs`` U+03BC GREEK SMALL LETTER MU).
UNIT_SECONDS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART: Final = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")
_BARE_SECONDS: Final = re.compile(r"\d+(\.\d+)?")
_EXAMPLES: Final = "(expected e.g. '30s', '5m', '1h30m', '500ms')"


def parse_duration(value: object, *, mode: DurationMode, field_name: str | None = None) -> float:
    """``value`` in seconds under ``mode`` (see the module docstring); ValueError naming ``field_name``."""
    prefix = f"{field_name}: " if field_name else ""
    if mode == "go":
        if not isinstance(value, str):
            raise ValueError(f"{prefix}expected a duration string such as \"5m\", got {value!r}")
        try:
            return _go(value)
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
    if mode not in ("packer", "seconds"):
        raise ValueError(f"unknown duration mode {mode!r}")
    if isinstance(value, bool):
        raise ValueError(f"{prefix}expected a duration such as '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        if mode == "seconds" or value == 0:
            return float(value)
        raise ValueError(f"{prefix}{value!r} is not a duration (write it with a unit, e.g. \"{value}s\")")
    if mode == "seconds":
        if value is None:
            return 0.0
        total_seconds = getattr(value, "total_seconds", None)
        if callable(total_seconds):
            return float(total_seconds())
    text = str(value).strip()
    if text == "" or (mode == "seconds" and _BARE_SECONDS.fullmatch(text)):
        return float(text or 0)
    try:
        return _go(text)
    except ValueError:
        raise ValueError(f"{prefix}invalid duration {text!r} {_EXAMPLES}") from None


def _go(text: str) -> float:
    """Go's ``time.ParseDuration`` (seconds), with Go's error messages."""
    quoted = '"' + text + '"'
    body, sign = text, 1.0
    if body[:1] in ("+", "-"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {quoted}")
    total, pos = 0.0, 0
    while pos < len(body):
        match = _PART.match(body, pos)
        assert match is not None  # both groups may be empty: the pattern always matches
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise ValueError(f"time: invalid duration {quoted}")
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in UNIT_SECONDS:
            raise ValueError(f'time: unknown unit "{unit}" in duration {quoted}')
        total += float(number) * UNIT_SECONDS[unit]
        pos = match.end()
    return sign * total
