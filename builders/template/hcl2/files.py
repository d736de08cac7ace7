"""Reading an HCL2 configuration: the files of a file or directory argument, and one file parsed into a
:class:`Body` (``.pkr.hcl`` by python-hcl2, ``.pkr.json`` by :mod:`builders.template.hcl2.json_syntax`) with
HCL's syntax-error diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

from builders.template.hcl2.body import Body, decode_body
from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.json_syntax import parse_json_file
from builders.template.hcl2.parser import parse_text


def parse_file(path: Path, display: str, sources: dict[str, str]) -> Body:
    """Parse one ``.pkr.hcl``/``.pkrvars.hcl`` file. Raises HCLError with the syntax error's place."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HCLError(Diagnostic("Failed to read file", f"The configuration file {display} could not be read: "
                                                         f"{e.strerror or e}.")) from None
    sources[display] = text
    if path.name.endswith(".json"):
        return parse_json_file(display, text)
    try:
        tree = parse_text(text)
    except Exception as e:  # noqa: BLE001 - Lark's UnexpectedInput family and friends
        line = getattr(e, "line", 1) or 1
        column = getattr(e, "column", 1) or 1
        token = getattr(e, "token", None)
        if token is None:
            detail = "An argument or block definition is required here."
        elif not str(token).strip() or str(token)[:1] in "\r\n":
            detail = f"Unexpected end of line at column {column}: an expression or a closing bracket was expected."
        else:
            detail = f"Unexpected {json.dumps(str(token).strip())} at column {column}."
        raise HCLError(Diagnostic("Invalid HCL syntax", detail, Range(display, line, column),
                                  sources=sources)) from None
    return decode_body(tree.children[0], display, sources)



def discover(path: Path) -> tuple[Path, list[Path], list[Path]]:
    """(root directory, configuration files, auto var files) of a file or directory argument."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(".pkr.hcl") and p.is_file())
        json_files = sorted(p for p in path.iterdir() if p.name.endswith(".pkr.json") and p.is_file())
        auto = sorted(p for p in path.iterdir() if p.name.endswith((".auto.pkrvars.hcl", ".auto.pkrvars.json")))
        return path, files + json_files, auto
    return path.parent, [path], []
