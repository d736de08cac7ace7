"""HCL values in Python: ``None`` (null), ``bool``, ``int``/``float`` (number), ``str``, ``list`` (list, tuple or
set), ``dict`` (map or object). Conversions follow cty's (``go-cty/cty/convert``): numbers print without a
trailing ``.0``, booleans as ``true``/``false``; strings convert to numbers and booleans when they spell one."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from stemforge_base import values as base_values


class ConversionError(ValueError):
    """A value cannot become the wanted type; the message is cty's (``a string is required``)."""


def type_name(value: Any) -> str:
    """cty's friendly name of a value's type, as in ``Invalid function argument`` details."""
    return base_values.type_name(value, base_values.HCL)


def format_number(n: int | float) -> str:
    """A number as cty prints it (``big.Float.Text('f', -1)``): ``3``, ``1.5``, ``100000000000000000000``."""
    if isinstance(n, bool):
        return "true" if n else "false"
    if isinstance(n, int):
        return str(n)
    if math.isinf(n):
        return "+Inf" if n > 0 else "-Inf"
    if n.is_integer() and abs(n) < 1e21:
        return str(int(n))
    text = format(Decimal(repr(n)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def normalize_number(n: int | float) -> int | float:
    """Integral floats become ints, so ``2.0`` and ``2`` are the same HCL number."""
    if isinstance(n, float) and n.is_integer() and abs(n) < 2**63:
        return int(n)
    return n


def to_string(value: Any) -> str:
    """cty's conversion to string (numbers and booleans; anything else is an error)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if value is None:
        raise ConversionError("a string is required, but the value is null")
    raise ConversionError(f"string required, but have {type_name(value)}")


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise ConversionError("number required, but have bool")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        if _NUMBER.fullmatch(value.strip()) and value == value.strip():
            f = float(value)
            return int(value) if re.fullmatch(r"[+-]?[0-9]+", value) else normalize_number(f)
        raise ConversionError(f'a number is required, but "{value}" is not a valid number')
    if value is None:
        raise ConversionError("a number is required, but the value is null")
    raise ConversionError(f"number required, but have {type_name(value)}")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value == "true":
            return True
        if value == "false":
            return False
        raise ConversionError(f'a bool is required, but "{value}" is not a valid bool')
    if value is None:
        raise ConversionError("a bool is required, but the value is null")
    raise ConversionError(f"bool required, but have {type_name(value)}")


def hcl_equal(a: Any, b: Any) -> bool:
    """``==`` in HCL: values of different types are unequal (no conversion), numbers compare by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(hcl_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(hcl_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def json_compatible(value: Any) -> Any:
    """Numbers normalised (``2.0`` -> ``2``) all the way down; the value the build model stores."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return normalize_number(value)
    if isinstance(value, list):
        return [json_compatible(v) for v in value]
    if isinstance(value, dict):
        return {k: json_compatible(v) for k, v in value.items()}
    return value


class _Unknown:
    """A value not known until the build runs: a data source's outputs when ``validate`` does not evaluate data
    sources (Packer's default; ``-evaluate-datasources`` evaluates them). Any use of it makes the whole
    expression unknown (:class:`UnknownValue`)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()

#: What an unknown value becomes in a plugin config: the placeholder Packer's hcl2shim hands plugins
#: (``hcl2shim.UnknownVariableValue``), so option validation sees a string where the value will be.
UNKNOWN_PLACEHOLDER = "74D93920-ED26-11E3-AC10-0800200C9A66"


class UnknownValue(Exception):
    """An expression used an unknown value; its result is unknown."""


def shim_unknown(value: Any) -> Any:
    """``value`` with every unknown replaced by :data:`UNKNOWN_PLACEHOLDER`."""
    if value is UNKNOWN:
        return UNKNOWN_PLACEHOLDER
    if isinstance(value, list):
        return [shim_unknown(v) for v in value]
    if isinstance(value, dict):
        return {k: shim_unknown(v) for k, v in value.items()}
    return value

