"""``stemforge hcl2_upgrade``: the HCL2 twin of a legacy JSON (or YAML) template, as ``packer hcl2_upgrade``
writes it (``packer/command/hcl2_upgrade.go``): ``packer { required_version }``, one ``variable`` per user
variable (``sensitive`` from ``sensitive-variables``), ``locals`` for variables that are computed from other
variables, one ``source`` per builder, and one ``build`` with the provisioners, post-processor chains and the
error-cleanup provisioner.

Go-template actions are translated where HCL has the same function (``user``, ``env`` in variable defaults,
``build_name``/``build_type`` as ``source.name``/``source.type``, ``upper``, ``lower``, ``replace_all``,
``split``, pipelines of those); any other action (``{{ .HTTPIP }}``, ``{{ timestamp }}``, ``{{ isotime }}``,
``{{ build `ID` }}``...) stays as Go-template text, which plugins render at run time in HCL2 mode as well. Unlike
Packer, each source keeps the JSON builder's name, so ``{{ build_name }}`` and ``source.name`` agree and the twin
builds the same artifacts."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builders.template import TemplateError, parse_template
from builders.template.loader import load_document
from builders.template.model import PostProcessorSpec, ProvisionerSpec, Template

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.S)
_TOKEN = re.compile(r'\s*(`[^`]*`|"(?:[^"\\]|\\.)*"|\(|\)|\||[A-Za-z_][A-Za-z0-9_]*|-?[0-9]+|\.[A-Za-z_][\w.]*)')


class _Untranslatable(Exception):
    pass


class _Translator:
    """Go-template action -> HCL expression, for the functions HCL2 has."""

    def __init__(self, variables: set[str], locals_: set[str], *, in_default: bool = False) -> None:
        self.variables = variables
        self.locals = locals_
        self.in_default = in_default

    def tokens(self, text: str) -> list[str]:
        out: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise _Untranslatable(text)
            out.append(m.group(1))
            pos = m.end()
        return out

    def action(self, text: str) -> str:
        toks = self.tokens(text)
        expr, rest = self.pipeline(toks)
        if rest:
            raise _Untranslatable(text)
        return expr

    def pipeline(self, toks: list[str]) -> tuple[str, list[str]]:
        value: str | None = None
        while True:
            args: list[str] = []
            while toks and toks[0] not in ("|", ")"):
                if toks[0] == "(":
                    inner, toks = self.pipeline(toks[1:])
                    if not toks or toks[0] != ")":
                        raise _Untranslatable("(")
                    toks = toks[1:]
                    args.append(inner)
                else:
                    args.append(self.operand(toks[0]))
                    toks = toks[1:]
            if value is not None:
                args.append(value)
            value = self.command(args)
            if toks and toks[0] == "|":
                toks = toks[1:]
                continue
            return value, toks

    def operand(self, tok: str) -> str:
        if tok.startswith("`"):
            return json.dumps(tok[1:-1])
        if tok.startswith('"'):
            return json.dumps(json.loads(tok))
        if re.fullmatch(r"-?[0-9]+", tok):
            return tok
        if tok.startswith("."):
            raise _Untranslatable(tok)
        return "@" + tok  # a function name

    def command(self, args: list[str]) -> str:
        if not args:
            raise _Untranslatable("")
        head, rest = args[0], args[1:]
        if not head.startswith("@"):
            if rest:
                raise _Untranslatable(head)
            return head
        fn = head[1:]
        if fn == "user" and len(rest) == 1:
            name = json.loads(rest[0])
            if name in self.locals and not self.in_default:
                return f"local.{name}"
            if name in self.variables and not self.in_default:
                return f"var.{name}"
            raise _Untranslatable(fn)
        if fn == "env" and len(rest) == 1 and self.in_default:
            return f"env({rest[0]})"
        if fn == "build_name" and not rest and not self.in_default:
            return "source.name"
        if fn == "build_type" and not rest and not self.in_default:
            return "source.type"
        if fn in ("upper", "lower") and len(rest) == 1:
            return f"{fn}({rest[0]})"
        if fn == "replace_all" and len(rest) == 3:
            old = json.loads(rest[0]) if rest[0].startswith('"') else None
            if old is None or (old.startswith("/") and old.endswith("/") and len(old) > 1):
                raise _Untranslatable(fn)
            return f"replace({rest[2]}, {rest[0]}, {rest[1]})"
        if fn == "split" and len(rest) == 3:
            return f"split({rest[1]}, {rest[0]})[{rest[2]}]"
        raise _Untranslatable(fn)


def _escape_literal(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)[1:-1]
    return out.replace("${", "$${").replace("%{", "%%{")


def hcl_string(text: str, tr: _Translator) -> str:
    """A JSON string value as an HCL template string (translated actions become ``${...}``)."""
    parts: list[str] = []
    pieces: list[tuple[str, str]] = []  # ("lit", text) | ("expr", hcl) | ("go", action text)
    pos = 0
    for m in _ACTION.finditer(text):
        lit = text[pos:m.start()]
        if m.group(1):
            lit = lit.rstrip(" \t\r\n")
        pieces.append(("lit", lit))
        try:
            pieces.append(("expr", tr.action(m.group(2))))
            if m.group(3):
                pieces.append(("trim", ""))
        except _Untranslatable:
            pieces.append(("go", m.group(0)))
        pos = m.end()
    pieces.append(("lit", text[pos:]))
    trim_next = False
    for kind, value in pieces:
        if kind == "trim":
            trim_next = True
            continue
        if kind == "lit":
            if trim_next:
                value = value.lstrip(" \t\r\n")
            parts.append(_escape_literal(value))
        elif kind == "expr":
            parts.append("${" + value + "}")
        else:
            parts.append(_escape_literal(value))
        trim_next = False
    body = "".join(parts)
    if body.startswith("${") and body.endswith("}") and body.count("${") == 1 and "}" not in body[2:-1]:
        return body[2:-1]  # a lone interpolation: the bare expression
    return f'"{body}"'


def _key(k: str) -> str:
    return k if _IDENT.fullmatch(k) else json.dumps(k)


def hcl_value(v: Any, tr: _Translator, indent: int) -> str:
    pad = "  " * indent
    if isinstance(v, str):
        return hcl_string(v, tr)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, list):
        if not v:
            return "[]"
        items = [f"{pad}  {hcl_value(x, tr, indent + 1)}," for x in v]
        return "[\n" + "\n".join(items) + f"\n{pad}]"
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        items = [f"{pad}  {_key(str(k))} = {hcl_value(x, tr, indent + 1)}" for k, x in v.items()]
        return "{\n" + "\n".join(items) + f"\n{pad}}}"
    raise TypeError(f"cannot write {type(v).__name__} as HCL")


def _body(config: Mapping[str, Any], tr: _Translator, indent: int) -> list[str]:
    pad = "  " * indent
    if not config:
        return []
    width = max(len(_key(k)) for k in config)
    return [f"{pad}{_key(k).ljust(width)} = {hcl_value(v, tr, indent)}" for k, v in config.items()]


def upgrade(path: Path) -> str:
    """The HCL2 text of the template at ``path``."""
    t: Template = parse_template(path, syntax_only=True)
    try:  # builder names may be templates: use the rendered ones when the defaults allow rendering
        rendered = parse_template(path)
        names_by_index = {b.index: b.name for b in rendered.builders}
    except TemplateError:
        names_by_index = {}
    for b in t.builders:
        b.raw_name = names_by_index.get(b.index, b.raw_name or b.name)
    writer = _Writer(t, load_document(path).value)
    writer.lines += [f"# HCL2 twin of {path.name}, written by stemforge hcl2_upgrade.", ""]
    if t.min_packer_version:
        writer.lines += ["packer {", f'  required_version = ">= {t.min_packer_version}"', "}", ""]
    writer.inputs()
    writer.sources()
    writer.build()
    return "\n".join(writer.lines) + "\n"


class _Writer:
    """The HCL2 lines of one JSON template: user variables that reference others become locals."""

    def __init__(self, t: Template, raw: Mapping[str, Any]) -> None:
        self.t = t
        self.raw = raw
        self.raw_vars: dict[str, Any] = dict(raw.get("variables") or {})
        self.computed = {n for n, v in self.raw_vars.items()
                         if isinstance(v, str) and re.search(r"{{[^}]*\buser\b", v)}
        self.variables = set(self.raw_vars) - self.computed
        self.tr = _Translator(self.variables, self.computed)
        self.by_raw = {b.raw_name or b.name: b for b in t.builders}
        self.lines: list[str] = []

    def inputs(self) -> None:
        """``variable`` blocks (typed string, with default and sensitivity), then ``local`` blocks."""
        lines, sensitive = self.lines, set(self.t.sensitive_variables)
        for name in sorted(self.variables):
            value = self.raw_vars[name]
            lines.append(f'variable "{name}" {{')
            lines.append("  type      = string")
            if value is not None:
                lines.append(f"  default   = {hcl_string(str(value), _Translator(set(), set(), in_default=True))}")
            if name in sensitive:
                lines.append("  sensitive = true")
            lines += ["}", ""]
        for name in sorted(self.computed):
            lines.append(f'local "{name}" {{')
            lines.append(f"  expression = {hcl_string(str(self.raw_vars[name]), self.tr)}")
            if name in sensitive:
                lines.append("  sensitive  = true")
            lines += ["}", ""]

    def sources(self) -> None:
        for b in self.t.builders:
            self.lines.append(f'source "{b.type}" "{b.raw_name or b.name}" {{')
            self.lines += _body(b.config, self.tr, 1)
            self.lines += ["}", ""]

    def ref(self, name: str) -> str:
        b = self.by_raw.get(name)
        return f"{b.type}.{name}" if b is not None else name

    def build(self) -> None:
        """The one ``build`` block: all sources, the provisioners, the post-processor chains."""
        t, lines = self.t, self.lines
        lines.append("build {")
        if t.description:
            lines.append(f"  description = {json.dumps(t.description)}")
        lines.append("  sources = [")
        lines += [f'    "source.{b.type}.{b.raw_name or b.name}",' for b in t.builders]
        lines += ["  ]", ""]
        for p in t.provisioners:
            self.provisioner(p, "provisioner")
        if t.error_cleanup_provisioner is not None:
            self.provisioner(t.error_cleanup_provisioner, "error-cleanup-provisioner")
        for chain in t.post_processors:
            if len(chain) == 1:
                self.post_processor(chain[0], 1)
            else:
                lines.append("  post-processors {")
                for pp in chain:
                    self.post_processor(pp, 2)
                lines.append("  }")
            lines.append("")
        while lines and lines[-1] == "":
            lines.pop()
        lines.append("}")

    def provisioner(self, p: ProvisionerSpec, block: str) -> None:
        self.lines.append(f'  {block} "{p.type}" {{')
        meta: dict[str, Any] = {}
        if p.only:
            meta["only"] = [self.ref(n) for n in p.only]
        if p.except_:
            meta["except"] = [self.ref(n) for n in p.except_]
        if block == "provisioner":
            entries = self.raw.get("provisioners") or []
            raw_p = entries[p.index] if p.index < len(entries) else {}
        else:
            raw_p = self.raw.get("error-cleanup-provisioner") or {}
        for key in ("pause_before", "max_retries", "timeout"):
            if isinstance(raw_p, Mapping) and raw_p.get(key) not in (None, ""):
                meta[key] = raw_p[key]
        if p.override:
            meta["override"] = p.override
        self.lines.extend(_body({**p.config, **meta}, self.tr, 2))
        self.lines.extend(["  }", ""])

    def post_processor(self, pp: PostProcessorSpec, indent: int) -> None:
        pad = "  " * indent
        self.lines.append(f'{pad}post-processor "{pp.type}" {{')
        meta: dict[str, Any] = {}
        if pp.name and pp.name != pp.type:
            meta["name"] = pp.name
        if pp.only:
            meta["only"] = [self.ref(n) for n in pp.only]
        if pp.except_:
            meta["except"] = [self.ref(n) for n in pp.except_]
        if pp.keep_input_artifact is not None:
            meta["keep_input_artifact"] = pp.keep_input_artifact
        self.lines.extend(_body({**pp.config, **meta}, self.tr, indent + 1))
        self.lines.append(f"{pad}}}")
