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

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from builders.template.functions import PACKER_COMPAT_VERSION, time_ordered_uuid
from builders.template.hcl2.body import Block
from builders.template.hcl2.builds import decode_builds
from builders.template.hcl2.datasources import DATA_SOURCES
from builders.template.hcl2.diagnostics import Diagnostic, HCLError
from builders.template.hcl2.files import discover, parse_file
from builders.template.hcl2.loader import Loader
from builders.template.hcl2.template import HCL2BuilderSpec, HCL2Template
from builders.template.hcl2.values import to_string
from builders.template.model import TemplateError

BUILTIN_PLUGINS = frozenset({"qemu", "amazon", "file", "shell", "shell-local", "manifest", "checksum", "compress",
                             "breakpoint", "artifice"})
BUILTIN_DATA = frozenset(DATA_SOURCES)


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



def load_hcl2(path: Path, *, var_sources: Sequence[tuple[str, str]] = (), environ: Mapping[str, str] | None = None,
              syntax_only: bool = False, evaluate_data: bool = True, only: Sequence[str] = (),
              except_: Sequence[str] = ()) -> HCL2Template:
    """Read an HCL2 file or directory into the build model. Raises HCLError with every error diagnostic.
    ``only``/``except_`` (the command line's) leave builds out before their plugins are looked up."""
    path = Path(path).absolute()
    if not path.exists():
        raise HCLError(Diagnostic("Failed to read configuration", f"{path}: no such file or directory"))
    root, files, auto = discover(path)
    if not files:
        raise HCLError(Diagnostic("Could not find any config file in " + str(path),
                                  "A build command must be given a path to a .pkr.hcl file or a directory holding "
                                  ".pkr.hcl files."))
    ld = Loader(root, files, var_sources, os.environ if environ is None else environ, auto, evaluate_data)
    ld.only, ld.except_ = only, except_
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


def _assemble(ld: Loader, path: Path, blocks: list[Block], syntax_only: bool) -> HCL2Template:
    by_type = _declare(ld, blocks)
    if not syntax_only:
        _evaluate_inputs(ld, by_type.get("local", []))
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
    decode_builds(ld, template, by_type.get("build", []), syntax_only)
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


def _declare(ld: Loader, blocks: list[Block]) -> dict[str, list[Block]]:
    """The top-level blocks by type, with variables, locals, data and sources declared in ``ld`` and the
    ``packer`` block checked. Raises HCLError with every problem found so far."""
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
    for kind, count, what in (("variable", 1, "1 label (the name)"), ("local", 1, "1 label (the name)"),
                              ("source", 2, "2 labels (type, name)"), ("data", 2, "2 labels (type, name)")):
        for b in by_type.get(kind, []):
            if len(b.labels) != count:
                ld.errors.append(ld.diag("Missing name for " + b.type, f"All {b.type} blocks must have {what}.", b))
    by_type["variable"] = [b for b in by_type.get("variable", []) if len(b.labels) == 1]
    by_type["local"] = [b for b in by_type.get("local", []) if len(b.labels) == 1]
    ld.declare_variables(by_type.get("variable", []) + by_type.get("variables", []))
    _declare_locals(ld, by_type.get("locals", []), by_type.get("local", []))
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
    return by_type


def _declare_locals(ld: Loader, locals_blocks: list[Block], local_blocks: list[Block]) -> None:
    """``locals { a = ... }`` and ``local "a" { expression = ..., sensitive = ... }`` definitions."""
    for b in locals_blocks:
        for name, attr in b.body.attrs.items():
            ld.local_defs[name] = (attr, False)
    for b in local_blocks:
        expr = b.body.attrs.get("expression")
        if expr is None or not b.labels:
            ld.errors.append(ld.diag("Missing required argument", 'The argument "expression" is required.', b))
            continue
        sens = b.body.attrs.get("sensitive")
        sensitive = bool(ld.eval_attr(sens, {})[0]) if sens is not None else False
        ld.local_defs[b.labels[0]] = (expr, sensitive)


def _evaluate_inputs(ld: Loader, local_blocks: list[Block]) -> None:
    """Variable values by precedence, their validations, then every local. Raises HCLError on any error."""
    ld.assign_values()
    if not ld.errors:
        ld.validate_variables()
    if ld.errors:
        raise HCLError(ld.errors)
    for b in local_blocks:
        if b.labels and b.labels[0] in ld.local_defs and ld.local_defs[b.labels[0]][1]:
            ld.local_sensitive.add(b.labels[0])
    for name in list(ld.local_defs):
        try:
            ld.local(name)
        except HCLError as e:
            ld.errors.extend(e.diagnostics)
    if ld.errors:
        raise HCLError(_unique(ld.errors))


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


def _packer_blocks(ld: Loader, blocks: list[Block]) -> None:
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


def load_or_template_error(path: Path, **kwargs: Any) -> HCL2Template:
    """:func:`load_hcl2` raising TemplateError (the JSON loader's error type) with the diagnostics' text."""
    try:
        return load_hcl2(path, **kwargs)
    except HCLError as e:
        raise TemplateError([d.render().rstrip("\n") for d in e.diagnostics]) from None


__all__ = ["load_hcl2", "load_or_template_error"]
