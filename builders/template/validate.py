"""Structure of a decoded template: Packer's ``rawTemplate.Template()`` and ``Template.Validate()`` rules with
their error words, collected (not stopping at the first) so every problem is reported together."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from builders.template.gotemplate.gostd import go_sprint
from builders.template.model import BuilderSpec, PostProcessorSpec, ProvisionerSpec
from stemforge_base.durations import parse_duration
from stemforge_base.values import GO_DECODED_TYPE, GO_KIND, type_name

ROOT_KEYS = ("description", "min_packer_version", "variables", "sensitive-variables", "builders", "provisioners",
             "post-processors", "error-cleanup-provisioner", "push")


def go_kind(v: Any) -> str:
    """The ``reflect.Kind`` name mapstructure prints for a decoded JSON value."""
    return type_name(v, GO_KIND)


def go_type(v: Any) -> str:
    """The Go type name mapstructure prints for a decoded JSON value."""
    return type_name(v, GO_DECODED_TYPE)


def _unconvertible(name: str, expected: str, v: Any) -> str:
    return f"'{name}' expected type '{expected}', got unconvertible type '{go_type(v)}', value: '{go_sprint(v)}'"


def _weak_string(name: str, v: Any, errors: list[str]) -> str | None:
    """mapstructure's weakly-typed decode into a string."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    errors.append(_unconvertible(name, "string", v))
    return None


def _weak_string_list(name: str, v: Any, errors: list[str], weak: bool = True) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list):
        if weak and not isinstance(v, dict):
            s = _weak_string(f"{name}[0]", v, errors)
            return [s] if s is not None else []
        errors.append(f"'{name}': source data must be an array or slice, got {go_kind(v)}")
        return []
    out: list[str] = []
    for i, item in enumerate(v):
        if weak:
            s = _weak_string(f"{name}[{i}]", item, errors)
        elif isinstance(item, str):
            s = item
        else:
            errors.append(_unconvertible(f"{name}[{i}]", "string", item))
            s = None
        if s is not None:
            out.append(s)
    return out


