"""What ``stemforge build|validate|inspect`` print: Packer's human UI and its ``-machine-readable`` format.

One ``Output`` per process owns the terminal (a lock, masking of sensitive values, colours, the live status
footer); each build gets a ``BuildUi`` (the ``builders.core.Ui`` contract) that prefixes its lines with the build
name exactly as Packer's ``TargetedUI`` does::

    ==> qemu.ubuntu: Starting HTTP server on port 8419      (say)
        qemu.ubuntu: Downloading ... 42%                    (message)

``-machine-readable`` turns every call into Packer's ``timestamp,target,type,data...`` lines: ``say`` becomes
``<ts>,,ui,say,==> name: text``; commas inside data are written ``%!(PACKER_COMMA)``, ``\\r``/``\\n`` as the
two-character escapes. Everything printed, in both modes, goes through ``mask`` first (sensitive variable values
become ``<sensitive>``).

On a terminal, ``progress()`` and the per-step status are drawn as a footer (one line per active build: step,
elapsed time, a bar with bytes, rate and ETA) that is erased and redrawn around normal output; elsewhere progress
becomes throttled plain lines (at most one per ``PLAIN_PROGRESS_INTERVAL`` seconds per transfer, plus the last).

Duration helpers live here too: ``durafmt`` (Packer's "1 minute 3 seconds" in the summary) and
``go_duration`` (Go's ``time.Duration`` text; reading one is ``stemforge_base.durations.parse_duration``).
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

#: Packer's build colours, in order (green, cyan, magenta, yellow, blue); errors are red.
BUILD_COLORS: tuple[int, ...] = (32, 36, 35, 33, 34)
ERROR_COLOR = 31
#: Non-terminal progress: at most one line per transfer per this many seconds (plus the final one).
PLAIN_PROGRESS_INTERVAL = 5.0
#: Terminal footer refresh period, and the minimum interval between redraws caused by progress reports.
FOOTER_REFRESH = 0.5
FOOTER_MIN_REDRAW = 0.1


def machine_escape(value: str) -> str:
    """Escape one machine-readable field exactly as Packer's ``MachineReadableUi`` does."""
    return value.replace(",", "%!(PACKER_COMMA)").replace("\r", "\\r").replace("\n", "\\n")


def machine_unescape(value: str) -> str:
    """Inverse of ``machine_escape`` (for consumers and tests)."""
    return value.replace("\\n", "\n").replace("\\r", "\r").replace("%!(PACKER_COMMA)", ",")


# --------------------------------------------------------------------------------------------------- durations

_DURAFMT_UNITS: tuple[tuple[str, int], ...] = (
    ("year", 365 * 86_400_000_000),
    ("week", 7 * 86_400_000_000),
    ("day", 86_400_000_000),
    ("hour", 3_600_000_000),
    ("minute", 60_000_000),
    ("second", 1_000_000),
    ("millisecond", 1_000),
    ("microsecond", 1),
)


def durafmt(seconds: float, limit: int = 2) -> str:
    """Packer's summary durations (``durafmt.Parse(d).LimitFirstN(2)``): ``"1 minute 3 seconds"``,
    ``"1 second 250 milliseconds"``, ``"0 seconds"``."""
    remaining = max(0, int(round(seconds * 1_000_000)))
    parts: list[str] = []
    for unit, size in _DURAFMT_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
        if len(parts) == limit:
            break
    return " ".join(parts) if parts else "0 seconds"


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``10s``, ``1m0s``, ``1h2m3s``, ``1.5s``, ``500ms``, ``0s``."""
    nanos = int(round(seconds * 1e9))
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_trim(nanos / 1_000)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_trim(nanos / 1_000_000)}ms"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def short_duration(seconds: float) -> str:
    """Step timings: ``850ms``, ``12.31s``, ``3m4s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return go_duration(round(seconds))


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"  # pragma: no cover - loop always returns


