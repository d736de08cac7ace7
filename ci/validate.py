"""``fly validate-pipeline`` for Concourse v8 pipelines, with fly's messages.

Order and wording follow fly (``validatepipelinehelpers``, ``templatehelpers``), ``atc/configvalidate`` and
``atc/step_validator.go``: with ``strict`` duplicate keys and unknown fields stop everything before validation
(a decode error); then errors are collected per section (groups, resources, resource types, variable sources,
jobs, the ``passed`` cycle check) and identifier problems are warnings, which ``strict`` turns into a failure.
``((vars))`` given by the caller are substituted first; the rest stay as written (fly's ``allowEmpty``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci.model import (
    BUILD_LOG_RETENTION_FIELDS,
    DISPLAY_FIELDS,
    GROUP_FIELDS,
    JOB_FIELDS,
    RESOURCE_FIELDS,
    RESOURCE_TYPE_FIELDS,
    TASK_CONFIG_FIELDS,
    TASK_INPUT_FIELDS,
    TASK_OUTPUT_FIELDS,
    TASK_RUN_FIELDS,
    TOP_LEVEL_FIELDS,
    VAR_PATTERN,
    VAR_SOURCE_FIELDS,
    DecodeError,
    Step,
    VarLookup,
    interpolate,
    job_plan,
    load_yaml,
)
from ci.sandbox import bad_task_path
from stemforge_base.durations import parse_duration
from stemforge_base.values import GO_JSON, type_name

_JUST_NUMBERS = re.compile(r"^\d+$")
CREDENTIAL_MANAGERS = ("vault", "dummy", "ssm")


@dataclass
class Result:
    """What validation found: ``warnings`` and ``errors`` (each an atc message block), or a ``decode_error``."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    decode_error: str | None = None

    def ok(self, strict: bool) -> bool:
        return self.decode_error is None and not self.errors and not (strict and self.warnings)

    def render(self, strict: bool) -> tuple[str, int]:
        """fly's stderr text and exit status (``looks good`` goes to stdout; returned as the text when ok)."""
        if self.decode_error is not None:
            return f"error: {self.decode_error}\n", 1
        out = ""
        if self.warnings:
            out += "\nDEPRECATION WARNING:\n" + "".join(f"  - {w}\n" for w in self.warnings) + "\n"
        if self.errors:
            out += "\nWARNING:\nError loading existing config:\n" + "".join(f"  - {e}\n" for e in self.errors) + "\n"
        if self.errors or (strict and self.warnings):
            return out + "configuration invalid\n", 1
        return out + "looks good\n", 0


# -- identifiers -------------------------------------------------------------------------------------------------------


def _is_lower_start(char: str) -> bool:
    return char.isdigit() or (char.isalpha() and not char.isupper())


def _valid(identifier: str) -> bool:
    return _is_lower_start(identifier[0]) and all(
        (c.isalpha() and not c.isupper()) or c.isdigit() or c in "-_." for c in identifier[1:]
    )


def _allowed(char: str) -> bool:
    return (char.isalpha() and not char.isupper()) or char.isdigit() or char in "-_."


def validate_identifier(identifier: str, context: list[str]) -> tuple[str | None, str | None]:
    """atc.ValidateIdentifier: ``(warning, error)``. With ``((placeholders))`` only the rest of the name is checked."""
    where = "".join(context)
    if identifier == "":
        return None, f"{where}: identifier cannot be an empty string"
    if len(context) >= 2 and context[-2] == ".across" and ("set_pipeline" in context[-1] or "task" in context[-1]):
        return None, None
    invalid = f"{where}: '{identifier}' is not a valid identifier"
    without = VAR_PATTERN.sub("", identifier)
    if without != identifier:
        if identifier.startswith("-") or any(not (c.isalnum() or c in "-_.") for c in without):
            return f"{where}: '{identifier}' contains invalid characters", None
        if _JUST_NUMBERS.match(without):
            return f"{invalid}: cannot be just numbers", None
        if without and not _valid(without) and any(not _allowed(c) for c in without):
            return f"{invalid}: ", None
        return None, None
    if _JUST_NUMBERS.match(identifier):
        return f"{invalid}: cannot be just numbers", None
    if not _valid(identifier):
        if not _is_lower_start(identifier[0]):
            reason = "must start with a lowercase letter or a number"
        else:
            reason = "illegal character '" + next((c for c in identifier[1:] if not _allowed(c)), "") + "'"
        return f"{invalid}: {reason}", None
    return None, None


