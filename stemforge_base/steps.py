"""The Packer-style step runner every package runs its multi-step work on (CPI create_vm/create_stemcell, builds,
post-processors, Terraform environments, the metal daemon and lab).

A run is an ordered list of :class:`Step` objects sharing one ``state`` dict (Packer's state bag). The runner runs
each step in order and times it; after a step's ``run`` returns, its ``cleanup`` is pushed on a stack. When a later
step raises, the run is cancelled (``cancel`` set, or SIGINT/SIGTERM surfacing as exceptions) or a failpoint fires,
the stack unwinds: every started step's cleanup runs in reverse order, each failure of a cleanup is logged and the
next cleanup still runs, then the original error propagates. On success the cleanups of steps marked ``temporary``
still run (temporary resources never outlive the run); the others are kept: they are the result.

Naming (one style everywhere): a step class is named for what it does, like Packer's (``StepCreateDisk``,
``CreateRootDisk``); its ``name``, the string that logs, timings and failpoints use, is snake_case
(``create_disk``, ``create_root_disk``, ``write_config_drive``). A step repeated per item appends ``:<item>``
(``mark_released:<region>``).

Timing is recorded here and nowhere else: each completed step becomes a :class:`StepRecord` in
``StepRunner.records``, is logged (``step <name>: done in <s>s``) and is passed to the step's :meth:`Step.done`
(a builder's step reports it on its UI).

Failpoints make the failure paths testable end to end: ``STEMFORGE_FAILPOINTS=after:<step name>,...`` in the
environment makes the runner raise :class:`FailpointError` right after that step completed (the director's
stripped environment never carries it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

FAILPOINTS_ENV = "STEMFORGE_FAILPOINTS"

State = dict[str, Any]


class FailpointError(RuntimeError):
    """Raised by an armed failpoint; only ever seen in tests."""


class Cancelled(Exception):
    """The run was cancelled (Ctrl-C, SIGTERM, or another build's failure under -on-error=abort)."""


class Step:
    """One unit of work: the base of every step.

    Subclasses set ``name`` (snake_case: logs, timings, failpoints) and ``temporary`` (its cleanup runs even when
    the run succeeds), override :meth:`run`, and override :meth:`cleanup` when ``run`` creates something.
    """

    name: str = ""
    temporary: bool = False

    def run(self, state: State) -> None:
        """Do the work; record anything created in ``state`` so :meth:`cleanup` can find exactly that."""
        raise NotImplementedError(f"step {self.name or type(self).__name__} has no run")

    def cleanup(self, state: State) -> None:
        """Remove what :meth:`run` created (and only that); must tolerate partial work and be idempotent.
        The default: nothing to remove."""

    def done(self, seconds: float) -> None:
        """Called by the runner when :meth:`run` returned after ``seconds``; the default reports nothing."""


class FunctionStep(Step):
    """A step made of functions: ``run(state)`` and an optional ``cleanup(state)``."""

    def __init__(
        self,
        name: str,
        run: Callable[[State], None],
        cleanup: Callable[[State], None] | None = None,
        *,
        temporary: bool = False,
    ) -> None:
        self.name = name
        self.temporary = temporary
        self._run = run
        self._cleanup = cleanup

    def run(self, state: State) -> None:
        self._run(state)

    def cleanup(self, state: State) -> None:
        if self._cleanup is not None:
            self._cleanup(state)


@dataclass
class StepRecord:
    """How long one completed step took."""

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

    def run(self, steps: Iterable[Step], state: State) -> None:
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
                self._record(step, time.monotonic() - started)
                if f"after:{step.name}" in armed:
                    raise FailpointError(f"failpoint after:{step.name} fired")
        except BaseException:
            if self.cleanup_on_failure:
                self._unwind(done, state, reason="failure")
            else:
                self.log.warning("leaving the resources of %d step(s) in place (-on-error=abort)", len(done))
            raise
        self._unwind([s for s in done if s.temporary], state, reason="temporary")

    def seconds(self) -> dict[str, float]:
        """Each completed step's duration by name."""
        return {r.name: r.seconds for r in self.records}

    def _record(self, step: Step, elapsed: float) -> None:
        self.records.append(StepRecord(step.name, elapsed))
        self.log.info("step %s: done in %.2fs", step.name, elapsed)
        step.done(elapsed)

    def _unwind(self, done: list[Step], state: State, reason: str) -> None:
        for step in reversed(done):
            try:
                step.cleanup(state)
                self.log.info("cleanup %s (%s): done", step.name, reason)
            except Exception as exc:  # noqa: BLE001 - every cleanup must get its chance
                self.log.error("cleanup %s (%s) failed: %s", step.name, reason, exc)


def _armed_failpoints() -> frozenset[str]:
    raw = os.environ.get(FAILPOINTS_ENV, "")
    return frozenset(p.strip() for p in raw.split(",") if p.strip())
