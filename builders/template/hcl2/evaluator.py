"""Evaluation of HCL2 expressions over python-hcl2's Lark parse tree (``hcl2.parses_to_tree``).

Covers HCL's native syntax (hashicorp/hcl ``hclsyntax/spec.md``): literals, quoted and heredoc templates with
``${}`` interpolation, ``%{ if }``/``%{ for }`` directives and ``~`` strip markers, ``$${``/``%%{`` escapes,
tuples and objects, arithmetic/comparison/logic operators, conditionals, ``for`` expressions (tuple and object,
with ``if`` and grouping ``...``), splats (``[*]`` and ``.*``), index and attribute access, and function calls
(with ``...`` expansion). A template that is exactly one interpolation yields the value unconverted, as in HCL.

References resolve through the *scope*: a mapping from root names (``var``, ``local``, ``data``, ``source``,
``build``, ``path``, ``packer``, ``each``, iterator names) to values; a root may be a :class:`Namespace`, whose
attributes are computed on demand (locals and data sources evaluate lazily, in dependency order). A namespace
entry marked sensitive taints the expression reading it (:attr:`Evaluator.tainted`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from lark import Token, Tree

from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.parser import first_line, parse_text
from builders.template.hcl2.values import (
    UNKNOWN,
    ConversionError,
    UnknownValue,
    hcl_equal,
    normalize_number,
    to_bool,
    to_number,
    to_string,
    type_name,
)


class FunctionArgumentError(Exception):
    """Raised by a function: ``Invalid function argument`` for argument ``index`` (0-based) or, with index None,
    ``Error in function call``."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class Namespace:
    """A root (``local``, ``data``...) whose attributes are resolved by ``resolve(name)``; raising KeyError means
    no such attribute. ``sensitive(name)`` tells whether reading it taints the expression."""

    def __init__(self, label: str, resolve: Callable[[str], Any],
                 sensitive: Callable[[str], bool] | None = None) -> None:
        self.label = label
        self.resolve = resolve
        self.is_sensitive = sensitive or (lambda _name: False)


Function = Callable[..., Any]


def _meaningful(children: list[Any]) -> list[Any]:
    return [c for c in children if not (isinstance(c, Tree) and c.data == "new_line_or_comment")]


