"""Packer-compatible templates (legacy JSON, and YAML with the same keys).

``parse_template`` reads a template, checks every rule Packer checks (collecting all errors, Packer's words),
resolves user variables and returns a :class:`Template` whose plugin configs are still raw; the runner renders
each config per build with :meth:`Template.render`. Plugin option validation is not done here.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from builders.template.functions import (
    BUILD_PLACEHOLDER,
    PACKER_COMPAT_VERSION,
    RenderContext,
    render_string,
    time_ordered_uuid,
)
from builders.template.gotemplate.errors import GoTemplateError
from builders.template.loader import DocumentError, load_document
from builders.template.model import BuilderSpec, PostProcessorSpec, ProvisionerSpec, Template, TemplateError
from builders.template.validate import check_min_version, parse_structure
from builders.template.variables import load_var_file, merge_cli_variables, parse_var_arg, resolve_variables

__all__ = [
    "BUILD_PLACEHOLDER",
    "PACKER_COMPAT_VERSION",
    "BuilderSpec",
    "PostProcessorSpec",
    "ProvisionerSpec",
    "Template",
    "TemplateError",
    "load_var_file",
    "merge_cli_variables",
    "parse_template",
    "parse_var_arg",
]


def parse_template(path: Path, *, var_overrides: Mapping[str, str] = {}, var_files: Sequence[Path] = (),
                   syntax_only: bool = False) -> Template:
    """Parse and validate the template at ``path``.

    Variables: each of ``var_files`` in order, then ``var_overrides`` (later wins; for exact command-line
    interleaving of ``-var`` and ``-var-file`` use :func:`merge_cli_variables` and pass the result as
    ``var_overrides``). ``syntax_only`` stops after the document and structure checks (Packer's
    ``validate -syntax-only``): no variable resolution, version check or function checks.

    Raises TemplateError with every problem found, one per line, sensitive values masked."""
    path = Path(path).absolute()
    try:
        doc = load_document(path)
    except DocumentError as e:
        raise TemplateError(str(e)) from None
    s = parse_structure(doc.value)
    run_time = _dt.datetime.now(_dt.UTC)
    errors = list(s.errors)

    given: dict[str, str] = {}
    if not syntax_only:
        errors += s.validate_errors
        for f in var_files:
            try:
                given.update(load_var_file(Path(f)))
            except TemplateError as e:
                errors += e.errors
        given.update(var_overrides)
        if s.min_packer_version:
            err = check_min_version(s.min_packer_version, PACKER_COMPAT_VERSION)
            if err:
                errors.append(err)

    variables: dict[str, str] = {k: (v or "") for k, v in s.variables.items()}
    variables.update({k: v for k, v in given.items()})
    template = Template(
        path=path, description=s.description, min_packer_version=s.min_packer_version, variables=variables,
        sensitive_variables=list(s.sensitive_variables), builders=s.builders, provisioners=s.provisioners,
        post_processors=s.post_processors, error_cleanup_provisioner=s.error_cleanup_provisioner,
        run_timestamp=int(run_time.timestamp()), run_uuid=time_ordered_uuid(), comments=s.comments,
        warnings=list(s.warnings), format=doc.format, run_time=run_time,
        required_variables=sorted(k for k, v in s.variables.items() if v is None))

    if syntax_only:
        if errors:
            raise TemplateError([template.mask(e) for e in errors])
        return template

    variables_ok = not any(e.startswith("variable ") for e in s.errors)
    if variables_ok:
        try:
            template.variables = resolve_variables(s.variables, given, template_path=str(path), init_time=run_time,
                                                   sensitive=s.sensitive_variables)
        except TemplateError as e:
            errors += e.errors
            variables_ok = False

    if variables_ok and not s.errors and not s.validate_errors:
        errors += _finish(template, s.max_retries_raw)

    if errors:
        raise TemplateError([template.mask(e) for e in errors])
    return template


def _finish(t: Template, max_retries_raw: Mapping[int, str]) -> list[str]:
    """Render builder names, map only/except/override to rendered names, decode ``max_retries`` and try-render
    every config (Packer's prepare-time interpolation: syntax, unknown functions, ``env`` outside variables,
    argument errors). Returns the errors; adds warnings to ``t``."""
    errors: list[str] = []
    ctx = t.context()
    renamed: dict[str, str] = {}
    seen: set[str] = set()
    for b in t.builders:
        try:
            name = render_string(b.raw_name, ctx)
        except GoTemplateError as e:
            errors.append(f"Error interpolating builder '{b.raw_name}': {e}")
            continue
        if name in seen:
            errors.append(f"builder {b.index + 1}: builder with name '{name}' already exists")
        seen.add(name)
        b.name = name
        renamed[b.raw_name] = name
    if errors:
        return errors

    provisioners = list(t.provisioners)
    if t.error_cleanup_provisioner is not None:
        provisioners.append(t.error_cleanup_provisioner)
    for p in provisioners:
        p.only = [renamed.get(n, n) for n in p.only]
        p.except_ = [renamed.get(n, n) for n in p.except_]
        p.override = {renamed.get(k, k): v for k, v in p.override.items()}
    for chain in t.post_processors:
        for pp in chain:
            pp.only = [renamed.get(n, n) for n in pp.only]
            pp.except_ = [renamed.get(n, n) for n in pp.except_]

    for p in t.provisioners:
        errors += _max_retries(p, max_retries_raw.get(p.index, ""), f"provisioner {p.index + 1}", ctx)
    if t.error_cleanup_provisioner is not None:
        errors += _max_retries(t.error_cleanup_provisioner, max_retries_raw.get(-1, ""),
                               "On Error Cleanup Provisioner error", ctx)

    missing: set[str] = set()

    def trial(value: Any, build: BuilderSpec, where: str) -> None:
        c = t.context(build_name=build.name, build_type=build.type)
        errs: list[str] = []
        t._render(value, c, where, "", errs)
        errors.extend(errs)
        missing.update(c.missing_user_variables)

    for b in t.builders:
        trial(b.config, b, f"builder '{b.name}'")
    for p in t.provisioners:
        targets = [b for b in t.builders if p.applies_to(b.name)]
        for b in targets[:1]:
            trial(p.config, b, f"provisioner {p.index + 1} ({p.type})")
        for name, cfg in p.override.items():
            trial(cfg, t.builder(name), f"provisioner {p.index + 1} ({p.type}) override '{name}'")
    if t.error_cleanup_provisioner is not None and t.builders:
        trial(t.error_cleanup_provisioner.config, t.builders[0], "error-cleanup-provisioner")
    for chain in t.post_processors:
        for pp in chain:
            targets = [b for b in t.builders if pp.applies_to(b.name)]
            for b in targets[:1]:
                i, j = pp.index
                trial(pp.config, b, f"post-processor {i + 1}.{j + 1} ({pp.type})")
    for name in sorted(missing):
        t.warnings.append(f"user variable '{name}' is used but not defined in 'variables'; Packer renders it as an "
                          f"empty string")
    return errors


def _max_retries(p: ProvisionerSpec, raw: str, label: str, ctx: RenderContext) -> list[str]:
    if not raw:
        return []
    try:
        rendered = render_string(raw, ctx)
    except GoTemplateError as e:
        return [f"{label}: failed to interpolate `max_retries`: {e}"]
    if re.fullmatch(r"[+-]?[0-9]+", rendered):
        p.max_retries = int(rendered)
    else:
        return [f'{label}: `max_retries` must be a valid integer: strconv.Atoi: parsing "{rendered}": '
                "invalid syntax"]
    return []
