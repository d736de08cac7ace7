"""stemforge_base.durations: one parser, three explicit modes (Go text, Packer options, stemforge seconds)."""

from __future__ import annotations

import datetime

import pytest

from stemforge_base.durations import parse_duration


@pytest.mark.parametrize("mode", ["go", "packer", "seconds"])
@pytest.mark.parametrize(("text", "seconds"), [
    ("1h2m3.5s", 3723.5), ("300ms", 0.3), ("1.5h", 5400.0), ("0", 0.0), ("-1m", -60.0), ("+2s", 2.0),
    (".5s", 0.5), ("1.s", 1.0), ("10us", 1e-5), ("10µs", 1e-5), ("10μs", 1e-5), ("-0", 0.0), ("1h30m", 5400.0),
])
def test_go_text_in_every_mode(mode: str, text: str, seconds: float) -> None:
    assert parse_duration(text, mode=mode) == pytest.approx(seconds)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "message"), [
    ("", 'time: invalid duration ""'), ("x", 'time: invalid duration "x"'), (".s", 'time: invalid duration ".s"'),
    ("-", 'time: invalid duration "-"'), ("5", 'time: missing unit in duration "5"'),
    ("1.2.3s", 'time: missing unit in duration "1.2.3s"'), ("5d", 'time: unknown unit "d" in duration "5d"'),
    ("5 minutes", 'time: unknown unit " minutes" in duration "5 minutes"'),
])
def test_go_mode_is_go_time_parse_duration(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text, mode="go")
    assert str(info.value) == message
    with pytest.raises(ValueError, match=f"^timeout: {message}$"):
        parse_duration(text, mode="go", field_name="timeout")


def test_go_mode_takes_only_strings() -> None:
    for value in (5, 0, None, True):
        with pytest.raises(ValueError, match="expected a duration string"):
            parse_duration(value, mode="go")


def test_packer_mode_zero_values_and_refused_numbers() -> None:
    assert parse_duration("", mode="packer") == 0.0 and parse_duration(0, mode="packer") == 0.0
    assert parse_duration(" 5m ", mode="packer") == 300.0
    with pytest.raises(ValueError, match=r'30 is not a duration \(write it with a unit, e\.g\. "30s"\)'):
        parse_duration(30, mode="packer")
    for bad in ("7", "soon", None, True):
        with pytest.raises(ValueError):
            parse_duration(bad, mode="packer")
    with pytest.raises(ValueError, match=r"^boot_wait: invalid duration '5 minutes' \(expected e\.g\. '30s'"):
        parse_duration("5 minutes", mode="packer", field_name="boot_wait")


def test_seconds_mode_numbers_timedeltas_and_empty() -> None:
    assert parse_duration(5, mode="seconds") == 5.0 and parse_duration(2.5, mode="seconds") == 2.5
    assert parse_duration("7", mode="seconds") == 7.0 and parse_duration("7.25", mode="seconds") == 7.25
    assert parse_duration(None, mode="seconds") == 0.0 and parse_duration("", mode="seconds") == 0.0
    assert parse_duration(datetime.timedelta(minutes=2), mode="seconds") == 120.0
    assert parse_duration("1m30s", mode="seconds") == 90.0
    with pytest.raises(ValueError, match="^pause_after: invalid duration 'soon'"):
        parse_duration("soon", mode="seconds", field_name="pause_after")
    with pytest.raises(ValueError, match="pause_after: expected a duration such as '30s' or '5m', got True"):
        parse_duration(True, mode="seconds", field_name="pause_after")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown duration mode 'weeks'"):
        parse_duration("5s", mode="weeks")  # type: ignore[arg-type]
