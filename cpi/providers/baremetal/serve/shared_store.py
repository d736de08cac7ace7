"""One ``MetalStore`` shared by the threads of ``metal serve`` (HTTP handlers, the dnsmasq host-entry watcher).

``MetalStore`` keeps one SQLite connection; its write transactions (``BEGIN IMMEDIATE`` ... ``COMMIT``) must not
interleave across threads, so every call goes through :meth:`SharedStore.call`, which holds a lock for its
duration. Calls are short (one statement or one small transaction), so the lock is never held across network I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from cpi.providers.baremetal.store import MetalStore

T = TypeVar("T")


class SharedStore:
    """A ``MetalStore`` used from many threads, one call at a time."""

    def __init__(self, store: MetalStore) -> None:
        self._store = store
        self._lock = threading.Lock()

    def call(self, fn: Callable[[MetalStore], T]) -> T:
        """Run ``fn(store)`` under the lock and return its result."""
        with self._lock:
            return fn(self._store)

    @property
    def state_dir(self) -> str:
        return str(self._store.dir)

    def close(self) -> None:
        with self._lock:
            self._store.close()
