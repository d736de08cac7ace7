"""Logging for one CPI call.

A :class:`CallLog` attaches one handler to the root logger for the duration of the call. Each line is written
ONCE: into the response's ``log`` string. The director appends both the response's ``log`` and the CPI's stderr to
the task's CPI log (``bosh task N --cpi``), so writing every line to both (as this CPI did) printed it twice. We
follow the Ruby CPIs (bosh-aws-cpi, bosh-openstack-cpi fill ``log``) rather than bosh-cpi-go (stderr, ``log``
empty) because every director version saves ``log`` (stderr only since later releases), the ``cpi-test``
post-processor and our harnesses read ``log`` from the response, and the call's watchdog answers with the log so
far. stderr carries what cannot or must not be in the response, each also once: tracebacks and stack dumps (never
on stdout; the ``log`` line says "(traceback on stderr)"), records past the ``log`` size cap, and anything written
outside the call's logging (C libraries, a failure before the request is read: ``cpi.main`` logs those through
this handler too, so they land in ``log``). Each line reads::

    [stemforge-cpi] [<request_id or pid>] <LEVEL> <elapsed>s <message>

with ``<elapsed>`` the seconds since the process started handling the call. Every formatted line, tracebacks
included, passes through the call's :class:`~stemforge_base.redaction.Redactor` at format time, so secrets
registered at any point before a record is emitted never reach stderr or ``log``. Records of third-party loggers
(libvirt bindings, tenacity, ...) and ``warnings`` go through the same handlers.

The level comes from ``$STEMFORGE_CPI_LOG_LEVEL`` (wins, for operators debugging under create-env), else
``cloud.properties.log_level``, else ``info``. This module imports :mod:`logging`; ``cpi.main`` imports it only when a
call needs a logger, which ``info`` does not.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from stemforge_base.redaction import Redactor

#: The logger providers receive (records propagate to the root handlers installed here).
LOGGER_NAME = "stemforge.cpi"
ENV_LEVEL = "STEMFORGE_CPI_LOG_LEVEL"
DEFAULT_LEVEL = logging.INFO
#: Bound on the response's ``log`` string; later records go to stderr instead.
MAX_LOG_CHARS = 4 * 1024 * 1024

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def parse_level(name: object) -> int | None:
    """The logging level for a level name (case-insensitive), or None when ``name`` is not one."""
    if not isinstance(name, str):
        return None
    return LEVELS.get(name.strip().lower())


def resolve_level(config_level: object = None, environ: Mapping[str, str] | None = None) -> tuple[int, str | None]:
    """``(level, warning)``: the env variable wins over the config value, default INFO. ``warning`` explains an
    invalid env value that was ignored (the config value is validated by the config schema)."""
    env = os.environ if environ is None else environ
    warning = None
    raw = env.get(ENV_LEVEL)
    if raw:
        level = parse_level(raw)
        if level is not None:
            return level, None
        warning = f"ignoring ${ENV_LEVEL}: not a log level (use one of {', '.join(sorted(LEVELS))})"
    level = parse_level(config_level)
    return (DEFAULT_LEVEL if level is None else level), warning


class _Formatter(logging.Formatter):
    """Formats the stemforge-cpi line and scrubs it (message, traceback and stack) as a whole. Tracebacks and stacks
    are included only when ``tracebacks`` is true: they go to stderr, never into the response (stdout)."""

    def __init__(self, call: CallLog, *, tracebacks: bool) -> None:
        super().__init__()
        self._call = call
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        elapsed = time.monotonic() - self._call.start
        text = f"[stemforge-cpi] [{self._call.tag}] {record.levelname} {elapsed:.3f}s {record.message}"
        if self._tracebacks:
            if record.exc_info and not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            if record.exc_text:
                text += "\n" + record.exc_text
            if record.stack_info:
                text += "\n" + self.formatStack(record.stack_info)
        elif record.exc_info or record.exc_text:
            text += " (traceback on stderr)"
        return self._call.redactor.scrub(text)


class _QuietHandler(logging.Handler):
    """A handler that never prints logging's own "--- Logging error ---" report (it would bypass redaction)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        return


class _CallHandler(_QuietHandler):
    """Collects each record's line for ``log``; writes to ``stream`` (stderr) only its traceback/stack, or the whole
    record (with its traceback) once ``log`` has reached :data:`MAX_LOG_CHARS`: every line goes to one place."""

    def __init__(self, call: CallLog, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.lines: list[str] = []
        self.size = 0
        self.truncated = False
        self._line = _Formatter(call, tracebacks=False)
        self._full = _Formatter(call, tracebacks=True)
        self._call = call

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line.format(record)
            if self.size + len(line) + 1 > MAX_LOG_CHARS:
                self.truncated = True
                self._write(self._full.format(record) + "\n")
                return
            self.lines.append(line)
            self.size += len(line) + 1
            if record.exc_info or record.exc_text or record.stack_info:
                full = self._full.format(record)
                detail = full.split("\n", 1)[1] if "\n" in full else ""
                if detail:
                    head = f"[stemforge-cpi] [{self._call.tag}] traceback of the {record.levelname} in the log:"
                    self._write(head + "\n" + detail + "\n")
        except Exception:
            self.handleError(record)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class CallLog:
    """The logging of one CPI call (see the module docstring). ``close()`` removes the handlers again.

    ``start`` is a ``time.monotonic()`` value; ``tag`` is the request id (or the pid until the request is parsed);
    ``stream`` defaults to the process's stderr as it is when the CallLog is created.
    """

    def __init__(
        self,
        redactor: Redactor,
        *,
        start: float | None = None,
        tag: str | None = None,
        level: int = DEFAULT_LEVEL,
        stream: TextIO | None = None,
    ) -> None:
        self.redactor = redactor
        self.start = time.monotonic() if start is None else start
        self.tag = tag or str(os.getpid())
        self.logger = logging.getLogger(LOGGER_NAME)
        self._capture = _CallHandler(self, stream if stream is not None else sys.stderr)
        self._root = logging.getLogger()
        self._saved_root_level = self._root.level
        self._root.addHandler(self._capture)
        self.set_level(level)
        logging.captureWarnings(True)
        self._closed = False

    def set_level(self, level: int) -> None:
        """Apply ``level`` to the root logger and to the CPI logger."""
        self._root.setLevel(level)
        self.logger.setLevel(level)

    def text(self) -> str:
        """The collected lines, newline-terminated ("" when nothing was logged): the response's ``log``."""
        lines = self._capture.lines
        if not lines:
            return ""
        text = "\n".join(lines) + "\n"
        if self._capture.truncated:
            text += (f"[stemforge-cpi] [{self.tag}] WARNING log truncated at {MAX_LOG_CHARS} characters "
                     "(the rest is on stderr)\n")
        return text

    def close(self) -> None:
        """Detach the handlers and restore the root level (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._root.removeHandler(self._capture)
        self._root.setLevel(self._saved_root_level)
        self.logger.setLevel(logging.NOTSET)
        logging.captureWarnings(False)
