"""Packer's template engine: Go ``text/template`` syntax with Packer's functions (packer-plugin-sdk
``template/interpolate/funcs.go``).

Supported syntax: text and ``{{ actions }}``, whitespace trim markers ``{{-``/``-}}``, comments ``{{/* */}}``,
string literals in double quotes (Go escapes) and backticks, numbers, ``true``/``false``/``nil``, pipelines ``|``,
parenthesised pipelines as arguments, dot fields (``.HTTPIP``) and ``if``/``else``/``end``. ``range``, ``with``,
``define``, ``template``, ``block`` and ``$variables`` are reported as unsupported.

Errors use Go's words and positions, e.g. ``template: root:1: function "foo" not defined`` (parse time) and
``template: root:1:3: executing "root" at <env `HOME`>: error calling env: env vars are not allowed here``.

Dot fields and the ``build`` function read the *data* (Packer's generated data). When no data is given, or a
field is absent, an action that reads a dot field is left in the output verbatim (so ``{{ .HTTPIP }}`` in a
``boot_command`` survives for the builder to render later), and ``build `Key``` renders as the placeholder
``{{.Key}}`` exactly as Packer's first interpolation pass does.

Sensitive values (``builders.template.sensitive``): ``user`` returns a sensitive variable's value as ``Tainted``;
every function called with a tainted argument taints its result, and an action whose evaluation touched a tainted
value renders as a tainted string (whatever its type: ``len`` of a secret is tainted too). ``render_string`` then
returns ``Tainted`` and records the tainted action outputs in ``RenderContext.sensitive`` so that output masking
hides them (an output shorter than ``MIN_DERIVED_LENGTH`` is recorded as the whole rendered string instead).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.template.sensitive import MIN_DERIVED_LENGTH, SensitiveValues, Tainted, derive, is_tainted

#: Packer's ``packerbuilderdata.PlaceholderMsg``: generated-data values containing it render as ``{{.Key}}``.
BUILD_PLACEHOLDER = "To set this dynamically in the Packer template, you must use the `build` function"

#: The Packer version stemforge behaves like (``packer_version``, ``min_packer_version``).
PACKER_COMPAT_VERSION = "1.9.0"

ERR_VARIABLE_NOT_SET = "Error: variable not set:"


class GoTemplateError(Exception):
    """A parse or execution error, worded as Go's text/template words it."""


class _Passthrough(Exception):
    """An action read a dot field that has no value yet: emit the action's source unchanged."""


@dataclass
class RenderContext:
    """What the functions can see (Packer's ``interpolate.Context``)."""

    user_variables: Mapping[str, str] = field(default_factory=dict)
    enable_env: bool = False
    build_name: str = ""
    build_type: str = ""
    template_path: str = ""
    #: Generated data for dot fields and ``build``; None = not known yet (placeholders / verbatim).
    data: Mapping[str, Any] | None = None
    init_time: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))
    #: Names of user variables read while undefined (Packer renders them as empty strings).
    missing_user_variables: set[str] = field(default_factory=set)
    #: Names of sensitive user variables: ``user`` returns their values tainted.
    sensitive_variables: frozenset[str] = frozenset()
    #: Where tainted action outputs are recorded for masking (None: not recorded, still returned tainted).
    sensitive: SensitiveValues | None = None


# --------------------------------------------------------------------------------------------------------------
# Lexer


@dataclass
class _Tok:
    kind: str  # text left right trimleft ... see _lex
    val: str
    pos: int
    line: int
    value: Any = None


_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
_SPACE = " \t\r\n"


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _go_rune(ch: str) -> str:
    return f"U+{ord(ch):04X} {_go_quote_rune(ch)}"


def _go_quote_rune(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    if ch.isprintable():
        return f"'{ch}'"
    return f"'\\x{ord(ch):02x}'" if ord(ch) < 0x80 else f"'\\u{ord(ch):04x}'"


_GO_STRING_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
                      '"': '"', "'": "'"}


