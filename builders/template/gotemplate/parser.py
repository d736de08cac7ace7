"""The parser of Go's ``text/template`` (``text/template/parse/parse.go``): pipelines of commands, ``if``/``else``,
parenthesised pipes, with Go's error words. Unknown functions are parse errors, as in Go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from builders.template.gotemplate.errors import GoTemplateError
from builders.template.gotemplate.lexer import Lexer, Tok


@dataclass
class Node:
    pos: int
    line: int

    def src(self) -> str:
        raise NotImplementedError


@dataclass
class Ident(Node):
    name: str

    def src(self) -> str:
        return self.name


@dataclass
class Lit(Node):
    text: str
    value: Any

    def src(self) -> str:
        return self.text


@dataclass
class Field(Node):
    names: list[str]  # [] = dot

    def src(self) -> str:
        return "." + ".".join(self.names) if self.names else "."


@dataclass
class Command(Node):
    args: list[Node]

    def src(self) -> str:
        return " ".join(f"({a.src()})" if isinstance(a, Pipe) else a.src() for a in self.args)


@dataclass
class Pipe(Node):
    cmds: list[Command]

    def src(self) -> str:
        return " | ".join(c.src() for c in self.cmds)


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe
    source: str


@dataclass
class If:
    pipe: Pipe
    body: list[Any]
    orelse: list[Any]
    source: str


class Parser:
    def __init__(self, text: str, functions: Mapping[str, object]) -> None:
        self.text = text
        self.toks = Lexer(text).run()
        self.k = 0
        self.functions = functions

    def error(self, msg: str, tok: Tok | None = None) -> None:
        line = (tok or self.toks[min(self.k, len(self.toks) - 1)]).line
        raise GoTemplateError(f"template: root:{line}: {msg}")

    def peek(self) -> Tok:
        return self.toks[self.k]

    def next(self) -> Tok:
        t = self.toks[self.k]
        self.k += 1
        return t

    def next_nonspace(self) -> Tok:
        t = self.next()
        while t.kind == "space":
            t = self.next()
        return t

    def peek_nonspace(self) -> Tok:
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
                items.append(Text(t.val))
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
            items.append(Action(pipe, self.text[left.pos:right.pos + len(right.val)]))

    def expect_right(self, ctx: str) -> None:
        t = self.next_nonspace()
        if t.kind != "right":
            self.error(f"unexpected {self.desc(t)} in {ctx}", t)

    def parse_if(self, left: Tok) -> If:
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
        return If(pipe, body, orelse, self.text[left.pos:end_tok.pos + len(end_tok.val)])

    @staticmethod
    def desc(t: Tok) -> str:
        if t.kind == "right":
            return "<right delimiter>" if False else '"}}"'
        if t.kind == "eof":
            return "EOF"
        return f'"{t.val}"' if t.kind != "string" else t.val

    def pipeline(self, context: str, paren: bool = False) -> Pipe:
        first = self.peek_nonspace()
        pipe = Pipe(first.pos, first.line, [])
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

    def command(self) -> Command:
        first = self.peek_nonspace()
        cmd = Command(first.pos, first.line, [])
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

    def operand(self, t: Tok) -> Node:
        if t.kind == "ident":
            if t.val not in self.functions:
                self.error(f'function "{t.val}" not defined', t)
            return Ident(t.pos, t.line, t.val)
        if t.kind == "string":
            return Lit(t.pos, t.line, t.val, t.value)
        if t.kind == "number":
            return Lit(t.pos, t.line, t.val, t.value)
        if t.kind == "bool":
            return Lit(t.pos, t.line, t.val, t.val == "true")
        if t.kind == "nil":
            return Lit(t.pos, t.line, "nil", None)
        if t.kind == "dot":
            return Field(t.pos, t.line, [])
        if t.kind == "field":
            return Field(t.pos, t.line, t.val[1:].split("."))
        # lparen
        return self.pipeline("parenthesized pipeline", paren=True)
