"""A Packer-style step runner shared by the CPI and the builders.

A run is an ordered list of steps sharing one ``state`` dict. After a step's ``run`` returns, its ``cleanup`` is
pushed on a stack. When a later step raises, the run is cancelled (SIGINT/SIGTERM surface as exceptions) or a
failpoint fires, the stack unwinds: every completed step's cleanup runs in reverse order, each failure of a cleanup
is logged and the next cleanup still runs, then the original error propagates. On success the cleanups of steps
marked ``temporary`` still run (temporary resources never outlive the run); the others are kept: they are the
result.

Failpoints make the failure paths testable end to end: ``STEMFORGE_FAILPOINTS=after:<step name>,...`` in the
environment makes the runner raise ``FailpointError`` right after that step completed (the director's stripped
environment never carries it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

# One class each while the importers move to stemforge_base.steps (this module goes when the last one has):
from stemforge_base.steps import FAILPOINTS_ENV, Cancelled, FailpointError  # noqa: F401


class Step(Protocol):
    """One unit of work. ``name`` identifies it in logs and failpoints."""

    name: str
    temporary: bool

    def run(self, state: dict[str, Any]) -> None:
        """Do the work; record anything created in ``state`` so ``cleanup`` can find exactly that."""

    def cleanup(self, state: dict[str, Any]) -> None:
        """Remove what ``run`` created (and only that); must tolerate partial work and be idempotent."""


@dataclass
class StepRecord:
    name: str
    seconds: float


@dataclass
class StepRunner:
    """Runs steps with reverse-order cleanup; ``records`` holds each completed step's timing."""

    log: logging.Logger
    records: list[StepRecord] = field(default_factory=list)
    #: Set from another thread (e.g. the signal handler) to stop before the next step; long steps poll it too.
    cancel: threading.Event | None = None
    #: False leaves everything in place on failure (Packer's -on-error=abort): for debugging a failed build.
    cleanup_on_failure: bool = True

    def run(self, steps: Iterable[Step], state: dict[str, Any]) -> None:
        armed = _armed_failpoints()
        done: list[Step] = []
        try:
            for step in steps:
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled(f"cancelled before step {step.name}")
                started = time.monotonic()
                self.log.debug("step %s: starting", step.name)
                done.append(step)
                step.run(state)
                elapsed = time.monotonic() - started
                self.records.append(StepRecord(step.name, elapsed))
                self.log.info("step %s: done in %.2fs", step.name, elapsed)
                if f"after:{step.name}" in armed:
                    raise FailpointError(f"failpoint after:{step.name} fired")
        except BaseException:
            if self.cleanup_on_failure:
                self._unwind(done, state, reason="failure")
            else:
                self.log.warning("leaving the resources of %d step(s) in place (-on-error=abort)", len(done))
            raise
        self._unwind([s for s in done if getattr(s, "temporary", False)], state, reason="temporary")

    def _unwind(self, done: list[Step], state: dict[str, Any], reason: str) -> None:
        for step in reversed(done):
            try:
                step.cleanup(state)
                self.log.info("cleanup %s (%s): done", step.name, reason)
            except Exception as exc:  # noqa: BLE001 - every cleanup must get its chance
                self.log.error("cleanup %s (%s) failed: %s", step.name, reason, exc)


def _armed_failpoints() -> frozenset[str]:
    raw = os.environ.get(FAILPOINTS_ENV, "")
    return frozenset(p.strip() for p in raw.split(",") if p.strip())