def _unquote_go(lit: str) -> str:
    """Decode a Go interpreted string literal (with quotes)."""
    body = lit[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        i += 1
        e = body[i] if i < len(body) else ""
        if e in _GO_STRING_ESCAPES and e != "'":
            out.append(_GO_STRING_ESCAPES[e])
            i += 1
        elif e in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 1:i + 1 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 1 + width
        elif e in "01234567":
            digits = body[i:i + 3]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 8)))
            i += 3
        else:
            raise ValueError("invalid syntax")
    return "".join(out)


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[_Tok] = []

    def line_at(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def error(self, msg: str, pos: int) -> None:
        raise GoTemplateError(f"template: root:{self.line_at(pos)}: {msg}")

    def run(self) -> list[_Tok]:
        text = self.text
        i = 0
        n = len(text)
        trim_next = False
        while i < n:
            j = text.find("{{", i)
            chunk = text[i:] if j < 0 else text[i:j]
            if trim_next:
                chunk = chunk.lstrip(_SPACE)
                trim_next = False
            if j < 0:
                if chunk:
                    self.toks.append(_Tok("text", chunk, i, self.line_at(i)))
                break
            trim_left = text.startswith("-", j + 2) and j + 3 < n and text[j + 3] in _SPACE
            if trim_left:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.toks.append(_Tok("text", chunk, i, self.line_at(i)))
            start = j
            k = j + 2 + (2 if trim_left else 0)
            # comment?
            after = k
            while trim_left and after < n and text[after] in _SPACE:
                after += 1
            if text.startswith("/*", after if trim_left else k):
                cstart = after if trim_left else k
                end = text.find("*/", cstart + 2)
                if end < 0:
                    self.error("unclosed comment", start)
                p = end + 2
                trim_right = False
                if text.startswith(" -}}", p) or (p < n and text[p] in _SPACE and text.startswith("-}}", p + 1)):
                    trim_right = True
                    p += 4
                elif text.startswith("}}", p):
                    p += 2
                else:
                    self.error("comment ends before closing delimiter", start)
                trim_next = trim_right
                i = p
                continue
            self.toks.append(_Tok("left", text[start:k], start, self.line_at(start)))
            i, trim_next = self.inside(k, start)
        self.toks.append(_Tok("eof", "", n, self.line_at(n)))
        return self.toks

    def inside(self, i: int, action_start: int) -> tuple[int, bool]:
        text, n = self.text, len(self.text)
        depth = 0
        while True:
            if i >= n:
                self.error("unclosed action", action_start)
            ch = text[i]
            # right delimiter, possibly with trim marker
            if ch in _SPACE and text.startswith("-}}", i + 1):
                if depth:
                    self.error("unclosed left paren", i)
                self.toks.append(_Tok("right", " -}}", i, self.line_at(i)))
                return i + 4, True
            if text.startswith("}}", i):
                if depth:
                    self.error("unclosed left paren", i)
                self.toks.append(_Tok("right", "}}", i, self.line_at(i)))
                return i + 2, False
            line = self.line_at(i)
            if ch in _SPACE:
                j = i
                while j < n and text[j] in _SPACE and not text.startswith("-}}", j + 1):
                    j += 1
                if j == i:
                    j = i + 1
                self.toks.append(_Tok("space", text[i:j], i, line))
                i = j
            elif ch == "|":
                self.toks.append(_Tok("pipe", "|", i, line))
                i += 1
            elif ch == "(":
                depth += 1
                self.toks.append(_Tok("lparen", "(", i, line))
                i += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    self.error(f"unexpected right paren {_go_rune(ch)}", i)
                self.toks.append(_Tok("rparen", ")", i, line))
                i += 1
            elif ch == '"':
                j = i + 1
                while True:
                    if j >= n or text[j] == "\n":
                        self.error("unterminated quoted string", i)
                    if text[j] == "\\":
                        j += 2
                        continue
                    if text[j] == '"':
                        break
                    j += 1
                lit = text[i:j + 1]
                try:
                    value = _unquote_go(lit)
                except ValueError:
                    self.error(f"invalid syntax: {lit}", i)
                self.toks.append(_Tok("string", lit, i, line, value))
                i = j + 1
            elif ch == "`":
                j = text.find("`", i + 1)
                if j < 0:
                    self.error("unterminated raw quoted string", i)
                lit = text[i:j + 1]
                self.toks.append(_Tok("string", lit, i, line, lit[1:-1]))
                i = j + 1
            elif ch == "$":
                self.error("variables ($name) are not supported in stemforge templates", i)
            elif ch == "." and i + 1 < n and text[i + 1].isdigit() or ch in "+-" or ch.isdigit():
                m = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|[0-9_]*\.?[0-9_]*"
                               r"([eE][+-]?[0-9_]+)?)").match(text, i)
                lit = m.group(0) if m else ""
                j = i + len(lit)
                if j < n and _is_alnum(text[j]) or not lit.strip("+-"):
                    self.error(f"bad number syntax: {text[i:j + 1]!r}".replace("'", '"'), i)
                self.toks.append(_Tok("number", lit, i, line, _parse_number(lit)))
                i = j
            elif ch == ".":
                j = i + 1
                while j < n and _is_alnum(text[j]):
                    j += 1
                names = text[i:j]
                while j < n and text[j] == "." and j + 1 < n and _is_alnum(text[j + 1]):
                    k = j + 1
                    while k < n and _is_alnum(text[k]):
                        k += 1
                    names = text[i:k]
                    j = k
                self.toks.append(_Tok("dot" if names == "." else "field", names, i, line))
                i = j
            elif _is_alnum(ch):
                j = i
                while j < n and _is_alnum(text[j]):
                    j += 1
                word = text[i:j]
                if j < n and not (text[j] in _SPACE or text[j] in "|()" or text.startswith("}}", j)
                                  or text[j] == "."):
                    self.error(f"bad character {_go_rune(text[j])}", j)
                kind = "keyword" if word in _KEYWORDS else {"true": "bool", "false": "bool", "nil": "nil"}.get(
                    word, "ident")
                self.toks.append(_Tok(kind, word, i, line))
                i = j
            else:
                self.error(f"unrecognized character in action: {_go_rune(ch)}", i)


