"""The structure of an HCL2 file as Packer's ``hcl2template`` sees it: bodies of attributes (unevaluated
expressions) and blocks (type, labels, body), decoded from python-hcl2's Lark tree."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lark import Token, Tree

from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.parser import first_line


@dataclass
class Attr:
    name: str
    expr: Any
    line: int
    filename: str


@dataclass
class Block:
    type: str
    labels: list[str]
    body: Body
    line: int
    filename: str

    def context(self) -> str:
        return " ".join([self.type] + [json.dumps(lbl) for lbl in self.labels])


@dataclass
class Body:
    attrs: dict[str, Attr] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


def meaningful(children: list[Any]) -> list[Any]:
    return [c for c in children if not (isinstance(c, Tree) and c.data == "new_line_or_comment")]


def block_label(node: Any) -> str:
    if isinstance(node, Tree) and node.data == "string":
        return "".join(str(sp.children[0]) for sp in node.children
                       if isinstance(sp, Tree) and isinstance(sp.children[0], Token))
    if isinstance(node, Tree):
        return str(node.children[0])
    return str(node)


def decode_body(node: Tree, filename: str, sources: Mapping[str, str]) -> Body:
    body = Body()
    for child in meaningful(node.children):
        if not isinstance(child, Tree):
            continue
        if child.data == "attribute":
            kids = meaningful(child.children)
            name = block_label(kids[0])
            line = first_line(child) or 1
            if name in body.attrs:
                raise HCLError(Diagnostic("Attribute redefined",
                                          f'The argument "{name}" was already set at {filename}:'
                                          f"{body.attrs[name].line}. Each argument may be set only once.",
                                          Range(filename, line), sources=dict(sources)))
            body.attrs[name] = Attr(name, kids[-1], line, filename)
        elif child.data == "block":
            kids = meaningful(child.children)
            inner = next(c for c in kids if isinstance(c, Tree) and c.data == "body")
            heads = [c for c in kids if isinstance(c, Tree) and c is not inner]
            body.blocks.append(Block(block_label(heads[0]), [block_label(h) for h in heads[1:]],
                                     decode_body(inner, filename, sources), first_line(child) or 1, filename))
    return body




class Bound(Block):
    """A block produced by ``dynamic``: evaluated in its iteration's scope."""

    def __init__(self, type_: str, labels: list[str], body: Body, line: int, filename: str,
                 scope: Mapping[str, Any]) -> None:
        super().__init__(type_, labels, body, line, filename)
        self.scope = scope


def block_scope(block: Block, scope: Mapping[str, Any]) -> Mapping[str, Any]:
    return block.scope if isinstance(block, Bound) else scope
