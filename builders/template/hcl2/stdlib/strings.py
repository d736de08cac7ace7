"""Packer's string functions (chomp format formatlist indent join lower upper replace regex regexall regex_replace
split strrev substr title trim* startswith endswith strcontains).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import json
import re
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_int, as_list, as_string
from builders.template.hcl2.values import to_bool, to_number, to_string


def f_chomp(s: Any) -> Any:
    return re.sub(r"(?:\r\n|\n|\r)+\Z", "", as_string(s))


_FMT_VERB = re.compile(r"%(?:\[(\d+)\])?([-+# 0]*)(\d+|\*)?(?:\.(\d+))?([a-zA-Z%])")


def f_format(fmt: Any, *args: Any) -> Any:
    """cty's ``format``: Go verbs %v %#v %t %d %b %o %x %X %e %E %f %g %G %s %q %%, flags, width, precision,
    ``%[n]`` argument indexes."""
    spec = as_string(fmt)
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
    pad = " " * as_int(n)
    lines = as_string(s, 1).split("\n")
    return "\n".join([lines[0]] + [pad + ln for ln in lines[1:]])


def f_join(sep: Any, *lists: Any) -> Any:
    if not lists:
        raise FunctionArgumentError("at least one list is required")
    items: list[str] = []
    for i, lst in enumerate(lists):
        for v in as_list(lst, i + 1):
            if v is None:
                raise FunctionArgumentError("element is null", i + 1)
            items.append(as_string(v, i + 1))
    return as_string(sep).join(items)


def f_lower(s: Any) -> Any:
    return as_string(s).lower()


def f_upper(s: Any) -> Any:
    return as_string(s).upper()


def _go_regex(pattern: str) -> re.Pattern[str]:
    """RE2 syntax to Python's: named groups ``(?P<n>)`` are shared; ``\\z`` becomes ``\\Z``."""
    try:
        return re.compile(pattern.replace(r"\z", r"\Z"))
    except re.error as e:
        raise FunctionArgumentError(f"invalid regular expression pattern: {e}", 0) from None


def f_replace(s: Any, substr: Any, repl: Any) -> Any:
    text, old, new = as_string(s), as_string(substr, 1), as_string(repl, 2)
    if len(old) > 1 and old.startswith("/") and old.endswith("/"):
        return _go_regex(old[1:-1]).sub(_go_repl(new), text)
    return text.replace(old, new)


def _go_repl(new: str) -> str:
    """Go's ``$1``/``${name}`` replacement syntax to Python's."""
    out = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", new.replace("\\", "\\\\"))
    return re.sub(r"\$(\d+)", r"\\g<\1>", out)


def f_regex_replace(s: Any, pattern: Any, repl: Any) -> Any:
    return _go_regex(as_string(pattern, 1)).sub(_go_repl(as_string(repl, 2)), as_string(s))


def _match_value(m: re.Match[str]) -> Any:
    if m.re.groupindex:
        return {k: (m.group(k) if m.group(k) is not None else None) for k in m.re.groupindex}
    if m.re.groups:
        return [g for g in m.groups()]
    return m.group(0)


def f_regex(pattern: Any, s: Any) -> Any:
    m = _go_regex(as_string(pattern)).search(as_string(s, 1))
    if m is None:
        raise FunctionArgumentError("pattern did not match any part of the given string")
    return _match_value(m)


def f_regexall(pattern: Any, s: Any) -> Any:
    return [_match_value(m) for m in _go_regex(as_string(pattern)).finditer(as_string(s, 1))]


def f_split(sep: Any, s: Any) -> Any:
    text, separator = as_string(s, 1), as_string(sep)
    if separator == "":
        return list(text)
    return text.split(separator)


def graphemes(text: str) -> list[str]:
    """Unicode grapheme clusters (cty counts and slices strings by them, not by code points)."""
    import regex  # lazy: loaded only when a function counts or slices a string by graphemes

    return list(regex.findall(r"\X", text))


def f_strrev(s: Any) -> Any:
    return "".join(reversed(graphemes(as_string(s))))


def f_substr(s: Any, offset: Any, length: Any) -> Any:
    text, off, n = graphemes(as_string(s)), as_int(offset, 1), as_int(length, 2)
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
    return re.sub(r"(^|(?<=[^\w']))(\w)", lambda m: m.group(1) + m.group(2).upper(), as_string(s))


def f_trim(s: Any, chars: Any) -> Any:
    return as_string(s).strip(as_string(chars, 1))


def f_trimprefix(s: Any, prefix: Any) -> Any:
    text, p = as_string(s), as_string(prefix, 1)
    return text[len(p):] if p and text.startswith(p) else text


def f_trimsuffix(s: Any, suffix: Any) -> Any:
    text, p = as_string(s), as_string(suffix, 1)
    return text[:-len(p)] if p and text.endswith(p) else text


def f_trimspace(s: Any) -> Any:
    return as_string(s).strip(" \t\n\r\v\f\u0085\u00a0")


def f_startswith(s: Any, prefix: Any) -> Any:
    return as_string(s).startswith(as_string(prefix, 1))


def f_endswith(s: Any, suffix: Any) -> Any:
    return as_string(s).endswith(as_string(suffix, 1))


def f_strcontains(s: Any, sub: Any) -> Any:
    return as_string(sub, 1) in as_string(s)


FUNCTIONS: dict[str, Function] = {
    "chomp": f_chomp, "format": f_format, "formatlist": f_formatlist, "indent": f_indent, "join": f_join,
    "lower": f_lower, "upper": f_upper, "replace": f_replace, "regex_replace": f_regex_replace, "regex": f_regex,
    "regexall": f_regexall, "split": f_split, "strrev": f_strrev, "substr": f_substr, "title": f_title,
    "trim": f_trim, "trimprefix": f_trimprefix, "trimsuffix": f_trimsuffix, "trimspace": f_trimspace,
    "startswith": f_startswith, "endswith": f_endswith, "strcontains": f_strcontains,
}