def _parse_number(lit: str) -> int | float:
    s = lit.replace("_", "")
    try:
        return int(s, 0)
    except ValueError:
        f = float(s)
        return int(f) if f.is_integer() and abs(f) < 2**63 else f


# --------------------------------------------------------------------------------------------------------------
# AST


@dataclass
class _Node:
    pos: int
    line: int

    def src(self) -> str:
        raise NotImplementedError


@dataclass
class _Ident(_Node):
    name: str

    def src(self) -> str:
        return self.name


@dataclass
class _Lit(_Node):
    text: str
    value: Any

    def src(self) -> str:
        return self.text


@dataclass
class _Field(_Node):
    names: list[str]  # [] = dot

    def src(self) -> str:
        return "." + ".".join(self.names) if self.names else "."


@dataclass
class _Command(_Node):
    args: list[_Node]

    def src(self) -> str:
        return " ".join(f"({a.src()})" if isinstance(a, _Pipe) else a.src() for a in self.args)


@dataclass
class _Pipe(_Node):
    cmds: list[_Command]

    def src(self) -> str:
        return " | ".join(c.src() for c in self.cmds)


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe
    source: str


@dataclass
class _If:
    pipe: _Pipe
    body: list[Any]
    orelse: list[Any]
    source: str


class _Parser:
    def __init__(self, text: str, functions: Mapping[str, _Func]) -> None:
        self.text = text
        self.toks = _Lexer(text).run()
        self.k = 0
        self.functions = functions

    def error(self, msg: str, tok: _Tok | None = None) -> None:
        line = (tok or self.toks[min(self.k, len(self.toks) - 1)]).line
        raise GoTemplateError(f"template: root:{line}: {msg}")

    def peek(self) -> _Tok:
        return self.toks[self.k]

    def next(self) -> _Tok:
        t = self.toks[self.k]
        self.k += 1
        return t

    def next_nonspace(self) -> _Tok:
        t = self.next()
        while t.kind == "space":
            t = self.next()
        return t

    def peek_nonspace(self) -> _Tok:
        save = self.k
        t = self.next_nonspace()
        self.k = save
        return t

    def parse(self) -> list[Any]:
        nodes, end = self.item_list(top=True)
        return nodes

    def item_list(self, top: bool) -> tuple[list[Any], str]:
        """Items until EOF (top) or ``{{end}}``/``{{else}}``; returns the list and the terminator."""
        items: list[Any] = []
        while True:
            t = self.next()
            if t.kind == "eof":
                if not top:
                    self.error("unexpected EOF", t)
                return items, "eof"
            if t.kind == "text":
                items.append(_Text(t.val))
                continue
            # left delimiter
            left = t
            kw = self.peek_nonspace()
            if kw.kind == "keyword":
                self.next_nonspace()
                if kw.val in ("end", "else"):
                    if top:
                        self.error(f"unexpected {{{{{kw.val}}}}}", kw)
                    if kw.val == "end":
                        self.expect_right("end")
                        return items, "end"
                    # else / else if
                    nxt = self.peek_nonspace()
                    if nxt.kind == "keyword" and nxt.val == "if":
                        return items, "elseif"
                    self.expect_right("else")
                    return items, "else"
                if kw.val == "if":
                    items.append(self.parse_if(left))
                    continue
                self.error(f"{{{{{kw.val}}}}} is not supported in stemforge templates", kw)
            pipe = self.pipeline("command")
            right = self.toks[self.k - 1]
            items.append(_Action(pipe, self.text[left.pos:right.pos + len(right.val)]))

    def expect_right(self, ctx: str) -> None:
        t = self.next_nonspace()
        if t.kind != "right":
            self.error(f"unexpected {self.desc(t)} in {ctx}", t)

    def parse_if(self, left: _Tok) -> _If:
        pipe = self.pipeline("if")
        body, term = self.item_list(top=False)
        orelse: list[Any] = []
        if term == "elseif":
            self.next_nonspace()  # the "if"
            orelse = [self.parse_if(left)]
        elif term == "else":
            orelse, term2 = self.item_list(top=False)
            if term2 != "end":
                self.error("expected end; found {{else}}")
        end_tok = self.toks[self.k - 1]
        return _If(pipe, body, orelse, self.text[left.pos:end_tok.pos + len(end_tok.val)])

    @staticmethod
    def desc(t: _Tok) -> str:
        if t.kind == "right":
            return "<right delimiter>" if False else '"}}"'
        if t.kind == "eof":
            return "EOF"
        return f'"{t.val}"' if t.kind != "string" else t.val

    def pipeline(self, context: str, paren: bool = False) -> _Pipe:
        first = self.peek_nonspace()
        pipe = _Pipe(first.pos, first.line, [])
        while True:
            t = self.peek_nonspace()
            if t.kind == ("rparen" if paren else "right"):
                self.next_nonspace()
                if not pipe.cmds:
                    self.error(f"missing value for {context}", t)
                if self.toks[self.k - 2].kind == "pipe" or (
                        self.toks[self.k - 2].kind == "space" and self.toks[self.k - 3].kind == "pipe"):
                    self.error("missing value for command", t)
                return pipe
            if t.kind in ("ident", "string", "number", "bool", "nil", "dot", "field", "lparen"):
                pipe.cmds.append(self.command())
                continue
            if t.kind in ("right", "rparen"):
                self.error(f"unexpected {self.desc(t)} in operand", t)
            self.error(f"unexpected {self.desc(t)} in {context}", t)

    def command(self) -> _Command:
        first = self.peek_nonspace()
        cmd = _Command(first.pos, first.line, [])
        while True:
            t = self.peek_nonspace()
            if t.kind in ("ident", "string", "number", "bool", "nil", "dot", "field", "lparen"):
                self.next_nonspace()
                cmd.args.append(self.operand(t))
                nxt = self.peek()
                if nxt.kind not in ("space", "right", "rparen", "pipe"):
                    self.error(f"unexpected {self.desc(nxt)} in operand", nxt)
                continue
            if t.kind == "pipe":
                self.next_nonspace()
                if not cmd.args:
                    self.error("missing value for command", t)
                return cmd
            if t.kind in ("right", "rparen"):
                if not cmd.args:
                    self.error("missing value for command", t)
                return cmd
            self.error(f"unexpected {self.desc(t)} in operand", t)

    def operand(self, t: _Tok) -> _Node:
        if t.kind == "ident":
            if t.val not in self.functions:
                self.error(f'function "{t.val}" not defined', t)
            return _Ident(t.pos, t.line, t.val)
        if t.kind == "string":
            return _Lit(t.pos, t.line, t.val, t.value)
        if t.kind == "number":
            return _Lit(t.pos, t.line, t.val, t.value)
        if t.kind == "bool":
            return _Lit(t.pos, t.line, t.val, t.val == "true")
        if t.kind == "nil":
            return _Lit(t.pos, t.line, "nil", None)
        if t.kind == "dot":
            return _Field(t.pos, t.line, [])
        if t.kind == "field":
            return _Field(t.pos, t.line, t.val[1:].split("."))
        # lparen
        return self.pipeline("parenthesized pipeline", paren=True)


