"""Reading what the test agent reported on a VM's serial console (``STEMFORGE-AGENT {json}`` lines)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "STEMFORGE-AGENT "

Event = dict[str, Any]


def read_events(console_log: Path) -> list[Event]:
    """All agent events in the console log so far (lines that are not valid events are skipped)."""
    try:
        text = console_log.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    events = []
    for line in text.splitlines():
        at = line.find(PREFIX)
        if at < 0:
            continue
        try:
            value = json.loads(line[at + len(PREFIX) :].strip())
        except ValueError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def wait_for(
    console_log: Path, predicate: Callable[[Event], bool], timeout: float, *, after: int = 0, what: str = "agent event"
) -> tuple[Event, int]:
    """Wait (at most ``timeout`` s) for the first event at index >= ``after`` matching ``predicate``; returns the
    event and its index. Raises TimeoutError naming ``what`` and the last events seen."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(console_log)
        for index in range(after, len(events)):
            if predicate(events[index]):
                return events[index], index
        if time.monotonic() > deadline:
            tail = events[-5:]
            raise TimeoutError(f"no {what} within {timeout:g}s in {console_log}; last events: {tail}")
        time.sleep(0.25)
