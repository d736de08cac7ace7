"""Argument coercion shared by the function families: an HCL value converted as cty's function parameters do,
a failure reported as :class:`FunctionArgumentError` naming the argument's position."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.values import ConversionError, to_number, to_string, type_name

Function = Callable[..., Any]


def as_number(v: Any, i: int = 0) -> int | float:
    """Argument ``i`` as a number (cty's ``number`` parameter)."""
    try:
        return to_number(v)
    except ConversionError as e:
        raise FunctionArgumentError(str(e), i) from None


def as_string(v: Any, i: int = 0) -> str:
    """Argument ``i`` as a string (cty's ``string`` parameter)."""
    try:
        return to_string(v)
    except ConversionError as e:
        raise FunctionArgumentError(str(e), i) from None


def as_int(v: Any, i: int = 0) -> int:
    """Argument ``i`` as a whole number."""
    n = as_number(v, i)
    if isinstance(n, float) and not n.is_integer():
        raise FunctionArgumentError("value must be a whole number", i)
    return int(n)


def as_list(v: Any, i: int = 0) -> list[Any]:
    """Argument ``i`` as a list, set or tuple."""
    if isinstance(v, list):
        return v
    raise FunctionArgumentError(f"list of any single type required, but have {type_name(v)}", i)


def as_map(v: Any, i: int = 0) -> dict[str, Any]:
    """Argument ``i`` as a map or object."""
    if isinstance(v, dict):
        return v
    raise FunctionArgumentError(f"map of any single type required, but have {type_name(v)}", i)