# --------------------------------------------------------------------------------------------------------------
# Functions


@dataclass
class _Func:
    """A template function with Go's signature: ``params`` are ``str``/``int``/``any``; ``variadic`` is the type
    of extra arguments (or None); ``call`` receives the render context first."""

    params: list[str]
    call: Callable[..., Any]
    variadic: str | None = None


_GO_TYPE = {"str": "string", "int": "int", "any": "interface {}", "bool": "bool"}


def _go_type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "<nil>"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def go_sprint(value: Any) -> str:
    """Go's ``fmt.Sprint`` for the values templates produce."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_sprint(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _go_upper(s: str) -> str:
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in s)


def _go_lower(s: str) -> str:
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in s)


def _go_split(s: str, sep: str) -> list[str]:
    if sep == "":
        return list(s)
    return s.split(sep)


def _go_replace(s: str, old: str, new: str, n: int) -> str:
    """Go's ``strings.Replace`` (n < 0 = all; empty ``old`` inserts around every character)."""
    if n == 0 or old == new:
        return s
    if old == "":
        out: list[str] = []
        count = 0
        for ch in s:
            if n < 0 or count < n:
                out.append(new)
                count += 1
            out.append(ch)
        if n < 0 or count < n:
            out.append(new)
        return "".join(out)
    return s.replace(old, new, n if n >= 0 else -1)


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def go_time_format(t: _dt.datetime, layout: str) -> str:
    """Format a UTC time with a Go reference layout (``2006-01-02T15:04:05Z07:00``)."""
    out: list[str] = []
    i = 0
    n = len(layout)
    while i < n:
        rest = layout[i:]

        def take(token: str, rest: str = rest) -> bool:
            return rest.startswith(token)

        h12 = t.hour % 12 or 12
        if take("January"):
            out.append(_MONTHS[t.month - 1])
            i += 7
        elif take("Jan"):
            out.append(_MONTHS[t.month - 1][:3])
            i += 3
        elif take("Monday"):
            out.append(_DAYS[t.weekday()])
            i += 6
        elif take("Mon"):
            out.append(_DAYS[t.weekday()][:3])
            i += 3
        elif take("MST"):
            out.append("UTC")
            i += 3
        elif take("2006"):
            out.append(f"{t.year:04d}")
            i += 4
        elif take("002"):
            out.append(f"{t.timetuple().tm_yday:03d}")
            i += 3
        elif take("01"):
            out.append(f"{t.month:02d}")
            i += 2
        elif take("02"):
            out.append(f"{t.day:02d}")
            i += 2
        elif take("03"):
            out.append(f"{h12:02d}")
            i += 2
        elif take("04"):
            out.append(f"{t.minute:02d}")
            i += 2
        elif take("05"):
            out.append(f"{t.second:02d}")
            i += 2
        elif take("06"):
            out.append(f"{t.year % 100:02d}")
            i += 2
        elif take("15"):
            out.append(f"{t.hour:02d}")
            i += 2
        elif take("__2"):
            out.append(f"{t.timetuple().tm_yday:3d}")
            i += 3
        elif take("_2") and not take("_2006"):
            out.append(f"{t.day:2d}")
            i += 2
        elif take("1"):
            out.append(str(t.month))
            i += 1
        elif take("2"):
            out.append(str(t.day))
            i += 1
        elif take("3"):
            out.append(str(h12))
            i += 1
        elif take("4"):
            out.append(str(t.minute))
            i += 1
        elif take("5"):
            out.append(str(t.second))
            i += 1
        elif take("PM"):
            out.append("PM" if t.hour >= 12 else "AM")
            i += 2
        elif take("pm"):
            out.append("pm" if t.hour >= 12 else "am")
            i += 2
        elif take("-07:00:00") or take("-070000") or take("-07:00") or take("-0700") or take("-07"):
            tok = next(x for x in ("-07:00:00", "-070000", "-07:00", "-0700", "-07") if take(x))
            out.append("+" + tok[1:].replace("7", "0"))
            i += len(tok)
        elif take("Z07:00:00") or take("Z070000") or take("Z07:00") or take("Z0700") or take("Z07"):
            tok = next(x for x in ("Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07") if take(x))
            out.append("Z")
            i += len(tok)
        elif rest[0] in ".," and len(rest) > 1 and rest[1] in "09":
            digit = rest[1]
            j = 1
            while j < len(rest) and rest[j] == digit:
                j += 1
            if j < len(rest) and rest[j].isdigit():
                out.append(rest[0])
                i += 1
                continue
            width = j - 1
            frac = f"{t.microsecond:06d}000"[:width]
            if digit == "9":
                frac = frac.rstrip("0")
                out.append(rest[0] + frac if frac else "")
            else:
                out.append(rest[0] + frac)
            i += j
        else:
            out.append(rest[0])
            i += 1
    return "".join(out)


