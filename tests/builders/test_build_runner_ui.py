"""The build UI: Packer's human lines, colours and the terminal footer, throttled progress off a terminal,
machine-readable escaping, masking, prompts, and the duration formats."""

from __future__ import annotations

import io
import os
import re
import threading

import pytest

from builders.ui import (
    Output,
    durafmt,
    go_duration,
    machine_escape,
    machine_unescape,
    short_duration,
)
from stemforge_base.durations import parse_duration


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 seconds"), (1, "1 second"), (2, "2 seconds"), (63, "1 minute 3 seconds"),
    (1.25, "1 second 250 milliseconds"), (3661, "1 hour 1 minute"), (0.0123456, "12 milliseconds 346 microseconds"),
    (8 * 86400 + 5, "1 week 1 day"),
])
def test_durafmt_like_packer_summary(seconds: float, text: str) -> None:
    assert durafmt(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (10, "10s"), (60, "1m0s"), (3723, "1h2m3s"), (1.5, "1.5s"), (0.5, "500ms"), (90, "1m30s"),
    (0.000002, "2µs"),
])
def test_go_duration_strings(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_go_duration_parses_back_and_short_duration() -> None:
    """What the UI prints as a Go duration reads back as the same seconds (parse_duration's modes:
    tests/base/test_base_durations.py)."""
    for seconds in (0, 10, 60, 90, 3723, 1.5, 0.5, 0.000002, 8 * 86400 + 5):
        assert parse_duration(go_duration(seconds), mode="go") == pytest.approx(seconds)
    assert short_duration(0.25) == "250ms"
    assert short_duration(12.3456) == "12.35s"
    assert short_duration(184) == "3m4s"


def test_machine_escape_round_trip() -> None:
    raw = "a, b\nc\rd"
    escaped = machine_escape(raw)
    assert escaped == "a%!(PACKER_COMMA) b\\nc\\rd"
    assert "," not in escaped and "\n" not in escaped
    assert machine_unescape(escaped) == raw


def test_human_lines_and_colours() -> None:
    buffer = io.StringIO()
    out = Output(buffer, tty=False, color=True)
    ui = out.build_ui("vm", 1)
    ui.say("first\nsecond")
    ui.message("detail")
    ui.error("bad")
    text = buffer.getvalue()
    assert "\033[1;36m==> vm: first\033[0m" in text, "say: bold, the build's colour (second build: cyan)"
    assert "\033[1;36m==> vm: second\033[0m" in text
    assert "\033[0;36m    vm: detail\033[0m" in text
    assert "\033[1;31m==> vm: bad\033[0m" in text, "errors are red"
    plain = io.StringIO()
    Output(plain, tty=False).build_ui("vm").say("x")
    assert plain.getvalue() == "==> vm: x\n"


def test_colour_off_by_default_without_terminal_and_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Output(io.StringIO(), tty=False).color is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert Output(io.StringIO(), tty=True).color is False
    monkeypatch.delenv("NO_COLOR")
    assert Output(io.StringIO(), tty=True).color is True
    assert Output(io.StringIO(), tty=True, machine_readable=True).color is False


def test_masking_everywhere() -> None:
    buffer = io.StringIO()
    out = Output(buffer, tty=False, mask=lambda t: t.replace("s3cret", "<sensitive>"))
    ui = out.build_ui("b")
    ui.say("pw=s3cret")
    ui.message("s3cret")
    ui.error("s3cret!")
    out.say("s3cret")
    mr = io.StringIO()
    mout = Output(mr, machine_readable=True, mask=lambda t: t.replace("s3cret", "<sensitive>"))
    mout.build_ui("b").say("x s3cret, y")
    mout.machine("artifact", "0", "id", "s3cret", target="b")
    assert "s3cret" not in buffer.getvalue() + mr.getvalue()
    assert "<sensitive>" in mr.getvalue()


def test_machine_readable_lines_have_packer_shape() -> None:
    buffer = io.StringIO()
    out = Output(buffer, machine_readable=True)
    ui = out.build_ui("qemu.vm")
    ui.say("hello, world")
    ui.message("m")
    ui.machine("artifact", "0", "end")
    out.say("\n==> Wait completed after 1 second")
    lines = buffer.getvalue().splitlines()
    assert re.fullmatch(r"\d+,,ui,say,==> qemu\.vm: hello%!\(PACKER_COMMA\) world", lines[0])
    assert re.fullmatch(r"\d+,,ui,message,    qemu\.vm: m", lines[1])
    assert re.fullmatch(r"\d+,qemu\.vm,artifact,0,end", lines[2])
    assert lines[3].endswith(",,ui,say,\\n==> Wait completed after 1 second")
    plain = io.StringIO()
    Output(plain).machine("artifact", "x")
    assert plain.getvalue() == "", "machine lines only in -machine-readable mode"


def test_progress_off_terminal_is_throttled_to_plain_lines() -> None:
    buffer = io.StringIO()
    out = Output(buffer, tty=False)
    ui = out.build_ui("vm")
    total = 100 * 1024 * 1024
    for done in range(0, total, 1024 * 1024):
        ui.progress("copy disk.qcow2", done, total)
    ui.progress("copy disk.qcow2", total, total)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("    vm: copy disk.qcow2: 100% 100.0 MiB / 100.0 MiB")
    assert "ETA" in lines[0]


def test_terminal_footer_shows_step_elapsed_and_bar_and_is_erased() -> None:
    buffer = io.StringIO()
    out = Output(buffer, tty=True, color=False)
    ui = out.build_ui("vm")
    with out.live():
        ui.step_started("StepCopyDisk", 2, 5)
        assert "    vm: [2/5] StepCopyDisk 0:00" in buffer.getvalue()
        drawn = len(buffer.getvalue())
        for done in range(1, 51):
            ui.progress("copy disk", done, 100)
        assert len(buffer.getvalue()) - drawn < 400, "progress redraws are throttled"
        ui.say("a line")
        assert "[==========>         ] 50%" in buffer.getvalue(), "the footer is redrawn after a line"
        ui.step_finished("StepCopyDisk", 1.5, True)
    text = buffer.getvalue()
    assert "\r\033[K" in text, "the footer is erased before normal output"
    assert "==> vm: a line\n" in text
    assert "    vm: step StepCopyDisk: done after 1.50s" in text


def test_ask_reads_a_line_and_gives_up_when_cancelled() -> None:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd) as reader:
        out = Output(io.StringIO(), tty=True, input_stream=reader)
        os.write(write_fd, b"r\n")
        assert out.build_ui("vm").ask("[c] Clean up?") == "r"
        assert "==> vm: [c] Clean up? " in out.stream.getvalue()  # type: ignore[attr-defined]
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        assert out.ask("again?", cancel) is None
    os.close(write_fd)


def test_can_ask_needs_terminals_and_human_mode() -> None:
    assert Output(io.StringIO(), tty=False).can_ask() is False
    assert Output(io.StringIO(), tty=True, machine_readable=True).can_ask() is False
