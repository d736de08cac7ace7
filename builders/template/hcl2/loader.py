"""The evaluation context of one HCL2 configuration (Packer's ``PackerConfig``): diagnostics, variables and
their values by precedence, locals, data sources, the scope expressions see, and block bodies evaluated
against a plugin's options (``dynamic`` blocks expanded, sensitive values tracked)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lark import Token, Tree

from builders.template.functions import PACKER_COMPAT_VERSION
from builders.template.hcl2.body import Attr, Block, Body, Bound, block_scope, meaningful
from builders.template.hcl2.datasources import DATA_SOURCES, DataSourceError, hcp_packer_config_errors
from builders.template.hcl2.diagnostics import Diagnostic, HCLError, Range
from builders.template.hcl2.evaluator import Evaluator, Namespace, parse_expression
from builders.template.hcl2.files import parse_file
from builders.template.hcl2.functions import make_functions
from builders.template.hcl2.template import VariableInfo
from builders.template.hcl2.types import ANY, TypeError_, convert, infer, parse_type
from builders.template.hcl2.values import UNKNOWN, UnknownValue, json_compatible, shim_unknown, to_string
from builders.template.hcl2.values import type_name as value_type_name
from builders.template.sensitive import taint


class Loader:
    def __init__(self, root: Path, files: list[Path], var_sources: Sequence[tuple[str, str]],
                 environ: Mapping[str, str], auto_var_files: list[Path], evaluate_data: bool = True) -> None:
        self.root = root
        self.files = files
        self.var_sources = var_sources
        self.environ = environ
        self.auto_var_files = auto_var_files
        self.evaluate_data = evaluate_data
        #: The command line's ``-only``/``-except`` globs: builds they leave out are not started (Packer's
        #: GetBuilds skips them before looking up their plugins), so their unknown types are not errors.
        self.only: Sequence[str] = ()
        self.except_: Sequence[str] = ()
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
            while isinstance(inner, Tree) and inner.data == "expr_term" and len(meaningful(inner.children)) == 1 \
                    and isinstance(meaningful(inner.children)[0], Tree):
                inner = meaningful(inner.children)[0]
            if isinstance(inner, Tree) and inner.data == "tuple":
                return [walk(c) for c in meaningful(inner.children) if isinstance(c, Tree)]
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
                # Packer's EvalContext: the HCP Packer values stay unknown without an HCP registry (stemforge has none)
                "packer": {"version": PACKER_COMPAT_VERSION, "iterationID": UNKNOWN, "versionFingerprint": UNKNOWN},
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
        if impl is None and type_name.startswith("hcp-packer-") and not self.evaluate_data:
            # Packer's validate configures every data source but executes none (hcl2template
            # evaluateDatasources(skipExecution)): the outputs are unknown until a build reads the registry.
            config = self.eval_body(block.body, self.scope(), block.context(), plugin=None)
            problems = hcp_packer_config_errors(type_name, config)
            if problems:
                raise HCLError([self.diag(p, "", block, block.context()) for p in problems])
            return UNKNOWN
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
                out.append(Bound(name, labels, content.body, content.line, content.filename, inner))
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


def _no_namespace(value: Any, attr: Attr, context: str, ld: Loader) -> Any:
    """A bare ``var``/``local``/``data``/``source.x`` reference is not a value (HCL: ``Invalid reference``)."""
    if isinstance(value, Namespace) and not isinstance(value, SourceRefs):
        raise HCLError(ld.diag("Invalid reference", f'A reference to "{value.label}" must be followed by an '
                               "attribute access naming what to read.", attr, context))
    return value



class SourceRefs(Namespace):
    """``sources = [source.qemu.x]`` written as traversals: each step builds the reference string."""

    def __init__(self, path: str = "source") -> None:
        super().__init__(path, lambda name: SourceRefs(f"{path}.{name}"))
        self.path = path

    def __str__(self) -> str:
        return self.path
