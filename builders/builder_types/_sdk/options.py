"""The options a builder's ``prepare_config`` reads, and the value rules the config parts share.

:class:`Options` wraps the weakly decoded options (``validate_options`` already checked their types) with the
problems found so far. Its getters apply Packer's "zero value means default" rule; :meth:`Options.duration`
parses a Go duration (``stemforge_base.durations``, Packer mode) and records a bad one as an error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.builder_types._sdk_options import zero
from stemforge_base.durations import parse_duration


@dataclass
class Options:
    """Validated options plus the problems found while preparing them (see the package notes)."""

    raw: Mapping[str, Any]
    template_dir: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self, key: str, default: str = "") -> str:
        """The option as text; ``default`` when it is absent or empty."""
        value = self.raw.get(key)
        return default if value is None or value == "" else str(value)

    def value(self, key: str, default: Any) -> Any:
        """The option (already of its schema type); ``default`` when absent or Go's zero value."""
        value = self.raw.get(key)
        return default if value is None or zero(value) else value

    def flag(self, key: str) -> bool:
        return bool(self.raw.get(key))

    def strings(self, key: str) -> list[str]:
        return [str(v) for v in self.raw.get(key) or []]

    def mapping(self, key: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.raw.get(key) or {}).items()}

    def duration(self, key: str, default: float, *, zero_is_default: bool = True) -> float:
        """A Go duration option in seconds; a bad one is an error naming ``key`` (and yields ``default``)."""
        value = self.raw.get(key)
        if value is None or value == "":
            return default
        try:
            seconds = parse_duration(value, mode="packer")
        except ValueError as exc:
            self.errors.append(f"{key}: {exc}")
            return default
        return (seconds or default) if zero_is_default else seconds

    def template_file(self, path: str) -> Path:
        """``path`` as given when it exists or is absolute, else relative to the template's directory."""
        resolved = Path(path).expanduser()
        if not resolved.is_absolute() and not resolved.exists():
            resolved = self.template_dir / resolved
        return resolved

    def check_unsupported(self, refused: Mapping[str, str], ignored: Mapping[str, str], who: str) -> None:
        """Refused options set to a non-zero value are errors, ignored ones warnings (each with its reason)."""
        for key in self.raw:
            if key in refused and not zero(self.raw[key]):
                self.errors.append(f"{key}: not supported by {who}: {refused[key]}")
            elif key in ignored and not zero(self.raw[key]):
                self.warnings.append(f"{key} is ignored: {ignored[key]}")
