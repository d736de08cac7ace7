"""Packer's collection functions (chunklist coalesce ... zipmap, alltrue anytrue one transpose matchkeys).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_int, as_list, as_map, as_number, as_string
from builders.template.hcl2.stdlib.strings import graphemes
from builders.template.hcl2.values import hcl_equal, normalize_number, to_bool, type_name


def f_chunklist(xs: Any, size: Any) -> Any:
    items, n = as_list(xs), as_int(size, 1)
    if n < 0:
        raise FunctionArgumentError("the size argument must be positive", 1)
    if n == 0:
        return [items]
    return [items[i:i + n] for i in range(0, len(items), n)]


def f_coalesce(*xs: Any) -> Any:
    for x in xs:
        if x is not None and x != "":
            return x
    raise FunctionArgumentError("no non-null, non-empty-string arguments")


def f_coalescelist(*xs: Any) -> Any:
    for i, x in enumerate(xs):
        if as_list(x, i):
            return x
    raise FunctionArgumentError("no non-null arguments")


def f_compact(xs: Any) -> Any:
    return [x for x in as_list(xs) if x is not None and x != ""]


def f_concat(*xs: Any) -> Any:
    out: list[Any] = []
    for i, x in enumerate(xs):
        out.extend(as_list(x, i))
    return out


def f_contains(xs: Any, value: Any) -> Any:
    return any(hcl_equal(x, value) for x in as_list(xs))


def f_distinct(xs: Any) -> Any:
    out: list[Any] = []
    for x in as_list(xs):
        if not any(hcl_equal(x, y) for y in out):
            out.append(x)
    return out


def f_element(xs: Any, index: Any) -> Any:
    items, i = as_list(xs), as_int(index, 1)
    if not items:
        raise FunctionArgumentError("cannot use element function with an empty list", 0)
    if i < 0:
        raise FunctionArgumentError("cannot use element function with a negative index", 1)
    return items[i % len(items)]


def f_flatten(xs: Any) -> Any:
    out: list[Any] = []
    for x in as_list(xs):
        out.extend(f_flatten(x) if isinstance(x, list) else [x])
    return out


def f_index(xs: Any, value: Any) -> Any:
    for i, x in enumerate(as_list(xs)):
        if hcl_equal(x, value):
            return i
    raise FunctionArgumentError("item not found")


def f_keys(m: Any) -> Any:
    return sorted(as_map(m))


def f_values(m: Any) -> Any:
    d = as_map(m)
    return [d[k] for k in sorted(d)]


def f_length(v: Any) -> Any:
    if isinstance(v, str):
        return len(graphemes(v))
    if isinstance(v, list | dict):
        return len(v)
    raise FunctionArgumentError(f"argument must be a string, a collection type, or a structural type; got "
                                f"{type_name(v)}", 0)


def f_lookup(m: Any, key: Any, *default: Any) -> Any:
    d, k = as_map(m), as_string(key, 1)
    if k in d:
        return d[k]
    if default:
        return default[0]
    raise FunctionArgumentError(f'the given object has no attribute "{k}"')


def f_merge(*ms: Any) -> Any:
    out: dict[str, Any] = {}
    for i, m in enumerate(ms):
        if m is None:
            continue
        out.update(as_map(m, i))
    return out


def f_range(*args: Any) -> Any:
    nums = [as_number(a, i) for i, a in enumerate(args)]
    start: int | float
    end: int | float
    step: int | float
    if len(nums) == 1:
        start, end, step = 0, nums[0], 1
    elif len(nums) == 2:
        start, end = nums
        step = 1 if end >= start else -1
    elif len(nums) == 3:
        start, end, step = nums
    else:
        raise FunctionArgumentError("must have one, two, or three arguments")
    if step == 0:
        raise FunctionArgumentError("step must not be zero", 2)
    if (step > 0 and start > end) or (step < 0 and start < end):
        raise FunctionArgumentError("step must be positive when start is less than end" if step < 0
                                    else "step must be negative when start is greater than end", 2)
    out: list[Any] = []
    x = start
    while (x < end if step > 0 else x > end):
        out.append(normalize_number(x))
        if len(out) > 1024:
            raise FunctionArgumentError("more than 1024 values were generated; either decrease the difference "
                                        "between start and end or use a smaller step")
        x += step
    return out


def f_reverse(xs: Any) -> Any:
    return list(reversed(as_list(xs)))


def f_setintersection(first: Any, *others: Any) -> Any:
    result = f_distinct(first)
    for i, o in enumerate(others):
        result = [x for x in result if f_contains(as_list(o, i + 1), x)]
    return result


def f_setunion(*sets: Any) -> Any:
    return f_distinct(f_concat(*sets))


def f_setsubtract(a: Any, b: Any) -> Any:
    return [x for x in f_distinct(a) if not f_contains(b, x)]


def f_setproduct(*sets: Any) -> Any:
    if len(sets) < 2:
        raise FunctionArgumentError("at least two arguments are required")
    out: list[list[Any]] = [[]]
    for i, s in enumerate(sets):
        out = [prev + [x] for prev in out for x in as_list(s, i)]
    return out


def f_slice(xs: Any, start: Any, end: Any) -> Any:
    items, a, b = as_list(xs), as_int(start, 1), as_int(end, 2)
    if a < 0:
        raise FunctionArgumentError("start index must not be less than zero", 1)
    if b > len(items):
        raise FunctionArgumentError("end index must not be greater than the length of the list", 2)
    if a > b:
        raise FunctionArgumentError("start index must not be greater than end index", 1)
    return items[a:b]


def f_sort(xs: Any) -> Any:
    items = as_list(xs)
    if any(x is None for x in items):
        raise FunctionArgumentError("given list element is null", 0)
    return sorted(as_string(x) for x in items)


def f_zipmap(keys: Any, vals: Any) -> Any:
    k, v = as_list(keys), as_list(vals, 1)
    if len(k) != len(v):
        raise FunctionArgumentError(f"number of keys ({len(k)}) does not match number of values ({len(v)})")
    return {as_string(a): b for a, b in zip(k, v, strict=True)}


def f_alltrue(xs: Any) -> Any:
    return all(to_bool(x) for x in as_list(xs))


def f_anytrue(xs: Any) -> Any:
    return any(x is not None and to_bool(x) for x in as_list(xs))


def f_one(xs: Any) -> Any:
    items = as_list(xs)
    if len(items) > 1:
        raise FunctionArgumentError("must be a list, set, or tuple value with either zero or one elements", 0)
    return items[0] if items else None


def f_transpose(m: Any) -> Any:
    out: dict[str, list[str]] = {}
    for k in sorted(as_map(m)):
        for v in as_list(m[k]):
            out.setdefault(as_string(v), []).append(k)
    return out


def f_matchkeys(values: Any, keys: Any, searchset: Any) -> Any:
    vals, ks, search = as_list(values), as_list(keys, 1), as_list(searchset, 2)
    if len(vals) != len(ks):
        raise FunctionArgumentError("length of keys and values should be equal")
    return [v for v, k in zip(vals, ks, strict=True) if f_contains(search, k)]


FUNCTIONS: dict[str, Function] = {
    "chunklist": f_chunklist, "coalesce": f_coalesce, "coalescelist": f_coalescelist, "compact": f_compact,
    "concat": f_concat, "contains": f_contains, "distinct": f_distinct, "element": f_element, "flatten": f_flatten,
    "index": f_index, "keys": f_keys, "values": f_values, "length": f_length, "lookup": f_lookup, "merge": f_merge,
    "range": f_range, "reverse": f_reverse, "setintersection": f_setintersection, "setunion": f_setunion,
    "setsubtract": f_setsubtract, "setproduct": f_setproduct, "slice": f_slice, "sort": f_sort, "zipmap": f_zipmap,
    "alltrue": f_alltrue, "anytrue": f_anytrue, "one": f_one, "transpose": f_transpose, "matchkeys": f_matchkeys,
}
