"""The lexer of Go's ``text/template`` (``text/template/parse/lex.go``), for the subset Packer templates use:
text, ``{{``/``}}`` with trim markers, comments, and the action tokens (strings, raw strings, numbers, fields,
identifiers, keywords, pipes, parentheses), with Go's error words."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from builders.template.gotemplate.errors import GoTemplateError


@dataclass
class Tok:
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


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks: list[Tok] = []

    def line_at(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def error(self, msg: str, pos: int) -> NoReturn:
        raise GoTemplateError(f"template: root:{self.line_at(pos)}: {msg}")

    def run(self) -> list[Tok]:
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
                    self.toks.append(Tok("text", chunk, i, self.line_at(i)))
                break
            trim_left = text.startswith("-", j + 2) and j + 3 < n and text[j + 3] in _SPACE
            if trim_left:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.toks.append(Tok("text", chunk, i, self.line_at(i)))
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
            self.toks.append(Tok("left", text[start:k], start, self.line_at(start)))
            i, trim_next = self.inside(k, start)
        self.toks.append(Tok("eof", "", n, self.line_at(n)))
        return self.toks

    def inside(self, i: int, action_start: int) -> tuple[int, bool]:
        """Tokens of the action opened at ``action_start``, from ``i`` to its right delimiter: (the position
        after it, whether it trims the following text)."""
        text, n = self.text, len(self.text)
        depth = 0
        while True:
            if i >= n:
                self.error("unclosed action", action_start)
            ch = text[i]
            # right delimiter, possibly with trim marker
            trim = ch in _SPACE and text.startswith("-}}", i + 1)
            if trim or text.startswith("}}", i):
                if depth:
                    self.error("unclosed left paren", i)
                self.toks.append(Tok("right", " -}}" if trim else "}}", i, self.line_at(i)))
                return i + (4 if trim else 2), trim
            if ch in "()":
                depth += 1 if ch == "(" else -1
                if depth < 0:
                    self.error(f"unexpected right paren {_go_rune(ch)}", i)
            i = self._token(i, self.line_at(i))

    def _token(self, i: int, line: int) -> int:
        """Lex the one action token at ``i``; returns the position after it."""
        text, n = self.text, len(self.text)
        ch = text[i]
        if ch in _SPACE:
            return self._space(i, line)
        if ch in _PUNCTUATION:
            self.toks.append(Tok(_PUNCTUATION[ch], ch, i, line))
            return i + 1
        if ch == '"':
            return self._quoted(i, line)
        if ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                self.error("unterminated raw quoted string", i)
            self.toks.append(Tok("string", text[i:j + 1], i, line, text[i + 1:j]))
            return j + 1
        if ch == "$":
            self.error("variables ($name) are not supported in stemforge templates", i)
        if ch == "." and i + 1 < n and text[i + 1].isdigit() or ch in "+-" or ch.isdigit():
            return self._number(i, line)
        if ch == ".":
            return self._field(i, line)
        if _is_alnum(ch):
            return self._word(i, line)
        self.error(f"unrecognized character in action: {_go_rune(ch)}", i)

    def _space(self, i: int, line: int) -> int:
        text, n = self.text, len(self.text)
        j = i
        while j < n and text[j] in _SPACE and not text.startswith("-}}", j + 1):
            j += 1
        if j == i:
            j = i + 1
        self.toks.append(Tok("space", text[i:j], i, line))
        return j

    def _quoted(self, i: int, line: int) -> int:
        text, n = self.text, len(self.text)
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
        self.toks.append(Tok("string", lit, i, line, value))
        return j + 1

    def _number(self, i: int, line: int) -> int:
        text, n = self.text, len(self.text)
        m = _NUMBER.match(text, i)
        lit = m.group(0) if m else ""
        j = i + len(lit)
        if j < n and _is_alnum(text[j]) or not lit.strip("+-"):
            self.error(f"bad number syntax: {text[i:j + 1]!r}".replace("'", '"'), i)
        self.toks.append(Tok("number", lit, i, line, _parse_number(lit)))
        return j

    def _field(self, i: int, line: int) -> int:
        text, n = self.text, len(self.text)
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
        self.toks.append(Tok("dot" if names == "." else "field", names, i, line))
        return j

    def _word(self, i: int, line: int) -> int:
        text, n = self.text, len(self.text)
        j = i
        while j < n and _is_alnum(text[j]):
            j += 1
        word = text[i:j]
        if j < n and not (text[j] in _SPACE or text[j] in "|()" or text.startswith("}}", j) or text[j] == "."):
            self.error(f"bad character {_go_rune(text[j])}", j)
        kind = "keyword" if word in _KEYWORDS else {"true": "bool", "false": "bool", "nil": "nil"}.get(word, "ident")
        self.toks.append(Tok(kind, word, i, line))
        return j


_PUNCTUATION = {"|": "pipe", "(": "lparen", ")": "rparen"}
_NUMBER = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|[0-9_]*\.?[0-9_]*([eE][+-]?[0-9_]+)?)")


def _parse_number(lit: str) -> int | float:
    s = lit.replace("_", "")
    try:
        return int(s, 0)
    except ValueError:
        f = float(s)
        return int(f) if f.is_integer() and abs(f) < 2**63 else f
