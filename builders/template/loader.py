"""Reading template documents: JSON exactly as Packer's Go decoder judges it, and YAML with the same keys.

JSON is parsed by a small scanner that mirrors Go's ``encoding/json`` scanner, so syntax errors carry Packer's
words, byte offset, line, column and the highlighted line (``template/parse.go`` ``highlightPosition``), e.g.::

    Error parsing JSON: invalid character '}' looking for beginning of object key string
    At line 4, column 1 (offset 46):
        3:   "builders": [{"type": "qemu"}],
        4: }
            ^

Duplicate keys at any depth are rejected (``template has duplicate field: <key>``), as Packer does after a
successful syntax check. YAML uses PyYAML's safe loader with duplicate keys rejected, mapping keys always read as
strings, and timestamps left as strings; its errors carry line, column and the same highlight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode


class DocumentError(Exception):
    """The document could not be read; ``str()`` is the full user-facing message."""


@dataclass
class Document:
    """A loaded template or var-file: the decoded value and the format it came in (``json`` or ``yaml``)."""

    value: Any
    format: str
    text: str


# --------------------------------------------------------------------------------------------------------------
# Go-compatible JSON


class _SyntaxError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_GO_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x5C: "\\\\"}


def _quote_char(c: int) -> str:
    """Go's ``encoding/json`` quoteChar: the offending byte as it appears in error messages."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c in _GO_ESCAPES:
        inner = _GO_ESCAPES[c]
    elif c < 0x20 or c == 0x7F:
        inner = f"\\x{c:02x}"
    elif 0x80 <= c < 0xA0 or c == 0xAD:
        inner = f"\\u{c:04x}"
    else:
        inner = chr(c)
    return f"'{inner}'"


_WS = b" \t\r\n"
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"


