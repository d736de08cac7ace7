"""HCL2 configuration -> the build model (:class:`builders.template.model.Template`), as Packer's
``hcl2template`` package decodes it: files of a directory are one configuration; ``packer``, ``variable``/
``variables``, ``locals``/``local``, ``data``, ``source`` and ``build`` blocks; variable values by precedence
``default`` < ``PKR_VAR_<name>`` < ``*.auto.pkrvars.*`` (lexical) < ``-var-file``/``-var`` (command-line order).

Each (build block, source) pair becomes one :class:`BuilderSpec` named ``<type>.<name>`` (``<build>.<type>.<name>``
when the build block has a name), with its config evaluated (``source.name``/``source.type`` set, the build's
overrides applied). Provisioners and post-processors are evaluated per build and bound to it (``only`` = that
build), so references to ``source.*`` differ per build as in Packer. ``build.<Key>`` is Packer's generated data:
it becomes ``{{ build `Key` }}``, which the runner fills in at run time (unknown until then, as in Packer)."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lark import Token, Tree

from builders.template.functions import PACKER_COMPAT_VERSION, time_ordered_uuid
from builders.template.hcl2.datasources import DATA_SOURCES, DataSourceError
from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.evaluator import Evaluator, Namespace, parse_expression
from builders.template.hcl2.functions import make_functions
from builders.template.hcl2.parser import first_line as _first_line
from builders.template.hcl2.parser import parse_text
from builders.template.hcl2.paths import is_hcl2
from builders.template.hcl2.types import ANY, STRING, HclType, TypeError_, convert, infer, parse_type
from builders.template.hcl2.values import UNKNOWN, UnknownValue, json_compatible, shim_unknown, to_string
from builders.template.hcl2.values import type_name as value_type_name
from builders.template.model import BuilderSpec, PostProcessorSpec, ProvisionerSpec, Template, TemplateError
from builders.template.sensitive import taint
from builders.template.validate import parse_go_duration

#: Plugins whose components stemforge has built in (``required_plugins`` sources naming them are satisfied).
BUILTIN_PLUGINS = frozenset({"qemu", "amazon", "file", "shell", "shell-local", "manifest", "checksum", "compress",
                             "breakpoint", "artifice"})
BUILTIN_DATA = frozenset(DATA_SOURCES)


# ------------------------------------------------------------------------------------------------ structure
@dataclass
class Attr:
    name: str
    expr: Any
    line: int
    filename: str


@dataclass
class Block:
    type: str
    labels: list[str]
    body: Body
    line: int
    filename: str

    def context(self) -> str:
        return " ".join([self.type] + [json.dumps(lbl) for lbl in self.labels])


@dataclass
class Body:
    attrs: dict[str, Attr] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


def _meaningful(children: list[Any]) -> list[Any]:
    return [c for c in children if not (isinstance(c, Tree) and c.data == "new_line_or_comment")]


def _label(node: Any) -> str:
    if isinstance(node, Tree) and node.data == "string":
        return "".join(str(sp.children[0]) for sp in node.children
                       if isinstance(sp, Tree) and isinstance(sp.children[0], Token))
    if isinstance(node, Tree):
        return str(node.children[0])
    return str(node)


def _body(node: Tree, filename: str, sources: Mapping[str, str]) -> Body:
    body = Body()
    for child in _meaningful(node.children):
        if not isinstance(child, Tree):
            continue
        if child.data == "attribute":
            kids = _meaningful(child.children)
            name = _label(kids[0])
            line = _first_line(child) or 1
            if name in body.attrs:
                raise HCLError(Diagnostic("Attribute redefined",
                                          f'The argument "{name}" was already set at {filename}:'
                                          f"{body.attrs[name].line}. Each argument may be set only once.",
                                          Range(filename, line), sources=dict(sources)))
            body.attrs[name] = Attr(name, kids[-1], line, filename)
        elif child.data == "block":
            kids = _meaningful(child.children)
            inner = next(c for c in kids if isinstance(c, Tree) and c.data == "body")
            heads = [c for c in kids if isinstance(c, Tree) and c is not inner]
            body.blocks.append(Block(_label(heads[0]), [_label(h) for h in heads[1:]],
                                     _body(inner, filename, sources), _first_line(child) or 1, filename))
    return body


def parse_file(path: Path, display: str, sources: dict[str, str]) -> Body:
    """Parse one ``.pkr.hcl``/``.pkrvars.hcl`` file. Raises HCLError with the syntax error's place."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HCLError(Diagnostic("Failed to read file", f"The configuration file {display} could not be read: "
                                                         f"{e.strerror or e}.")) from None
    sources[display] = text
    if path.name.endswith(".json"):
        from builders.template.hcl2.json_syntax import parse_json_file

        return parse_json_file(display, text)
    try:
        tree = parse_text(text)
    except Exception as e:  # noqa: BLE001 - Lark's UnexpectedInput family and friends
        line = getattr(e, "line", 1) or 1
        column = getattr(e, "column", 1) or 1
        token = getattr(e, "token", None)
        if token is None:
            detail = "An argument or block definition is required here."
        elif not str(token).strip() or str(token)[:1] in "\r\n":
            detail = f"Unexpected end of line at column {column}: an expression or a closing bracket was expected."
        else:
            detail = f"Unexpected {json.dumps(str(token).strip())} at column {column}."
        raise HCLError(Diagnostic("Invalid HCL syntax", detail, Range(display, line, column),
                                  sources=sources)) from None
    return _body(tree.children[0], display, sources)


# ------------------------------------------------------------------------------------------------ the template
@dataclass
class VariableInfo:
    name: str
    type: HclType
    default: Any
    has_default: bool
    description: str
    sensitive: bool
    nullable: bool
    block: Block | None
    value: Any = None
    set_by: str = "default"


@dataclass
class HCL2Template(Template):
    """A :class:`Template` read from HCL2: the same build model, plus what ``inspect`` shows in HCL2 mode. Its
    ``sensitive`` (``builders.template.sensitive``) holds the sensitive variables' and locals' values and every
    value derived from them (config strings derived from one are ``Tainted``), so output, logs and manifests mask
    them and a file or image name derived from one is refused, exactly as for JSON templates."""

    hcl_variables: dict[str, VariableInfo] = field(default_factory=dict)
    hcl_locals: dict[str, Any] = field(default_factory=dict)
    build_blocks: list[dict[str, Any]] = field(default_factory=list)
    #: Diagnostics that are warnings (printed by validate/build).
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def select_builders(self, only: Sequence[str], except_: Sequence[str]) -> list[BuilderSpec]:
        """Packer's HCL2 ``-only``/``-except``: globs over ``<type>.<name>`` or ``<build>.<type>.<name>``."""

        def matches(pattern: str, b: BuilderSpec) -> bool:
            names = (b.name, b.raw_name, b.config_source if isinstance(b, HCL2BuilderSpec) else b.name)
            return any(fnmatch.fnmatchcase(n, pattern) for n in names if n)

        return [b for b in self.builders
                if (not only or any(matches(p, b) for p in only)) and not any(matches(p, b) for p in except_)]

    def post_processor_chains_for(self, build_name: str, except_: Sequence[str] = ()) -> list[list[PostProcessorSpec]]:
        """As for JSON, with ``-except`` naming a post-processor by its ``name`` (or type)."""
        return super().post_processor_chains_for(build_name, except_)


