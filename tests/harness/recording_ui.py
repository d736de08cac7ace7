"""A ``builders.core.Ui`` for tests: keeps every line and progress call; hooks let a test react to both."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RecordingUi:
    """Lines are kept as said (errors prefixed ``ERROR ``); ``on_line``/``on_progress`` run after recording."""

    lines: list[str] = field(default_factory=list)
    progress_calls: list[tuple[str, int, int | None]] = field(default_factory=list)
    on_line: Callable[[str], None] | None = None
    on_progress: Callable[[str, int, int | None], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def say(self, message: str) -> None:
        self._add(message)

    def message(self, message: str) -> None:
        self._add(message)

    def error(self, message: str) -> None:
        self._add("ERROR " + message)

    def progress(self, label: str, done: int, total: int | None) -> None:
        with self.lock:
            self.progress_calls.append((label, done, total))
        if self.on_progress is not None:
            self.on_progress(label, done, total)

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)