def time_ordered_uuid() -> str:
    """Packer's ``uuid.TimeOrderedUUID``: unix seconds then 12 random bytes, 8-4-4-4-12 hex."""
    unix = int(time.time()) & 0xFFFFFFFF
    b = secrets.token_bytes(12)
    return f"{unix:08x}-{b[0:2].hex()}-{b[2:4].hex()}-{b[4:6].hex()}-{b[6:8].hex()}{b[8:].hex()}"


def clean_resource_name(s: str) -> str:
    """Lower-case and replace every byte that is not ``[a-z0-9]`` with ``-`` (the googlecompute/azure
    ``clean_resource_name``; Packer's docs: "convert upper cases to lower cases and replace illegal characters
    with a '-' character")."""
    return "".join(chr(b) if (0x30 <= b <= 0x39 or 0x61 <= b <= 0x7A) else "-" for b in s.lower().encode())


def _amazon_clean_name(s: str) -> str:
    from builders.builder_types.amazon_ebs.config import clean_ami_name

    return clean_ami_name(s)


def _fn_user(ctx: RenderContext, key: str) -> str:
    if key in ctx.user_variables:
        value = ctx.user_variables[key]
        return Tainted(value) if key in ctx.sensitive_variables else value
    if ctx.enable_env:
        raise GoTemplateError(f"{ERR_VARIABLE_NOT_SET} {key}")
    ctx.missing_user_variables.add(key)
    return ""