def _duration(name: str, v: Any, errors: list[str], warnings: list[str], where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return parse_duration(v, mode="go")
        except ValueError as e:
            errors.append(f"error decoding '{name}': {e}")
            return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        errors.append(_unconvertible(name, "time.Duration", v))
        return None
    warnings.append(f"{where}: '{name}' is the number {go_sprint(v)}, which Packer reads as nanoseconds; "
                    f"write a duration such as \"{go_sprint(v)}s\"")
    return float(v) * 1e-9


def drop_comments(config: dict[str, Any]) -> dict[str, Any]:
    """The config without ``_``-prefixed (comment) keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


@dataclass
class Structure:
    """What the structural pass produced."""

    description: str | None = None
    min_packer_version: str | None = None
    variables: dict[str, str | None] = field(default_factory=dict)
    sensitive_variables: list[str] = field(default_factory=list)
    builders: list[BuilderSpec] = field(default_factory=list)
    provisioners: list[ProvisionerSpec] = field(default_factory=list)
    max_retries_raw: dict[int, str] = field(default_factory=dict)
    post_processors: list[list[PostProcessorSpec]] = field(default_factory=list)
    error_cleanup_provisioner: ProvisionerSpec | None = None
    comments: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: Packer's ``Template.Validate()`` errors (skipped by ``validate -syntax-only``).
    validate_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _provisioner(raw: Any, index: int, s: Structure, prefix: str) -> tuple[ProvisionerSpec | None, str]:
    """Packer's ``decodeProvisioner`` (weakly typed). Returns the spec and the raw ``max_retries`` string."""
    if not isinstance(raw, dict):
        s.errors.append(f"{prefix}Error decoding provisioner: '' expected a map, got '{go_kind(raw)}'")
        return None, ""
    errs: list[str] = []
    ptype = _weak_string("type", raw.get("type"), errs)
    only = _weak_string_list("only", raw.get("only"), errs)
    except_ = _weak_string_list("except", raw.get("except"), errs)
    override_raw = raw.get("override")
    override: dict[str, dict[str, Any]] = {}
    if override_raw is not None:
        if not isinstance(override_raw, dict):
            errs.append(f"'override' expected a map, got '{go_kind(override_raw)}'")
        else:
            for k, v in override_raw.items():
                if not isinstance(v, dict):
                    errs.append(f"'override[{k}]' expected a map, got '{go_kind(v)}'")
                else:
                    override[k] = drop_comments(v)
    where = prefix.rstrip(": ")
    pause = _duration("pause_before", raw.get("pause_before"), errs, s.warnings, where)
    timeout = _duration("timeout", raw.get("timeout"), errs, s.warnings, where)
    max_retries = _weak_string("max_retries", raw.get("max_retries"), errs) or ""
    if errs:
        s.errors.extend(f"{prefix}Error decoding provisioner: {e}" for e in errs)
        return None, ""
    if not ptype:
        s.errors.append(f"{prefix}Provisioner missing 'type'")
        return None, ""
    config = {k: v for k, v in raw.items()
              if k not in ("type", "only", "except", "override", "pause_before", "max_retries", "timeout")}
    spec = ProvisionerSpec(type=ptype, config=drop_comments(config), only=only, except_=except_, override=override,
                           pause_before=pause or 0.0, max_retries=0, timeout=timeout or None, index=index)
    return spec, max_retries


def _post_processor_configs(i: int, raw: Any, s: Structure) -> list[dict[str, Any]] | None:
    """Packer's ``parsePostProcessor``: a string, an object, or a sequence of those."""
    if isinstance(raw, str):
        return [{"type": raw}]
    if isinstance(raw, dict):
        return [raw]
    if isinstance(raw, list):
        out: list[dict[str, Any]] = []
        ok = True
        for j, inner in enumerate(raw):
            if isinstance(inner, str):
                out.append({"type": inner})
            elif isinstance(inner, dict):
                out.append(inner)
            elif isinstance(inner, list):
                s.errors.append(f"post-processor {i + 1}.{j + 1}: sequence not allowed to be nested in a sequence")
                ok = False
            else:
                s.errors.append(f"post-processor {i + 1}.{j + 1}: unknown format")
                ok = False
        return out if ok else None
    s.errors.append(f"post-processor {i + 1}: bad format")
    return None


def _post_processor(c: dict[str, Any], i: int, j: int, s: Structure) -> PostProcessorSpec | None:
    prefix = f"post-processor {i + 1}.{j + 1}: "
    errs: list[str] = []
    ptype = c.get("type")
    name = c.get("name")
    for key, v in (("type", ptype), ("name", name)):
        if v is not None and not isinstance(v, str):
            errs.append(_unconvertible(key, "string", v))
    keep = c.get("keep_input_artifact")
    if keep is not None and not isinstance(keep, bool):
        errs.append(_unconvertible("keep_input_artifact", "bool", keep))
    only = _weak_string_list("only", c.get("only"), errs, weak=False)
    except_ = _weak_string_list("except", c.get("except"), errs, weak=False)
    if errs:
        s.errors.extend(prefix + e for e in errs)
        return None
    if not ptype:
        s.errors.append(f"{prefix}type is required")
        return None
    config = {k: v for k, v in c.items() if k not in ("type", "name", "keep_input_artifact", "only", "except")}
    return PostProcessorSpec(type=ptype, name=name or ptype, config=drop_comments(config), keep_input_artifact=keep,
                             only=only, except_=except_, index=(i, j))


def parse_structure(raw: Any) -> Structure:
    """Check a decoded template document and build its specs; every problem goes to ``errors``."""
    s = Structure()
    if not isinstance(raw, dict):
        s.errors.append(f"a template must be an object at the top level, got '{go_kind(raw)}'")
        return s
    for section in _SECTIONS:
        section(raw, s)
    _validate(s)
    return s


def _root_keys(raw: dict[str, Any], s: Structure) -> None:
    for key in sorted(k for k in raw if k not in ROOT_KEYS):
        if key.startswith("_") and isinstance(raw[key], str):
            s.comments[key] = raw[key]
        elif key.startswith("_"):
            s.errors.append(f'Failed to cast root level comment value in comment "{key}" to string.')
        else:
            s.errors.append(f"Unknown root level key in template: '{key}'")
    if "push" in raw:
        s.warnings.append("'push' (Atlas push configuration) is obsolete and ignored")
    for key in ("description", "min_packer_version"):
        v = raw.get(key)
        if v is not None and not isinstance(v, str):
            s.errors.append(_unconvertible(key, "string", v))
        elif v is not None:
            setattr(s, key, v)


def _variables(raw: dict[str, Any], s: Structure) -> None:
    variables = raw.get("variables")
    if variables is not None and not isinstance(variables, dict):
        s.errors.append(f"'variables' expected a map, got '{go_kind(variables)}'")
    elif variables:
        for k, v in variables.items():
            if v is None or isinstance(v, str):
                s.variables[k] = v
            else:
                s.errors.append(f"variable {k}: {_unconvertible('', 'string', v)}")
    sensitive = raw.get("sensitive-variables")
    if sensitive is not None:
        errs: list[str] = []
        s.sensitive_variables = _weak_string_list("sensitive-variables", sensitive, errs, weak=False)
        s.errors.extend(errs)
        for name in s.sensitive_variables:
            if name not in s.variables:
                s.warnings.append(f"sensitive-variables: '{name}' is not a variable of this template")


def _section_list(raw: dict[str, Any], key: str, s: Structure) -> list[Any]:
    """The array at ``key`` (mapstructure's words when it is not one)."""
    value = raw.get(key)
    if value is not None and not isinstance(value, list):
        s.errors.append(f"'{key}': source data must be an array or slice, got {go_kind(value)}")
        return []
    return value or []


def _builders(raw: dict[str, Any], s: Structure) -> None:
    names: set[str] = set()
    for i, b in enumerate(_section_list(raw, "builders", s)):
        if not isinstance(b, dict):
            s.errors.append(f"builder {i + 1}: '' expected a map, got '{go_kind(b)}'")
            continue
        errs: list[str] = []
        btype = _weak_string("type", b.get("type"), errs)
        bname = _weak_string("name", b.get("name"), errs)
        if errs:
            s.errors.extend(f"builder {i + 1}: {e}" for e in errs)
            continue
        if not btype:
            s.errors.append(f"builder {i + 1}: missing 'type'")
            continue
        name = bname or btype
        if name in names:
            s.errors.append(f"builder {i + 1}: builder with name '{name}' already exists")
            continue
        names.add(name)
        config = drop_comments({k: v for k, v in b.items() if k not in ("name", "type")})
        s.builders.append(BuilderSpec(name=name, type=btype, config=config, index=i, raw_name=name))


def _post_processors(raw: dict[str, Any], s: Structure) -> None:
    for i, v in enumerate(_section_list(raw, "post-processors", s)):
        configs = _post_processor_configs(i, v, s)
        if configs is None:
            continue
        chain = [pp for j, c in enumerate(configs) if (pp := _post_processor(c, i, j, s)) is not None]
        s.post_processors.append(chain)


def _provisioners(raw: dict[str, Any], s: Structure) -> None:
    for i, v in enumerate(_section_list(raw, "provisioners", s)):
        spec, retries = _provisioner(v, i, s, f"provisioner {i + 1}: ")
        if spec is not None:
            s.provisioners.append(spec)
            if retries:
                s.max_retries_raw[i] = retries
    cleanup = raw.get("error-cleanup-provisioner")
    if cleanup is not None:
        before = len(s.errors)
        spec, retries = _provisioner(cleanup, 0, s, "")
        for k in range(before, len(s.errors)):
            s.errors[k] = f"On Error Cleanup Provisioner error: {s.errors[k]}"
        if spec is not None:
            s.error_cleanup_provisioner = spec
            if retries:
                s.max_retries_raw[-1] = retries


#: The document's sections in the order Packer's ``rawTemplate.Template()`` decodes them.
_SECTIONS: tuple[Callable[[dict[str, Any], Structure], None], ...] = (
    _root_keys, _variables, _builders, _post_processors, _provisioners)


def _validate(s: Structure) -> None:
    """Packer's ``Template.Validate()`` over the decoded specs."""
    names = {b.name for b in s.builders}
    if not s.builders and not any(e.startswith("builder ") for e in s.errors):
        s.validate_errors.append("at least one builder must be defined")
    for p in s.provisioners:
        _validate_only_except(f"provisioner {p.index + 1}: ", p.only, p.except_, names, s.validate_errors)
        for name in p.override:
            if name not in names:
                s.validate_errors.append(f"provisioner {p.index + 1}: override '{name}' doesn't exist")
    for chain in s.post_processors:
        for pp in chain:
            i, j = pp.index
            _validate_only_except(f"post-processor {i + 1}.{j + 1}: ", pp.only, pp.except_, names, s.validate_errors)


def _validate_only_except(prefix: str, only: list[str], except_: list[str], names: set[str],
                          errors: list[str]) -> None:
    """Packer's ``OnlyExcept.Validate``."""
    if only and except_:
        errors.append(f"{prefix}only one of 'only' or 'except' may be specified")
        return
    errors.extend(f"{prefix}'only' specified builder '{n}' not found" for n in only if n not in names)
    errors.extend(f"{prefix}'except' specified builder '{n}' not found" for n in except_ if n not in names)


_VERSION = re.compile(r"^v?([0-9]+(?:\.[0-9]+)*)(?:-?([0-9A-Za-z\-~]+(?:\.[0-9A-Za-z\-~]+)*))?"
                      r"(?:\+([0-9A-Za-z\-~]+(?:\.[0-9A-Za-z\-~]+)*))?$")


@dataclass(frozen=True)
class GoVersion:
    """hashicorp/go-version's Version (enough to compare and print)."""

    segments: tuple[int, ...]
    pre: str
    meta: str

    @classmethod
    def parse(cls, text: str) -> GoVersion:
        m = _VERSION.match(text.strip())
        if not m:
            raise ValueError(f"Malformed version: {text}")
        segs = [int(x) for x in m.group(1).split(".")]
        while len(segs) < 3:
            segs.append(0)
        return cls(tuple(segs), m.group(2) or "", m.group(3) or "")

    def key(self) -> tuple[Any, ...]:
        pre_key: tuple[Any, ...] = (1,) if not self.pre else (0, tuple(
            (0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre.split(".")))
        return (self.segments, pre_key)

    def __str__(self) -> str:
        out = ".".join(str(x) for x in self.segments)
        if self.pre:
            out += "-" + self.pre
        if self.meta:
            out += "+" + self.meta
        return out


def check_min_version(min_version: str, actual: str) -> str | None:
    """Packer's min_packer_version check; returns the error or None."""
    try:
        wanted = GoVersion.parse(min_version)
    except ValueError as e:
        return f"min_version is invalid: {e}"
    have = GoVersion.parse(actual)
    if have.key() < wanted.key():
        return f"This template requires Packer version {wanted} or higher; using {have}"
    return None
