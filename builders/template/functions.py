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

from builders.template.gotemplate.errors import GoTemplateError
from builders.template.gotemplate.gostd import go_lower, go_replace, go_split, go_sprint, go_time_format, go_upper
from builders.template.gotemplate.parser import Action, Command, Field, Ident, Lit, Node, Parser, Pipe, Text
from builders.template.sensitive import MIN_DERIVED_LENGTH, SensitiveValues, Tainted, derive, is_tainted
from stemforge_base.values import GO_TEMPLATE, type_name

#: Packer's ``packerbuilderdata.PlaceholderMsg``: generated-data values containing it render as ``{{.Key}}``.
BUILD_PLACEHOLDER = "To set this dynamically in the Packer template, you must use the `build` function"

#: The Packer version stemforge behaves like (``packer_version``, ``min_packer_version``, HCL2 ``packer.version``
#: and ``required_version``): the newest release whose template language stemforge implements. 1.13 added the
#: ``sum``/``startswith``/``endswith``/``strcontains`` functions and the top-level ``hcp_packer_registry`` block, which
#: stemforge has. Later releases add to the template language (e.g. the core ``file`` and ``password`` data sources
#: in Packer's tree), which stemforge does not have, so it does not claim them (docs/packer-options.md).
PACKER_COMPAT_VERSION = "1.13.0"

ERR_VARIABLE_NOT_SET = "Error: variable not set:"


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
# Functions


@dataclass
class _Func:
    """A template function with Go's signature: ``params`` are ``str``/``int``/``any``; ``variadic`` is the type
    of extra arguments (or None); ``call`` receives the render context first."""

    params: list[str]
    call: Callable[..., Any]
    variadic: str | None = None


_GO_TYPE = {"str": "string", "int": "int", "any": "interface {}", "bool": "bool"}


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


#: Packer's amazon ``templateCleanAMIName``: characters an AMI name may not contain.
_AMI_NAME_BAD = re.compile(r"[^a-zA-Z0-9()\[\] ./\-'@_]")


def clean_ami_name(name: str) -> str:
    """Packer's amazon ``clean_resource_name`` (the amazon plugin's template function, which templates of the
    amazon builders get instead of the generic one): every character an AMI name may not hold becomes ``-``."""
    return _AMI_NAME_BAD.sub("-", name)


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
    parts = go_split(s, sep)
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
            out.append(f"%!{verb}({type_name(arg, GO_TEMPLATE)}={go_sprint(arg)})")
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
    raise GoTemplateError(f"len of type {type_name(v, GO_TEMPLATE)}")


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
    "replace": _Func(["str", "str", "int", "str"], lambda ctx, old, new, n, s: go_replace(s, old, new, n)),
    "replace_all": _Func(["str", "str", "str"], lambda ctx, old, new, s: go_replace(s, old, new, -1)),
    "upper": _Func(["str"], lambda ctx, s: go_upper(s)),
    "lower": _Func(["str"], lambda ctx, s: go_lower(s)),
    # the amazon plugins keep case and replace only what an AMI name may not hold (their own function)
    "clean_resource_name": _Func(["str"], lambda ctx, s: clean_ami_name(s) if ctx.build_type.startswith(
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

    def error(self, node: Node, msg: str) -> GoTemplateError:
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
            if isinstance(item, Text):
                out.append(item.text)
            elif isinstance(item, Action):
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

    def pipe(self, pipe: Pipe) -> Any:
        final: Any = _MISSING
        for cmd in pipe.cmds:
            final = self.command(cmd, final)
        return final

    def command(self, cmd: Command, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, Ident):
            return self.call(first, cmd, cmd.args[1:], final)
        if len(cmd.args) > 1 or final is not _MISSING:
            raise self.error(first, f"can't give argument to non-function {first.src()}")
        if isinstance(first, Lit) and first.text == "nil":
            raise self.error(first, "nil is not a command")
        return self.value(first)

    def value(self, node: Node) -> Any:
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Field):
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
        if isinstance(node, Pipe):
            return self.pipe(node)
        if isinstance(node, Ident):
            return self.call(node, node, [], _MISSING)
        raise self.error(node, f"can't evaluate {node.src()}")

    def arg(self, node: Node, typ: str) -> Any:
        if isinstance(node, Lit) and typ in ("str", "int"):
            if typ == "str" and not isinstance(node.value, str):
                raise self.error(node, f"expected string; found {node.src()}")
            if typ == "int" and (isinstance(node.value, bool) or not isinstance(node.value, int)):
                raise self.error(node, f"expected integer; found {node.src()}")
            return node.value
        value = self.value(node)
        return self.check_type(node, value, typ)

    def check_type(self, node: Node, value: Any, typ: str) -> Any:
        if typ == "any":
            return value
        ok = (typ == "str" and isinstance(value, str)) or (
            typ == "int" and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            got = type_name(value, GO_TEMPLATE)
            raise self.error(node, f"wrong type for value; expected {_GO_TYPE[typ]}; got {got}")
        return value

    def call(self, ident: Ident, node: Node, args: list[Node], final: Any) -> Any:
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
    items = Parser(text, funcs).parse()
    return _Exec(text, ctx, funcs).run(items)


def validate_string(text: str, functions: Mapping[str, _Func] | None = None) -> None:
    """Parse without executing (Packer's ``interpolate.Validate``): syntax and unknown functions."""
    if "{{" in text:
        Parser(text, functions if functions is not None else FUNCTIONS).parse()


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

