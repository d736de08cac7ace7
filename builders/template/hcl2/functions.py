"""Packer's HCL2 function library (developer.hashicorp.com/packer/docs/templates/hcl_templates/functions), over the
HCL values of :mod:`builders.template.hcl2.values`. Semantics follow the go-cty stdlib / Terraform implementations
Packer uses; errors are :class:`FunctionArgumentError` (``Invalid function argument``) with cty's wording.

``make_functions(base_dir, env_allowed, now)`` returns the name -> callable table for one evaluation context:
``file``/``templatefile`` read relative to the working directory as Packer does, ``env`` is only allowed in
variable defaults, and ``timestamp`` is one value per run."""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import glob
import hashlib
import io
import ipaddress
import json
import math
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from builders.template.hcl2.evaluator import FunctionArgumentError, parse_template_text
from builders.template.hcl2.values import (
    ConversionError,
    format_number,
    hcl_equal,
    normalize_number,
    to_bool,
    to_number,
    to_string,
    type_name,
)

Function = Callable[..., Any]


def _num(v: Any, i: int = 0) -> int | float:
    try:
        return to_number(v)
    except ConversionError as e:
        raise FunctionArgumentError(str(e), i) from None


def _str(v: Any, i: int = 0) -> str:
    try:
        return to_string(v)
    except ConversionError as e:
        raise FunctionArgumentError(str(e), i) from None


def _int(v: Any, i: int = 0) -> int:
    n = _num(v, i)
    if isinstance(n, float) and not n.is_integer():
        raise FunctionArgumentError("value must be a whole number", i)
    return int(n)


def _list(v: Any, i: int = 0) -> list[Any]:
    if isinstance(v, list):
        return v
    raise FunctionArgumentError(f"list of any single type required, but have {type_name(v)}", i)


def _map(v: Any, i: int = 0) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    raise FunctionArgumentError(f"map of any single type required, but have {type_name(v)}", i)


# ---------------------------------------------------------------------------------------------------- numeric
def f_abs(n: Any) -> Any:
    return abs(_num(n))


def f_ceil(n: Any) -> Any:
    x = _num(n)
    return x if math.isinf(x) else math.ceil(x)


def f_floor(n: Any) -> Any:
    x = _num(n)
    return x if math.isinf(x) else math.floor(x)


def f_log(n: Any, base: Any) -> Any:
    return normalize_number(math.log(_num(n)) / math.log(_num(base, 1)))


def f_max(*ns: Any) -> Any:
    if not ns:
        raise FunctionArgumentError("must pass at least one number")
    return max(_num(n, i) for i, n in enumerate(ns))


def f_min(*ns: Any) -> Any:
    if not ns:
        raise FunctionArgumentError("must pass at least one number")
    return min(_num(n, i) for i, n in enumerate(ns))


def f_parseint(s: Any, base: Any) -> Any:
    text, b = _str(s), _int(base, 1)
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
    return normalize_number(math.pow(_num(a), _num(b, 1)))


def f_signum(n: Any) -> Any:
    x = _num(n)
    return 0 if x == 0 else (1 if x > 0 else -1)


def f_sum(xs: Any) -> Any:
    items = _list(xs)
    if not items:
        raise FunctionArgumentError("cannot sum an empty list", 0)
    return normalize_number(sum(_num(x) for x in items))


# ---------------------------------------------------------------------------------------------------- strings
def f_chomp(s: Any) -> Any:
    return re.sub(r"(?:\r\n|\n|\r)+\Z", "", _str(s))


