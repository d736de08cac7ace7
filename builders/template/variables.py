"""User variables: command-line values (``-var``, ``-var-file``) and Packer's recursive resolution of variables
that reference variables (``packer/core.go`` ``renderVarsRecursively``)."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from builders.template.functions import ERR_VARIABLE_NOT_SET, RenderContext, render_keep_dot_fields
from builders.template.gotemplate.errors import GoTemplateError
from builders.template.loader import DocumentError, format_for, parse_json_bytes, parse_yaml_text
from builders.template.model import TemplateError

_USER_CALL = re.compile(r"{{\s*user\s*`.*`\s*}}")
_MAX_PASSES = 100


def parse_var_arg(raw: str) -> tuple[str, str]:
    """Split a ``-var`` argument ``key=value`` (at the first ``=``). Raises TemplateError as Packer's flag does."""
    key, sep, value = raw.partition("=")
    if not sep:
        raise TemplateError(f"No '=' value in arg: {raw}")
    return key, value


def load_var_file(path: Path) -> dict[str, str]:
    """Read a ``-var-file``: a JSON object (YAML for ``.yaml``/``.yml``) whose values are strings.

    Packer decodes the file with Go's ``encoding/json`` into a ``map[string]string`` (packer ``command/
    flag-kv/flag_json.go``): a ``null`` value leaves the new map element at its zero value, so the variable is set to
    the empty string; any other non-string value is an unmarshal error."""
    prefix = f"Error reading variables in '{path}': "
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TemplateError(f"{prefix}open {path}: {e.strerror or e}") from None
    try:
        if format_for(path) == "yaml":
            value = parse_yaml_text(data.decode("utf-8", "replace"))
        else:
            value = parse_json_bytes(data, check_duplicates=False)
    except DocumentError as e:
        raise TemplateError(f"{prefix}{e}") from None
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")
        raise TemplateError(f"{prefix}json: cannot unmarshal {kind} into Go value of type map[string]string")
    errors = []
    value = {k: ("" if v is None else v) for k, v in value.items()}
    for k, v in value.items():
        if not isinstance(v, str):
            kind = {list: "array", dict: "object", bool: "bool", type(None): "null"}.get(type(v), "number")
            errors.append(f"{prefix}json: cannot unmarshal {kind} into Go struct field of type string "
                          f"(variable '{k}')")
    if errors:
        raise TemplateError(errors)
    return dict(value)


def merge_cli_variables(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Merge command-line variable sources in command-line order (later wins), as Packer does: each item is
    ``("var", "key=value")`` or ``("var-file", "path")``."""
    merged: dict[str, str] = {}
    errors: list[str] = []
    for kind, arg in items:
        try:
            if kind == "var":
                k, v = parse_var_arg(arg)
                merged[k] = v
            elif kind == "var-file":
                merged.update(load_var_file(Path(arg)))
            else:
                raise TemplateError(f"unknown variable source '{kind}'")
        except TemplateError as e:
            errors.extend(e.errors)
    if errors:
        raise TemplateError(errors)
    return merged


def resolve_variables(declared: Mapping[str, str | None], given: Mapping[str, str], *, template_path: str,
                      init_time: _dt.datetime, sensitive: Collection[str] = ()) -> dict[str, str]:
    """Resolve every variable: required ones must be given, then defaults and
    given values are rendered (``env`` and ``user`` allowed; ``{{ .Field }}`` actions kept) until each variable
    that references another is settled. Raises TemplateError listing every problem.

    ``sensitive`` names the sensitive variables: a variable whose value is rendered from one of them comes back as
    a ``Tainted`` string (``builders.template.sensitive``), so it is masked and taints what is rendered from it.

    Values given for variables the template does not declare are kept (``{{user `x`}}`` sees them) and never an
    error: Packer's ``packer/core.go`` only checks that required variables are set, and copies every command-line
    and var-file value into the variables it renders (the HCL2 front end is where undeclared values warn).
    """
    errors = [f"required variable not set: {n}" for n in sorted(declared) if declared[n] is None and n not in given]
    if errors:
        raise TemplateError(errors)

    values: dict[str, str] = {k: (v or "") for k, v in declared.items()}
    values.update(given)
    resolved: dict[str, str] = dict(given)
    pending = sorted(values.items())
    changed = False
    should_retry = False
    failed = ""
    previous: dict[str, str] | None = None
    for _ in range(_MAX_PASSES):
        should_retry = changed = False
        failed = ""
        done: list[str] = []
        ctx = RenderContext(user_variables=resolved, enable_env=True, template_path=template_path,
                            init_time=init_time, sensitive_variables=frozenset(sensitive))
        for key, raw in pending:
            try:
                rendered = render_keep_dot_fields(raw, ctx)
            except GoTemplateError as e:
                if ERR_VARIABLE_NOT_SET in str(e) and "executing" in str(e):
                    should_retry = True
                    failed = f'"{key}": "{raw}"; error: {e}'
                    continue
                raise TemplateError(f"error interpolating default value for '{key}': {e}") from None
            changed = True
            resolved[key] = rendered
            if _USER_CALL.search(raw):
                should_retry = True
            else:
                done.append(key)
        if not should_retry:
            break
        pending = [(k, v) for k, v in pending if k not in done]
        if not failed and previous == resolved:
            break  # settled: re-rendering changes nothing more
        previous = dict(resolved)
        if not changed:
            break
    if (not changed and should_retry) or (failed and any(k not in resolved for k in values)):
        raise TemplateError(f"Failed to interpolate {failed}: Please make sure that the variable you're referencing "
                            "has been defined; Packer treats all variables used to interpolate other user variables "
                            "as required.")
    return {k: resolved.get(k, "") for k in values}
