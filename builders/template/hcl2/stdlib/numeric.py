"""Packer's numeric functions (abs ceil floor log max min parseint pow signum sum).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import json
import math
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_int, as_list, as_number, as_string
from builders.template.hcl2.values import normalize_number


def f_abs(n: Any) -> Any:
    return abs(as_number(n))


def f_ceil(n: Any) -> Any:
    x = as_number(n)
    return x if math.isinf(x) else math.ceil(x)


def f_floor(n: Any) -> Any:
    x = as_number(n)
    return x if math.isinf(x) else math.floor(x)


def f_log(n: Any, base: Any) -> Any:
    return normalize_number(math.log(as_number(n)) / math.log(as_number(base, 1)))


def f_max(*ns: Any) -> Any:
    if not ns:
        raise FunctionArgumentError("must pass at least one number")
    return max(as_number(n, i) for i, n in enumerate(ns))


def f_min(*ns: Any) -> Any:
    if not ns:
        raise FunctionArgumentError("must pass at least one number")
    return min(as_number(n, i) for i, n in enumerate(ns))


def f_parseint(s: Any, base: Any) -> Any:
    text, b = as_string(s), as_int(base, 1)
    if b < 2 or b > 62:
        raise FunctionArgumentError("base must be a whole number between 2 and 62 inclusive", 1)
    digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    neg = text.startswith("-")
    body = text[1:] if text[:1] in "+-" else text
    if not body:
        raise FunctionArgumentError(f"cannot parse {json.dumps(text)} as a base {b} integer", 0)
    value = 0
    for ch in body:
        d = digits.index(ch) if ch in digits else -1
        if b <= 36 and ch.isalpha():
            d = digits.index(ch.lower())
        if d < 0 or d >= b:
            raise FunctionArgumentError(f"cannot parse {json.dumps(text)} as a base {b} integer", 0)
        value = value * b + d
    return -value if neg else value


def f_pow(a: Any, b: Any) -> Any:
    return normalize_number(math.pow(as_number(a), as_number(b, 1)))


def f_signum(n: Any) -> Any:
    x = as_number(n)
    return 0 if x == 0 else (1 if x > 0 else -1)


def f_sum(xs: Any) -> Any:
    items = as_list(xs)
    if not items:
        raise FunctionArgumentError("cannot sum an empty list", 0)
    return normalize_number(sum(as_number(x) for x in items))


FUNCTIONS: dict[str, Function] = {
    "abs": f_abs, "ceil": f_ceil, "floor": f_floor, "log": f_log, "max": f_max, "min": f_min, "parseint": f_parseint,
    "pow": f_pow, "signum": f_signum, "sum": f_sum,
}