def _fn_env(ctx: RenderContext, key: str) -> str:
    if not ctx.enable_env:
        raise GoTemplateError("env vars are not allowed here")
    return os.environ.get(key, "")


def _fn_isotime(ctx: RenderContext, *layout: str) -> str:
    if not layout:
        return go_time_format(ctx.init_time, "2006-01-02T15:04:05Z07:00")
    if len(layout) > 1:
        raise GoTemplateError(f"too many values, 1 needed: [{' '.join(layout)}]")
    return go_time_format(ctx.init_time, layout[0])


def _fn_build_name(ctx: RenderContext) -> str:
    if not ctx.build_name:
        raise GoTemplateError("build_name not available")
    return ctx.build_name


def _fn_build_type(ctx: RenderContext) -> str:
    if not ctx.build_type:
        raise GoTemplateError("build_type not available")
    return ctx.build_type


def _fn_template_dir(ctx: RenderContext) -> str:
    if not ctx.template_path:
        raise GoTemplateError("template path not available")
    return str(Path(ctx.template_path).absolute().parent)


def _fn_split(ctx: RenderContext, s: str, sep: str, i: int) -> str:
    parts = _go_split(s, sep)
    if len(parts) <= i:
        raise GoTemplateError(
            f"the substring {i} was unavailable using the separator value, {sep}, only {len(parts)} values were found")
    if i < 0:
        raise GoTemplateError(f"runtime error: index out of range [{i}]")
    return parts[i]


def _fn_build(ctx: RenderContext, key: str) -> str:
    if ctx.data is None:
        return f"{{{{.{key}}}}}"
    if key in ctx.data:
        value = ctx.data[key]
        if isinstance(value, str) and BUILD_PLACEHOLDER in value:
            return f"{{{{.{key}}}}}"
        return go_sprint(value)
    raise GoTemplateError(f"loaded data, but couldnt find {key} in it.")


def _fn_strftime(ctx: RenderContext, layout: str) -> str:
    return ctx.init_time.strftime(layout)


def _only_in_variables(name: str, message: str) -> Callable[..., str]:
    def fn(ctx: RenderContext, *args: str) -> str:
        if not ctx.enable_env:
            raise GoTemplateError(message)
        raise GoTemplateError(f"{name} is not available in stemforge (no access to external secret stores)")

    return fn


def _fn_sed(ctx: RenderContext, expression: str, s: str) -> str:
    raise GoTemplateError("template function `sed` is deprecated use `replace` or `replace_all` instead."
                          "Documentation: https://www.packer.io/docs/templates/engine")


def _truth(v: Any) -> bool:
    return bool(v) if v is not None else False