_FMT_VERB = re.compile(r"%(?:\[(\d+)\])?([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def f_format(fmt: Any, *args: Any) -> Any:
    """cty's ``format``: Go verbs %v %#v %t %d %b %o %x %X %e %E %f %g %G %s %q %%, flags, width, precision,
    ``%[n]`` argument indexes."""
    spec = _str(fmt)
    out: list[str] = []
    pos = 0
    argi = 0
    for m in _FMT_VERB.finditer(spec):
        out.append(spec[pos:m.start()])
        pos = m.end()
        explicit, flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if explicit:
            argi = int(explicit) - 1
        if argi >= len(args):
            raise FunctionArgumentError(f"not enough arguments for %{verb} at {m.start()}")
        value = args[argi]
        argi += 1
        out.append(_format_verb(verb, flags or "", width, prec, value))
    out.append(spec[pos:])
    if argi < len(args) and not any(m.group(1) for m in _FMT_VERB.finditer(spec)):
        raise FunctionArgumentError(f"too many arguments; no verbs left to use for argument {argi + 1}")
    return "".join(out)


def _format_verb(verb: str, flags: str, width: str | None, prec: str | None, value: Any) -> str:
    pyflags = "".join(f for f in flags if f in "-+ 0#").replace("-", "<")
    if value is None and verb != "v":
        raise FunctionArgumentError("unsupported value for \"%" + verb + "\" at 0: null value cannot be formatted")
    if verb == "v":
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) else (
            "null" if value is None else to_string(value))
        if "#" in flags:
            text = json.dumps(value, separators=(",", ":"))
    elif verb == "t":
        text = "true" if to_bool(value) else "false"
    elif verb in "dboxX":
        n = to_number(value)
        if isinstance(n, float) and not n.is_integer():
            raise FunctionArgumentError(f"unsupported value for \"%{verb}\" at 0: number must be a whole number")
        code = {"d": "d", "b": "b", "o": "o", "x": "x", "X": "X"}[verb]
        text = format(int(n), ("+" if "+" in flags else "") + code)
    elif verb in "eEfFgG":
        n = to_number(value)
        p = f".{prec}" if prec is not None else ("" if verb in "gG" else ".6")
        text = format(float(n), ("+" if "+" in flags else "") + p + verb)
        if verb in "eE":
            text = re.sub(r"([eE][+-])(\d)$", r"\g<1>0\2", text)
    elif verb == "s":
        text = to_string(value)
        if prec is not None:
            text = text[:int(prec)]
    elif verb == "q":
        text = json.dumps(to_string(value))
    else:
        raise FunctionArgumentError(f"unrecognized format character {verb!r}")
    if width and width != "*":
        w = int(width)
        if "<" in pyflags:
            text = text.ljust(w)
        elif "0" in flags and verb in "dboxXeEfFgG":
            sign = text[0] if text[:1] in "+-" else ""
            text = sign + text[len(sign):].rjust(w - len(sign), "0")
        else:
            text = text.rjust(w)
    return text


def f_formatlist(fmt: Any, *args: Any) -> Any:
    lengths = {len(a) for a in args if isinstance(a, list)}
    if len(lengths) > 1:
        raise FunctionArgumentError("argument lists have different lengths")
    n = lengths.pop() if lengths else 1
    return [f_format(fmt, *[a[i] if isinstance(a, list) else a for a in args]) for i in range(n)]


def f_indent(n: Any, s: Any) -> Any:
    pad = " " * _int(n)
    lines = _str(s, 1).split("\n")
    return "\n".join([lines[0]] + [pad + ln for ln in lines[1:]])


def f_join(sep: Any, *lists: Any) -> Any:
    if not lists:
        raise FunctionArgumentError("at least one list is required")
    items: list[str] = []
    for i, lst in enumerate(lists):
        for v in _list(lst, i + 1):
            if v is None:
                raise FunctionArgumentError("element is null", i + 1)
            items.append(_str(v, i + 1))
    return _str(sep).join(items)


def f_lower(s: Any) -> Any:
    return _str(s).lower()


def f_upper(s: Any) -> Any:
    return _str(s).upper()


def _go_regex(pattern: str) -> re.Pattern[str]:
    """RE2 syntax to Python's: named groups ``(?P<n>)`` are shared; ``\\z`` becomes ``\\Z``."""
    try:
        return re.compile(pattern.replace(r"\z", r"\Z"))
    except re.error as e:
        raise FunctionArgumentError(f"invalid regular expression pattern: {e}", 0) from None


def f_replace(s: Any, substr: Any, repl: Any) -> Any:
    text, old, new = _str(s), _str(substr, 1), _str(repl, 2)
    if len(old) > 1 and old.startswith("/") and old.endswith("/"):
        return _go_regex(old[1:-1]).sub(_go_repl(new), text)
    return text.replace(old, new)


def _go_repl(new: str) -> str:
    """Go's ``$1``/``${name}`` replacement syntax to Python's."""
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", new.replace("\\", "\\\\"))
    return re.sub(r"\$(\d+)", r"\\g<\1>", out)


def f_regex_replace(s: Any, pattern: Any, repl: Any) -> Any:
    return _go_regex(_str(pattern, 1)).sub(_go_repl(_str(repl, 2)), _str(s))


def _match_value(m: re.Match[str]) -> Any:
    if m.re.groupindex:
        return {k: (m.group(k) if m.group(k) is not None else None) for k in m.re.groupindex}
    if m.re.groups:
        return [g for g in m.groups()]
    return m.group(0)