def _clock_text(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# ------------------------------------------------------------------------------------------------------ output


@dataclass
class _Transfer:
    label: str
    started: float
    done: int = 0
    total: int | None = None
    last_plain: float = 0.0


@dataclass
class _BuildStatus:
    step: str = ""
    step_index: int = 0
    step_count: int = 0
    step_started: float = 0.0
    transfers: dict[str, _Transfer] = field(default_factory=dict)


class Output:
    """The single sink of a command's output. Thread-safe; every text goes through ``mask`` before printing.

    ``machine_readable`` switches to Packer's CSV-ish lines; ``color`` (default: on when ``stream`` is a
    terminal and neither ``NO_COLOR`` nor ``PACKER_NO_COLOR`` is set) colours build lines; ``timestamp``
    prefixes human lines with an RFC 3339 time (``-timestamp-ui``).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        machine_readable: bool = False,
        timestamp: bool = False,
        color: bool | None = None,
        mask: Callable[[str], str] | None = None,
        tty: bool | None = None,
        input_stream: IO[str] | None = None,
    ) -> None:
        self.stream: IO[str] = stream if stream is not None else sys.stdout
        self.machine_readable = machine_readable
        self.timestamp = timestamp
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if tty is None and callable(isatty) else bool(tty)
        if color is None:
            color = self.tty and not os.environ.get("NO_COLOR") and not os.environ.get("PACKER_NO_COLOR")
        self.color = bool(color) and not machine_readable
        self.mask: Callable[[str], str] = mask or (lambda text: text)
        self.input_stream = input_stream
        self._lock = threading.RLock()
        self._status: dict[str, _BuildStatus] = {}
        self._footer_lines = 0
        self._last_draw = 0.0
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()

    # ---------------------------------------------------------------- plain (untargeted) lines, like Packer's c.Ui
    def say(self, message: str) -> None:
        self._human_or_machine("say", message, prefix="", color=None)

    def message(self, message: str) -> None:
        self._human_or_machine("message", message, prefix="", color=None)

    def error(self, message: str) -> None:
        self._human_or_machine("error", message, prefix="", color=ERROR_COLOR if self.color else None)

    def line(self, kind: str, text: str, color: int | None = None) -> None:
        """An untargeted ``say``/``error`` line in a build's colour (Packer's ``ColoredUi`` without a target:
        ``Build 'x' finished after ...``)."""
        if kind == "error" and self.color:
            color = ERROR_COLOR
        self._human_or_machine(kind, text, prefix="", color=color if self.color else None)

    def machine(self, type_: str, *args: str, target: str = "") -> None:
        """A machine-readable line (printed only in ``-machine-readable`` mode, like Packer)."""
        if not self.machine_readable:
            return
        fields = [machine_escape(self.mask(str(a))) for a in args]
        line = ",".join([str(int(time.time())), target, type_, *fields])
        self._write_lines([line])

    def build_ui(self, target: str, index: int = 0) -> BuildUi:
        """The UI of one build (``index`` picks its colour)."""
        return BuildUi(self, target, BUILD_COLORS[index % len(BUILD_COLORS)] if self.color else None)

    # ------------------------------------------------------------------------------------------------ asking
    def can_ask(self) -> bool:
        """True when a human can answer a prompt (a terminal on both ends, not machine-readable)."""
        if self.machine_readable or not self.tty:
            return False
        stream = self.input_stream if self.input_stream is not None else sys.stdin
        isatty = getattr(stream, "isatty", None)
        return bool(callable(isatty) and isatty())

    def ask(self, query: str, cancel: threading.Event | None = None) -> str | None:
        """Print ``query`` and read one line from the terminal; None when ``cancel`` is set while waiting or
        input ends. Builds asking at the same time wait for each other."""
        stream = self.input_stream if self.input_stream is not None else sys.stdin
        with self._lock:
            self._clear_footer()
            self.stream.write(self.mask(query) + " ")
            self.stream.flush()
            try:
                fd = stream.fileno()
            except (OSError, ValueError, AttributeError):
                fd = -1
            answer: str | None = None
            deadline = time.monotonic() + 24 * 3600
            while time.monotonic() < deadline:
                if cancel is not None and cancel.is_set():
                    self.stream.write("\n")
                    break
                if fd >= 0:
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if not ready:
                        continue
                line = stream.readline()
                answer = line.strip() if line else None
                break
            self._draw_footer()
            return answer

    # ------------------------------------------------------------------------------------- status and progress
    @contextmanager
    def live(self) -> Iterator[None]:
        """While active on a terminal, a ticker redraws the footer (elapsed times move)."""
        if not self.tty or self.machine_readable:
            yield
            return
        self._ticker_stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="ui-footer", daemon=True)
        self._ticker.start()
        try:
            yield
        finally:
            self._ticker_stop.set()
            self._ticker.join(timeout=2)
            with self._lock:
                self._clear_footer()
                self._status.clear()

    def _tick(self) -> None:
        while not self._ticker_stop.wait(FOOTER_REFRESH):
            with self._lock:
                self._clear_footer()
                self._draw_footer()

    def step_started(self, target: str, name: str, index: int, count: int) -> None:
        with self._lock:
            status = self._status.setdefault(target, _BuildStatus())
            status.step, status.step_index, status.step_count = name, index, count
            status.step_started = time.monotonic()
            status.transfers.clear()
            self._clear_footer()
            self._draw_footer()

    def step_finished(self, target: str) -> None:
        with self._lock:
            status = self._status.get(target)
            if status is not None:
                status.step = ""
                status.transfers.clear()
            self._clear_footer()
            self._draw_footer()

    def build_finished(self, target: str) -> None:
        with self._lock:
            self._clear_footer()
            self._status.pop(target, None)
            self._draw_footer()

    def progress(self, ui: BuildUi, label: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            status = self._status.setdefault(ui.target, _BuildStatus())
            transfer = status.transfers.get(label)
            if transfer is None:
                transfer = status.transfers[label] = _Transfer(label, now, last_plain=now)
            transfer.done, transfer.total = done, total
            finished = total is not None and done >= total
            if self.tty and not self.machine_readable:
                if finished:
                    status.transfers.pop(label, None)
                elif now - self._last_draw < FOOTER_MIN_REDRAW:
                    return  # redrawn at most ~10 times a second, however often progress is reported
                self._clear_footer()
                self._draw_footer()
                return
            if not finished and now - transfer.last_plain < PLAIN_PROGRESS_INTERVAL:
                return
            transfer.last_plain = now
            if finished:
                status.transfers.pop(label, None)
            text = f"{label}: {_progress_text(transfer, now, bar=False)}"
        ui.message(text)

    # ----------------------------------------------------------------------------------------------- internals
    def _human_or_machine(self, kind: str, message: str, *, prefix: str, color: int | None,
                          bold: bool = True) -> None:
        if self.machine_readable:
            self.machine("ui", kind, message)
            return
        lines = self.mask(message).split("\n")
        out: list[str] = []
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z") if self.timestamp else ""
        if stamp:
            stamp = f"{stamp[:-2]}:{stamp[-2:]}: "
        for i, line in enumerate(lines):
            text = f"{prefix}{line}".rstrip() if prefix else line
            if stamp and i == 0:
                text = stamp + text
            if color is not None:
                text = f"\033[{1 if bold else 0};{color}m{text}\033[0m"
            out.append(text)
        self._write_lines(out)

    def _write_lines(self, lines: list[str]) -> None:
        with self._lock:
            self._clear_footer()
            try:
                self.stream.write("".join(line + "\n" for line in lines))
                self.stream.flush()
            except BrokenPipeError:  # like Packer: output going nowhere is not an error
                pass
            self._draw_footer()

    def _clear_footer(self) -> None:
        if self._footer_lines and self.tty:
            self.stream.write("\r\033[K" + "\033[1A\033[K" * (self._footer_lines - 1))
            self.stream.flush()
        self._footer_lines = 0

    def _draw_footer(self) -> None:
        if not self.tty or self.machine_readable:
            return
        now = time.monotonic()
        self._last_draw = now
        width = max(40, shutil.get_terminal_size((100, 24)).columns - 1)
        lines: list[str] = []
        for target, status in self._status.items():
            if not status.step and not status.transfers:
                continue
            head = f"    {target}:"
            if status.step:
                count = f" [{status.step_index}/{status.step_count}]" if status.step_count else ""
                head += f"{count} {status.step} {_clock_text(now - status.step_started)}"
            for transfer in list(status.transfers.values())[-1:]:
                head += f"  {transfer.label} {_progress_text(transfer, now, bar=True)}"
            lines.append(self.mask(head)[:width])
        if not lines:
            return
        self.stream.write("\n".join(lines))
        self.stream.flush()
        self._footer_lines = len(lines)


def _progress_text(transfer: _Transfer, now: float, *, bar: bool) -> str:
    elapsed = max(now - transfer.started, 1e-6)
    rate = transfer.done / elapsed
    if transfer.total:
        fraction = min(1.0, transfer.done / transfer.total)
        eta = (transfer.total - transfer.done) / rate if rate > 0 else 0.0
        text = (f"{fraction * 100:.0f}% {human_bytes(transfer.done)} / {human_bytes(transfer.total)} "
                f"{human_bytes(rate)}/s ETA {_clock_text(eta)}")
        if bar:
            filled = int(fraction * 20)
            text = f"[{'=' * filled}{'>' if filled < 20 else ''}{' ' * max(0, 19 - filled)}] {text}"
        return text
    return f"{human_bytes(transfer.done)} {human_bytes(rate)}/s"


class BuildUi:
    """One build's UI (``builders.core.Ui``): Packer's ``TargetedUI`` prefixes on top of ``Output``."""

    def __init__(self, output: Output, target: str, color: int | None = None) -> None:
        self.output = output
        self.target = target
        self.color = color

    def say(self, message: str) -> None:
        self.output._human_or_machine("say", _prefix_lines(True, self.target, message), prefix="",
                                      color=self.color)

    def message(self, message: str) -> None:
        self.output._human_or_machine("message", _prefix_lines(False, self.target, message), prefix="",
                                      color=self.color, bold=False)

    def error(self, message: str) -> None:
        self.output._human_or_machine("error", _prefix_lines(True, self.target, message), prefix="",
                                      color=ERROR_COLOR if self.output.color else None)

    def progress(self, label: str, done: int, total: int | None) -> None:
        self.output.progress(self, label, done, total)

    def machine(self, type_: str, *args: str) -> None:
        self.output.machine(type_, *args, target=self.target)

    def ask(self, query: str, cancel: threading.Event | None = None) -> str | None:
        return self.output.ask(_prefix_lines(True, self.target, query), cancel)

    def can_ask(self) -> bool:
        return self.output.can_ask()

    def step_started(self, name: str, index: int, count: int) -> None:
        self.output.step_started(self.target, name, index, count)

    def step_finished(self, name: str, seconds: float, ok: bool) -> None:
        self.output.step_finished(self.target)
        if not self.output.machine_readable:
            state = "done" if ok else "stopped"
            self.message(f"step {name}: {state} after {short_duration(seconds)}")

    def targeted(self, target: str) -> BuildUi:
        """A UI for a sub-part of this build (Packer's ``"name (post-processor)"`` targets)."""
        return BuildUi(self.output, target, self.color)


def _prefix_lines(arrow: bool, target: str, message: str) -> str:
    lead = "==>" if arrow else "   "
    return "\n".join(f"{lead} {target}: {line}" for line in message.split("\n")).rstrip()