# -- decoding ----------------------------------------------------------------------------------------------------------


def _unknown(mapping: Mapping[str, Any], known: Iterable[str]) -> None:
    known = set(known)
    for key in mapping:
        if key not in known:
            raise DecodeError(f'error unmarshaling JSON: while decoding JSON: json: unknown field "{key}"')


def _list_of_maps(document: Mapping[str, Any], key: str, go_type: str) -> list[dict[str, Any]]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DecodeError(
            "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
            f"{'array' if isinstance(value, list) else type(value).__name__} into Go struct field Config.{key} of "
            f"type {go_type}"
        )
    return value


#: Job fields with a fixed Go type (atc.JobConfig); a value of another type stops decoding, as in fly.
_JOB_FIELD_TYPES: dict[str, tuple[str, Any]] = {
    "name": ("string", str),
    "old_name": ("string", str),
    "serial": ("bool", bool),
    "serial_groups": ("[]string", list),
    "max_in_flight": ("int", int),
    "public": ("bool", bool),
    "disable_manual_trigger": ("bool", bool),
    "interruptible": ("bool", bool),
    "build_logs_to_retain": ("int", int),
    "build_log_retention": ("atc.BuildLogRetention", dict),
}


def _job_types(job: Mapping[str, Any]) -> None:
    for key, (go_type, python_type) in _JOB_FIELD_TYPES.items():
        value = job.get(key)
        if value is None:
            continue
        ok = isinstance(value, python_type) and not (python_type is int and isinstance(value, bool))
        if ok and key == "serial_groups":
            bad = [group for group in value if not isinstance(group, str)]
            if bad:
                ok, value, go_type = False, bad[0], "string"
        if not ok:
            raise DecodeError(
                "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
                f"{type_name(value, GO_JSON)} into Go struct field JobConfig.{key} of type {go_type}"
            )


def _strict_task_config(config: Any) -> None:
    if not isinstance(config, dict):
        return
    _unknown(config, TASK_CONFIG_FIELDS)
    for item in config.get("inputs") or []:
        if isinstance(item, dict):
            _unknown(item, TASK_INPUT_FIELDS)
    for item in config.get("outputs") or []:
        if isinstance(item, dict):
            _unknown(item, TASK_OUTPUT_FIELDS)
    if isinstance(config.get("run"), dict):
        _unknown(config["run"], TASK_RUN_FIELDS)


@dataclass
class Pipeline:
    """A decoded pipeline: the interpolated document and each job's plan tree."""

    document: dict[str, Any]
    jobs: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    resource_types: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    var_sources: list[dict[str, Any]]
    plans: list[Step]

    def job(self, name: str) -> tuple[dict[str, Any], Step] | None:
        for job, plan in zip(self.jobs, self.plans, strict=True):
            if job.get("name") == name:
                return job, plan
        return None

    def resource(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.resources if r.get("name") == name), None)


def decode(text: str, *, strict: bool, variables: Mapping[str, Any] | None = None) -> Pipeline:
    """Parse and decode a pipeline the way fly does before validating; raises DecodeError."""
    if strict:
        load_yaml(text, strict=True)
    document = load_yaml(text, strict=False)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise DecodeError(
            "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal "
            f"{'array' if isinstance(document, list) else 'string'} into Go value of type atc.Config"
        )
    document = interpolate(document, VarLookup(variables or {}))
    jobs = _list_of_maps(document, "jobs", "atc.JobConfigs")
    resources = _list_of_maps(document, "resources", "atc.ResourceConfigs")
    resource_types = _list_of_maps(document, "resource_types", "atc.ResourceTypes")
    groups = _list_of_maps(document, "groups", "atc.GroupConfigs")
    var_sources = _list_of_maps(document, "var_sources", "atc.VarSourceConfigs")
    if strict:
        _unknown(document, TOP_LEVEL_FIELDS)
        for job in jobs:
            _unknown(job, JOB_FIELDS)
            if isinstance(job.get("build_log_retention"), dict):
                _unknown(job["build_log_retention"], BUILD_LOG_RETENTION_FIELDS)
        for resource in resources:
            _unknown(resource, RESOURCE_FIELDS)
        for resource_type in resource_types:
            _unknown(resource_type, RESOURCE_TYPE_FIELDS)
        for group in groups:
            _unknown(group, GROUP_FIELDS)
        for var_source in var_sources:
            _unknown(var_source, VAR_SOURCE_FIELDS)
        if isinstance(document.get("display"), dict):
            _unknown(document["display"], DISPLAY_FIELDS)
    for job in jobs:
        _job_types(job)
    plans = [job_plan(job) for job in jobs]
    if strict:
        for plan in plans:
            for step in plan.walk():
                if step.kind == "task":
                    _strict_task_config(step.config.get("config"))
    return Pipeline(document, jobs, resources, resource_types, groups, var_sources, plans)