def f_regex(pattern: Any, s: Any) -> Any:
    m = _go_regex(_str(pattern)).search(_str(s, 1))
    if m is None:
        raise FunctionArgumentError("pattern did not match any part of the given string")
    return _match_value(m)


def f_regexall(pattern: Any, s: Any) -> Any:
    return [_match_value(m) for m in _go_regex(_str(pattern)).finditer(_str(s, 1))]


def f_split(sep: Any, s: Any) -> Any:
    text, separator = _str(s, 1), _str(sep)
    if separator == "":
        return list(text)
    return text.split(separator)


def _graphemes(text: str) -> list[str]:
    """Unicode grapheme clusters (cty counts and slices strings by them, not by code points)."""
    import regex

    return list(regex.findall(r"\X", text))


def f_strrev(s: Any) -> Any:
    return "".join(reversed(_graphemes(_str(s))))


def f_substr(s: Any, offset: Any, length: Any) -> Any:
    text, off, n = _graphemes(_str(s)), _int(offset, 1), _int(length, 2)
    if off < 0:
        off += len(text)
        if off < 0:
            raise FunctionArgumentError("offset is out of range", 1)
    if off > len(text):
        raise FunctionArgumentError("offset is out of range", 1)
    if n < 0:
        return "".join(text[off:])
    return "".join(text[off:off + n])


def f_title(s: Any) -> Any:
    return re.sub(r"(^|(?<=[^\w']))(\w)", lambda m: m.group(1) + m.group(2).upper(), _str(s))


def f_trim(s: Any, chars: Any) -> Any:
    return _str(s).strip(_str(chars, 1))


def f_trimprefix(s: Any, prefix: Any) -> Any:
    text, p = _str(s), _str(prefix, 1)
    return text[len(p):] if p and text.startswith(p) else text


def f_trimsuffix(s: Any, suffix: Any) -> Any:
    text, p = _str(s), _str(suffix, 1)
    return text[:-len(p)] if p and text.endswith(p) else text


def f_trimspace(s: Any) -> Any:
    return _str(s).strip(" \t\n\r\v\f\u0085\u00a0")


def f_startswith(s: Any, prefix: Any) -> Any:
    return _str(s).startswith(_str(prefix, 1))


def f_endswith(s: Any, suffix: Any) -> Any:
    return _str(s).endswith(_str(suffix, 1))


def f_strcontains(s: Any, sub: Any) -> Any:
    return _str(sub, 1) in _str(s)


# ------------------------------------------------------------------------------------------------- collections
def f_chunklist(xs: Any, size: Any) -> Any:
    items, n = _list(xs), _int(size, 1)
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
        if _list(x, i):
            return x
    raise FunctionArgumentError("no non-null arguments")


def f_compact(xs: Any) -> Any:
    return [x for x in _list(xs) if x is not None and x != ""]


def f_concat(*xs: Any) -> Any:
    out: list[Any] = []
    for i, x in enumerate(xs):
        out.extend(_list(x, i))
    return out


def f_contains(xs: Any, value: Any) -> Any:
    return any(hcl_equal(x, value) for x in _list(xs))


def f_distinct(xs: Any) -> Any:
    out: list[Any] = []
    for x in _list(xs):
        if not any(hcl_equal(x, y) for y in out):
            out.append(x)
    return out


def f_element(xs: Any, index: Any) -> Any:
    items, i = _list(xs), _int(index, 1)
    if not items:
        raise FunctionArgumentError("cannot use element function with an empty list", 0)
    if i < 0:
        raise FunctionArgumentError("cannot use element function with a negative index", 1)
    return items[i % len(items)]


def f_flatten(xs: Any) -> Any:
    out: list[Any] = []
    for x in _list(xs):
        out.extend(f_flatten(x) if isinstance(x, list) else [x])
    return out


def f_index(xs: Any, value: Any) -> Any:
    for i, x in enumerate(_list(xs)):
        if hcl_equal(x, value):
            return i
    raise FunctionArgumentError("item not found")


def f_keys(m: Any) -> Any:
    return sorted(_map(m))


def f_values(m: Any) -> Any:
    d = _map(m)
    return [d[k] for k in sorted(d)]


def f_length(v: Any) -> Any:
    if isinstance(v, str):
        return len(_graphemes(v))
    if isinstance(v, list | dict):
        return len(v)
    raise FunctionArgumentError(f"argument must be a string, a collection type, or a structural type; got "
                                f"{type_name(v)}", 0)


def f_lookup(m: Any, key: Any, *default: Any) -> Any:
    d, k = _map(m), _str(key, 1)
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
        out.update(_map(m, i))
    return out


