"""A Concourse v8 pipeline as data: YAML loading the way fly reads it, ``((vars))``, and the step tree.

Parsing follows ``atc/steps.go``: a step's keys are matched against :data:`STEP_PRECEDENCE`; modifiers (hooks,
``across``, ``attempts``, ``timeout``) wrap whatever comes after them, the first core key (``task``, ``put``, ``get``,
...) ends the chain and every key left over is an unknown field (reported by the validator, not here). Errors that
stop fly before validation (bad YAML, a step of no type, a value of the wrong type) raise :class:`DecodeError` with
fly's wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from stemforge_base.values import GO_JSON, type_name

#: Step keys in the order atc parses them; the first eight wrap the step that follows.
MODIFIERS = ("ensure", "on_error", "on_abort", "on_failure", "on_success", "across", "attempts", "timeout")
CORE_STEPS = ("task", "put", "get", "set_pipeline", "load_var", "try", "do", "in_parallel")
STEP_PRECEDENCE = MODIFIERS + CORE_STEPS
HOOKS = ("ensure", "on_error", "on_abort", "on_failure", "on_success")

#: Fields each step type consumes (json tags of the atc structs).
STEP_FIELDS: dict[str, frozenset[str]] = {
    "get": frozenset({"get", "resource", "version", "params", "passed", "trigger", "tags"}),
    "put": frozenset({"put", "resource", "params", "inputs", "tags", "get_params", "no_get"}),
    "task": frozenset(
        {
            "task",
            "privileged",
            "file",
            "config",
            "params",
            "vars",
            "tags",
            "input_mapping",
            "output_mapping",
            "image",
            "container_limits",
            "hermetic",
        }
    ),
    "set_pipeline": frozenset({"set_pipeline", "file", "team", "vars", "var_files", "instance_vars"}),
    "load_var": frozenset({"load_var", "file", "format", "reveal"}),
    "try": frozenset({"try"}),
    "do": frozenset({"do"}),
    "in_parallel": frozenset({"in_parallel"}),
    "across": frozenset({"across", "fail_fast"}),
}

TOP_LEVEL_FIELDS = frozenset({"jobs", "resources", "resource_types", "groups", "var_sources", "display"})
JOB_FIELDS = frozenset(
    {
        "name",
        "old_name",
        "serial",
        "serial_groups",
        "max_in_flight",
        "build_log_retention",
        "build_logs_to_retain",
        "public",
        "disable_manual_trigger",
        "interruptible",
        "plan",
        "on_success",
        "on_failure",
        "on_abort",
        "on_error",
        "ensure",
    }
)
RESOURCE_FIELDS = frozenset(
    {
        "name",
        "old_name",
        "type",
        "source",
        "check_every",
        "check_timeout",
        "tags",
        "public",
        "version",
        "icon",
        "webhook_token",
        "expose_build_created_by",
    }
)
RESOURCE_TYPE_FIELDS = frozenset({"name", "type", "source", "defaults", "privileged", "check_every", "tags", "params"})
GROUP_FIELDS = frozenset({"name", "jobs", "resources"})
VAR_SOURCE_FIELDS = frozenset({"name", "type", "config"})
DISPLAY_FIELDS = frozenset({"background_image", "background_filter"})
BUILD_LOG_RETENTION_FIELDS = frozenset({"builds", "days", "minimum_succeeded_builds"})
TASK_CONFIG_FIELDS = frozenset(
    {"platform", "image_resource", "rootfs_uri", "container_limits", "params", "run", "inputs", "outputs", "caches"}
)
TASK_INPUT_FIELDS = frozenset({"name", "path", "optional"})
TASK_OUTPUT_FIELDS = frozenset({"name", "path"})
TASK_RUN_FIELDS = frozenset({"path", "args", "dir", "user"})
ACROSS_VAR_FIELDS = frozenset({"var", "values", "max_in_flight"})


class DecodeError(Exception):
    """The document cannot be turned into a pipeline config (fly stops before validating)."""


# -- YAML --------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys (yaml.v2 strict mode reports them)."""

    duplicates: list[tuple[int, str]]


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged = len(node.value) - own  # merge-key (<<) pairs come first; own keys may override them
    result: dict[Any, Any] = {}
    seen: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if index >= merged:
            if key in seen:
                loader.duplicates.append((key_node.start_mark.line + 1, str(key)))
            seen.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, *, strict: bool, what: str = "yaml") -> Any:
    """Parse YAML; with ``strict`` a duplicate key is a DecodeError in yaml.v2's words (``line N: key "k" already set
    in map``), otherwise the later value wins as in fly's non-strict mode."""
    loader = _Loader(text)
    loader.duplicates = []
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise DecodeError(f"error converting YAML to JSON: yaml: {line}{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise DecodeError(f"error converting YAML to JSON: yaml: {exc}") from None
    except TypeError:  # a mapping or sequence used as a key
        raise DecodeError("error converting YAML to JSON: yaml: invalid map key (a key must be a scalar)") from None
    finally:
        loader.dispose()
    if strict and loader.duplicates:
        lines = "\n".join(f'  line {line}: key "{key}" already set in map' for line, key in loader.duplicates)
        raise DecodeError(
            f"error parsing {what} before applying templates: error converting YAML to JSON: yaml: unmarshal "
            f"errors:\n{lines}"
        )
    return document


# -- ((vars)) ----------------------------------------------------------------------------------------------------------

VAR_PATTERN = re.compile(r"\(\(\s*([-/.\w:\"' ]+?)\s*\)\)")


def var_names(value: Any) -> Iterator[str]:
    """Every ``((var))`` reference in a document, in document order (duplicates included)."""
    if isinstance(value, str):
        for match in VAR_PATTERN.finditer(value):
            yield match.group(1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from var_names(key)
            yield from var_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from var_names(item)


class VarLookup:
    """Resolves ``((name))``, ``((name.field))`` and ``((source:name))`` against static values."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values

    def get(self, reference: str) -> tuple[bool, Any]:
        path = reference.split(":", 1)[1] if ":" in reference and not reference.startswith(".:") else reference
        if path.startswith(".:"):
            path = path[2:]
        parts = [part.strip("\"'") for part in _split_path(path)]
        if not parts or parts[0] not in self.values:
            return False, None
        value = self.values[parts[0]]
        for part in parts[1:]:
            if not isinstance(value, Mapping) or part not in value:
                return False, None
            value = value[part]
        return True, value


def _split_path(path: str) -> list[str]:
    parts: list[str] = []
    current = ""
    quote = ""
    for char in path:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current += char
        elif char == ".":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def interpolate(
    value: Any, lookup: VarLookup, *, missing: list[str] | None = None, only: Callable[[str], bool] | None = None
) -> Any:
    """A copy of ``value`` with every resolvable ``((var))`` replaced. A string that is exactly one reference takes
    the variable's value (any type); inside a longer string the value is written as text. Unresolved references are
    kept as they are and, if ``missing`` is given, appended to it. ``only`` limits which references are touched."""
    if isinstance(value, str):
        whole = VAR_PATTERN.fullmatch(value.strip())
        if whole is not None and (only is None or only(whole.group(1))):
            found, resolved = lookup.get(whole.group(1))
            if found:
                return resolved
            if missing is not None:
                missing.append(whole.group(1))
            return value

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if only is not None and not only(name):
                return match.group(0)
            found, resolved = lookup.get(name)
            if not found:
                if missing is not None:
                    missing.append(name)
                return match.group(0)
            if isinstance(resolved, bool):
                return "true" if resolved else "false"
            if isinstance(resolved, str | int | float):
                return str(resolved)
            raise DecodeError(f"cannot interpolate non-primitive value (type {type(resolved).__name__}) of '{name}'")

        return VAR_PATTERN.sub(replace, value)
    if isinstance(value, Mapping):
        return {
            interpolate(k, lookup, missing=missing, only=only): interpolate(v, lookup, missing=missing, only=only)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(item, lookup, missing=missing, only=only) for item in value]
    return value


def is_local(reference: str) -> bool:
    """Whether a reference names a build-local var (``((.:name))``, set by ``load_var`` or ``across``)."""
    return reference.startswith(".:")


# -- steps -------------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One node of a plan. ``kind`` is a modifier (wrapping ``inner``) or a core step type. Core steps keep their
    own fields in ``config``; ``children`` holds ``do``/``in_parallel`` sub-steps and the ``try`` step; ``hook`` the
    step a hook modifier runs; ``unknown`` the keys no step type consumed; ``raw`` the mapping as written (for
    ``across``, the mapping without the across keys, re-parsed per combination)."""

    kind: str
    raw: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    inner: Step | None = None
    hook: Step | None = None
    children: list[Step] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    limit: int = 0
    fail_fast: bool = False

    @property
    def name(self) -> str:
        value = self.config.get(self.kind)
        return value if isinstance(value, str) else ""

    @property
    def resource(self) -> str:
        """For get/put: the resource (``resource:`` or the step name)."""
        resource = self.config.get("resource")
        return resource if isinstance(resource, str) and resource else self.name

    def core(self) -> Step:
        """The core step under any modifiers."""
        step = self
        while step.inner is not None:
            step = step.inner
        return step

    def walk(self) -> Iterator[Step]:
        """This step and every step below it (hooks, children, wrapped steps), depth first."""
        yield self
        if self.inner is not None:
            yield from self.inner.walk()
        if self.hook is not None:
            yield from self.hook.walk()
        for child in self.children:
            yield from child.walk()


def _malformed(kind: str, detail: str) -> DecodeError:
    return DecodeError(f"error unmarshaling JSON: while decoding JSON: malformed {kind} step: {detail}")


def _expect(kind: str, key: str, value: Any, want: type | tuple[type, ...], go_type: str) -> None:
    if value is None:
        return
    ok = False if isinstance(value, bool) and want in (int, (int,)) else isinstance(value, want)
    if not ok:
        raise _malformed(
            kind, f"json: cannot unmarshal {type_name(value, GO_JSON)} into Go struct field .{key} of type {go_type}"
        )


def parse_step(raw: Any) -> Step:
    """Parse one step mapping (see the module docstring); raises DecodeError."""
    if not isinstance(raw, dict):
        raise DecodeError(
            f"error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {type_name(raw, GO_JSON)} "
            "into Go value of type map[string]*json.RawMessage"
        )
    remaining = dict(raw)
    root: Step | None = None
    outer: Step | None = None
    for key in STEP_PRECEDENCE:
        if key not in remaining:
            continue
        step = _parse_one(key, remaining)
        if root is None:
            root = step
        if outer is not None:
            outer.inner = step
        for consumed in STEP_FIELDS.get(key, frozenset({key})):
            remaining.pop(consumed, None)
        if key in MODIFIERS:
            outer = step
            if key == "across":
                step.raw = {k: v for k, v in remaining.items()}
            continue
        step.unknown = sorted(str(k) for k in remaining)
        return root
    if root is None:
        raise DecodeError("error unmarshaling JSON: while decoding JSON: no step configured")
    raise DecodeError(
        "error unmarshaling JSON: while decoding JSON: no core step type declared (e.g. get, put, task, etc.)"
    )


def _parse_one(key: str, raw: dict[str, Any]) -> Step:
    value = raw[key]
    step = Step(kind=key, raw=raw)
    if key in HOOKS:
        step.hook = parse_step(value)
    elif key == "attempts":
        _expect(key, "attempts", value, int, "int")
        step.value = value
    elif key == "timeout":
        _expect(key, "timeout", value, str, "string")
        step.value = value
    elif key == "across":
        _expect(key, "across", value, list, "[]atc.AcrossVarConfig")
        for item in value or []:
            if not isinstance(item, dict):
                raise _malformed(
                    key, f"json: cannot unmarshal {type_name(item, GO_JSON)} into Go value of type atc.AcrossVarConfig"
                )
            for extra in item:
                if extra not in ACROSS_VAR_FIELDS:
                    raise _malformed(key, f'json: unknown field "{extra}"')
            limit = item.get("max_in_flight")
            if isinstance(limit, str) and limit != "all":
                raise _malformed(key, f'invalid max_in_flight "{limit}"')
        step.value = value or []
        step.fail_fast = bool(raw.get("fail_fast", False))
    elif key in ("get", "put", "task", "set_pipeline", "load_var"):
        step.config = {k: raw[k] for k in STEP_FIELDS[key] if k in raw}
        _expect(key, key, value, str, "string")
        if key == "get":
            _expect(key, "passed", raw.get("passed"), list, "[]string")
            for job in raw.get("passed") or []:
                _expect(key, "passed", job, str, "string")
        if key == "task":
            _expect(key, "config", raw.get("config"), dict, "atc.TaskConfig")
            _expect(key, "file", raw.get("file"), str, "string")
            for mapping in ("input_mapping", "output_mapping", "params", "vars"):
                _expect(key, mapping, raw.get(mapping), dict, "map[string]string")
    elif key == "try":
        step.children = [parse_step(value)]
    elif key == "do":
        _expect(key, "do", value, list, "[]atc.Step")
        step.children = [parse_step(item) for item in value or []]
    elif key == "in_parallel":
        if isinstance(value, list):
            step.children = [parse_step(item) for item in value]
        elif isinstance(value, dict):
            for extra in value:
                if extra not in ("steps", "limit", "fail_fast"):
                    raise _malformed(key, f'failed to unmarshal parallel config: json: unknown field "{extra}"')
            _expect(key, "limit", value.get("limit"), int, "int")
            step.children = [parse_step(item) for item in value.get("steps") or []]
            step.limit = int(value.get("limit") or 0)
            step.fail_fast = bool(value.get("fail_fast", False))
        else:
            raise _malformed(key, f"wrong type for parallel config: {value}")
    return step


def job_plan(job: Mapping[str, Any]) -> Step:
    """The job's whole plan as atc builds it: ``do`` over the plan, wrapped by the job's hooks (on_abort, on_error,
    ensure, on_failure, on_success, innermost first)."""
    plan = job.get("plan") or []
    if not isinstance(plan, list):
        raise DecodeError(
            f"error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {type_name(plan, GO_JSON)} "
            "into Go struct field JobConfig.plan of type []atc.Step"
        )
    step = Step(kind="do", raw={"do": plan}, children=[parse_step(item) for item in plan])
    for hook in ("on_abort", "on_error", "ensure", "on_failure", "on_success"):
        if job.get(hook) is not None:
            step = Step(kind=hook, raw={hook: job[hook]}, inner=step, hook=parse_step(job[hook]))
    return step
