"""HCL2 expression evaluation over python-hcl2's tree: one row per construct of HCL's native syntax."""

from __future__ import annotations

from typing import Any

import pytest

from builders.template.hcl2.diagnostics import HCLError
from builders.template.hcl2.evaluator import Evaluator, Namespace, parse_expression
from builders.template.hcl2.functions import make_functions


def _eval(expr: str, scope: dict[str, Any] | None = None) -> Any:
    import datetime as dt
    from pathlib import Path

    ev = Evaluator("t.pkr.hcl", make_functions(base_dir=Path("."), now=dt.datetime(2024, 1, 2, 3, 4, 5,
                                                                                   tzinfo=dt.UTC)))
    return ev.evaluate(parse_expression(expr), scope or {})


SCOPE = {
    "var": {"name": "web", "n": 3, "list": ["a", "b", "c"], "m": {"x": 1, "y": 2}, "flag": True, "nothing": None,
            "objs": [{"id": 1, "tags": {"k": "v1"}}, {"id": 2, "tags": {"k": "v2"}}]},
}

CASES: list[tuple[str, Any]] = [
    ('"plain"', "plain"),
    ("42", 42),
    ("1.5", 1.5),
    ("true", True),
    ("null", None),
    ('"esc \\" \\\\ \\n \\t \\u00e9"', 'esc " \\ \n \t é'),
    ('"$${not} %%{not}"', "${not} %{not}"),
    ('"${var.name}-${var.n}"', "web-3"),
    ('"${var.n}"', 3),  # a lone interpolation keeps its type
    ('"%{ if var.flag }yes%{ else }no%{ endif }"', "yes"),
    ('"%{ if !var.flag }yes%{ else }no%{ endif }"', "no"),
    ('"%{ for x in var.list }${x},%{ endfor }"', "a,b,c,"),
    ('"%{ for i, x in var.list }${i}=${x} %{ endfor }"', "0=a 1=b 2=c "),
    ('"a  %{~ if true ~}  b  %{~ endif ~}  c"', "abc"),
    ("<<EOF\nline ${var.name}\n  two\nEOF\n", "line web\n  two\n"),
    ("<<-EOF\n    one\n      two ${var.n}\n    EOF\n", "one\n  two 3\n"),
    ("<<EOF\n%{ for x in var.list ~}\n${x}\n%{ endfor ~}\nEOF\n", "a\nb\nc\n"),
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 / 2", 3.5),
    ("7 % 3", 1),
    ("-7 % 3", -1),
    ("-var.n", -3),
    ('"5" + 1', 6),
    ("3 > 2 && 2 >= 2 && 1 < 2 && 2 <= 2", True),
    ("1 == 1.0", True),
    ('1 == "1"', False),
    ("var.list == [\"a\", \"b\", \"c\"]", True),
    ("false || !false", True),
    ("var.n > 2 ? \"big\" : \"small\"", "big"),
    ("var.nothing == null ? \"none\" : var.nothing", "none"),
    ("[for x in var.list : upper(x)]", ["A", "B", "C"]),
    ("[for x in var.list : x if x != \"b\"]", ["a", "c"]),
    ("{for k, v in var.m : k => v * 10}", {"x": 10, "y": 20}),
    ("{for x in [\"a\", \"b\", \"a\"] : x => x...}", {"a": ["a", "a"], "b": ["b"]}),
    ("[for i, x in var.list : i]", [0, 1, 2]),
    ("var.objs[*].id", [1, 2]),
    ("var.objs.*.id", [1, 2]),
    ("var.objs[*].tags.k", ["v1", "v2"]),
    ("var.nothing[*]", []),
    ("var.name[*]", ["web"]),
    ("var.list[1]", "b"),
    ("var.list.2", "c"),
    ('var.m["y"]', 2),
    ("var.objs[0].tags[\"k\"]", "v1"),
    ("{a = 1, \"b\" = 2, (var.name) = 3}", {"a": 1, "b": 2, "web": 3}),
    ("[1, [2, 3], {x = \"y\"}]", [1, [2, 3], {"x": "y"}]),
    ("concat(var.list, [\"d\"])", ["a", "b", "c", "d"]),
    ("length(var.m)", 2),
    ("format(\"%s-%03d\", var.name, var.n)", "web-003"),
    ("try(var.m.z, \"fallback\")", "fallback"),
    ("can(var.m.z)", False),
    ("can(var.m.x)", True),
]


@pytest.mark.parametrize(("expr", "expected"), CASES)
def test_expression(expr: str, expected: Any) -> None:
    assert _eval(expr, SCOPE) == expected


def test_max_of_strings_is_a_function_error() -> None:
    with pytest.raises(HCLError) as e:
        _eval('max(var.list...)', SCOPE)
    assert "Invalid function argument" in str(e.value)


@pytest.mark.parametrize(("expr", "summary", "detail"), [
    ("var.m.z", "Unsupported attribute", 'This object does not have an attribute named "z".'),
    ("var.list[7]", "Invalid index", "The given key does not identify an element in this collection value."),
    ("nosuch(1)", "Call to unknown function", 'There is no function named "nosuch".'),
    ("undefined_name", "Unknown variable", 'There is no variable named "undefined_name".'),
    ('"x${var.nothing}"', "Invalid template interpolation value", "The expression result is null."),
    ('1 + "x"', "Invalid operand", 'a number is required, but "x" is not a valid number'),
    ('true ? 1 : 2 == "a" ? 1 : 2', None, None),
])
def test_expression_errors(expr: str, summary: str | None, detail: str | None) -> None:
    if summary is None:
        assert _eval(expr, SCOPE) == 1
        return
    with pytest.raises(HCLError) as e:
        _eval(expr, SCOPE)
    text = str(e.value)
    assert text.startswith(f"Error: {summary}\n"), text
    assert detail in text
    assert "on t.pkr.hcl line 1" in text


def test_namespace_taints_the_expression() -> None:
    ev = Evaluator("t.pkr.hcl", {})
    ns = Namespace("var", lambda n: {"pw": "secret", "user": "bob"}[n], lambda n: n == "pw")
    assert ev.evaluate(parse_expression('"${var.user}"'), {"var": ns}) == "bob"
    assert not ev.tainted
    assert ev.evaluate(parse_expression('"x-${var.pw}"'), {"var": ns}) == "x-secret"
    assert ev.tainted
