"""HCL type constraints (``string``, ``number``, ``bool``, ``any``, ``list(T)``, ``set(T)``, ``map(T)``,
``tuple([...])``, ``object({...})`` with ``optional(T[, default])``) and cty's value conversion to them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lark import Token, Tree

from builders.template.hcl2.evaluator import Evaluator
from builders.template.hcl2.values import ConversionError, to_bool, to_number, to_string, type_name


class TypeError_(ValueError):  # noqa: N801 - not the builtin
    """A value does not fit a type; the message is cty's."""


@dataclass
class HclType:
    kind: str  # string number bool any list set map tuple object
    elem: HclType | None = None
    elems: list[HclType] = field(default_factory=list)
    attrs: dict[str, HclType] = field(default_factory=dict)
    optional: dict[str, tuple[bool, Any]] = field(default_factory=dict)

    def friendly(self) -> str:
        if self.kind in ("list", "set", "map"):
            return f"{self.kind} of {self.elem.friendly() if self.elem else 'any'}"
        return self.kind

    @property
    def primitive(self) -> bool:
        return self.kind in ("string", "number", "bool")


ANY = HclType("any")
STRING = HclType("string")


def _kids(node: Tree) -> list[Any]:
    return [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]


def _unwrap(node: Any) -> Any:
    while isinstance(node, Tree) and node.data == "expr_term" and len(_kids(node)) == 1:
        node = _kids(node)[0]
    return node


def parse_type(node: Any) -> HclType:
    """A type constraint from its expression tree (not evaluated). Raises TypeError_ for a malformed one."""
    node = _unwrap(node)
    if isinstance(node, Tree) and node.data == "identifier":
        name = str(node.children[0])
        if name in ("string", "number", "bool", "any"):
            return HclType(name)
        if name in ("list", "set", "map"):
            return HclType(name, ANY)
        raise TypeError_(f'The keyword "{name}" is not a valid type specification.')
    if isinstance(node, Tree) and node.data == "function_call":
        kids = _kids(node)
        name = str(kids[0].children[0])
        args_node = next((c for c in kids if c.data == "arguments"), None)
        args = _kids(args_node) if args_node is not None else []
        if name in ("list", "set", "map"):
            if len(args) != 1:
                raise TypeError_(f"The {name} type constructor requires one argument specifying the element type.")
            return HclType(name, parse_type(args[0]))
        if name == "tuple":
            inner = _unwrap(args[0]) if args else None
            if not isinstance(inner, Tree) or inner.data != "tuple":
                raise TypeError_("The tuple type constructor requires one argument specifying the element types "
                                 "as a list.")
            return HclType("tuple", elems=[parse_type(e) for e in _kids(inner)])
        if name == "object":
            inner = _unwrap(args[0]) if args else None
            if not isinstance(inner, Tree) or inner.data != "object":
                raise TypeError_("The object type constructor requires one argument specifying the attribute "
                                 "types as a map.")
            t = HclType("object")
            for elem in _kids(inner):
                key_node = _unwrap(_kids(elem)[0])
                key_inner = _unwrap(_kids(key_node)[0]) if isinstance(key_node, Tree) and \
                    key_node.data == "object_elem_key" else key_node
                key = str(key_inner.children[0]) if isinstance(key_inner, Tree) and key_inner.data in (
                    "identifier", "keyword") else _string_literal(key_inner)
                value = _unwrap(_kids(elem)[-1])
                if isinstance(value, Tree) and value.data == "function_call" and \
                        str(_kids(value)[0].children[0]) == "optional":
                    oargs = _kids(next(c for c in _kids(value) if c.data == "arguments"))
                    t.attrs[key] = parse_type(oargs[0])
                    default = _literal(oargs[1]) if len(oargs) > 1 else None
                    t.optional[key] = (len(oargs) > 1, default)
                else:
                    t.attrs[key] = parse_type(value)
            return t
        if name == "optional":
            raise TypeError_("Keyword \"optional\" is valid only as a modifier for object type attributes.")
        raise TypeError_(f'Keyword "{name}" is not a valid type constructor.')
    raise TypeError_("A type specification is either a primitive type keyword (bool, number, string) or a "
                     "complex type constructor call, like list(string).")


def _string_literal(node: Any) -> str:
    text = "".join(str(t) for t in node.scan_values(lambda v: isinstance(v, Token) and v.type == "STRING_CHARS"))
    return text


def _literal(node: Any) -> Any:
    """A constant default of ``optional(T, default)`` (evaluated without variables)."""
    return Evaluator("<type>", {}).evaluate(node, {})


def infer(value: Any) -> HclType:
    """The type of a default value (a variable without ``type``)."""
    if isinstance(value, bool):
        return HclType("bool")
    if isinstance(value, int | float):
        return HclType("number")
    if isinstance(value, str):
        return STRING
    return ANY


def convert(value: Any, t: HclType, path: str = "") -> Any:
    """``value`` converted to ``t`` (cty's ``convert.Convert``); raises TypeError_ with cty's message."""
    where = f"{path}: " if path else ""
    if value is None or t.kind == "any":
        return value
    try:
        if t.kind == "string":
            if isinstance(value, list | dict):
                raise TypeError_(f"{where}string required")
            return to_string(value)
        if t.kind == "number":
            if isinstance(value, list | dict):
                raise TypeError_(f"{where}number required")
            return to_number(value)
        if t.kind == "bool":
            if isinstance(value, list | dict):
                raise TypeError_(f"{where}bool required")
            return to_bool(value)
    except ConversionError as e:
        raise TypeError_(f"{where}{e}") from None
    if t.kind in ("list", "set"):
        if not isinstance(value, list):
            raise TypeError_(f"{where}{t.kind} of {t.elem.friendly() if t.elem else 'any'} required")
        out = [convert(v, t.elem or ANY, f"{path}[{i}]" if path else f"element {i}") for i, v in enumerate(value)]
        if t.kind == "set":
            seen: list[Any] = []
            for v in out:
                if v not in seen:
                    seen.append(v)
            out = sorted(seen, key=lambda x: json.dumps(x, sort_keys=True))
        return out
    if t.kind == "tuple":
        if not isinstance(value, list) or len(value) != len(t.elems):
            raise TypeError_(f"{where}tuple required" if not isinstance(value, list)
                             else f"{where}tuple required with {len(t.elems)} elements")
        return [convert(v, et, f"{path}[{i}]") for i, (v, et) in enumerate(zip(value, t.elems, strict=True))]
    if t.kind == "map":
        if not isinstance(value, dict):
            raise TypeError_(f"{where}map of {t.elem.friendly() if t.elem else 'any'} required")
        return {k: convert(v, t.elem or ANY, f'{path}["{k}"]' if path else f'element "{k}"')
                for k, v in value.items()}
    if t.kind == "object":
        if not isinstance(value, dict):
            raise TypeError_(f"{where}object required")
        result: dict[str, Any] = {}
        for k, at in t.attrs.items():
            if k in value and value[k] is not None:
                result[k] = convert(value[k], at, f"{path}.{k}" if path else f'attribute "{k}"')
            elif k in t.optional:
                has_default, default = t.optional[k]
                result[k] = convert(default, at) if has_default else None
            elif k in value:
                result[k] = None
            else:
                raise TypeError_(f'{where}attribute "{k}" is required')
        extra = sorted(set(value) - set(t.attrs))
        if extra and not path:
            pass  # cty drops attributes the object type does not declare
        return result
    raise TypeError_(f"{where}unsupported type {t.kind} for value of type {type_name(value)}")