@dataclass
class HCL2BuilderSpec(BuilderSpec):
    """A build of an HCL2 template: ``config_source`` is ``<type>.<name>`` (what ``only``/``except`` match),
    ``raw_name`` the full ``[<build>.]<type>.<name>``, ``name`` the build name plugins see (see
    :func:`_packer_build_names`)."""

    config_source: str = ""
    build_block: int = 0


def _no_build(name: str) -> str:
    return f"\x00{name}"


class _Loader:
    def __init__(self, root: Path, files: list[Path], var_sources: Sequence[tuple[str, str]],
                 environ: Mapping[str, str], auto_var_files: list[Path], evaluate_data: bool = True) -> None:
        self.root = root
        self.files = files
        self.var_sources = var_sources
        self.environ = environ
        self.auto_var_files = auto_var_files
        self.evaluate_data = evaluate_data
        self.sources: dict[str, str] = {}
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.run_time = _dt.datetime.now(_dt.UTC)
        #: Literal sensitive values (variables and locals declared sensitive) and values derived from them.
        self.secrets: set[str] = set()
        self.derived: list[Any] = []
        self.variables: dict[str, VariableInfo] = {}
        self.local_defs: dict[str, tuple[Attr, bool]] = {}
        self.local_values: dict[str, Any] = {}
        self.local_sensitive: set[str] = set()
        self.local_busy: set[str] = set()
        self.data_blocks: dict[tuple[str, str], Block] = {}
        self.data_values: dict[tuple[str, str], Any] = {}
        self.source_blocks: dict[str, Block] = {}
        self.functions = make_functions(base_dir=root, now=self.run_time)
        self.default_functions = make_functions(base_dir=root, now=self.run_time, env_allowed=True)
        self.reported_unknown: set[str] = set()
        self.filter_cache: dict[tuple[int, str], tuple[set[str], list[str]] | None] = {}
        self._base_scope: dict[str, Any] | None = None
        self.context_cache: dict[int, bool] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def diag(self, summary: str, detail: str, where: Attr | Block | None, context: str = "",
             severity: str = "error") -> Diagnostic:
        rng = Range(where.filename, where.line) if where is not None else None
        return Diagnostic(summary, detail, rng, severity, context, self.sources)

    def evaluator(self, filename: str, context: str = "", functions: Mapping[str, Any] | None = None) -> Evaluator:
        ev = Evaluator(filename, functions or self.functions, self.sources)
        ev.context = context
        return ev

    def eval_attr(self, attr: Attr, scope: Mapping[str, Any], context: str = "",
                  functions: Mapping[str, Any] | None = None) -> tuple[Any, bool]:
        """Evaluate one attribute; (value, tainted)."""
        ev = self.evaluator(attr.filename, context, functions)
        try:
            value = _no_namespace(ev.evaluate(attr.expr, scope), attr, context, self)
        except UnknownValue:
            value = UNKNOWN
        return value, ev.tainted

    def eval_marking(self, attr: Attr, scope: Mapping[str, Any], context: str) -> Any:
        """Evaluate ``attr`` and remember as secret every part derived from a sensitive value: the elements of
        a tuple or object literal are judged one by one, anything else as a whole."""
        ev = self.evaluator(attr.filename, context)

        def walk(node: Any) -> Any:
            inner = node
            while isinstance(inner, Tree) and inner.data == "expr_term" and len(_meaningful(inner.children)) == 1 \
                    and isinstance(_meaningful(inner.children)[0], Tree):
                inner = _meaningful(inner.children)[0]
            if isinstance(inner, Tree) and inner.data == "tuple":
                return [walk(c) for c in _meaningful(inner.children) if isinstance(c, Tree)]
            ev.tainted = False
            try:
                value = _no_namespace(ev.evaluate(node, scope), attr, context, self)
            except UnknownValue:
                return UNKNOWN
            if ev.tainted:
                value = taint(value)
                self.derived.append(value)
            return value

        return walk(attr.expr)

    def remember_secret(self, value: Any) -> None:
        """A sensitive variable's or sensitive local's own value: every string (and number) in it is masked at
        any length (``SensitiveValues.add_literal``)."""
        if isinstance(value, str):
            if value:
                self.secrets.add(value)
        elif isinstance(value, bool) or value is None:
            return
        elif isinstance(value, int | float):
            self.secrets.add(to_string(value))
        elif isinstance(value, list):
            for v in value:
                self.remember_secret(v)
        elif isinstance(value, dict):
            for v in value.values():
                self.remember_secret(v)

    # -- scope -----------------------------------------------------------------------------------------------
    def scope(self, *, source: tuple[str, str] | None = None, build_name: str = "") -> dict[str, Any]:
        """The references an expression can read; ``source`` (type, name) and the build block's name inside a
        build. ``build.<Key>`` is Packer's generated data: the ``{{ build `Key` }}`` placeholder until run time."""
        if self._base_scope is None:
            variables = self.variables

            def var(name: str) -> Any:
                if name not in variables:
                    raise KeyError(name)
                return variables[name].value

            self._base_scope = {
                "var": Namespace("var", var, lambda n: n in variables and variables[n].sensitive),
                "local": Namespace("local", self.local, lambda n: n in self.local_sensitive),
                "data": Namespace("data", self.data_type),
                "path": {"root": str(self.root), "cwd": str(Path.cwd())},
                "packer": {"version": PACKER_COMPAT_VERSION},
            }

        def build(name: str) -> Any:
            if name == "name":
                return build_name
            return f"{{{{ build `{name}` }}}}"

        scope = dict(self._base_scope)
        scope["build"] = Namespace("build", build)
        if source is not None:
            scope["source"] = {"type": source[0], "name": source[1]}
        return scope

    def local(self, name: str) -> Any:
        if name in self.local_values:
            return self.local_values[name]
        if name not in self.local_defs:
            raise KeyError(name)
        if name in self.local_busy:
            attr = self.local_defs[name][0]
            raise HCLError(self.diag("Cyclic dependency", f'local.{name} refers to itself (directly or through '
                                                          "other locals or data sources).", attr))
        self.local_busy.add(name)
        try:
            attr, sensitive = self.local_defs[name]
            value, tainted = self.eval_attr(attr, self.scope(), "locals")
        finally:
            self.local_busy.discard(name)
        if sensitive:
            self.local_sensitive.add(name)
            self.remember_secret(value)
        elif tainted:  # derived from a sensitive value: masked as derived values are (see sensitive.py)
            self.local_sensitive.add(name)
            value = taint(value)
            self.derived.append(value)
        self.local_values[name] = value
        return value

    def data_type(self, type_name: str) -> Any:
        names = {n for (t, n) in self.data_blocks if t == type_name}
        if not names:
            raise KeyError(type_name)
        return Namespace(f"data.{type_name}", lambda n: self.data(type_name, n))

    def data(self, type_name: str, name: str) -> Any:
        key = (type_name, name)
        if key in self.data_values:
            return self.data_values[key]
        block = self.data_blocks.get(key)
        if block is None:
            raise KeyError(name)
        impl = DATA_SOURCES.get(type_name)
        if impl is None and type_name.startswith("hcp-packer-"):
            raise HCLError(self.diag("HCP Packer data source not supported",
                                     f'The data source "{type_name}" reads the HCP Packer registry, which stemforge '
                                     "does not support; set the value it provides with a variable instead.", block,
                                     block.context()))
        if impl is None:
            raise HCLError(self.diag("Unknown data source type",
                                     f'The data source "{type_name}" is not supported by stemforge (it has: '
                                     f'{", ".join(sorted(DATA_SOURCES))}).', block, block.context()))
        if not self.evaluate_data:
            return UNKNOWN
        config = self.eval_body(block.body, self.scope(), block.context(), plugin=None)
        try:
            value = impl(config)
        except DataSourceError as e:
            raise HCLError(self.diag("Data source failed", f"{block.context()}: {e}", block, block.context())) \
                from None
        self.data_values[key] = json_compatible(value)
        return self.data_values[key]

    # -- bodies ----------------------------------------------------------------------------------------------
    def eval_body(self, body: Body, scope: Mapping[str, Any], context: str, plugin: Any,
                  skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Attributes and nested blocks as a JSON-like config (null attributes are unset). Nested blocks become
        an object, or a list of objects when the plugin's schema wants an array (or the block repeats)."""
        schema = getattr(plugin, "options_schema", None) or {}
        props = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
        out: dict[str, Any] = {}
        errors: list[Diagnostic] = []
        for name, attr in body.attrs.items():
            if name in skip:
                continue
            if props and schema.get("additionalProperties") is False and name not in props:
                errors.append(self.diag("Unsupported argument", f'An argument named "{name}" is not expected '
                                                                "here.", attr, context))
                continue
            try:
                value = self.eval_marking(attr, scope, context)
            except HCLError as e:
                errors.extend(e.diagnostics)
                continue
            if value is not None:
                out[name] = shim_unknown(json_compatible(value))
        grouped: dict[str, list[dict[str, Any]]] = {}
        for block in self.expand_dynamic(body.blocks, scope, context, errors):
            if block.type in skip:
                continue
            sub_schema = props.get(block.type, {}) if isinstance(props, Mapping) else {}
            item_schema = sub_schema.get("items", sub_schema) if isinstance(sub_schema, Mapping) else {}
            fake = type("S", (), {"options_schema": item_schema}) if isinstance(item_schema, Mapping) else None
            try:
                value = self.eval_body(block.body, block_scope(block, scope), context, fake)
            except HCLError as e:
                errors.extend(e.diagnostics)
                continue
            if block.labels:
                value = {block.labels[0]: value}
            grouped.setdefault(block.type, []).append(value)
        for name, items in grouped.items():
            sub_schema = props.get(name, {}) if isinstance(props, Mapping) else {}
            wants_list = isinstance(sub_schema, Mapping) and sub_schema.get("type") == "array"
            out[name] = items if wants_list or len(items) > 1 else items[0]
        if errors:
            raise HCLError(errors)
        return out

    def expand_dynamic(self, blocks: list[Block], scope: Mapping[str, Any], context: str,
                       errors: list[Diagnostic]) -> list[Block]:
        out: list[Block] = []
        for block in blocks:
            if block.type != "dynamic":
                out.append(block)
                continue
            if not block.labels:
                errors.append(self.diag("Missing block label", "A dynamic block needs the name of the block "
                                                               "type to generate as its label.", block, context))
                continue
            name = block.labels[0]
            for_each = block.body.attrs.get("for_each")
            content = next((b for b in block.body.blocks if b.type == "content"), None)
            if for_each is None or content is None:
                errors.append(self.diag("Invalid dynamic block", 'A dynamic block requires a "for_each" '
                                                                 'argument and a "content" block.', block, context))
                continue
            iterator = name
            if "iterator" in block.body.attrs:
                it = block.body.attrs["iterator"].expr
                iterator = str(next(it.scan_values(lambda v: isinstance(v, Token) and v.type == "NAME")))
            try:
                coll, _ = self.eval_attr(for_each, scope, context)
            except HCLError as e:
                errors.extend(e.diagnostics)
                continue
            items = list(enumerate(coll)) if isinstance(coll, list) else sorted(coll.items()) \
                if isinstance(coll, dict) else None
            if items is None:
                errors.append(self.diag("Invalid dynamic for_each value", "Cannot use a "
                                        f"{value_type_name(coll)} value in for_each. An iterable collection is "
                                        "required.", for_each, context))
                continue
            for key, value in items:
                inner = dict(scope)
                inner[iterator] = {"key": key, "value": value}
                labels: list[str] = []
                if "labels" in block.body.attrs:
                    raw, _ = self.eval_attr(block.body.attrs["labels"], inner, context)
                    labels = [to_string(x) for x in raw]
                out.append(_Bound(name, labels, content.body, content.line, content.filename, inner))
        return out

    # -- variables -------------------------------------------------------------------------------------------
    def declare_variables(self, blocks: list[Block]) -> None:
        for block in blocks:
            if block.type == "variables":
                for name, attr in block.body.attrs.items():
                    try:
                        value, _ = self.eval_attr(attr, {}, "variables", self.default_functions)
                    except HCLError as e:
                        self.errors.extend(e.diagnostics)
                        continue
                    self.add_variable(VariableInfo(name, infer(value) if value is not None else ANY, value, True,
                                                   "", False, True, block), block)
                continue
            name = block.labels[0] if block.labels else ""
            body = block.body
            ctx = block.context()
            t = ANY
            if "type" in body.attrs:
                try:
                    t = parse_type(body.attrs["type"].expr)
                except TypeError_ as e:
                    self.errors.append(self.diag("Invalid type specification", str(e), body.attrs["type"], ctx))
                    continue
            default, has_default = None, "default" in body.attrs
            for key in body.attrs:
                if key not in ("type", "default", "description", "sensitive", "nullable", "validation"):
                    self.errors.append(self.diag("Unsupported argument", f'An argument named "{key}" is not '
                                                                         "expected here.", body.attrs[key], ctx))
            try:
                if has_default:
                    default, _ = self.eval_attr(body.attrs["default"], {}, ctx, self.default_functions)
                    if "type" not in body.attrs and default is not None:
                        t = infer(default)
                    default = convert(default, t)
                meta = {k: self.eval_attr(body.attrs[k], {}, ctx)[0] for k in ("description", "sensitive",
                                                                             "nullable") if k in body.attrs}
            except HCLError as e:
                self.errors.extend(e.diagnostics)
                continue
            except TypeError_ as e:
                self.errors.append(self.diag("Invalid default value for variable",
                                             f"This default value is not compatible with the variable's type "
                                             f"constraint: {e}.", body.attrs["default"], ctx))
                continue
            info = VariableInfo(name, t, default, has_default, str(meta.get("description") or ""),
                                bool(meta.get("sensitive", False)), bool(meta.get("nullable", True)), block)
            self.add_variable(info, block)

    def add_variable(self, info: VariableInfo, block: Block) -> None:
        if info.name in self.variables:
            prev = self.variables[info.name].block
            self.errors.append(self.diag("Duplicate variable", f'Duplicate {info.name} variable definition found '
                                         f"at {prev.filename}:{prev.line}." if prev else "", block))
            return
        info.value = info.default
        self.variables[info.name] = info

    def assign(self, name: str, value: Any, origin: str, where: Attr | None = None, *, raw: bool = False,
               undeclared: str = "warning") -> None:
        info = self.variables.get(name)
        if info is None:
            if undeclared == "error":
                self.errors.append(Diagnostic(
                    "Undefined -var variable",
                    f'A "{name}" variable was passed in but not found in known variables. To declare variable '
                    f'"{name}", place this block in one of your .pkr.hcl files, such as variables.pkr.hcl'))
            elif undeclared == "warning":
                self.warnings.append(self.diag(
                    "Undefined variable", f'A "{name}" variable was set but was not found in known variables. To '
                    f'declare variable "{name}", place this block in one of your .pkr.hcl files, such as '
                    "variables.pkr.hcl", where, severity="warning"))
            return
        if raw and not info.type.primitive and info.type.kind != "any":
            try:
                expr = parse_expression(value, origin)
                value = self.evaluator(origin).evaluate(expr, {})
            except HCLError as e:
                self.errors.extend(e.diagnostics)
                return
        try:
            info.value = convert(value, info.type)
        except TypeError_ as e:
            self.errors.append(self.diag("Invalid value for variable",
                                         f"The given value is not suitable for var.{name} declared at "
                                         f"{info.block.filename if info.block else '?'}:"
                                         f"{info.block.line if info.block else 0}: {e}.", where))
            return
        info.set_by = origin

    def load_var_file(self, path: Path, *, undeclared: str = "warning") -> None:
        display = str(path)
        if path.name.endswith(".json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                self.errors.append(Diagnostic("Failed to read variables file", f"{display}: {e}"))
                return
            if not isinstance(data, dict):
                self.errors.append(Diagnostic("Invalid variables file", f"{display}: the root value must be an "
                                                                        "object."))
                return
            for k, v in data.items():
                self.assign(k, v, display, undeclared=undeclared)
            return
        try:
            body = parse_file(path, display, self.sources)
        except HCLError as e:
            self.errors.extend(e.diagnostics)
            return
        for block in body.blocks:
            self.errors.append(self.diag("Unexpected block", "Blocks are not allowed here; a variables file only "
                                                             "sets variables (name = value).", block))
        for name, attr in body.attrs.items():
            try:
                value, _ = self.eval_attr(attr, {}, "")
            except HCLError as e:
                self.errors.extend(e.diagnostics)
                continue
            self.assign(name, value, display, attr, undeclared=undeclared)

    def assign_values(self) -> None:
        prefix = "PKR_VAR_"
        for key in sorted(self.environ):
            if key.startswith(prefix) and key[len(prefix):] in self.variables:
                self.assign(key[len(prefix):], self.environ[key], f"<value for var.{key[len(prefix):]} from env>",
                            raw=True, undeclared="ignore")
        for path in self.auto_var_files:
            self.load_var_file(path)
        for kind, arg in self.var_sources:
            if kind == "var-file":
                self.load_var_file(Path(arg))
            else:
                name, sep, value = arg.partition("=")
                if not sep:
                    self.errors.append(Diagnostic("Invalid -var option", f'The given -var option "{arg}" is not '
                                                  'correctly specified. Must be a variable name and value '
                                                  'separated by an equals sign, like -var="key=value".'))
                    continue
                self.assign(name.strip(), value, f"<value for var.{name.strip()} from arguments>", raw=True,
                            undeclared="error")
        for info in self.variables.values():
            if info.value is None and not info.has_default and info.set_by == "default":
                self.errors.append(self.diag("Unset variable", 'A used variable must be set or have a default '
                                             'value; see https://packer.io/docs/templates/hcl_templates/syntax for '
                                             'details.', info.block, info.block.context() if info.block else ""))
            elif info.value is None and not info.nullable and info.set_by != "default":
                self.errors.append(self.diag("Invalid value for variable", f'The given value is not suitable for '
                                             f'var.{info.name}: required variable may not be set to null.',
                                             info.block))
            if info.sensitive:
                self.remember_secret(info.value)

    def validate_variables(self) -> None:
        for info in self.variables.values():
            if info.block is None or info.block.type != "variable":
                continue
            for rule in info.block.body.blocks:
                if rule.type != "validation":
                    continue
                cond = rule.body.attrs.get("condition")
                msg = rule.body.attrs.get("error_message")
                if cond is None or msg is None:
                    continue
                scope = {"var": {info.name: info.value}}
                try:
                    ok, _ = self.eval_attr(cond, scope, info.block.context())
                    message, _ = self.eval_attr(msg, scope, info.block.context())
                except HCLError as e:
                    self.errors.extend(e.diagnostics)
                    continue
                if ok is not True:
                    self.errors.append(self.diag("Invalid value for variable",
                                                 f"{message}\n\nThis was checked by the validation rule at "
                                                 f"{cond.filename}:{cond.line}.", cond, info.block.context()))


def _no_namespace(value: Any, attr: Attr, context: str, ld: _Loader) -> Any:
    """A bare ``var``/``local``/``data``/``source.x`` reference is not a value (HCL: ``Invalid reference``)."""
    if isinstance(value, Namespace) and not isinstance(value, _SourceRefs):
        raise HCLError(ld.diag("Invalid reference", f'A reference to "{value.label}" must be followed by an '
                               "attribute access naming what to read.", attr, context))
    return value


class _Bound(Block):
    """A block produced by ``dynamic``: evaluated in its iteration's scope."""

    def __init__(self, type_: str, labels: list[str], body: Body, line: int, filename: str,
                 scope: Mapping[str, Any]) -> None:
        super().__init__(type_, labels, body, line, filename)
        self.scope = scope


def block_scope(block: Block, scope: Mapping[str, Any]) -> Mapping[str, Any]:
    return block.scope if isinstance(block, _Bound) else scope


_VERSION_CONSTRAINT = re.compile(r"\s*(>=|<=|!=|~>|=|>|<)?\s*v?([0-9]+(?:\.[0-9]+)*)\s*")


def _version_ok(constraint: str, version: str) -> bool:
    have = tuple(int(x) for x in version.split("."))
    for part in constraint.split(","):
        m = _VERSION_CONSTRAINT.fullmatch(part)
        if not m:
            return False
        op, want_text = m.group(1) or "=", m.group(2)
        want = tuple(int(x) for x in want_text.split("."))
        n = max(len(have), len(want))
        h, w = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        ok = {"=": h == w, "!=": h != w, ">": h > w, ">=": h >= w, "<": h < w, "<=": h <= w}.get(op)
        if op == "~>":
            upper = list(want[:-1]) if len(want) > 1 else [want[0]]
            upper[-1] += 1
            ok = h >= w and h < tuple(upper) + (0,) * (n - len(upper))
        if not ok:
            return False
    return True


def discover(path: Path) -> tuple[Path, list[Path], list[Path]]:
    """(root directory, configuration files, auto var files) of a file or directory argument."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(".pkr.hcl") and p.is_file())
        json_files = sorted(p for p in path.iterdir() if p.name.endswith(".pkr.json") and p.is_file())
        auto = sorted(p for p in path.iterdir() if p.name.endswith((".auto.pkrvars.hcl", ".auto.pkrvars.json")))
        return path, files + json_files, auto
    return path.parent, [path], []


def load_hcl2(path: Path, *, var_sources: Sequence[tuple[str, str]] = (), environ: Mapping[str, str] | None = None,
              syntax_only: bool = False, evaluate_data: bool = True) -> HCL2Template:
    """Read an HCL2 file or directory into the build model. Raises HCLError with every error diagnostic."""
    path = Path(path).absolute()
    if not path.exists():
        raise HCLError(Diagnostic("Failed to read configuration", f"{path}: no such file or directory"))
    root, files, auto = discover(path)
    if not files:
        raise HCLError(Diagnostic("Could not find any config file in " + str(path),
                                  "A build command must be given a path to a .pkr.hcl file or a directory holding "
                                  ".pkr.hcl files."))
    ld = _Loader(root, files, var_sources, os.environ if environ is None else environ, auto, evaluate_data)
    blocks: list[Block] = []
    for f in files:
        display = os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
        try:
            body = parse_file(f, display, ld.sources)
        except HCLError as e:
            ld.errors.extend(e.diagnostics)
            continue
        for name, attr in body.attrs.items():
            ld.errors.append(ld.diag("Unsupported argument", f'An argument named "{name}" is not expected here.',
                                     attr))
        blocks.extend(body.blocks)
    if ld.errors:
        raise HCLError(ld.errors)
    return _assemble(ld, path, blocks, syntax_only)


_TOP = ("packer", "variable", "variables", "locals", "local", "data", "source", "build", "hcp_packer_registry")


def _assemble(ld: _Loader, path: Path, blocks: list[Block], syntax_only: bool) -> HCL2Template:
    by_type: dict[str, list[Block]] = {}
    for b in blocks:
        if b.type not in _TOP:
            ld.errors.append(ld.diag("Unsupported block type", f'Blocks of type "{b.type}" are not expected '
                                                               "here.", b))
            continue
        by_type.setdefault(b.type, []).append(b)
    for b in by_type.get("hcp_packer_registry", []):
        ld.warnings.append(ld.diag("HCP Packer registry not supported", "stemforge does not publish to HCP Packer; "
                                   "the hcp_packer_registry block is ignored.", b, severity="warning"))
    for b in by_type.get("variable", []) + by_type.get("local", []):
        if len(b.labels) != 1:
            ld.errors.append(ld.diag("Missing name for " + b.type, f"All {b.type} blocks must have 1 label (the "
                                                                     "name).", b))
    by_type["variable"] = [b for b in by_type.get("variable", []) if len(b.labels) == 1]
    by_type["local"] = [b for b in by_type.get("local", []) if len(b.labels) == 1]
    for b in by_type.get("source", []) + by_type.get("data", []):
        if len(b.labels) != 2:
            ld.errors.append(ld.diag("Missing name for " + b.type, f"All {b.type} blocks must have 2 labels (type, "
                                                                     "name).", b))
    ld.declare_variables(by_type.get("variable", []) + by_type.get("variables", []))
    for b in by_type.get("locals", []):
        for name, attr in b.body.attrs.items():
            ld.local_defs[name] = (attr, False)
    for b in by_type.get("local", []):
        expr = b.body.attrs.get("expression")
        if expr is None or not b.labels:
            ld.errors.append(ld.diag("Missing required argument", 'The argument "expression" is required.', b))
            continue
        sens = b.body.attrs.get("sensitive")
        sensitive = bool(ld.eval_attr(sens, {})[0]) if sens is not None else False
        ld.local_defs[b.labels[0]] = (expr, sensitive)
    for b in by_type.get("data", []):
        if len(b.labels) == 2:
            ld.data_blocks[(b.labels[0], b.labels[1])] = b
    for b in by_type.get("source", []):
        if len(b.labels) == 2:
            key = f"{b.labels[0]}.{b.labels[1]}"
            if key in ld.source_blocks:
                ld.errors.append(ld.diag("Duplicate source block", f'This source block has the same type and name '
                                         f'as a previous block declared at {ld.source_blocks[key].filename}:'
                                         f"{ld.source_blocks[key].line}. Each source must have a unique name per "
                                         "builder type.", b))
            ld.source_blocks[key] = b
    if not by_type.get("build"):
        ld.errors.append(Diagnostic("Missing build block", "A build block with one or more sources is required "
                                                           "for executing a build."))
    _packer_blocks(ld, by_type.get("packer", []))
    if ld.errors:
        raise HCLError(ld.errors)

    if not syntax_only:
        ld.assign_values()
        if not ld.errors:
            ld.validate_variables()
        if ld.errors:
            raise HCLError(ld.errors)
        for b in by_type.get("local", []):
            if b.labels and b.labels[0] in ld.local_defs and ld.local_defs[b.labels[0]][1]:
                ld.local_sensitive.add(b.labels[0])
        for name in list(ld.local_defs):
            try:
                ld.local(name)
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
        if ld.errors:
            raise HCLError(_unique(ld.errors))

    template = HCL2Template(
        path=path if path.is_file() else (ld.files[0] if ld.files else path), description=None,
        min_packer_version=None,
        variables={n: _display(i.value) for n, i in ld.variables.items()},
        sensitive_variables=sorted(n for n, i in ld.variables.items() if i.sensitive), builders=[],
        provisioners=[], post_processors=[], error_cleanup_provisioner=None,
        run_timestamp=int(ld.run_time.timestamp()), run_uuid=time_ordered_uuid(), format="hcl2",
        run_time=ld.run_time,
        required_variables=sorted(n for n, i in ld.variables.items() if not i.has_default),
        hcl_variables=ld.variables, hcl_locals=ld.local_values, diagnostics=ld.warnings)
    _builds(ld, template, by_type.get("build", []), syntax_only)
    _packer_build_names(template)
    for secret in ld.secrets:
        template.sensitive.add_literal(secret)
    for value in ld.derived:
        template.sensitive.record(value)
    # warnings are diagnostics (``template.diagnostics``), printed once by the CLI, not ``template.warnings``
    # (which the runner prints again as "Warning: ...")
    if ld.errors:
        raise HCLError(_unique(ld.errors))
    return template


def _packer_build_names(t: HCL2Template) -> None:
    """Name each build as plugins see it in Packer's HCL2 mode (``packer_build_name`` is the source's name, so
    ``{{ build_name }}`` and the manifest's ``name`` read ``small`` for ``source.qemu.small``). A source name
    used by more than one build keeps the full ``[<build>.]<type>.<name>`` so builds stay distinct."""
    counts: dict[str, int] = {}
    for b in t.builders:
        short = b.config_source.split(".", 1)[1] if isinstance(b, HCL2BuilderSpec) else b.name
        counts[short] = counts.get(short, 0) + 1
    renamed: dict[str, str] = {}
    for b in t.builders:
        short = b.config_source.split(".", 1)[1] if isinstance(b, HCL2BuilderSpec) else b.name
        if counts[short] == 1:
            renamed[b.name] = short
            b.name = short
    provisioners = list(t.provisioners) + ([t.error_cleanup_provisioner] if t.error_cleanup_provisioner else [])
    for p in provisioners:
        p.only = [renamed.get(n, n) for n in p.only]
        p.override = {renamed.get(k, k): v for k, v in p.override.items()}
    for chain in t.post_processors:
        for pp in chain:
            pp.only = [renamed.get(n, n) for n in pp.only]


def _unique(diags: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[str] = set()
    out = []
    for d in diags:
        key = d.render()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def _display(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, list | dict) else to_string(value)


def _packer_blocks(ld: _Loader, blocks: list[Block]) -> None:
    for b in blocks:
        rv = b.body.attrs.get("required_version")
        if rv is not None:
            try:
                constraint, _ = ld.eval_attr(rv, {}, "packer")
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
                constraint = None
            if isinstance(constraint, str) and not _version_ok(constraint, PACKER_COMPAT_VERSION):
                ld.errors.append(ld.diag("Unsupported Packer Core version",
                                         f"This configuration does not support Packer version "
                                         f"{PACKER_COMPAT_VERSION}. To proceed, either choose another supported "
                                         f"Packer version or update this version constraint. Version constraints "
                                         f"are normally set for good reason, so updating the constraint may lead "
                                         f"to other errors or unexpected behavior.", rv, "packer"))
        missing: list[str] = []
        for rp in b.body.blocks:
            if rp.type != "required_plugins":
                continue
            for name, attr in rp.body.attrs.items():
                try:
                    spec, _ = ld.eval_attr(attr, {}, "required_plugins")
                except HCLError as e:
                    ld.errors.extend(e.diagnostics)
                    continue
                source = spec.get("source", name) if isinstance(spec, dict) else str(spec)
                plugin = str(source).rstrip("/").rsplit("/", 1)[-1].removeprefix("packer-plugin-")
                if plugin not in BUILTIN_PLUGINS and plugin not in ld.reported_unknown:
                    ld.reported_unknown.add(plugin)
                    version = spec.get("version", "") if isinstance(spec, dict) else ""
                    missing.append(f"{source} {version}".strip())
        if missing:
            ld.errors.append(ld.diag("Missing plugins", "The following plugins are required, but not installed:\n\n"
                                     + "\n".join(missing) + "\n\nstemforge has no plugin installer: its builder, "
                                     "provisioner and post-processor types are built in.", b, "packer"))


def _plugin(kind: str, type_name: str) -> Any:
    from builders.registry import load_builder, load_post_processor, load_provisioner

    loader: Callable[[str], Any] = {"builder": load_builder, "provisioner": load_provisioner,
                                    "post-processor": load_post_processor}[kind]
    try:
        return loader(type_name)
    except Exception:  # noqa: BLE001 - unknown or broken plugin: reported by the caller
        return None


def _unknown_type(ld: _Loader, kind: str, type_name: str, where: Block) -> None:
    key = f"{kind}:{type_name}"
    if key in ld.reported_unknown:
        return
    ld.reported_unknown.add(key)
    word = {"builder": "source", "provisioner": "provisioner", "post-processor": "post-processor"}[kind]
    ld.errors.append(ld.diag(f"Unknown {word} type {json.dumps(type_name)}",
                             f'The {word} "{type_name}" is unknown by Packer, and is likely part of a plugin that '
                             "is not installed.\nYou may find the needed plugin along with installation "
                             "instructions documented on the Packer integrations page.\n\n"
                             f"https://developer.hashicorp.com/packer/integrations?filter={type_name}", where))


_PROV_META = frozenset({"only", "except", "pause_before", "max_retries", "timeout", "override", "name"})
_PP_META = frozenset({"only", "except", "keep_input_artifact", "name"})


def _builds(ld: _Loader, t: HCL2Template, blocks: list[Block], syntax_only: bool) -> None:
    names: set[str] = set()
    prov_index = 0
    for bi, block in enumerate(blocks):
        ctx = block.context()
        scope0 = ld.scope()
        build_name = ""
        if "name" in block.body.attrs:
            try:
                build_name = to_string(ld.eval_attr(block.body.attrs["name"], scope0, ctx)[0])
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
            except ValueError as e:
                ld.errors.append(ld.diag("Incorrect attribute value type", f'Inappropriate value for attribute '
                                         f'"name": {e}.', block.body.attrs["name"], ctx))
        description = ""
        if "description" in block.body.attrs and not syntax_only:
            description = str(ld.eval_attr(block.body.attrs["description"], scope0, ctx)[0] or "")
        if description and t.description is None:
            t.description = description
        usages: list[tuple[str, str, Block | None, Block | Attr]] = []  # type, name, override block, where
        if "sources" in block.body.attrs:
            attr = block.body.attrs["sources"]
            try:
                refs, _ = ld.eval_attr(attr, {**scope0, "source": _SourceRefs()}, ctx)
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
                refs = []
            if not isinstance(refs, list):
                ld.errors.append(ld.diag("Incorrect attribute value type", 'Inappropriate value for attribute '
                                         '"sources": list of string required.', attr, ctx))
                refs = []
            for ref in refs:
                text = str(ref)
                # Packer's sourceRefFromString: "<type>.<name>", or any first part (normally "source") then
                # type and name; a name keeps any further dots here (Packer would cut it at the next one)
                parts = text.split(".", 2)
                if len(parts) == 2:
                    parts = ["source", *parts]
                if len(parts) != 3 or not all(parts):
                    ld.errors.append(ld.diag("Invalid sources reference", f'"{text}" is not a valid source '
                                             'reference; use "source.<type>.<name>".', attr, ctx))
                    continue
                usages.append((parts[1], parts[2], None, attr))
        for sb in block.body.blocks:
            if sb.type != "source":
                continue
            ref = sb.labels[0] if sb.labels else ""
            parts = ref.removeprefix("source.").split(".", 1)
            if len(parts) != 2:
                ld.errors.append(ld.diag("Invalid source reference", f'"{ref}" is not a valid source reference; use '
                                         '"<type>.<name>".', sb, ctx))
                continue
            usages.append((parts[0], parts[1], sb, sb))
        specs: list[HCL2BuilderSpec] = []
        for type_name, src_name, override, where in usages:
            key = f"{type_name}.{src_name}"
            src = ld.source_blocks.get(key)
            if src is None:
                ld.errors.append(ld.diag("Unknown source", f"Unknown source {key}", where, ctx))
                continue
            plugin = _plugin("builder", type_name)
            if plugin is None:
                _unknown_type(ld, "builder", type_name, src)
            final_name = src_name
            if override is not None and "name" in override.body.attrs:
                try:
                    final_name = to_string(ld.eval_attr(override.body.attrs["name"], scope0, ctx)[0])
                except HCLError as e:
                    ld.errors.extend(e.diagnostics)
            short = f"{type_name}.{final_name}"
            full = f"{build_name}.{short}" if build_name else short
            if full in names:
                ld.errors.append(ld.diag("Duplicate build", f'A build named "{full}" is already defined; give the '
                                         "build block a name or the source a distinct name.", where, ctx))
                continue
            names.add(full)
            config: dict[str, Any] = {}
            if not syntax_only:
                scope = ld.scope(source=(type_name, final_name), build_name=build_name)
                try:
                    config = ld.eval_body(src.body, scope, src.context(), plugin)
                    if override is not None:
                        config.update(ld.eval_body(override.body, scope, override.context(), plugin,
                                                   skip=frozenset({"name"})))
                except HCLError as e:
                    ld.errors.extend(e.diagnostics)
            spec = HCL2BuilderSpec(name=full, type=type_name, config=config, index=len(t.builders),
                                   raw_name=full, config_source=short, build_block=bi)
            specs.append(spec)
            t.builders.append(spec)
        info: dict[str, Any] = {"name": build_name, "description": description,
                                "sources": [s.config_source for s in specs], "provisioners": [],
                                "post_processors": []}
        t.build_blocks.append(info)
        for pb in block.body.blocks:
            if pb.type in ("provisioner", "error-cleanup-provisioner", "post-processor") and len(pb.labels) != 1:
                ld.errors.append(ld.diag("Missing name for " + pb.type, f"All {pb.type} blocks must have 1 label "
                                                                         "(the type).", pb, ctx))
                continue
            if pb.type in ("provisioner", "error-cleanup-provisioner"):
                type_name = pb.labels[0] if pb.labels else ""
                info["provisioners"].append(type_name)
                plugin = _plugin("provisioner", type_name)
                if plugin is None:
                    _unknown_type(ld, "provisioner", type_name, pb)
                    continue
                applicable = [spec for spec in specs if _filter(ld, pb, spec)]
                if applicable:
                    p = _provisioner_for(ld, pb, applicable, plugin, syntax_only, prov_index)
                    if pb.type == "provisioner":
                        t.provisioners.append(p)
                    elif t.error_cleanup_provisioner is None:
                        t.error_cleanup_provisioner = p
                    else:
                        first = t.error_cleanup_provisioner
                        first.only += p.only
                        first.override.update({name: p.override.get(name, p.config) for name in p.only})
                if pb.type == "provisioner":
                    prov_index += 1
            elif pb.type in ("post-processor", "post-processors"):
                chain_blocks = [pb] if pb.type == "post-processor" else [b for b in pb.body.blocks
                                                                          if b.type == "post-processor"]
                info["post_processors"].append([b.labels[0] if b.labels else "" for b in chain_blocks])
                chain_index = len(info["post_processors"]) - 1
                if not any(_uses_build_context(ld, b) for b in chain_blocks):
                    # evaluated once: each post-processor lists the builds its only/except select
                    shared: list[PostProcessorSpec] = []
                    for j, ppb in enumerate(chain_blocks):
                        applicable = [spec for spec in specs if _filter(ld, ppb, spec)]
                        pp = _post_processor(ld, ppb, applicable[0], syntax_only, (chain_index, j)) \
                            if applicable else None
                        if pp is not None:
                            pp.only = [spec.name for spec in applicable]
                            shared.append(pp)
                    if shared:
                        t.post_processors.append(shared)
                    continue
                for spec in specs:
                    chain: list[PostProcessorSpec] = []
                    for j, ppb in enumerate(chain_blocks):
                        pp = _post_processor(ld, ppb, spec, syntax_only, (chain_index, j)) \
                            if _filter(ld, ppb, spec) else None
                        if pp is not None:
                            chain.append(pp)
                    if chain:
                        t.post_processors.append(chain)
            elif pb.type == "hcp_packer_registry":
                ld.warnings.append(ld.diag("HCP Packer registry not supported", "stemforge does not publish to HCP "
                                           "Packer; the hcp_packer_registry block is ignored.", pb, ctx,
                                           severity="warning"))
            elif pb.type != "source":
                ld.errors.append(ld.diag("Unsupported block type", f'Blocks of type "{pb.type}" are not expected '
                                                                   "here.", pb, ctx))
        for name in block.body.attrs:
            if name not in ("name", "description", "sources"):
                ld.errors.append(ld.diag("Unsupported argument", f'An argument named "{name}" is not expected '
                                                                 "here.", block.body.attrs[name], ctx))


class _SourceRefs(Namespace):
    """``sources = [source.qemu.x]`` written as traversals: each step builds the reference string."""

    def __init__(self, path: str = "source") -> None:
        super().__init__(path, lambda name: _SourceRefs(f"{path}.{name}"))
        self.path = path

    def __str__(self) -> str:
        return self.path


_GLOB = re.compile(r"[*?\[]")


def _uses_build_context(ld: _Loader, block: Block) -> bool:
    """Whether anything in ``block`` reads ``source.*`` or ``build.*`` (then it is evaluated per build)."""
    key = id(block)
    if key not in ld.context_cache:
        def body_uses(body: Body) -> bool:
            for attr in body.attrs.values():
                expr = attr.expr
                if isinstance(expr, Tree) and any(
                        tok.type == "NAME" and str(tok) in ("source", "build")
                        for tok in expr.scan_values(lambda v: isinstance(v, Token))):
                    return True
            return any(body_uses(b.body) for b in body.blocks)

        ld.context_cache[key] = body_uses(block.body) or "override" in block.body.attrs
    return ld.context_cache[key]


def _filter(ld: _Loader, block: Block, spec: HCL2BuilderSpec) -> bool:
    """Whether ``block`` (provisioner / post-processor) applies to ``spec`` by its ``only``/``except``."""
    for key, want in (("only", True), ("except", False)):
        attr = block.body.attrs.get(key)
        if attr is None:
            continue
        cache_key = (id(block), key)
        if cache_key not in ld.filter_cache:
            try:
                raw, _ = ld.eval_attr(attr, {}, block.context())
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
                raw = None
            if raw is None:
                ld.filter_cache[cache_key] = None
            else:
                if not isinstance(raw, list):
                    ld.errors.append(ld.diag("Incorrect attribute value type", f'Inappropriate value for attribute '
                                             f'"{key}": list of string required.', attr, block.context()))
                    ld.filter_cache[cache_key] = None
                    return False
                names = [str(n) for n in raw]
                ld.filter_cache[cache_key] = ({n for n in names if not _GLOB.search(n)},
                                              [n for n in names if _GLOB.search(n)])
        cached = ld.filter_cache[cache_key]
        if cached is None:
            return False
        literal, globs = cached
        hit = spec.config_source in literal or spec.raw_name in literal or any(
            fnmatch.fnmatchcase(spec.config_source, n) or fnmatch.fnmatchcase(spec.raw_name, n) for n in globs)
        if hit != want:
            return False
    return True


def _duration(ld: _Loader, block: Block, key: str, scope: Mapping[str, Any]) -> float | None:
    attr = block.body.attrs.get(key)
    if attr is None:
        return None
    try:
        value, _ = ld.eval_attr(attr, scope, block.context())
        return parse_go_duration(str(value))
    except HCLError as e:
        ld.errors.extend(e.diagnostics)
    except ValueError as e:
        ld.errors.append(ld.diag("Invalid duration", f"{key}: {e}", attr, block.context()))
    return None


def _provisioner_for(ld: _Loader, pb: Block, specs: list[HCL2BuilderSpec], plugin: Any, syntax_only: bool,
                     index: int) -> ProvisionerSpec:
    """One provisioner spec for the builds ``specs`` (its ``only``): evaluated once, or per build (into
    ``override``) when the block reads ``source.*``/``build.*``."""
    first = _provisioner(ld, pb, specs[0], plugin, syntax_only, index)
    if _uses_build_context(ld, pb):
        first.override = {specs[0].name: dict(first.config)}
        for spec in specs[1:]:
            first.override[spec.name] = _provisioner(ld, pb, spec, plugin, syntax_only, index).config
    first.only = [spec.name for spec in specs]
    return first


def _provisioner(ld: _Loader, pb: Block, spec: HCL2BuilderSpec, plugin: Any, syntax_only: bool,
                 index: int) -> ProvisionerSpec:
    scope = ld.scope(source=(spec.type, spec.config_source.split(".", 1)[1]),
                     build_name=t_build_name(spec))
    config: dict[str, Any] = {}
    max_retries = 0
    if not syntax_only:
        try:
            config = ld.eval_body(pb.body, scope, pb.context(), plugin, skip=_PROV_META)
            if "override" in pb.body.attrs:
                overrides, _ = ld.eval_attr(pb.body.attrs["override"], scope, pb.context())
                for key in (spec.config_source.split(".", 1)[1], spec.config_source, spec.raw_name):
                    if isinstance(overrides, dict) and isinstance(overrides.get(key), dict):
                        config.update(json_compatible(overrides[key]))
            if "max_retries" in pb.body.attrs:
                max_retries = int(ld.eval_attr(pb.body.attrs["max_retries"], scope, pb.context())[0])
        except HCLError as e:
            ld.errors.extend(e.diagnostics)
        except (TypeError, ValueError):
            ld.errors.append(ld.diag("Invalid max_retries", "max_retries must be a whole number.",
                                     pb.body.attrs["max_retries"], pb.context()))
    return ProvisionerSpec(type=pb.labels[0], config=config, only=[spec.name],
                           pause_before=_duration(ld, pb, "pause_before", scope) or 0.0, max_retries=max_retries,
                           timeout=_duration(ld, pb, "timeout", scope), index=index)


def t_build_name(spec: HCL2BuilderSpec) -> str:
    return spec.raw_name[:-len(spec.config_source) - 1] if spec.raw_name != spec.config_source else ""


def _post_processor(ld: _Loader, ppb: Block, spec: HCL2BuilderSpec, syntax_only: bool,
                    index: tuple[int, int]) -> PostProcessorSpec | None:
    type_name = ppb.labels[0] if ppb.labels else ""
    plugin = _plugin("post-processor", type_name)
    if plugin is None:
        _unknown_type(ld, "post-processor", type_name, ppb)
        return None
    scope = ld.scope(source=(spec.type, spec.config_source.split(".", 1)[1]), build_name=t_build_name(spec))
    config: dict[str, Any] = {}
    keep: bool | None = None
    name: str | None = type_name
    try:
        if not syntax_only:
            config = ld.eval_body(ppb.body, scope, ppb.context(), plugin, skip=_PP_META)
        if "keep_input_artifact" in ppb.body.attrs:
            keep = bool(ld.eval_attr(ppb.body.attrs["keep_input_artifact"], scope, ppb.context())[0])
        if "name" in ppb.body.attrs:
            name = to_string(ld.eval_attr(ppb.body.attrs["name"], scope, ppb.context())[0])
    except HCLError as e:
        ld.errors.extend(e.diagnostics)
    return PostProcessorSpec(type=type_name, name=name, config=config, keep_input_artifact=keep, only=[spec.name],
                             index=index)


def load_or_template_error(path: Path, **kwargs: Any) -> HCL2Template:
    """:func:`load_hcl2` raising TemplateError (the JSON loader's error type) with the diagnostics' text."""
    try:
        return load_hcl2(path, **kwargs)
    except HCLError as e:
        raise TemplateError([d.render().rstrip("\n") for d in e.diagnostics]) from None


__all__ = ["HCL2BuilderSpec", "HCL2Template", "STRING", "is_hcl2", "load_hcl2", "load_or_template_error"]