def _fn_printf(ctx: RenderContext, fmt: str, *args: Any) -> str:
    out: list[str] = []
    it = iter(args)
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%" or i + 1 >= len(fmt):
            out.append(ch)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        try:
            arg = next(it)
        except StopIteration:
            out.append(f"%!{verb}(MISSING)")
            continue
        if verb == "q":
            out.append('"' + go_sprint(arg).replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif verb == "d" and isinstance(arg, int) or verb in "sv":
            out.append(go_sprint(arg))
        elif verb == "x":
            out.append(format(arg, "x") if isinstance(arg, int) else go_sprint(arg).encode().hex())
        else:
            out.append(f"%!{verb}({_go_type_of(arg)}={go_sprint(arg)})")
    return "".join(out)


def _fn_print(ctx: RenderContext, *args: Any) -> str:
    out = ""
    for k, a in enumerate(args):
        if k and not isinstance(a, str) and not isinstance(args[k - 1], str):
            out += " "
        out += go_sprint(a)
    return out


def _fn_len(ctx: RenderContext, v: Any) -> int:
    if isinstance(v, str | list | tuple | Mapping):
        return len(v)
    raise GoTemplateError(f"len of type {_go_type_of(v)}")


FUNCTIONS: dict[str, _Func] = {
    "build_name": _Func([], _fn_build_name),
    "build_type": _Func([], _fn_build_type),
    "env": _Func(["str"], _fn_env),
    "isotime": _Func([], _fn_isotime, variadic="str"),
    "strftime": _Func(["str"], _fn_strftime),
    "pwd": _Func([], lambda ctx: os.getcwd()),
    "split": _Func(["str", "str", "int"], _fn_split),
    "template_dir": _Func([], _fn_template_dir),
    "timestamp": _Func([], lambda ctx: str(int(ctx.init_time.timestamp()))),
    "uuid": _Func([], lambda ctx: time_ordered_uuid()),
    "user": _Func(["str"], _fn_user),
    "packer_version": _Func([], lambda ctx: PACKER_COMPAT_VERSION),
    "consul_key": _Func(["str"], _only_in_variables("consul_key", "consul_key is not allowed here")),
    "vault": _Func(["str", "str"], _only_in_variables("vault", "Vault vars are only allowed in the variables "
                                                               "section")),
    "aws_secretsmanager": _Func([], _only_in_variables(
        "aws_secretsmanager", "AWS Secrets Manager is only allowed in the variables section"), variadic="str"),
    "aws_secretsmanager_raw": _Func(["str"], _only_in_variables(
        "aws_secretsmanager_raw", "AWS Secrets Manager is only allowed in the variables section")),
    "sed": _Func(["str", "str"], _fn_sed),
    "build": _Func(["str"], _fn_build),
    "replace": _Func(["str", "str", "int", "str"], lambda ctx, old, new, n, s: _go_replace(s, old, new, n)),
    "replace_all": _Func(["str", "str", "str"], lambda ctx, old, new, s: _go_replace(s, old, new, -1)),
    "upper": _Func(["str"], lambda ctx, s: _go_upper(s)),
    "lower": _Func(["str"], lambda ctx, s: _go_lower(s)),
    # the amazon plugins keep case and replace only what an AMI name may not hold (their own function)
    "clean_resource_name": _Func(["str"], lambda ctx, s: _amazon_clean_name(s) if ctx.build_type.startswith(
        "amazon-") else clean_resource_name(s)),
    # text/template builtins commonly seen in templates
    "print": _Func([], _fn_print, variadic="any"),
    "println": _Func([], lambda ctx, *a: " ".join(go_sprint(x) for x in a) + "\n", variadic="any"),
    "printf": _Func(["str"], _fn_printf, variadic="any"),
    "len": _Func(["any"], _fn_len),
    "not": _Func(["any"], lambda ctx, v: not _truth(v)),
    "eq": _Func(["any"], lambda ctx, a, *bs: any(a == b for b in bs), variadic="any"),
    "ne": _Func(["any", "any"], lambda ctx, a, b: a != b),
    "and": _Func(["any"], lambda ctx, a, *rest: next((x for x in (a, *rest) if not _truth(x)), (a, *rest)[-1]),
                 variadic="any"),
    "or": _Func(["any"], lambda ctx, a, *rest: next((x for x in (a, *rest) if _truth(x)), (a, *rest)[-1]),
                variadic="any"),
}


# --------------------------------------------------------------------------------------------------------------
# Execution


class _Exec:
    def __init__(self, text: str, ctx: RenderContext, functions: Mapping[str, _Func]) -> None:
        self.text = text
        self.ctx = ctx
        self.functions = functions
        #: Set when a function saw a tainted argument or produced a tainted value in the current action.
        self.touched_taint = False

    def error(self, node: _Node, msg: str) -> GoTemplateError:
        before = self.text[:node.pos]
        nl = before.rfind("\n")
        col = node.pos if nl < 0 else node.pos - nl - 1
        context = node.src()
        if len(context) > 20:
            context = context[:20] + "..."
        return GoTemplateError(f'template: root:{node.line}:{col}: executing "root" at <{context}>: {msg}')

    def run(self, items: list[Any]) -> str:
        out: list[str] = []
        short_taint = False
        for item in items:
            if isinstance(item, _Text):
                out.append(item.text)
            elif isinstance(item, _Action):
                self.touched_taint = False
                try:
                    result = self.pipe(item.pipe)
                except _Passthrough:
                    out.append(item.source)
                    continue
                text = go_sprint(result)
                if self.touched_taint or is_tainted(result):
                    text = Tainted(text)
                    short_taint = short_taint or len(text) < MIN_DERIVED_LENGTH
                    if self.ctx.sensitive is not None:
                        self.ctx.sensitive.record(text)
                out.append(text)
            else:
                try:
                    cond = _truth(self.pipe(item.pipe))
                except _Passthrough:
                    out.append(item.source)
                    continue
                out.append(self.run(item.body if cond else item.orelse))
        joined = "".join(out)
        if not any(isinstance(piece, Tainted) for piece in out):
            return joined
        if short_taint and self.ctx.sensitive is not None:
            self.ctx.sensitive.record(Tainted(joined))
        return Tainted(joined)

    def pipe(self, pipe: _Pipe) -> Any:
        final: Any = _MISSING
        for cmd in pipe.cmds:
            final = self.command(cmd, final)
        return final

    def command(self, cmd: _Command, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Ident):
            return self.call(first, cmd, cmd.args[1:], final)
        if len(cmd.args) > 1 or final is not _MISSING:
            raise self.error(first, f"can't give argument to non-function {first.src()}")
        if isinstance(first, _Lit) and first.text == "nil":
            raise self.error(first, "nil is not a command")
        return self.value(first)

    def value(self, node: _Node) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Field):
            data = self.ctx.data
            if data is None:
                raise _Passthrough()
            value: Any = data
            for name in node.names:
                if not isinstance(value, Mapping) or name not in value:
                    raise _Passthrough()
                value = value[name]
            if isinstance(value, str) and BUILD_PLACEHOLDER in value:
                raise _Passthrough()
            return value
        if isinstance(node, _Pipe):
            return self.pipe(node)
        if isinstance(node, _Ident):
            return self.call(node, node, [], _MISSING)
        raise self.error(node, f"can't evaluate {node.src()}")

    def arg(self, node: _Node, typ: str) -> Any:
        if isinstance(node, _Lit) and typ in ("str", "int"):
            if typ == "str" and not isinstance(node.value, str):
                raise self.error(node, f"expected string; found {node.src()}")
            if typ == "int" and (isinstance(node.value, bool) or not isinstance(node.value, int)):
                raise self.error(node, f"expected integer; found {node.src()}")
            return node.value
        value = self.value(node)
        return self.check_type(node, value, typ)

    def check_type(self, node: _Node, value: Any, typ: str) -> Any:
        if typ == "any":
            return value
        ok = (typ == "str" and isinstance(value, str)) or (
            typ == "int" and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise self.error(node, f"wrong type for value; expected {_GO_TYPE[typ]}; got {_go_type_of(value)}")
        return value

    def call(self, ident: _Ident, node: _Node, args: list[_Node], final: Any) -> Any:
        fn = self.functions[ident.name]
        num_in = len(args) + (0 if final is _MISSING else 1)
        fixed = len(fn.params)
        if fn.variadic is not None:
            if num_in < fixed:
                raise self.error(ident, f"wrong number of args for {ident.name}: want at least {fixed} got "
                                        f"{len(args)}")
        elif num_in != fixed:
            raise self.error(ident, f"wrong number of args for {ident.name}: want {fixed} got {num_in}")
        values: list[Any] = []
        for k, a in enumerate(args):
            typ = fn.params[k] if k < fixed else (fn.variadic or "any")
            values.append(self.arg(a, typ))
        if final is not _MISSING:
            k = len(args)
            typ = fn.params[k] if k < fixed else (fn.variadic or "any")
            values.append(self.check_type(node, final, typ))
        try:
            result = fn.call(self.ctx, *values)
        except GoTemplateError as e:
            raise self.error(node, f"error calling {ident.name}: {e}") from None
        result = derive(result, *values)
        if is_tainted(result) or any(is_tainted(v) for v in values):
            self.touched_taint = True
        return result


class _Missing:
    pass


_MISSING: Any = _Missing()


def render_string(text: str, ctx: RenderContext, functions: Mapping[str, _Func] | None = None) -> str:
    """Render one string once (Packer's ``interpolate.RenderOnce``). Raises GoTemplateError."""
    if "{{" not in text:
        return text
    funcs = functions if functions is not None else FUNCTIONS
    items = _Parser(text, funcs).parse()
    return _Exec(text, ctx, funcs).run(items)


def validate_string(text: str, functions: Mapping[str, _Func] | None = None) -> None:
    """Parse without executing (Packer's ``interpolate.Validate``): syntax and unknown functions."""
    if "{{" in text:
        _Parser(text, functions if functions is not None else FUNCTIONS).parse()


_DOT_ACTION = re.compile(r"{{(\s|)\.(.*?)(\s|)}}")


def render_keep_dot_fields(text: str, ctx: RenderContext) -> str:
    """Packer's ``RenderRegex`` with ``{{(\\s|)\\.(.*?)(\\s|)}}``: render, leaving ``{{ .Field }}`` actions as
    they are (used for variable values)."""
    excluded: dict[str, str] = {}

    def hide(m: re.Match[str]) -> str:
        key = f"\x00{len(excluded)}\x00"
        excluded[key] = m.group(0)
        return key

    hidden = _DOT_ACTION.sub(hide, text)
    rendered = render_string(hidden, ctx)
    restored = rendered
    for key, value in excluded.items():
        restored = restored.replace(key, value)
    return Tainted(restored) if isinstance(rendered, Tainted) else restored
