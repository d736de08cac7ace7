"""HCL diagnostics, printed the way HashiCorp's ``hcl.NewDiagnosticTextWriter`` prints them (without colour)::

    Error: Unsupported argument

      on build.pkr.hcl line 3, in source "qemu" "flat":
       3:   foo = "bar"

    An argument named "foo" is not expected here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Range:
    """A place in a source file (1-based line and column)."""

    filename: str
    line: int
    column: int = 1


@dataclass
class Diagnostic:
    """One problem (``severity`` ``error`` or ``warning``) with HCL's summary/detail split and an optional place;
    ``context`` is the enclosing block as HCL names it (``source "qemu" "flat"``)."""

    summary: str
    detail: str = ""
    range: Range | None = None
    severity: str = "error"
    context: str = ""
    #: File contents by name, for the quoted source line (set by whoever knows the files).
    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def render(self) -> str:
        head = "Error" if self.severity == "error" else "Warning"
        out = f"{head}: {self.summary}\n"
        if self.range is not None:
            where = f"  on {self.range.filename} line {self.range.line}"
            if self.context:
                where += f", in {self.context}"
            out += f"\n{where}:\n"
            text = self.sources.get(self.range.filename)
            if text is not None:
                lines = text.split("\n")
                if 0 < self.range.line <= len(lines):
                    out += f"{self.range.line:>4}: {lines[self.range.line - 1]}\n"
        if self.detail:
            out += f"\n{self.detail}\n"
        return out


class HCLError(Exception):
    """One or more error diagnostics; ``str()`` is their text."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]) -> None:
        self.diagnostics: list[Diagnostic] = [diagnostics] if isinstance(diagnostics, Diagnostic) \
            else list(diagnostics)
        super().__init__(render_all(self.diagnostics))


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    """Every diagnostic's text, separated by blank lines as HCL's writer does."""
    return "\n".join(d.render() for d in diagnostics).rstrip("\n")
