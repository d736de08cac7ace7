"""HCL's JSON syntax (``*.pkr.json``, ``*.pkrvars.json`` bodies) read into the same :class:`Body` structure the
native syntax gives, following hashicorp/hcl ``json/spec.md``: a block type maps to an object keyed by each label
in turn (or an array of such objects, which keeps order), and each body is an object whose keys are attributes
or nested block types, told apart by the schema of the block they are in (:data:`BLOCK_SCHEMA`). Strings are
templates (``${...}``, ``%{...}``), numbers, booleans and null are literals, arrays and objects are tuples and
objects; a ``"//"`` key is a comment.

Each value becomes HCL native expression text, parsed with the same parser, so evaluation is shared. JSON keeps
no useful line numbers here: diagnostics name the line of the attribute's key when it can be found."""

from __future__ import annotations

import json
from typing import Any

from builders.template.hcl2.body import Attr, Block, Body
from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.evaluator import parse_expression

#: block type -> (number of labels, nested block types) for the bodies whose keys are not all attributes.
BLOCK_SCHEMA: dict[str, tuple[int, dict[str, int]]] = {
    "": (0, {"packer": 0, "variable": 1, "variables": 0, "locals": 0, "local": 1, "data": 2, "source": 2,
             "build": 0, "hcp_packer_registry": 0}),
    "packer": (0, {"required_plugins": 0}),
    "variable": (1, {"validation": 0}),
    "build": (0, {"source": 1, "provisioner": 1, "error-cleanup-provisioner": 1, "post-processor": 1,
                  "post-processors": 0, "hcp_packer_registry": 0}),
    "post-processors": (0, {"post-processor": 1}),
}


def _hcl_text(value: Any) -> str:
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
                   .replace("\t", "\\t"))
        return f'"{escaped}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hcl_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_hcl_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value).__name__)


class _Reader:
    def __init__(self, filename: str, text: str) -> None:
        self.filename = filename
        self.text = text

    def line_of(self, key: str) -> int:
        at = self.text.find(json.dumps(key))
        return self.text.count("\n", 0, at) + 1 if at >= 0 else 1

    def body(self, obj: Any, block_type: str) -> Body:
        if not isinstance(obj, dict):
            raise HCLError(Diagnostic("Incorrect JSON value type", f"A JSON object is required here (the body of "
                                      f"{block_type or 'the file'}).", Range(self.filename, 1)))
        nested = BLOCK_SCHEMA.get(block_type, (0, {}))[1]
        body = Body()
        for key, value in obj.items():
            if key == "//":
                continue
            if key in nested:
                items = value if isinstance(value, list) else [value]
                for item in items:
                    self.blocks(key, nested[key], item, [], body)
                continue
            line = self.line_of(key)
            body.attrs[key] = Attr(key, parse_expression(_hcl_text(value), self.filename, line), line,
                                   self.filename)
        return body

    def blocks(self, block_type: str, labels_left: int, value: Any, labels: list[str], body: Body) -> None:
        if labels_left == 0:
            body.blocks.append(Block(block_type, labels, self.body(value, block_type), self.line_of(block_type),
                                     self.filename))
            return
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                raise HCLError(Diagnostic("Incorrect JSON value type", f'A JSON object with the labels of the '
                                          f'"{block_type}" block as keys is required.',
                                          Range(self.filename, self.line_of(block_type))))
            for label, inner in item.items():
                self.blocks(block_type, labels_left - 1, inner, labels + [label], body)


def parse_json_file(filename: str, text: str) -> Body:
    """The body of a ``*.pkr.json`` file. Raises HCLError on invalid JSON (with its line)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise HCLError(Diagnostic("Invalid JSON", f"{e.msg}.", Range(filename, e.lineno, e.colno))) from None
    return _Reader(filename, text).body(doc, "")