def f_range(*args: Any) -> Any:
    nums = [_num(a, i) for i, a in enumerate(args)]
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
    return list(reversed(_list(xs)))


def f_setintersection(first: Any, *others: Any) -> Any:
    result = f_distinct(first)
    for i, o in enumerate(others):
        result = [x for x in result if f_contains(_list(o, i + 1), x)]
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
        out = [prev + [x] for prev in out for x in _list(s, i)]
    return out


def f_slice(xs: Any, start: Any, end: Any) -> Any:
    items, a, b = _list(xs), _int(start, 1), _int(end, 2)
    if a < 0:
        raise FunctionArgumentError("start index must not be less than zero", 1)
    if b > len(items):
        raise FunctionArgumentError("end index must not be greater than the length of the list", 2)
    if a > b:
        raise FunctionArgumentError("start index must not be greater than end index", 1)
    return items[a:b]


def f_sort(xs: Any) -> Any:
    items = _list(xs)
    if any(x is None for x in items):
        raise FunctionArgumentError("given list element is null", 0)
    return sorted(_str(x) for x in items)


def f_zipmap(keys: Any, vals: Any) -> Any:
    k, v = _list(keys), _list(vals, 1)
    if len(k) != len(v):
        raise FunctionArgumentError(f"number of keys ({len(k)}) does not match number of values ({len(v)})")
    return {_str(a): b for a, b in zip(k, v, strict=True)}


def f_alltrue(xs: Any) -> Any:
    return all(to_bool(x) for x in _list(xs))


def f_anytrue(xs: Any) -> Any:
    return any(x is not None and to_bool(x) for x in _list(xs))


def f_one(xs: Any) -> Any:
    items = _list(xs)
    if len(items) > 1:
        raise FunctionArgumentError("must be a list, set, or tuple value with either zero or one elements", 0)
    return items[0] if items else None


def f_transpose(m: Any) -> Any:
    out: dict[str, list[str]] = {}
    for k in sorted(_map(m)):
        for v in _list(m[k]):
            out.setdefault(_str(v), []).append(k)
    return out


# -------------------------------------------------------------------------------------------------- conversion
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
    return _unify(_list(v))


def f_toset(v: Any) -> Any:
    items = f_distinct(_unify(_list(v)))
    if all(isinstance(x, str) for x in items):
        return sorted(items)
    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))


def f_tomap(v: Any) -> Any:
    d = _map(v)
    keys = list(d)
    return dict(zip(keys, _unify([d[k] for k in keys]), strict=True))


# ---------------------------------------------------------------------------------------------------- encoding
def f_base64encode(s: Any) -> Any:
    return base64.b64encode(_str(s).encode()).decode()


def f_base64decode(s: Any) -> Any:
    try:
        raw = base64.b64decode(_str(s), validate=True)
    except ValueError:
        raise FunctionArgumentError("failed to decode base64 data", 0) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionArgumentError("the result of decoding the provided string is not valid UTF-8", 0) from None


def f_textencodebase64(s: Any, encoding: Any) -> Any:
    try:
        return base64.b64encode(_str(s).encode(_str(encoding, 1))).decode()
    except LookupError:
        raise FunctionArgumentError(f'"{encoding}" is not a supported IANA encoding name or alias', 1) from None


def f_textdecodebase64(s: Any, encoding: Any) -> Any:
    try:
        return base64.b64decode(_str(s)).decode(_str(encoding, 1))
    except LookupError:
        raise FunctionArgumentError(f'"{encoding}" is not a supported IANA encoding name or alias', 1) from None


def f_csvdecode(s: Any) -> Any:
    rows = list(csv.reader(io.StringIO(_str(s))))
    if not rows:
        return []
    header, out = rows[0], []
    for r in rows[1:]:
        if len(r) != len(header):
            raise FunctionArgumentError("wrong number of fields in line", 0)
        out.append(dict(zip(header, r, strict=True)))
    return out


def f_jsondecode(s: Any) -> Any:
    try:
        return _jsonable(json.loads(_str(s)))
    except json.JSONDecodeError as e:
        raise FunctionArgumentError(f"invalid JSON: {e.msg}", 0) from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return normalize_number(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def f_jsonencode(v: Any) -> Any:
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False).replace("<", "\\u003c") \
        .replace(">", "\\u003e").replace("&", "\\u0026")


def f_urlencode(s: Any) -> Any:
    return urllib.parse.quote_plus(_str(s), safe="")