# -- validation --------------------------------------------------------------------------------------------------------


def _format(section: str, messages: list[str]) -> str:
    return f"invalid {section}:\n" + "\n".join(f"\t{line}" for m in messages for line in m.split("\n")) + "\n"


def _name_of(item: Mapping[str, Any]) -> str:
    name = item.get("name")
    return name if isinstance(name, str) else ("" if name is None else str(name))


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _interacts(plan: Step, resource: str) -> bool:
    return any(step.kind in ("get", "put") and step.resource == resource for step in plan.walk())


class _Validator:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.warnings: list[str] = []

    def identifier(self, name: str, context: list[str], errors: list[str]) -> None:
        warning, error = validate_identifier(name, context)
        if warning:
            self.warnings.append(warning)
        if error:
            errors.append(error)

    def named_section(self, section: str, items: list[dict[str, Any]], errors: list[str], *, typed: bool) -> None:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            name = _name_of(item)
            identifier = f"{section}.{name}" if name else f"{section}[{index}]"
            self.identifier(name, [identifier], errors)
            if name in seen:
                errors.append(f"{section}[{seen[name]}] and {section}[{index}] have the same name ('{name}')")
            elif name:
                seen[name] = index
            if not name:
                errors.append(f"{identifier} has no name")
            if typed and not item.get("type"):
                errors.append(f"{identifier} has no type")

    def groups(self) -> list[str]:
        errors: list[str] = []
        grouped = {_name_of(job): False for job in self.p.jobs}
        counts: dict[str, int] = {}
        for index, group in enumerate(self.p.groups):
            name = _name_of(group)
            self.identifier(name, [f"groups.{name}" if name else f"groups[{index}]"], errors)
            counts[name] = counts.get(name, 0) + 1
            for pattern in group.get("jobs") or []:
                matched = [job for job in grouped if _matches(str(pattern), job)]
                for job in matched:
                    grouped[job] = True
                if not matched:
                    errors.append(f"no jobs match '{pattern}' for group '{name}'")
            for resource in group.get("resources") or []:
                if self.p.resource(str(resource)) is None:
                    errors.append(f"group '{name}' has unknown resource '{resource}'")
        for name, count in counts.items():
            if count > 1:
                errors.append(f"group '{name}' appears {count} times. Duplicate names are not allowed.")
        if self.p.groups:
            errors += [f"job '{job}' belongs to no group" for job, done in grouped.items() if not done]
        return errors

    def resources(self) -> list[str]:
        errors: list[str] = []
        self.named_section("resources", self.p.resources, errors, typed=True)
        used = {step.resource for plan in self.p.plans for step in plan.walk() if step.kind in ("get", "put")}
        errors += [f"resource '{_name_of(r)}' is not used" for r in self.p.resources if _name_of(r) not in used]
        return errors

    def resource_types(self) -> list[str]:
        errors: list[str] = []
        self.named_section("resource_types", self.p.resource_types, errors, typed=True)
        return errors

    def var_sources(self) -> list[str]:
        errors: list[str] = []
        seen: dict[str, int] = {}
        for index, source in enumerate(self.p.var_sources):
            name = _name_of(source)
            self.identifier(name, [f"var_sources.{name}" if name else f"var_sources[{index}]"], errors)
            kind = source.get("type")
            if kind not in CREDENTIAL_MANAGERS:
                errors.append(f"unknown credential manager type: {kind}")
                continue
            if name in seen:
                errors.append(f"var_sources[{seen[name]}] and var_sources[{index}] have the same name ('{name}')")
            seen[name] = index
        return errors

    def jobs(self) -> list[str]:
        errors: list[str] = []
        if not self.p.jobs:
            return ["jobs: pipeline must contain at least one job"]
        seen: dict[str, int] = {}
        for index, (job, plan) in enumerate(zip(self.p.jobs, self.p.plans, strict=True)):
            name = _name_of(job)
            identifier = f"jobs.{name}" if name else f"jobs[{index}]"
            self.identifier(name, [identifier], errors)
            if name in seen:
                errors.append(f"jobs[{seen[name]}] and jobs[{index}] have the same name ('{name}')")
            elif name:
                seen[name] = index
            if not name:
                errors.append(f"{identifier} has no name")
            errors += self._retention(job, identifier)
            steps = _StepValidator(self, [identifier, ".plan"])
            steps.visit(plan)
            errors += steps.errors
        return errors

    @staticmethod
    def _retention(job: Mapping[str, Any], identifier: str) -> list[str]:
        errors: list[str] = []
        retention = job.get("build_log_retention")
        to_retain = job.get("build_logs_to_retain") or 0
        if retention is not None and to_retain:
            errors.append(f"{identifier} can't use both build_log_retention and build_logs_to_retain")
        elif isinstance(to_retain, int) and to_retain < 0:
            errors.append(f"{identifier} has negative build_logs_to_retain: {to_retain}")
        if isinstance(retention, dict):
            builds = retention.get("builds") or 0
            days = retention.get("days") or 0
            minimum = retention.get("minimum_succeeded_builds") or 0
            if builds < 0:
                errors.append(f"{identifier} has negative build_log_retention.builds: {builds}")
            if days < 0:
                errors.append(f"{identifier} has negative build_log_retention.days: {days}")
            if minimum < 0:
                errors.append(f"{identifier} has negative build_log_retention.min_success_builds: {minimum}")
            if builds > 0 and minimum > builds:
                errors.append(
                    f"{identifier} has build_log_retention.min_success_builds: {minimum} greater than "
                    f"build_log_retention.min_success_builds: {builds}"
                )
        return errors

    def cycle(self) -> str | None:
        state: dict[str, int] = {}
        by_name = {_name_of(job): plan for job, plan in zip(self.p.jobs, self.p.plans, strict=True)}

        def visit(name: str) -> str | None:
            state[name] = 1
            for step in by_name.get(name, Step(kind="do", raw={})).walk():
                if step.kind != "get":
                    continue
                for pattern in step.config.get("passed") or []:
                    for upstream in [job for job in by_name if _matches(str(pattern), job)]:
                        if state.get(upstream) == 1:
                            return f"pipeline contains a cycle that starts at Job '{upstream}'"
                        if state.get(upstream, 0) == 0:
                            found = visit(upstream)
                            if found:
                                return found
            state[name] = 2
            return None

        for name in by_name:
            if state.get(name, 0) == 0:
                found = visit(name)
                if found:
                    return found
        return None