class _GoJSON:
    """Recursive-descent JSON parser producing Go's syntax errors (message + offset = bytes read) and noting the
    first duplicate object key in document order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.i = 0
        self.duplicate: tuple[str, int] | None = None

    def fail(self, context: str) -> None:
        raise _SyntaxError(f"invalid character {_quote_char(self.data[self.i])} {context}", self.i + 1)

    def eof(self) -> None:
        raise _SyntaxError("unexpected end of JSON input", self.n)

    def ws(self) -> None:
        data, n, i = self.data, self.n, self.i
        while i < n and data[i] in _WS:
            i += 1
        self.i = i
        if i >= n:
            self.eof()

    def parse(self) -> Any:
        value = self.value()
        while self.i < self.n and self.data[self.i] in _WS:
            self.i += 1
        if self.i < self.n:
            self.fail("after top-level value")
        return value

    def value(self) -> Any:
        self.ws()
        c = self.data[self.i]
        if c == 0x7B:  # {
            return self.obj()
        if c == 0x5B:  # [
            return self.arr()
        if c == 0x22:
            return self.string()
        if c == 0x2D or c in _DIGITS:
            return self.number()
        if c == 0x74:
            return self.literal(b"true", True)
        if c == 0x66:
            return self.literal(b"false", False)
        if c == 0x6E:
            return self.literal(b"null", None)
        self.fail("looking for beginning of value")
        return None  # unreachable

    def obj(self) -> dict[str, Any]:
        self.i += 1
        result: dict[str, Any] = {}
        self.ws()
        if self.data[self.i] == 0x7D:
            self.i += 1
            return result
        while True:
            if self.data[self.i] != 0x22:
                self.fail("looking for beginning of object key string")
            key_at = self.i
            key = self.string()
            if key in result and self.duplicate is None:
                self.duplicate = (key, key_at)
            self.ws()
            if self.data[self.i] != 0x3A:
                self.fail("after object key")
            self.i += 1
            result[key] = self.value()
            self.ws()
            c = self.data[self.i]
            if c == 0x2C:
                self.i += 1
                self.ws()
                continue
            if c == 0x7D:
                self.i += 1
                return result
            self.fail("after object key:value pair")

    def arr(self) -> list[Any]:
        self.i += 1
        result: list[Any] = []
        self.ws()
        if self.data[self.i] == 0x5D:
            self.i += 1
            return result
        while True:
            result.append(self.value())
            self.ws()
            c = self.data[self.i]
            if c == 0x2C:
                self.i += 1
                continue
            if c == 0x5D:
                self.i += 1
                return result
            self.fail("after array element")

    def string(self) -> str:
        data, n = self.data, self.n
        start = self.i
        i = start + 1
        while True:
            if i >= n:
                self.eof()
            c = data[i]
            if c == 0x22:
                i += 1
                break
            if c == 0x5C:
                i += 1
                if i >= n:
                    self.eof()
                e = data[i]
                if e in b'bfnrt\\/"':
                    i += 1
                elif e == 0x75:
                    i += 1
                    for _ in range(4):
                        if i >= n:
                            self.eof()
                        if data[i] not in _HEX:
                            self.i = i
                            self.fail("in \\u hexadecimal character escape")
                        i += 1
                else:
                    self.i = i
                    self.fail("in string escape code")
            elif c < 0x20:
                self.i = i
                self.fail("in string literal")
            else:
                i += 1
        self.i = i
        decoded: str = json.loads(data[start:i].decode("utf-8", "replace"))
        return decoded

    def digits(self) -> None:
        while self.i < self.n and self.data[self.i] in _DIGITS:
            self.i += 1

    def number(self) -> int | float:
        data, start = self.data, self.i
        is_float = False
        if data[self.i] == 0x2D:
            self.i += 1
            if self.i >= self.n:
                self.eof()
        c = data[self.i]
        if c == 0x30:
            self.i += 1
        elif c in _DIGITS:
            self.digits()
        else:
            self.fail("in numeric literal")
        if self.i < self.n and data[self.i] == 0x2E:
            is_float = True
            self.i += 1
            if self.i >= self.n:
                self.eof()
            if data[self.i] not in _DIGITS:
                self.fail("after decimal point in numeric literal")
            self.digits()
        if self.i < self.n and data[self.i] in b"eE":
            is_float = True
            self.i += 1
            if self.i >= self.n:
                self.eof()
            if data[self.i] in b"+-":
                self.i += 1
                if self.i >= self.n:
                    self.eof()
            if data[self.i] not in _DIGITS:
                self.fail("in exponent of numeric literal")
            self.digits()
        text = data[start:self.i].decode()
        return float(text) if is_float else int(text)

    def literal(self, word: bytes, value: Any) -> Any:
        for k, expected in enumerate(word):
            if self.i >= self.n:
                self.eof()
            if self.data[self.i] != expected:
                self.fail(f"in literal {word.decode()} (expecting {_quote_char(word[k])})")
            self.i += 1
        return value


def highlight_offset(data: bytes, pos: int) -> tuple[int, int, str]:
    """Packer's ``highlightPosition``: line, column and the previous + offending line with a caret, computed from
    the number of bytes read before the error (Go's ``SyntaxError.Offset``). Reproduces Packer's columns exactly
    (on line 1 the column counts from 0, on later lines from 1)."""
    line, col = 1, 0
    last_line = b""
    this_line = bytearray()
    for b in data[:pos]:
        if b == 0x0A:
            last_line = bytes(this_line)
            this_line.clear()
            line += 1
            col = 1
        else:
            col += 1
            this_line.append(b)
    out = ""
    if line > 1:
        out += f"{line - 1:5d}: {last_line.decode('utf-8', 'replace')}\n"
    out += f"{line:5d}: {bytes(this_line).decode('utf-8', 'replace')}\n"
    out += " " * (col + 5) + "^\n"
    return line, col, out


def _highlight_line_col(text: str, line: int, col: int) -> str:
    """Previous line, the line (both 1-based numbering) and a caret under 1-based ``col``."""
    lines = text.split("\n")
    out = ""
    if line > 1 and line - 2 < len(lines):
        out += f"{line - 1:5d}: {lines[line - 2]}\n"
    current = lines[line - 1] if line - 1 < len(lines) else ""
    out += f"{line:5d}: {current}\n"
    out += " " * (col + 6) + "^\n"
    return out


def line_col_of(data: bytes, index: int) -> tuple[int, int]:
    """1-based line and column of byte ``index``."""
    line = data.count(b"\n", 0, index) + 1
    col = index - (data.rfind(b"\n", 0, index) + 1) + 1
    return line, col


def parse_json_bytes(data: bytes, *, check_duplicates: bool = True) -> Any:
    """Decode JSON as Packer does; raise DocumentError with Packer's message on syntax errors and duplicates."""
    parser = _GoJSON(data)
    try:
        value = parser.parse()
    except _SyntaxError as e:
        line, col, hl = highlight_offset(data, e.offset)
        raise DocumentError(
            f"Error parsing JSON: {e.message}\nAt line {line}, column {col} (offset {e.offset}):\n{hl}".rstrip("\n")
        ) from None
    if check_duplicates and parser.duplicate is not None:
        key, at = parser.duplicate
        line, col = line_col_of(data, at)
        raise DocumentError(f"template has duplicate field: {key} (at line {line}, column {col})")
    return value


# --------------------------------------------------------------------------------------------------------------
# YAML


class _DuplicateKey(ConstructorError):
    pass


class _TemplateYamlLoader(yaml.SafeLoader):
    """Safe loader: string keys, duplicate keys rejected, timestamps kept as strings."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping node, but found {node.id}", node.start_mark)
        seen: set[str] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(key_node, ScalarNode):
                raise ConstructorError(None, None, "mapping keys must be strings", key_node.start_mark)
            if key_node.value in seen:
                raise _DuplicateKey(None, None, f"template has duplicate field: {key_node.value}",
                                    key_node.start_mark)
            seen.add(key_node.value)
        self.flatten_mapping(node)
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else str(self.construct_object(key_node))
            mapping[str(key)] = self.construct_object(value_node, deep=deep)
        return mapping


_TemplateYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_yaml_text(text: str) -> Any:
    """Decode one YAML document; raise DocumentError with line, column and highlight."""
    try:
        docs = list(yaml.load_all(text, Loader=_TemplateYamlLoader))  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        if mark is None:
            raise DocumentError(f"Error parsing YAML: {problem}") from None
        line, col = mark.line + 1, mark.column + 1
        if isinstance(e, _DuplicateKey):
            raise DocumentError(f"{problem} (at line {line}, column {col})") from None
        hl = _highlight_line_col(text, line, col)
        raise DocumentError(f"Error parsing YAML: {problem}\nAt line {line}, column {col}:\n{hl}".rstrip("\n")) \
            from None
    except yaml.YAMLError as e:
        raise DocumentError(f"Error parsing YAML: {e}") from None
    if len(docs) > 1:
        raise DocumentError("Error parsing YAML: a template must be a single YAML document")
    return docs[0] if docs else None


def format_for(path: Path) -> str:
    """``yaml`` for ``.yaml``/``.yml`` files, otherwise ``json`` (Packer's legacy format)."""
    return "yaml" if path.suffix.lower() in (".yaml", ".yml") else "json"


def load_document(path: Path) -> Document:
    """Read and decode ``path`` (JSON or YAML by extension). Raises DocumentError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DocumentError(f"open {path}: {e.strerror or e}") from None
    fmt = format_for(path)
    text = data.decode("utf-8", "replace")
    if fmt == "yaml":
        return Document(parse_yaml_text(text), "yaml", text)
    return Document(parse_json_bytes(data), "json", text)