def f_yamldecode(s: Any) -> Any:
    try:
        return _jsonable(yaml.safe_load(_str(s)))
    except yaml.YAMLError as e:
        raise FunctionArgumentError(f"on line {getattr(getattr(e, 'problem_mark', None), 'line', 0) + 1}: {e}", 0) \
            from None


class _QuotedDumper(yaml.SafeDumper):
    """Strings always double-quoted, as go-yaml's encoder in Terraform's ``yamlencode`` writes them."""


_QuotedDumper.add_representer(str, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                                                               style='"'))


def f_yamlencode(v: Any) -> Any:
    return yaml.dump(v, Dumper=_QuotedDumper, default_flow_style=False, sort_keys=True, allow_unicode=True,
                     width=2**31)


def f_base64gzip(s: Any) -> Any:
    import gzip

    return base64.b64encode(gzip.compress(_str(s).encode(), mtime=0)).decode()


def f_base64sha256(s: Any) -> Any:
    return base64.b64encode(hashlib.sha256(_str(s).encode()).digest()).decode()


def f_base64sha512(s: Any) -> Any:
    return base64.b64encode(hashlib.sha512(_str(s).encode()).digest()).decode()


def f_matchkeys(values: Any, keys: Any, searchset: Any) -> Any:
    vals, ks, search = _list(values), _list(keys, 1), _list(searchset, 2)
    if len(vals) != len(ks):
        raise FunctionArgumentError("length of keys and values should be equal")
    return [v for v, k in zip(vals, ks, strict=True) if f_contains(search, k)]


# -------------------------------------------------------------------------------------------------------- crypto
def f_md5(s: Any) -> Any:
    return hashlib.md5(_str(s).encode()).hexdigest()  # noqa: S324 - the documented function


def f_sha1(s: Any) -> Any:
    return hashlib.sha1(_str(s).encode()).hexdigest()  # noqa: S324


def f_sha256(s: Any) -> Any:
    return hashlib.sha256(_str(s).encode()).hexdigest()


def f_sha512(s: Any) -> Any:
    return hashlib.sha512(_str(s).encode()).hexdigest()


def f_bcrypt(s: Any, *cost: Any) -> Any:
    import bcrypt

    rounds = _int(cost[0], 1) if cost else 10
    if rounds < 4 or rounds > 31:
        raise FunctionArgumentError(f"crypto/bcrypt: cost {rounds} is outside allowed range (4,31)", 1)
    return bcrypt.hashpw(_str(s).encode(), bcrypt.gensalt(rounds, prefix=b"2a")).decode()


def f_uuidv4() -> Any:
    return str(uuid.uuid4())


def f_uuidv5(namespace: Any, name: Any) -> Any:
    ns = _str(namespace)
    known = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID,
             "x500": uuid.NAMESPACE_X500}
    try:
        space = known[ns] if ns in known else uuid.UUID(ns)
    except ValueError:
        raise FunctionArgumentError(f"uuidv5() doesn't support namespace {ns}", 0) from None
    return str(uuid.uuid5(space, _str(name, 1)))


def f_rsadecrypt(ciphertext: Any, privatekey: Any) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        raw = base64.b64decode(_str(ciphertext))
    except ValueError:
        raise FunctionArgumentError("failed to decode input: illegal base64 data", 0) from None
    try:
        key = serialization.load_pem_private_key(_str(privatekey, 1).encode(), password=None)
    except ValueError:
        raise FunctionArgumentError("invalid private key: failed to parse the PEM block", 1) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FunctionArgumentError("invalid private key: not an RSA key", 1)
    try:
        return key.decrypt(raw, padding.PKCS1v15()).decode()
    except ValueError:
        raise FunctionArgumentError("failed to decrypt: crypto/rsa: decryption error", 0) from None