class _StepValidator:
    """atc.StepValidator: walks a plan with a context path, collecting errors; warnings go to the parent."""

    def __init__(self, parent: _Validator, context: list[str]) -> None:
        self.parent = parent
        self.context = list(context)
        self.errors: list[str] = []
        self.seen_gets: set[str] = set()
        self.scopes: list[set[str]] = [set()]

    def error(self, message: str) -> None:
        self.errors.append(f"{''.join(self.context)}: {message}")

    def warn(self, message: str) -> None:
        self.parent.warnings.append(f"{''.join(self.context)}: {message}")

    def identifier(self, name: str) -> None:
        warning, error = validate_identifier(name, self.context)
        if warning:
            self.parent.warnings.append(warning)
        if error:
            self.errors.append(error)

    def validate(self, step: Step) -> None:
        """A step as written (an envelope): unknown fields, then the step itself."""
        core = step.core()
        if core.unknown:
            self.error("unknown fields [" + " ".join(f'"{name}"' for name in core.unknown) + "]")
        self.visit(step)

    def visit(self, step: Step) -> None:
        getattr(self, f"visit_{step.kind}")(step)

    # core steps
    def visit_task(self, step: Step) -> None:
        self.context.append(f".task({step.name})")
        self.identifier(step.name)
        config, path = step.config.get("config"), step.config.get("file")
        if config is None and not path:
            self.error("must specify either `file:` or `config:`")
        if config is not None and path:
            self.error("must specify one of `file:` or `config:`, not both")
        if isinstance(config, dict):
            if (config.get("image_resource") or config.get("rootfs_uri")) and step.config.get("image"):
                self.warn(
                    "specifies image: on the step but also specifies an image under config: - the image: on the "
                    "step takes precedence"
                )
            self.context.append(".config")
            for message in task_config_errors(config):
                self.error(message)
            self.context.pop()
        if step.config.get("hermetic"):
            self.warn("specifies `hermetic:` only works against worker containerd runtime")
        self.context.pop()

    def visit_get(self, step: Step) -> None:
        self.context.append(f".get({step.name})")
        self.identifier(step.name)
        if step.name in self.seen_gets:
            self.error("repeated name")
        self.seen_gets.add(step.name)
        resource = step.resource
        if self.parent.p.resource(resource) is None:
            self.error(f"unknown resource '{resource}'")
        self.context.append(".passed")
        for pattern in step.config.get("passed") or []:
            found = False
            for job, plan in zip(self.parent.p.jobs, self.parent.p.plans, strict=True):
                if _matches(str(pattern), _name_of(job)):
                    found = True
                    if not _interacts(plan, resource):
                        self.error(f"job '{_name_of(job)}' does not interact with resource '{resource}'")
            if not found:
                self.error(f"unknown job '{pattern}'")
        self.context.pop()
        self.context.pop()

    def visit_put(self, step: Step) -> None:
        self.context.append(f".put({step.name})")
        self.identifier(step.name)
        if self.parent.p.resource(step.resource) is None:
            self.error(f"unknown resource '{step.resource}'")
        self.context.pop()

    def visit_set_pipeline(self, step: Step) -> None:
        self.context.append(f".set_pipeline({step.name})")
        self.identifier(step.name)
        if not step.config.get("file"):
            self.error("no file specified")
        self.context.pop()

    def visit_load_var(self, step: Step) -> None:
        self.context.append(f".load_var({step.name})")
        self.identifier(step.name)
        self.declare(step.name)
        if not step.config.get("file"):
            self.error("no file specified")
        self.context.pop()

    def visit_try(self, step: Step) -> None:
        self.context.append(".try")
        self.validate(step.children[0])
        self.context.pop()

    def visit_do(self, step: Step) -> None:
        self.context.append(".do")
        for index, child in enumerate(step.children):
            self.context.append(f"[{index}]")
            self.validate(child)
            self.context.pop()
        self.context.pop()

    def visit_in_parallel(self, step: Step) -> None:
        self.context.append(".in_parallel")
        for index, child in enumerate(step.children):
            self.context.append(f".steps[{index}]")
            self.validate(child)
            self.context.pop()
        self.context.pop()

    # modifiers
    def visit_across(self, step: Step) -> None:
        self.context.append(".across")
        self.scopes.append(set())
        if not step.value:
            self.error("no vars specified")
        for index, var in enumerate(step.value):
            self.context.append(f"[{index}]")
            self.declare(str(var.get("var", "")))
            self.context.append(".max_in_flight")
            limit = var.get("max_in_flight")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit <= 0:
                self.error("must be greater than 0")
            self.context.pop()
            self.context.pop()
        assert step.inner is not None
        self.visit(step.inner)
        self.scopes.pop()
        self.context.pop()

    def visit_timeout(self, step: Step) -> None:
        assert step.inner is not None
        self.visit(step.inner)
        self.context.append(".timeout")
        try:
            parse_duration(step.value, mode="go")
        except ValueError:
            self.error(f"invalid duration '{step.value}'")
        self.context.pop()

    def visit_attempts(self, step: Step) -> None:
        assert step.inner is not None
        self.visit(step.inner)
        self.context.append(".attempts")
        if not isinstance(step.value, int) or step.value <= 0:
            self.error("must be greater than 0")
        self.context.pop()

    def _hook(self, step: Step) -> None:
        assert step.inner is not None and step.hook is not None
        self.visit(step.inner)
        self.context.append(f".{step.kind}")
        self.validate(step.hook)
        self.context.pop()

    visit_on_success = visit_on_failure = visit_on_abort = visit_on_error = visit_ensure = _hook

    def declare(self, name: str) -> None:
        if name in self.scopes[-1]:
            self.error("repeated var name")
        elif any(name in scope for scope in self.scopes):
            self.warn(f"shadows local var '{name}'")
        self.scopes[-1].add(name)