def _line(node: Any) -> int:
    return first_line(node) or 1


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def unescape_quoted(text: str) -> str:
    """HCL quoted-string escapes: ``\\n \\r \\t \\" \\\\ \\uNNNN \\UNNNNNNNN``."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            e = text[i + 1]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            if e == "U" and re.fullmatch(r"[0-9a-fA-F]{8}", text[i + 2:i + 10]):
                out.append(chr(int(text[i + 2:i + 10], 16)))
                i += 10
                continue
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Templates: a flat list of parts, assembled into if/for structure.
#   ("lit", text) ("interp", node) ("if", node, l, r) ("else", l, r) ("endif", l, r)
#   ("for", key, value, node, l, r) ("endfor", l, r)

Part = tuple[Any, ...]


def parse_expression(text: str, filename: str = "<expression>", line: int = 1) -> Any:
    """Parse one HCL expression (for heredoc/template interpolations, -var values)."""
    try:
        tree = parse_text(f"x = {text}\n")
    except Exception as e:  # noqa: BLE001 - Lark raises many types
        raise HCLError(Diagnostic("Invalid expression", _parse_detail(e), Range(filename, line))) from None
    body = tree.children[0]
    for child in body.children:
        if isinstance(child, Tree) and child.data == "attribute":
            return _meaningful(child.children)[-1]
    raise HCLError(Diagnostic("Invalid expression", "Expected the start of an expression.", Range(filename, line)))


def _parse_detail(e: Exception) -> str:
    text = str(e).strip().split("\n")[0]
    return text[:300]


def _find_close(text: str, start: int) -> int:
    """Index of the ``}`` closing a sequence whose body starts at ``start``; -1 if none."""
    depth = 1
    i = start
    while i < len(text):
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


_FOR_DIRECTIVE = re.compile(r"for\s+([A-Za-z_][\w-]*)(?:\s*,\s*([A-Za-z_][\w-]*))?\s+in\s+(.*)", re.S)


def parse_template_text(text: str, filename: str = "<template>", first_line: int = 1) -> list[Part]:
    """Parse template text (a heredoc body or a ``templatefile`` file) into template parts."""
    parts: list[Part] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if text.startswith("$${", i) or text.startswith("%%{", i):
            buf.append(text[i + 1:i + 3])
            i += 3
            continue
        if text.startswith("${", i) or text.startswith("%{", i):
            line = first_line + text.count("\n", 0, i)
            end = _find_close(text, i + 2)
            if end < 0:
                raise HCLError(Diagnostic("Unterminated template string",
                                          "No closing marker was found for the string.", Range(filename, line)))
            if buf:
                parts.append(("lit", "".join(buf)))
                buf = []
            inner = text[i + 2:end]
            lstrip = inner.startswith("~")
            rstrip = inner.endswith("~")
            inner = inner[1 if lstrip else 0:len(inner) - (1 if rstrip else 0)].strip()
            if text[i] == "$":
                parts.append(("interp", parse_expression(inner, filename, line), lstrip, rstrip))
            else:
                parts.append(_directive(inner, lstrip, rstrip, filename, line))
            i = end + 1
            continue
        buf.append(text[i])
        i += 1
    if buf:
        parts.append(("lit", "".join(buf)))
    return parts


def _directive(inner: str, lstrip: bool, rstrip: bool, filename: str, line: int) -> Part:
    if inner.startswith("if ") or inner.startswith("if\t"):
        return ("if", parse_expression(inner[3:], filename, line), lstrip, rstrip)
    if inner in ("else", "endif", "endfor"):
        return (inner, lstrip, rstrip)
    m = _FOR_DIRECTIVE.fullmatch(inner)
    if m:
        key, value = (m.group(1), m.group(2)) if m.group(2) else (None, m.group(1))
        return ("for", key, value, parse_expression(m.group(3), filename, line), lstrip, rstrip)
    raise HCLError(Diagnostic("Invalid template directive",
                              "A template directive keyword (\"if\", \"for\", etc) is expected at the beginning of "
                              "a %{ sequence.", Range(filename, line)))


def _apply_strips(parts: list[Part]) -> list[Part]:
    out = list(parts)
    for i, p in enumerate(out):
        if p[0] == "lit":
            continue
        lstrip, rstrip = p[-2], p[-1]
        if lstrip and i > 0 and out[i - 1][0] == "lit":
            out[i - 1] = ("lit", out[i - 1][1].rstrip(" \t\r\n"))
        if rstrip and i + 1 < len(out) and out[i + 1][0] == "lit":
            out[i + 1] = ("lit", out[i + 1][1].lstrip(" \t\r\n"))
    return out


def _structure(parts: list[Part], pos: int, stop: tuple[str, ...], filename: str) -> tuple[list[Any], int]:
    """Nest if/for directives: returns (nodes, index of the stopping part)."""
    nodes: list[Any] = []
    while pos < len(parts):
        p = parts[pos]
        kind = p[0]
        if kind in stop:
            return nodes, pos
        if kind in ("lit", "interp"):
            nodes.append(p)
            pos += 1
        elif kind == "if":
            then, pos = _structure(parts, pos + 1, ("else", "endif"), filename)
            other: list[Any] = []
            if pos < len(parts) and parts[pos][0] == "else":
                other, pos = _structure(parts, pos + 1, ("endif",), filename)
            if pos >= len(parts) or parts[pos][0] != "endif":
                raise HCLError(Diagnostic("Unterminated template directive",
                                          "Missing %{ endif } for this %{ if }.", Range(filename, _line(p[1]))))
            nodes.append(("IF", p[1], then, other))
            pos += 1
        elif kind == "for":
            body, pos = _structure(parts, pos + 1, ("endfor",), filename)
            if pos >= len(parts):
                raise HCLError(Diagnostic("Unterminated template directive",
                                          "Missing %{ endfor } for this %{ for }.", Range(filename, _line(p[3]))))
            nodes.append(("FOR", p[1], p[2], p[3], body))
            pos += 1
        else:
            raise HCLError(Diagnostic("Unexpected template directive",
                                      f"The %{{ {kind} }} directive has no opening directive.", Range(filename, 1)))
    return nodes, pos


def structure_template(parts: list[Part], filename: str) -> list[Any]:
    nodes, _ = _structure(_apply_strips(parts), 0, (), filename)
    return nodes


# --------------------------------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates expressions of one file. ``functions`` maps names to callables taking HCL values."""

    def __init__(self, filename: str, functions: Mapping[str, Function], sources: Mapping[str, str] | None = None
                 ) -> None:
        self.filename = filename
        self.functions = functions
        self.sources = dict(sources or {})
        #: Set when a sensitive namespace entry was read; the caller resets it per top-level expression.
        self.tainted = False
        self.context = ""

    # -- errors ----------------------------------------------------------------------------------------------
    def error(self, node: Any, summary: str, detail: str) -> HCLError:
        return HCLError(Diagnostic(summary, detail, Range(self.filename, _line(node)), context=self.context,
                                   sources=self.sources))

    # -- entry -----------------------------------------------------------------------------------------------
    def evaluate(self, node: Any, scope: Mapping[str, Any]) -> Any:
        if isinstance(node, Token):
            raise self.error(node, "Invalid expression", f"Unexpected token {node!s}.")
        method = _METHODS.get(node.data)
        if method is None:
            raise self.error(node, "Unsupported expression", f"Expressions of kind {node.data} are not supported.")
        return method(self, node, scope)

    # -- terms -----------------------------------------------------------------------------------------------
    def _e_expr_term(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        inner = getattr(node, "_sf_inner", None)
        if inner is None:
            inner = [c for c in _meaningful(node.children)
                     if not (isinstance(c, Token) and c.type in ("LPAR", "RPAR"))][0]
            node._sf_inner = inner  # type: ignore[attr-defined]  # parse trees are reused: compile once
        return self.evaluate(inner, scope)

    def _e_int_lit(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return int(str(node.children[0]))

    def _e_float_lit(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return normalize_number(float(str(node.children[0])))

    def _e_literal_value(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        word = str(node.children[0])
        return {"true": True, "false": False, "null": None}[word]

    def _e_identifier(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        name = str(node.children[0])
        if name in scope:
            return scope[name]
        raise self.error(node, "Unknown variable", f'There is no variable named "{name}".')

    def _e_tuple(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return [self.evaluate(c, scope) for c in _meaningful(node.children) if isinstance(c, Tree)]

    def _e_object(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        out: dict[str, Any] = {}
        for elem in _meaningful(node.children):
            if not isinstance(elem, Tree) or elem.data != "object_elem":
                continue
            key_node, value_node = _meaningful(elem.children)[0], _meaningful(elem.children)[-1]
            key = self.object_key(key_node, scope)
            out[key] = self.evaluate(value_node, scope)
        return out

    def object_key(self, key_node: Tree, scope: Mapping[str, Any]) -> str:
        inner = _meaningful(key_node.children)[0]
        if isinstance(inner, Tree) and inner.data == "keyword":
            return str(inner.children[0])
        if isinstance(inner, Tree) and inner.data == "expr_term":
            kids = _meaningful(inner.children)
            if len(kids) == 1 and isinstance(kids[0], Tree) and kids[0].data == "identifier":
                return str(kids[0].children[0])
        if isinstance(inner, Tree) and inner.data == "identifier":
            return str(inner.children[0])
        value = self.evaluate(inner, scope)
        try:
            return to_string(value)
        except ConversionError:
            raise self.error(key_node, "Incorrect key type",
                             "Can't use this value as a key: string required.") from None

    # -- strings ---------------------------------------------------------------------------------------------
    def _e_string(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        compiled = getattr(node, "_sf_parts", None)
        if compiled is None:
            compiled = self._compile_string(node)
            node._sf_parts = compiled  # type: ignore[attr-defined]
        if isinstance(compiled, str):
            return compiled
        return self.render_parts(compiled, scope, node)

    def _compile_string(self, node: Tree) -> str | list[Part]:
        """A quoted template's parts, or its text when it is a constant."""
        parts: list[Part] = []
        for sp in node.children:
            if not isinstance(sp, Tree):
                continue  # the quotes
            item = sp.children[0]
            if isinstance(item, Token):
                if item.type == "ESCAPED_INTERPOLATION" or item.type == "ESCAPED_DIRECTIVE":
                    text = str(item)[1:]
                else:
                    text = unescape_quoted(str(item))
                if parts and parts[-1][0] == "lit":
                    parts[-1] = ("lit", parts[-1][1] + text)
                else:
                    parts.append(("lit", text))
            else:
                parts.append(self._string_directive(item))
        if all(p[0] == "lit" for p in parts):
            return "".join(p[1] for p in parts)
        return parts

    def _string_directive(self, item: Tree) -> Part:
        kids = _meaningful(item.children)
        toks = [c for c in kids if isinstance(c, Token)]
        trees = [c for c in kids if isinstance(c, Tree)]
        if item.data == "interpolation":
            return ("interp", trees[0], False, False)
        # strip markers: one right after %{, one right before }
        lstrip = len(toks) > 1 and toks[1].type == "STRIP_MARKER"
        rstrip = len(toks) > 1 and toks[-2].type == "STRIP_MARKER"
        if item.data == "template_if_start":
            return ("if", trees[-1], lstrip, rstrip)
        if item.data == "template_for_start":
            names = [str(t.children[0]) for t in trees if t.data == "identifier"]
            expr = trees[-1]
            key, value = (names[0], names[1]) if len(names) == 2 else (None, names[0])
            return ("for", key, value, expr, lstrip, rstrip)
        kind = {"template_else": "else", "template_endif": "endif", "template_endfor": "endfor"}[item.data]
        return (kind, lstrip, rstrip)

    def render_parts(self, parts: list[Part], scope: Mapping[str, Any], node: Any) -> Any:
        if len(parts) == 1 and parts[0][0] == "interp":
            return self.evaluate(parts[0][1], scope)
        if all(p[0] == "lit" for p in parts):
            return "".join(p[1] for p in parts)
        nodes = getattr(node, "_sf_struct", None) if node is not None else None
        if nodes is None:
            nodes = structure_template(parts, self.filename)
            if node is not None:
                node._sf_struct = nodes
        out: list[str] = []
        self._render(nodes, scope, out)
        return "".join(out)

    def _render(self, nodes: list[Any], scope: Mapping[str, Any], out: list[str]) -> None:
        for n in nodes:
            kind = n[0]
            if kind == "lit":
                out.append(n[1])
            elif kind == "interp":
                value = self.evaluate(n[1], scope)
                if value is UNKNOWN:
                    raise UnknownValue()
                if value is None:
                    raise self.error(n[1], "Invalid template interpolation value",
                                     "The expression result is null. Cannot include a null value in a string "
                                     "template.")
                try:
                    out.append(to_string(value))
                except ConversionError:
                    raise self.error(n[1], "Invalid template interpolation value",
                                     f"Cannot include the given value in a string template: string required, "
                                     f"but have {type_name(value)}.") from None
            elif kind == "IF":
                cond = _known(self.evaluate(n[1], scope))
                try:
                    truth = to_bool(cond)
                except ConversionError as e:
                    raise self.error(n[1], "Invalid template if condition", f"The condition is invalid: {e}.") \
                        from None
                self._render(n[2] if truth else n[3], scope, out)
            elif kind == "FOR":
                coll = _known(self.evaluate(n[3], scope))
                for k, v in self._iterate(coll, n[3]):
                    inner = dict(scope)
                    if n[1]:
                        inner[n[1]] = k
                    inner[n[2]] = v
                    self._render(n[4], inner, out)

    def _iterate(self, coll: Any, node: Any) -> list[tuple[Any, Any]]:
        if isinstance(coll, list):
            return list(enumerate(coll))
        if isinstance(coll, dict):
            return [(k, coll[k]) for k in sorted(coll)]
        if coll is None:
            raise self.error(node, "Iteration over null value", "A null value cannot be used as the collection "
                                                                 "in a 'for' expression.")
        raise self.error(node, "Iteration over non-iterable value",
                         f"A value of type {type_name(coll)} cannot be used as the collection in a 'for' expression.")

    def _e_heredoc_template(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return self._heredoc(node, scope, flush=False)

    def _e_heredoc_template_trim(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return self._heredoc(node, scope, flush=True)

    def _heredoc(self, node: Tree, scope: Mapping[str, Any], *, flush: bool) -> Any:
        parts = getattr(node, "_sf_heredoc", None)
        if parts is None:
            parts = self._heredoc_parts(node, flush=flush)
            node._sf_heredoc = parts  # type: ignore[attr-defined]
        return self.render_parts(parts, scope, node) if parts else ""

    def _heredoc_parts(self, node: Tree, *, flush: bool) -> list[Part]:
        raw = str(node.children[0]).replace("\r\n", "\n")
        lines = raw.rstrip("\n").split("\n")
        body_lines = lines[1:-1]
        if flush:
            indents = [len(ln) - len(ln.lstrip(" \t")) for ln in body_lines if ln.strip()]
            cut = min(indents) if indents else 0
            body_lines = [ln[cut:] for ln in body_lines]
        body = "".join(ln + "\n" for ln in body_lines)
        parts = parse_template_text(body, self.filename, _line(node) + 1)
        if len(parts) == 1 and parts[0][0] == "interp":
            parts = [parts[0], ("lit", "")]  # a heredoc is always a string
        return parts

    def _e_template_string(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        text = str(node.children[0])
        return unescape_quoted(text[2:-2])

    # -- operators -------------------------------------------------------------------------------------------
    def _e_unary_op(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        op, operand = str(node.children[0]), node.children[1]
        value = _known(self.evaluate(operand, scope))
        try:
            if op == "-":
                return -to_number(value)
            return not to_bool(value)
        except ConversionError as e:
            raise self.error(node, "Invalid operand", f"Unsuitable value for unary operand: {e}.") from None

    def _e_binary_op(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        kids = _meaningful(node.children)
        left_node, term = kids[0], kids[1]
        tkids = _meaningful(term.children)
        op = str(tkids[0].children[0]) if isinstance(tkids[0], Tree) else str(tkids[0])
        right_node = tkids[1]
        left = _known(self.evaluate(left_node, scope))
        if op in ("&&", "||"):
            lb = self._bool_operand(left, left_node)
            right = _known(self.evaluate(right_node, scope))
            rb = self._bool_operand(right, right_node)
            return (lb and rb) if op == "&&" else (lb or rb)
        right = _known(self.evaluate(right_node, scope))
        if op == "==":
            return hcl_equal(left, right)
        if op == "!=":
            return not hcl_equal(left, right)
        a, b = self._num_operand(left, left_node), self._num_operand(right, right_node)
        if op == "+":
            return normalize_number(a + b)
        if op == "-":
            return normalize_number(a - b)
        if op == "*":
            return normalize_number(a * b)
        if op == "/":
            if b == 0:
                raise self.error(node, "Operation failed", "Error during operation: can't divide by zero.")
            return normalize_number(a / b)
        if op == "%":
            if b == 0:
                raise self.error(node, "Operation failed", "Error during operation: can't use modulo by zero.")
            if isinstance(a, int) and isinstance(b, int):
                return int(math.fmod(a, b))
            return normalize_number(math.fmod(a, b))
        if op == "<":
            return a < b
        if op == ">":
            return a > b
        if op == "<=":
            return a <= b
        if op == ">=":
            return a >= b
        raise self.error(node, "Invalid operator", f"Unsupported operator {op}.")

    def _bool_operand(self, value: Any, node: Any) -> bool:
        try:
            return to_bool(value)
        except ConversionError as e:
            raise self.error(node, "Invalid operand", f"Unsuitable value for left operand: {e}.") from None

    def _num_operand(self, value: Any, node: Any) -> int | float:
        try:
            return to_number(value)
        except ConversionError as e:
            raise self.error(node, "Invalid operand", f"Unsuitable value for operand: {e}.") from None

    def _e_conditional(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        kids = [c for c in _meaningful(node.children) if isinstance(c, Tree)]
        cond = _known(self.evaluate(kids[0], scope))
        try:
            truth = to_bool(cond)
        except ConversionError as e:
            raise self.error(kids[0], "Incorrect condition type",
                             f"The condition expression must be of type bool: {e}.") from None
        return self.evaluate(kids[1] if truth else kids[2], scope)

    # -- traversal -------------------------------------------------------------------------------------------
    def attribute(self, value: Any, name: str, node: Any) -> Any:
        _known(value)
        if isinstance(value, Namespace):
            try:
                result = value.resolve(name)
            except KeyError:
                raise self.error(node, "Unsupported attribute",
                                 f'This object does not have an attribute named "{name}".') from None
            if value.is_sensitive(name):
                self.tainted = True
            return result
        if isinstance(value, dict):
            if name in value:
                return value[name]
            raise self.error(node, "Unsupported attribute", f'This object does not have an attribute named "{name}".')
        if isinstance(value, list) and name.isdigit():
            return self.index(value, int(name), node)
        if value is None:
            raise self.error(node, "Attempt to get attribute from null value",
                             "This value is null, so it does not have any attributes.")
        raise self.error(node, "Unsupported attribute",
                         f"Can't access attributes on a primitive-typed value ({type_name(value)}).")

    def index(self, value: Any, key: Any, node: Any) -> Any:
        _known(value)
        _known(key)
        if isinstance(value, Namespace):
            return self.attribute(value, to_string(key), node)
        if isinstance(value, list):
            try:
                i = to_number(key)
            except ConversionError:
                raise self.error(node, "Invalid index", "The given key does not identify an element in this "
                                                        "collection value: a number is required.") from None
            if not isinstance(i, int) or i < 0 or i >= len(value):
                raise self.error(node, "Invalid index", "The given key does not identify an element in this "
                                                        "collection value.")
            return value[i]
        if isinstance(value, dict):
            try:
                k = to_string(key)
            except ConversionError:
                raise self.error(node, "Invalid index", "The given key does not identify an element in this "
                                                        "collection value: string required.") from None
            if k not in value:
                raise self.error(node, "Invalid index", "The given key does not identify an element in this "
                                                        "collection value.")
            return value[k]
        if value is None:
            raise self.error(node, "Attempt to index null value", "This value is null, so it does not have any "
                                                                  "indices.")
        raise self.error(node, "Invalid index", "This value does not have any indices.")

    def _apply_step(self, value: Any, step: Tree, scope: Mapping[str, Any]) -> Any:
        if step.data == "get_attr":
            name_node = _meaningful(step.children)[-1]
            return self.attribute(value, str(name_node.children[0]), step)
        if step.data == "braces_index":
            key_node = [c for c in _meaningful(step.children) if isinstance(c, Tree)][0]
            return self.index(value, self.evaluate(key_node, scope), step)
        if step.data == "short_index":
            return self.index(value, int(str(step.children[-1])), step)
        raise self.error(step, "Unsupported traversal", step.data)

    def _e_get_attr_expr_term(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        base, step = _meaningful(node.children)
        return self._apply_step(self.evaluate(base, scope), step, scope)

    def _e_index_expr_term(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        base, step = _meaningful(node.children)
        return self._apply_step(self.evaluate(base, scope), step, scope)

    def _splat(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        base, splat = _meaningful(node.children)
        value = _known(self.evaluate(base, scope))
        steps = [c for c in splat.children if isinstance(c, Tree)]
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            for step in steps:
                item = self._apply_step(item, step, scope)
            out.append(item)
        return out

    _e_attr_splat_expr_term = _splat
    _e_full_splat_expr_term = _splat

    # -- for expressions -------------------------------------------------------------------------------------
    def _for_parts(self, node: Tree) -> tuple[str | None, str, Any, list[Any], Any, bool]:
        kids = _meaningful(node.children)
        intro = next(c for c in kids if isinstance(c, Tree) and c.data == "for_intro")
        names = [str(c.children[0]) for c in intro.children if isinstance(c, Tree) and c.data == "identifier"]
        coll = [c for c in _meaningful(intro.children) if isinstance(c, Tree) and c.data != "identifier"][0]
        key, val = (names[0], names[1]) if len(names) == 2 else (None, names[0])
        exprs = [c for c in kids if isinstance(c, Tree) and c.data not in ("for_intro", "for_cond")]
        cond_node = next((c for c in kids if isinstance(c, Tree) and c.data == "for_cond"), None)
        cond = _meaningful(cond_node.children)[-1] if cond_node is not None else None
        grouping = any(isinstance(c, Token) and c.type == "ELLIPSIS" for c in kids)
        return key, val, coll, exprs, cond, grouping

    def _for_items(self, node: Tree, scope: Mapping[str, Any]) -> list[tuple[dict[str, Any], list[Any]]]:
        key, val, coll_node, exprs, cond, _ = self._for_parts(node)
        coll = _known(self.evaluate(coll_node, scope))
        items = []
        for k, v in self._iterate(coll, coll_node):
            inner = dict(scope)
            if key:
                inner[key] = k
            inner[val] = v
            if cond is not None:
                c = _known(self.evaluate(cond, inner))
                try:
                    if not to_bool(c):
                        continue
                except ConversionError as e:
                    raise self.error(cond, "Invalid 'for' condition",
                                     f"The 'if' clause value is invalid: {e}.") from None
            items.append((inner, exprs))
        return items

    def _e_for_tuple_expr(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        return [self.evaluate(exprs[0], inner) for inner, exprs in self._for_items(node, scope)]

    def _e_for_object_expr(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        grouping = self._for_parts(node)[5]
        out: dict[str, Any] = {}
        for inner, exprs in self._for_items(node, scope):
            k = self.evaluate(exprs[0], inner)
            try:
                ks = to_string(k)
            except ConversionError:
                raise self.error(exprs[0], "Invalid object key", "Key expression in 'for' expression must be a "
                                                                 "string.") from None
            v = self.evaluate(exprs[1], inner)
            if grouping:
                out.setdefault(ks, []).append(v)
            elif ks in out:
                raise self.error(exprs[0], "Duplicate object key",
                                 f'Two different items produced the key "{ks}" in this \'for\' expression. If '
                                 "duplicates are expected, use the ellipsis (...) after the value expression to "
                                 "enable grouping by key.")
            else:
                out[ks] = v
        return dict(sorted(out.items()))

    # -- functions -------------------------------------------------------------------------------------------
    def _e_function_call(self, node: Tree, scope: Mapping[str, Any]) -> Any:
        kids = _meaningful(node.children)
        idents = [str(c.children[0]) for c in kids if isinstance(c, Tree) and c.data == "identifier"]
        name = "::".join(idents)
        args_node = next((c for c in kids if isinstance(c, Tree) and c.data == "arguments"), None)
        arg_nodes = [c for c in _meaningful(args_node.children) if isinstance(c, Tree)] if args_node else []
        expand = args_node is not None and any(isinstance(c, Token) and c.type == "ELLIPSIS"
                                               for c in args_node.children)
        fn = self.functions.get(name)
        if fn is None:
            raise self.error(node, "Call to unknown function", f'There is no function named "{name}".')
        if getattr(fn, "lazy", False):
            try:
                return fn(self, scope, *arg_nodes)
            except FunctionArgumentError as e:
                raise self._call_error(node, name, e) from None
        args = [_known(self.evaluate(a, scope)) for a in arg_nodes]
        if expand:
            last = args.pop() if args else None
            if not isinstance(last, list):
                raise self.error(node, "Invalid expanding argument value",
                                 "The expanding argument (indicated by ...) must be of a tuple, list, or set type.")
            args.extend(last)
        try:
            return fn(*args)
        except FunctionArgumentError as e:
            raise self._call_error(node, name, e) from None
        except TypeError as e:
            if "argument" in str(e) and ("positional" in str(e) or "missing" in str(e)):
                raise self.error(node, "Not enough function arguments" if "missing" in str(e)
                                 else "Too many function arguments",
                                 f'Function "{name}" was called with the wrong number of arguments.') from None
            raise self.error(node, "Error in function call", f'Call to function "{name}" failed: {e}.') from None
        except ConversionError as e:
            raise self.error(node, "Invalid function argument", f'Invalid value for "{name}" argument: {e}.') \
                from None
        except (ValueError, ArithmeticError, OSError, LookupError) as e:
            raise self.error(node, "Error in function call", f'Call to function "{name}" failed: {e}.') from None

    def _call_error(self, node: Tree, name: str, e: FunctionArgumentError) -> HCLError:
        if e.index is None:
            return self.error(node, "Error in function call", f'Call to function "{name}" failed: {e}.')
        return self.error(node, "Invalid function argument", f"Invalid value for argument {e.index + 1} of "
                                                             f'"{name}": {e}.')


def _known(value: Any) -> Any:
    """``value``, or UnknownValue when it is unknown (whatever uses it is unknown too)."""
    if value is UNKNOWN:
        raise UnknownValue()
    return value


#: Expression kind -> evaluator method (looked up once, not per call).
_METHODS: dict[str, Callable[[Evaluator, Any, Mapping[str, Any]], Any]] = {
    name[3:]: getattr(Evaluator, name) for name in dir(Evaluator) if name.startswith("_e_")
}
