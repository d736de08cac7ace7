"""What a CPI call must undo if it is abandoned at its ``call_timeout``.

The watchdog in :mod:`cpi.main` answers a call that overran ``call_timeout`` and ends the process with
``os._exit``: no ``finally`` block of the abandoned call runs. A provider that creates something in steps (a child
process, a temporary directory, a half-uploaded volume) registers how to undo each step while the step is under way;
the watchdog runs the registered undos (newest first, each one's errors ignored, all together bounded in time) after
it has answered and before the process ends. Normal completion and ordinary failures leave the ``undo_scope`` block,
which forgets its undos (ordinary failures clean up through the provider's own ``except``/``finally``); leaving it
waits while ``abandon`` runs, so the abandoned call cannot race its own undoing to the end of the process.

Thread-safe: the watchdog runs on another thread than the call.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

Undo = Callable[[], object]

_lock = threading.Lock()
_abandoning = threading.Lock()  # held by ``abandon`` for as long as it runs
_undos: dict[int, tuple[str, Undo]] = {}
_counter = 0
#: Seconds the watchdog spends on undos at most.
ABANDON_BUDGET = 60.0


class UndoScope:
    """The undos of one block of work; ``add`` returns a key for ``discard`` (when the step is done for good)."""

    def __init__(self) -> None:
        self._keys: list[int] = []

    def add(self, what: str, undo: Undo) -> int:
        global _counter
        with _lock:
            _counter += 1
            key = _counter
            _undos[key] = (what, undo)
        self._keys.append(key)
        return key

    def discard(self, key: int) -> None:
        with _lock:
            _undos.pop(key, None)

    def close(self) -> None:
        with _abandoning:  # while the watchdog undoes this scope's work, the call must not run on past it
            pass
        with _lock:
            for key in self._keys:
                _undos.pop(key, None)
        self._keys.clear()


@contextlib.contextmanager
def undo_scope() -> Iterator[UndoScope]:
    """A scope whose undos run only if the call is abandoned while it is open."""
    scope = UndoScope()
    try:
        yield scope
    finally:
        scope.close()


def pending() -> list[str]:
    """What the registered undos would undo, oldest first (for logs and tests)."""
    with _lock:
        return [what for _key, (what, _undo) in sorted(_undos.items())]


def abandon(budget: float = ABANDON_BUDGET, log: Callable[[str], object] | None = None) -> list[str]:
    """Run every registered undo, newest first, within ``budget`` seconds; return what was undone. Never raises."""
    with _abandoning:
        return _abandon(budget, log)


def _abandon(budget: float, log: Callable[[str], object] | None) -> list[str]:
    deadline = time.monotonic() + budget
    with _lock:
        work = sorted(_undos.items(), reverse=True)
    done: list[str] = []
    for key, (what, undo) in work:
        with _lock:
            if key not in _undos:  # the call finished this step itself meanwhile
                continue
            del _undos[key]
        if time.monotonic() > deadline:
            break
        try:
            undo()
            done.append(what)
            if log is not None:
                log(f"abandoned call: undid {what}")
        except BaseException as exc:  # noqa: BLE001 - an undo must never stop the others or the answer
            if log is not None:
                with contextlib.suppress(BaseException):
                    log(f"abandoned call: undoing {what} failed: {type(exc).__name__}: {exc}")
    return done
