"""Packer's type conversion functions (tobool tonumber tostring tolist toset tomap) and the lazy ones that take
unevaluated arguments (try can convert).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import json
from typing import Any

from builders.template.hcl2.diagnostics import HCLError
from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_list, as_map
from builders.template.hcl2.stdlib.collection import f_distinct
from builders.template.hcl2.types import TypeError_, convert, parse_type
from builders.template.hcl2.values import ConversionError, to_bool, to_number, to_string, type_name


def f_tobool(v: Any) -> Any:
    if v is None:
        return None
    try:
        return to_bool(v)
    except ConversionError as e:
        raise FunctionArgumentError(f"cannot convert {json.dumps(v) if isinstance(v, str) else type_name(v)} to "
                                    f"bool; only the strings \"true\" or \"false\" are allowed"
                                    if isinstance(v, str) else str(e), 0) from None


def f_tonumber(v: Any) -> Any:
    if v is None:
        return None
    try:
        return to_number(v)
    except ConversionError:
        raise FunctionArgumentError(f"cannot convert {json.dumps(v)} to number; given string must be a decimal "
                                    "representation of a number" if isinstance(v, str)
                                    else f"cannot convert {type_name(v)} to number", 0) from None


def f_tostring(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, list | dict):
        raise FunctionArgumentError(f"cannot convert {type_name(v)} to string", 0)
    return to_string(v)


def _unify(items: list[Any], index: int = 0) -> list[Any]:
    """cty's element-type unification for a collection conversion: mixed primitives become strings."""
    kinds = {type_name(x) for x in items if x is not None}
    if len(kinds) <= 1:
        return list(items)
    if kinds <= {"string", "number", "bool"}:
        return [None if x is None else to_string(x) for x in items]
    raise FunctionArgumentError("cannot convert to a collection: all elements must have the same type", index)


def f_tolist(v: Any) -> Any:
    return _unify(as_list(v))


def f_toset(v: Any) -> Any:
    items = f_distinct(_unify(as_list(v)))
    if all(isinstance(x, str) for x in items):
        return sorted(items)
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def f_tomap(v: Any) -> Any:
    d = as_map(v)
    keys = list(d)
    return dict(zip(keys, _unify([d[k] for k in keys]), strict=True))


def f_try(ev: Any, scope: Any, *nodes: Any) -> Any:
    for n in nodes:
        try:
            return ev.evaluate(n, scope)
        except HCLError:
            continue
    raise FunctionArgumentError("no expression succeeded")


def f_can(ev: Any, scope: Any, node: Any) -> Any:
    try:
        ev.evaluate(node, scope)
        return True
    except HCLError:
        return False


def f_convert(ev: Any, scope: Any, value_node: Any, type_node: Any) -> Any:
    value = ev.evaluate(value_node, scope)
    try:
        return convert(value, parse_type(type_node))
    except TypeError_ as e:
        raise FunctionArgumentError(str(e), 0) from None


for _lazy in (f_try, f_can, f_convert):
    setattr(_lazy, "lazy", True)  # noqa: B010 - the evaluator passes unevaluated arguments to these

FUNCTIONS: dict[str, Function] = {
    "tobool": f_tobool, "tonumber": f_tonumber, "tostring": f_tostring, "tolist": f_tolist, "toset": f_toset,
    "tomap": f_tomap, "try": f_try, "can": f_can, "convert": f_convert,
}