# ------------------------------------------------------------------------------------------------------ network
def _net(prefix: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(_str(prefix), strict=False)
    except ValueError as e:
        raise FunctionArgumentError(f"invalid CIDR expression: {e}", 0) from None


def f_cidrhost(prefix: Any, hostnum: Any) -> Any:
    net, n = _net(prefix), _int(hostnum, 1)
    size = net.num_addresses
    if n < -size or n >= size:
        raise FunctionArgumentError(f"prefix of {net.prefixlen} does not accommodate a host numbered {n}", 1)
    base = int(net.network_address)
    return str(ipaddress.ip_address(base + (n if n >= 0 else size + n)))


def f_cidrnetmask(prefix: Any) -> Any:
    net = _net(prefix)
    if net.version != 4:
        raise FunctionArgumentError("only IPv4 networks are supported", 0)
    return str(net.netmask)


def f_cidrsubnet(prefix: Any, newbits: Any, netnum: Any) -> Any:
    net, bits, num = _net(prefix), _int(newbits, 1), _int(netnum, 2)
    new_len = net.prefixlen + bits
    if new_len > net.max_prefixlen:
        raise FunctionArgumentError(f"insufficient address space to extend prefix of {net.prefixlen} by {bits}", 1)
    if num < 0 or num >= 2 ** bits:
        raise FunctionArgumentError(f"prefix extension of {bits} does not accommodate a subnet numbered {num}", 2)
    base = int(net.network_address) + (num << (net.max_prefixlen - new_len))
    return f"{ipaddress.ip_address(base)}/{new_len}"


def f_cidrsubnets(prefix: Any, *newbits: Any) -> Any:
    net = _net(prefix)
    out: list[str] = []
    current = int(net.network_address)
    end = int(net.broadcast_address)
    for i, nb in enumerate(newbits):
        bits = _int(nb, i + 1)
        length = net.prefixlen + bits
        if length > net.max_prefixlen:
            raise FunctionArgumentError(f"would extend prefix to {length} bits, which is too long for an IPv"
                                        f"{net.version} address", i + 1)
        block = 1 << (net.max_prefixlen - length)
        current = (current + block - 1) // block * block
        if current + block - 1 > end:
            raise FunctionArgumentError(f"not enough remaining address space for a subnet with a prefix of "
                                        f"{length} bits after {out[-1] if out else net}", i + 1)
        out.append(f"{ipaddress.ip_address(current)}/{length}")
        current += block
    return out


# --------------------------------------------------------------------------------------------------- date/time
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _parse_rfc3339(s: str, index: int = 0) -> _dt.datetime:
    m = _RFC3339.fullmatch(s)
    if not m:
        raise FunctionArgumentError(f'not a valid RFC3339 timestamp: cannot use "{s}" as year', index)
    tz = _dt.UTC if m.group(8) == "Z" else _dt.datetime.strptime(m.group(8).replace(":", ""), "%z").tzinfo
    frac = m.group(7) or ""
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    return _dt.datetime(y, mo, d, h, mi, sec, micro, tzinfo=tz)


_FORMATDATE = re.compile(r"'(?:[^']|'')*'|YYYY|YY|MMMM|MMM|MM|M|DD|D|EEEE|EEE|hh|h|HH|H|AA|aa|mm|m|ss|s"
                         r"|ZZZZZ|ZZZZ|ZZZ|Z|[A-Za-z]+|[^A-Za-z']+")


def f_formatdate(spec: Any, timestamp: Any) -> Any:
    t = _parse_rfc3339(_str(timestamp, 1), 1)
    out: list[str] = []
    for m in _FORMATDATE.finditer(_str(spec)):
        tok = m.group(0)
        off = t.utcoffset() or _dt.timedelta(0)
        mins = int(off.total_seconds() // 60)
        sign = "+" if mins >= 0 else "-"
        hh, mm = divmod(abs(mins), 60)
        table = {
            "YYYY": f"{t.year:04d}", "YY": f"{t.year % 100:02d}", "MMMM": t.strftime("%B"), "MMM": t.strftime("%b"),
            "MM": f"{t.month:02d}", "M": str(t.month), "DD": f"{t.day:02d}", "D": str(t.day),
            "EEEE": t.strftime("%A"), "EEE": t.strftime("%a"), "hh": f"{t.hour:02d}", "h": str(t.hour),
            "HH": f"{(t.hour % 12) or 12:02d}", "H": str((t.hour % 12) or 12), "AA": "PM" if t.hour >= 12 else "AM",
            "aa": "pm" if t.hour >= 12 else "am", "mm": f"{t.minute:02d}", "m": str(t.minute),
            "ss": f"{t.second:02d}", "s": str(t.second),
            "ZZZZZ": "Z" if mins == 0 else f"{sign}{hh:02d}:{mm:02d}",
            "ZZZZ": f"{sign}{hh:02d}{mm:02d}", "ZZZ": "UTC" if mins == 0 else f"{sign}{hh:02d}{mm:02d}",
            "Z": "Z" if mins == 0 else f"{sign}{hh:02d}:{mm:02d}",
        }
        if tok.startswith("'"):
            out.append(tok[1:-1].replace("''", "'"))
        elif tok in table:
            out.append(table[tok])
        elif tok[0].isalpha():
            raise FunctionArgumentError(f'invalid date format verb "{tok}": unrecognized format sequence', 0)
        else:
            out.append(tok)
    return "".join(out)


_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")


def f_timeadd(timestamp: Any, duration: Any) -> Any:
    t = _parse_rfc3339(_str(timestamp))
    d = _str(duration, 1)
    sign = -1 if d.startswith("-") else 1
    body = d.lstrip("+-")
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise FunctionArgumentError(f'time: invalid duration "{d}"', 1)
    result = t + _dt.timedelta(seconds=sign * total)
    return _rfc3339(result)


def _rfc3339(t: _dt.datetime) -> str:
    off = t.utcoffset()
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += ("." + f"{t.microsecond:06d}").rstrip("0")
    if not off:
        return text + "Z"
    mins = int(off.total_seconds() // 60)
    sign = "+" if mins >= 0 else "-"
    hh, mm = divmod(abs(mins), 60)
    return f"{text}{sign}{hh:02d}:{mm:02d}"


# ------------------------------------------------------------------------------------------------- the table
def make_functions(*, base_dir: Path, now: _dt.datetime, env_allowed: bool = False,
                   aws: Callable[..., Any] | None = None) -> dict[str, Function]:
    """The function table for one evaluation context (see the module docstring)."""
    from builders.template.functions import go_time_format

    def f_env(name: Any) -> Any:
        if not env_allowed:
            raise FunctionArgumentError("env vars are not allowed here; the env function is only available in "
                                        "variable default values")
        return os.environ.get(_str(name), "")

    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else Path.cwd() / path

    def f_file(p: Any) -> Any:
        path = resolve(_str(p))
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FunctionArgumentError(f"no file exists at {p}; this function works only with files that are "
                                        "distributed as part of the configuration source code, so if this file "
                                        "will be created by a resource in this configuration you must instead "
                                        "obtain this result from an attribute of that resource", 0) from None
        except UnicodeDecodeError:
            raise FunctionArgumentError(f"contents of {p} are not valid UTF-8; use the filebase64 function to "
                                        "obtain the Base64 encoded contents or the other file functions (e.g. "
                                        "filemd5, filesha256) to obtain file hashing results instead", 0) from None
        except OSError as e:
            raise FunctionArgumentError(f"failed to read {p}: {e.strerror}", 0) from None

    def f_filebase64(p: Any) -> Any:
        try:
            return base64.b64encode(resolve(_str(p)).read_bytes()).decode()
        except OSError:
            raise FunctionArgumentError(f"no file exists at {p}", 0) from None

    def file_digest(algorithm: str, encode: Callable[[bytes], str]) -> Function:
        def digest(p: Any) -> Any:
            try:
                data = resolve(_str(p)).read_bytes()
            except OSError:
                raise FunctionArgumentError(f"no file exists at {p}", 0) from None
            return encode(hashlib.new(algorithm, data).digest())
        return digest

    def hexdigest(raw: bytes) -> str:
        return raw.hex()

    def b64digest(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    def f_fileexists(p: Any) -> Any:
        path = resolve(_str(p))
        if path.exists() and not path.is_file():
            raise FunctionArgumentError(f"{p} is not a regular file, but {'directory' if path.is_dir() else 'other'}",
                                        0)
        return path.is_file()

    def f_fileset(base: Any, pattern: Any) -> Any:
        root = resolve(_str(base))
        matches = glob.glob(_str(pattern, 1), root_dir=root, recursive=True)
        return sorted(m for m in matches if (root / m).is_file())

    def f_abspath(p: Any) -> Any:
        return str(Path(os.path.abspath(_str(p))))

    def f_basename(p: Any) -> Any:
        raw = _str(p)
        text = raw.rstrip("/")
        if not text:
            return "/" if raw else "."
        return os.path.basename(text)

    def f_dirname(p: Any) -> Any:
        text = _str(p)
        return os.path.dirname(text.rstrip("/") if text.rstrip("/") else text) or "."

    def f_pathexpand(p: Any) -> Any:
        return os.path.expanduser(_str(p))

    def f_timestamp() -> Any:
        return _rfc3339(now.replace(microsecond=0))

    def f_legacy_isotime(*fmt: Any) -> Any:
        if not fmt:
            return now.strftime("%Y-%m-%dT%H:%M:%SZ")
        return go_time_format(now, _str(fmt[0]))

    def f_legacy_strftime(fmt: Any) -> Any:
        return now.strftime(_str(fmt))

    def f_templatefile(p: Any, vars_: Any) -> Any:
        from builders.template.hcl2.evaluator import Evaluator

        text = f_file(p)
        variables = _map(vars_, 1)
        parts = parse_template_text(text, _str(p))
        inner = {k: v for k, v in table.items() if k != "templatefile"}
        ev = Evaluator(_str(p), inner, {_str(p): text})
        return ev.render_parts(parts + [("lit", "")], dict(variables), None)

    def f_try(ev: Any, scope: Any, *nodes: Any) -> Any:
        from builders.template.hcl2.diagnostics import HCLError

        for n in nodes:
            try:
                return ev.evaluate(n, scope)
            except HCLError:
                continue
        raise FunctionArgumentError("no expression succeeded")

    def f_can(ev: Any, scope: Any, node: Any) -> Any:
        from builders.template.hcl2.diagnostics import HCLError

        try:
            ev.evaluate(node, scope)
            return True
        except HCLError:
            return False

    def f_convert(ev: Any, scope: Any, value_node: Any, type_node: Any) -> Any:
        from builders.template.hcl2.types import TypeError_, convert, parse_type

        value = ev.evaluate(value_node, scope)
        try:
            return convert(value, parse_type(type_node))
        except TypeError_ as e:
            raise FunctionArgumentError(str(e), 0) from None

    def unconfigured(name: str) -> Function:
        def call(*_args: Any) -> Any:
            variable = "VAULT_ADDR" if name == "vault" else "CONSUL_HTTP_ADDR"
            raise FunctionArgumentError(f"{name}: not configured: set {variable} to the server's address "
                                        "(stemforge never guesses one)")
        return call

    def f_vault(path: Any, key: Any) -> Any:
        if not os.environ.get("VAULT_ADDR"):
            return unconfigured("vault")()
        raise FunctionArgumentError("vault: reading secrets from Vault is not supported by stemforge")

    def f_consul_key(key: Any) -> Any:
        if not os.environ.get("CONSUL_HTTP_ADDR"):
            return unconfigured("consul_key")()
        raise FunctionArgumentError("consul_key: reading keys from Consul is not supported by stemforge")

    def f_aws_secretsmanager(name: Any, key: Any) -> Any:
        raw = f_aws_secretsmanager_raw(name)
        if key is None or _str(key, 1) == "":
            return raw
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise FunctionArgumentError("secret is not a JSON object; use aws_secretsmanager_raw", 0) from None
        if not isinstance(data, dict) or _str(key, 1) not in data:
            raise FunctionArgumentError(f"key {key} not found in secret {name}", 1)
        return to_string(data[_str(key, 1)])

    def f_aws_secretsmanager_raw(name: Any) -> Any:
        import boto3
        import botocore.exceptions

        endpoint = os.environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or os.environ.get("AWS_ENDPOINT_URL")
        try:
            client = boto3.client("secretsmanager", endpoint_url=endpoint or None)
            value = client.get_secret_value(SecretId=_str(name))
        except botocore.exceptions.BotoCoreError as e:
            raise FunctionArgumentError(f"error initialising AWS session: {e}") from None
        except botocore.exceptions.ClientError as e:
            raise FunctionArgumentError(f"error retrieving secret {name}: {e}") from None
        return value.get("SecretString") or base64.b64decode(value.get("SecretBinary", b"")).decode()

    for lazy in (f_try, f_can, f_convert):
        setattr(lazy, "lazy", True)  # noqa: B010 - the evaluator passes unevaluated arguments to these

    table: dict[str, Function] = {
        name[2:]: fn for name, fn in globals().items() if name.startswith("f_") and callable(fn)
    }
    table.update({
        "env": f_env, "file": f_file, "filebase64": f_filebase64, "fileexists": f_fileexists, "fileset": f_fileset,
        "abspath": f_abspath, "basename": f_basename, "dirname": f_dirname, "pathexpand": f_pathexpand,
        "timestamp": f_timestamp, "legacy_isotime": f_legacy_isotime, "legacy_strftime": f_legacy_strftime,
        "templatefile": f_templatefile, "try": f_try, "can": f_can, "convert": f_convert, "vault": f_vault,
        "consul_key": f_consul_key, "aws_secretsmanager": f_aws_secretsmanager,
        "aws_secretsmanager_raw": f_aws_secretsmanager_raw,
        "filemd5": file_digest("md5", hexdigest), "filesha1": file_digest("sha1", hexdigest),
        "filesha256": file_digest("sha256", hexdigest), "filesha512": file_digest("sha512", hexdigest),
        "filebase64sha256": file_digest("sha256", b64digest), "filebase64sha512": file_digest("sha512", b64digest),
    })
    return table


__all__ = ["FunctionArgumentError", "format_number", "make_functions"]
