"""Root-device hints with Ironic's semantics: which disk of a server the image goes to.

The one implementation of the rules: ``metal serve`` answers the deploy ramdisk's ``POST root-device`` (its disks
as it sees them) with the disk chosen here, the provider checks plans and inventories with it. Nothing else matches
hints (the ramdisk only reports disks and writes where it is told).

Followed, function for function:

* ironic-lib ``ironic_lib/utils.py`` (openstack/ironic-lib @ 07d98520f09f65dc13c37150c91733527a105acf;
  the same code lives on as ironic-python-agent ``ironic_python_agent/device_hints.py`` @
  2e4172a0243ff1abf8a2945f4757a80ff3e32ee8): ``VALID_ROOT_DEVICE_HINTS``, ``_extract_hint_operator_and_values``,
  ``_normalize_hint_expression``, ``_append_operator_to_hints``, ``parse_root_device_hints``,
  ``find_devices_by_hints``, ``match_root_device_hints``;
* oslo.utils ``oslo_utils/specs_matcher.py`` (openstack/oslo.utils @ 212fc9ec2f481ea8baaf3b45478a0290e3b64449):
  ``make_grammar`` (the tokens: ``==`` ``=`` ``!=`` ``<in>`` ``>=`` ``<=`` ``>`` ``<`` ``s==`` ``s!=`` ``s<=``
  ``s<`` ``s>=`` ``s>``, n-ary ``<all-in>``, ``<or> a <or> b``, ``<range-in> [ a b ]``) and ``op_methods``.

Semantics (Ironic's):

* hints: ``size`` (int GiB), ``rotational`` (bool), and strings ``model``, ``vendor``, ``serial``, ``wwn``,
  ``wwn_with_extension``, ``wwn_vendor_extension``, ``name``, ``hctl``, ``by_path``. Every given hint must match.
* a plain value means ``==`` (size) or ``s==`` (strings); string expressions and device values are lower-cased and
  URL-quoted (so matching is case-insensitive and a value may hold spaces: ``s== QEMU HARDDISK``);
* a device's ``size`` is in bytes and compared in GiB as a float (``size: 10`` does not match a 10.5 GiB disk);
* a device with an empty value for a hinted string attribute does not match;
* the chosen device is the first match in the order given; :func:`select_root_device` orders by kernel name (as
  ``lsblk`` lists them for IPA), and without hints picks the smallest disk of at least 4 GiB (IPA's
  ``guess_root_disk``).

Where oslo's operators cannot work on a device attribute, we are strict instead of crashing at match time:

* ``name`` without ``/dev/`` and ``by_path`` without ``/dev/disk/by-path/`` get the prefix (IPA reports full paths);
* numeric hints (``size``) take ``== = != >= <= > <``, ``<or> a <or> b`` (numeric equality) and
  ``<range-in> [ a b ]`` / ``<in> a b`` (inclusive range; oslo's ``<in>`` is a substring test that cannot apply to
  a number, the project's spec names ``<in> N M`` as the size range);
* string ``<all-in> a b``: every word is a substring of the value (oslo's evaluates a list literal, which a disk
  attribute never is); string hints refuse ``<range-in>`` and numeric operators.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

GIB: Final = 1 << 30
#: The default root disk's minimum size (IPA ``utils.guess_root_disk(min_size=4 GiB)``).
MIN_ROOT_BYTES: Final = 4 * GIB

#: ``{hint: type}`` as ironic-lib's ``VALID_ROOT_DEVICE_HINTS``.
VALID_ROOT_DEVICE_HINTS: Final[dict[str, type]] = {
    "size": int,
    "model": str,
    "wwn": str,
    "serial": str,
    "vendor": str,
    "wwn_with_extension": str,
    "wwn_vendor_extension": str,
    "name": str,
    "rotational": bool,
    "hctl": str,
    "by_path": str,
}
#: The order hints are shown in (messages, the ramdisk's SF_ROOT_HINTS).
HINT_ORDER: Final = (
    "size", "name", "serial", "wwn", "model", "vendor", "wwn_with_extension", "wwn_vendor_extension", "rotational",
    "hctl", "by_path",
)  # fmt: skip

# specs_matcher.make_grammar's unary operators, in its match order ('==' before '=', '<=' before '<' ...).
UNARY_OPS: Final = ("==", "=", "!=", "<in>", ">=", "<=", ">", "<", "s==", "s!=", "s<=", "s<", "s>=", "s>")
NUMERIC_OPS: Final = ("==", "=", "!=", ">=", "<=", ">", "<")
STRING_OPS: Final = ("s==", "s!=", "s<=", "s<", "s>=", "s>", "<in>", "<or>", "<all-in>")
_KEYWORDS: Final = (*UNARY_OPS, "<all-in>", "<or>", "<range-in>")
# oslo_utils.strutils.bool_from_string(strict=True)
_TRUE: Final = ("1", "t", "true", "on", "y", "yes")
_FALSE: Final = ("0", "f", "false", "off", "n", "no")


class RootHintsError(ValueError):
    """Hints that cannot be used; ``field`` is ``root_hints.<hint>`` (or ``root_hints``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NoRootDevice(LookupError):  # noqa: N818 - the condition, like Ironic's
    """No disk satisfies the hints (or, without hints, none is at least 4 GiB). The message names both."""


@dataclass(frozen=True)
class Expression:
    """One parsed hint: ``op`` ('' for a bool hint) and its operands (normalized)."""

    op: str
    values: tuple[str, ...]


# ---------------------------------------------------------------- the grammar
def _tokens(expression: str) -> list[str]:
    """``specs_matcher.make_grammar().parseString(expression)`` without pyparsing: ``[op, operand, ...]``, or
    ``[atom]`` when there is no operator. Like pyparsing, whitespace between an operator and its operand is
    optional and text after a complete expression is ignored; an expression that parses to nothing raises."""
    pos = 0
    text = expression

    def skip() -> None:
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def keyword(words: Iterable[str]) -> str | None:
        skip()
        return next((w for w in words if text.startswith(w, pos)), None)

    def atom() -> str | None:
        nonlocal pos
        if keyword(_KEYWORDS) is not None:
            return None
        match = re.compile(r"\S+").match(text, pos)
        if not match:
            return None
        pos = match.end()
        return match.group(0)

    start = pos
    # disjunction: OneOrMore('<or>' atom)
    values: list[str] = []
    while keyword(("<or>",)):
        save = pos
        pos += len("<or>")
        value = atom()
        if value is None:
            pos = save
            break
        values.append(value)
    if values:
        return ["<or>", *values]
    pos = start
    if keyword(("<all-in>",)):
        pos += len("<all-in>")
        while (value := atom()) is not None:
            values.append(value)
        if values:
            return ["<all-in>", *values]
        pos = start
    if keyword(("<range-in>",)):
        pos += len("<range-in>")
        while len(values) < 4 and (value := atom()) is not None:
            values.append(value)
        if len(values) == 4:
            return ["<range-in>", *values]
        values, pos = [], start
    op = keyword(UNARY_OPS)
    if op is not None:
        pos += len(op)
        value = atom()
        if value is not None:
            return [op, value]
        pos = start
    value = atom()
    if value is None:
        raise ValueError(f"cannot parse {expression!r}")
    return [value]


def _extract(expression: Any, field: str) -> tuple[str, list[str]]:
    """ironic-lib ``_extract_hint_operator_and_values``: lower-cased; the operator and the text between its
    occurrences (so a value may hold spaces)."""
    text = str(expression).strip().lower()
    if not text:
        raise RootHintsError(field, "expression is empty")
    try:
        tokens = _tokens(text)
    except ValueError:
        raise RootHintsError(field, f"cannot parse {text!r}") from None
    if len(tokens) <= 1:
        return "", [text]
    op = tokens[0]
    return op, [v.strip() for v in text.split(op) if v.strip()]


def _normalize_string(expression: Any, field: str) -> str:
    """ironic-lib ``_normalize_hint_expression``: ``op`` + URL-quoted values (``<or> a b <or> c`` →
    ``<or> a%20b <or> c``)."""
    op, values = _extract(expression, field)
    return (op + op.join(f" {quote(v)} " for v in values)).strip()


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


# ---------------------------------------------------------------- parsing hints
def _prefixed(name: str, value: str) -> str:
    """A ``name`` hint without ``/dev/`` gets it, a ``by_path`` one ``/dev/disk/by-path/`` (IPA's values)."""
    prefix = {"name": "/dev/", "by_path": "/dev/disk/by-path/"}.get(name)
    return value if prefix is None or value.startswith("/dev/") else prefix + value


def _as_mapping(hints: Any) -> Mapping[str, Any]:
    if hints is None or hints == "":
        return {}
    if isinstance(hints, str):
        pairs: dict[str, Any] = {}
        for word in hints.split():
            key, sep, value = word.partition("=")
            if not sep:
                raise RootHintsError("root_hints", f"{word!r} is not key=value")
            pairs[key] = value
        return pairs
    if not isinstance(hints, Mapping):
        raise RootHintsError("root_hints", f"must be a mapping or 'key=value ...', not {type(hints).__name__}")
    return hints


def parse_root_device_hints(hints: Mapping[str, Any] | str | None) -> dict[str, Expression]:
    """Validate ``hints`` (a mapping, or ``"key=value key=value"`` words) into ``{hint: Expression}`` with the
    default operator added; ``{}`` for no hints. Raises :class:`RootHintsError` naming the hint."""
    hints = _as_mapping(hints)
    if not hints:
        return {}
    invalid = sorted(str(k) for k in hints if k not in VALID_ROOT_DEVICE_HINTS)
    if invalid:
        raise RootHintsError(
            f"root_hints.{invalid[0]}", f"unknown root-device hint; valid hints: {', '.join(HINT_ORDER)}"
        )
    parsed: dict[str, Expression] = {}
    for name in HINT_ORDER:
        if name not in hints:
            continue
        value, field, kind = hints[name], f"root_hints.{name}", VALID_ROOT_DEVICE_HINTS[name]
        if kind is bool:
            flag = _bool(value)
            if flag is None:
                raise RootHintsError(field, f"is not a Boolean value: {value!r}")
            parsed[name] = Expression("", ("true" if flag else "false",))
            continue
        if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
            raise RootHintsError(field, f"must be a string, not {type(value).__name__}")
        if kind is int:
            parsed[name] = _parse_numeric(value, field)
            continue
        op, values = _extract(value, field)
        if op and op not in STRING_OPS:
            raise RootHintsError(field, f"operator {op} is not for strings; use one of {', '.join(STRING_OPS)}")
        if op == "<all-in>":
            operands = tuple(quote(v) for v in " ".join(values).split())
        elif op == "<in>":
            operands = tuple(quote(v) for v in values[:1])
        else:
            operands = tuple(quote(_prefixed(name, v)) for v in values)
        parsed[name] = Expression(op or "s==", operands)
    return parsed


def _parse_numeric(value: Any, field: str) -> Expression:
    if not isinstance(value, int | str):
        raise RootHintsError(field, f"must be an integer or an expression like '>= 10', not {type(value).__name__}")
    op, values = _extract(value, field)
    if op == "<range-in>":
        tokens = _tokens(str(value).strip().lower())[1:]
        if tokens[0] not in "[(" or tokens[3] not in "])":
            raise RootHintsError(field, f"<range-in> takes '[ a b ]' (or with '(' / ')'), got {value!r}")
        numbers = tokens[1:3]
        brackets = (tokens[0], tokens[3])
    elif op == "<in>":
        numbers = str(value).strip().lower()[len("<in>") :].split()
        if len(numbers) != 2:
            raise RootHintsError(field, f"<in> takes two sizes (an inclusive range, GiB), got {value!r}")
        brackets = ("[", "]")
    elif op in ("", "<or>", *NUMERIC_OPS):
        numbers = values if op != "" else values[:1]
        brackets = ("", "")
    else:
        raise RootHintsError(field, f"operator {op} is not for a number; use ==, !=, >=, <=, >, <, <or>, <range-in>")
    for number in numbers:
        try:
            integer = int(number)
        except ValueError:
            raise RootHintsError(field, f"is not an integer (GiB): {value!r}") from None
        if integer <= 0:
            raise RootHintsError(field, f"must be a positive integer (GiB): {value!r}")
    if op in ("<range-in>", "<in>"):
        if int(numbers[0]) > int(numbers[1]):
            raise RootHintsError(field, f"range {numbers[0]}..{numbers[1]} is empty")
        return Expression("<range-in>", (brackets[0], numbers[0], numbers[1], brackets[1]))
    if op == "":
        return Expression("==", (str(int(numbers[0])),))
    return Expression(op, tuple(str(int(n)) for n in numbers))


def format_hints(hints: Mapping[str, Any] | str | None) -> str:
    """``size=>=4 serial=QM0001`` (validated; fixed order; each expression as written, whitespace collapsed): how
    hints are shown in messages and to the ramdisk."""
    parsed = parse_root_device_hints(hints)
    raw = _as_mapping(hints)
    words = []
    for name in parsed:
        text = " ".join(str(raw[name]).split())
        if name == "size":
            text = re.sub(r"^(==|=|!=|>=|<=|>|<) ", r"\1", text)
        words.append(f"{name}={text}")
    return " ".join(words)


# ---------------------------------------------------------------- matching
def _match(op: str, operands: tuple[str, ...], value: Any) -> bool:
    """``specs_matcher.op_methods[op](value, *operands)`` (numbers as floats, strings as normalized text)."""
    if op in NUMERIC_OPS:
        x, y = float(value), float(operands[0])
        return {
            "==": x == y, "=": x >= y, "!=": x != y, ">=": x >= y, "<=": x <= y, ">": x > y, "<": x < y,
        }[op]  # fmt: skip
    if op == "<range-in>":
        x, low, high = float(value), float(operands[1]), float(operands[2])
        lower = x >= low if operands[0] == "[" else x > low
        upper = x <= high if operands[3] == "]" else x < high
        return lower and upper
    if op == "<or>":
        if isinstance(value, float):
            return any(value == float(v) for v in operands)
        return any(value == v for v in operands)
    text = str(value)
    return {
        "s==": lambda: text == operands[0], "s!=": lambda: text != operands[0], "s<": lambda: text < operands[0],
        "s<=": lambda: text <= operands[0], "s>": lambda: text > operands[0], "s>=": lambda: text >= operands[0],
        "<in>": lambda: operands[0] in text, "<all-in>": lambda: all(v in text for v in operands),
    }[op]()  # fmt: skip


def _device_value(device: Mapping[str, Any], hint: str) -> Any:
    value = device.get(hint)
    if hint == "name" and value and not str(value).startswith("/dev/"):
        value = "/dev/" + str(value)
    if hint == "by_path" and value and not str(value).startswith("/dev/"):
        value = "/dev/disk/by-path/" + str(value)
    return value


def device_matches(device: Mapping[str, Any], parsed: Mapping[str, Expression]) -> bool:
    """Every hint matches ``device`` (ironic-lib ``find_devices_by_hints``' inner loop)."""
    for hint, expression in parsed.items():
        kind = VALID_ROOT_DEVICE_HINTS[hint]
        value = _device_value(device, hint)
        if kind is bool:
            flag = _bool(value) if value is not None and value != "" else None
            if flag is None or ("true" if flag else "false") != expression.values[0]:
                return False
            continue
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                return False
            if not _match(expression.op, expression.values, value / GIB):
                return False
            continue
        if value is None or not str(value).strip():
            return False  # "has an empty value. Skipping device."
        normalized = quote(str(value).strip().lower())
        if not _match(expression.op, expression.values, normalized):
            return False
    return True


def find_devices_by_hints(
    devices: Iterable[Mapping[str, Any]], hints: Mapping[str, Any] | str | None
) -> Iterator[Mapping[str, Any]]:
    """The devices (dicts: ``name``, ``size`` in bytes, ``model`` ...) matching every hint, in the order given."""
    parsed = parse_root_device_hints(hints)
    for device in devices:
        if device_matches(device, parsed):
            yield device


def match_root_device_hints(
    devices: Iterable[Mapping[str, Any]], hints: Mapping[str, Any] | str | None
) -> Mapping[str, Any] | None:
    """The first device matching every hint, or None."""
    return next(find_devices_by_hints(devices, hints), None)


def _order(devices: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def key(device: Mapping[str, Any]) -> tuple[int, str]:
        name = str(device.get("name") or "").removeprefix("/dev/")
        return (len(name), name)  # vda < vdb < vdaa, as the kernel names them in probe order

    return sorted(devices, key=key)


def describe_disk(device: Mapping[str, Any]) -> str:
    """``vda (10.0 GiB, serial S1, model M)``: a disk as messages show it."""
    name = str(device.get("name") or "?").removeprefix("/dev/")
    size = device.get("size")
    facts = [f"{size / GIB:.1f} GiB" if isinstance(size, int | float) and not isinstance(size, bool) else "size ?"]
    for key in ("serial", "wwn", "model", "vendor", "by_path", "hctl"):
        if device.get(key):
            facts.append(f"{key} {device[key]}")
    if device.get("rotational") is not None and device.get("rotational") != "":
        facts.append(f"rotational {str(device['rotational']).lower()}")
    return f"{name} ({', '.join(facts)})"


def select_root_device(
    devices: Iterable[Mapping[str, Any]], hints: Mapping[str, Any] | str | None
) -> Mapping[str, Any]:
    """The root disk: the first (by kernel name) matching every hint; without hints the smallest disk of at least
    4 GiB. Raises :class:`RootHintsError` for bad hints, :class:`NoRootDevice` naming the hints and every disk
    seen when nothing qualifies."""
    parsed = parse_root_device_hints(hints)
    ordered = _order(devices)
    seen = "; ".join(describe_disk(d) for d in ordered) or "none"
    if parsed:
        found = next((d for d in ordered if device_matches(d, parsed)), None)
        if found is None:
            raise NoRootDevice(f"no disk matches the root device hints {format_hints(hints)}; disks seen: {seen}")
        return found
    big = [d for d in ordered if _size(d) >= MIN_ROOT_BYTES]
    if not big:
        raise NoRootDevice(f"no disk of at least 4 GiB (no root device hints given); disks seen: {seen}")
    return min(big, key=_size)


def _size(device: Mapping[str, Any]) -> int:
    size = device.get("size")
    return int(size) if isinstance(size, int | float) and not isinstance(size, bool) else 0