def task_config_errors(config: Mapping[str, Any]) -> list[str]:
    """atc.TaskConfig.Validate's messages (without the ``invalid task configuration:`` header)."""
    errors: list[str] = []
    if not config.get("platform"):
        errors.append("missing 'platform'")
    run = config.get("run")
    if isinstance(run, dict) and not run.get("path"):
        errors.append("missing path to executable to run")
    for kind in ("input", "output"):
        for index, item in enumerate(config.get(f"{kind}s") or []):
            if not isinstance(item, dict) or not item.get("name"):
                errors.append(f"  {kind} in position {index} is missing a name")
    return errors + task_path_errors(config)


def task_path_errors(config: Mapping[str, Any]) -> list[str]:
    """Input, output and cache paths and ``run.dir`` that would leave the task's working directory (absolute, or
    with a ``..`` part), in the style of atc.TaskConfig.Validate's messages. fly itself has no such check: Concourse
    places absolute paths inside the container and, since v7.13 (concourse/concourse#9078), ignores ``..``; here a
    task runs on the host, so both are refused (see ci/README.md)."""
    errors: list[str] = []
    rule = "must be relative to the task's working directory and must not contain '..'"
    for kind, key in (("input", "inputs"), ("output", "outputs"), ("cache", "caches")):
        items = config.get(key)
        for index, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            path = item.get("path") if kind == "cache" else item.get("path") or item.get("name")
            if kind == "cache" and not path:
                errors.append(f"  cache in position {index} is missing a path")
            elif isinstance(path, str) and bad_task_path(path):
                errors.append(f"  {kind} in position {index} has path '{path}': task paths {rule}")
    run = config.get("run")
    if isinstance(run, dict) and isinstance(run.get("dir"), str) and bad_task_path(run["dir"]):
        errors.append(f"  run.dir '{run['dir']}' {rule}")
    return errors


def validate_pipeline(pipeline: Pipeline) -> Result:
    """Run atc's configvalidate over a decoded pipeline."""
    validator = _Validator(pipeline)
    result = Result()
    for section, check in (
        ("groups", validator.groups),
        ("resources", validator.resources),
        ("resource types", validator.resource_types),
        ("variable sources", validator.var_sources),
        ("jobs", validator.jobs),
    ):
        messages = check()
        if messages:
            result.errors.append(_format(section, messages))
    cycle = validator.cycle()
    if cycle:
        result.errors.append(_format("jobs", [cycle]))
    result.warnings = validator.warnings
    return result


def validate_text(text: str, *, strict: bool, variables: Mapping[str, Any] | None = None) -> Result:
    """Decode and validate pipeline YAML text."""
    try:
        pipeline = decode(text, strict=strict, variables=variables)
    except DecodeError as exc:
        return Result(decode_error=str(exc))
    return validate_pipeline(pipeline)


def validate_file(path: str | Path, *, strict: bool, variables: Mapping[str, Any] | None = None) -> Result:
    """Validate the pipeline file at ``path`` (an unreadable file is a decode error, as in fly)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return Result(decode_error=f"could not read file: {exc.strerror or exc}")
    return validate_text(text, strict=strict, variables=variables)


def load_task_config(text: str, *, where: str) -> dict[str, Any]:
    """Parse a task file the way atc.NewTaskConfig does: strict keys, then Validate. DecodeError names ``where``."""
    try:
        config = load_yaml(text, strict=True, what=where)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    if not isinstance(config, dict):
        raise DecodeError(f"{where}: task config must be a mapping")
    try:
        _strict_task_config(config)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    errors = task_config_errors(config)
    if errors:
        raise DecodeError(f"{where}: invalid task configuration:\n" + "\n".join(errors))
    return config
