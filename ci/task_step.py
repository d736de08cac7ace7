"""A ``task`` step run locally: config, directories, environment, process (see :mod:`ci.runner`).

Every task runs in a bubblewrap sandbox (:mod:`ci.sandbox`): a fresh working directory where each input is a
writable copy of the artifact it maps to (at the input's ``path``), each output a new empty directory that becomes an
artifact under its (mapped) name when the task ends, each cache a directory kept per job and step; an unprivileged
user unless the step is ``privileged``; no network unless the step is privileged or tagged ``network``. Paths are
checked (relative, no ``..``) after ((vars)) are filled and before anything is made. The environment is what a
container image would give (``PATH``, ``LANG``, a private ``HOME`` and a short private ``TMPDIR``, both removed
afterwards) plus the params: the task config's, overridden by the step's; non-string values are written as JSON like
Concourse does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from ci.build import Build, Context, StepErrored
from ci.model import DecodeError, Step, VarLookup, interpolate
from ci.sandbox import TASK_UID, Sandbox, SandboxError, needs_network
from ci.validate import load_task_config, task_config_errors, task_path_errors

#: Variables a task inherits from the machine (a container image would set these).
INHERITED = ("PATH", "LANG", "LC_ALL", "TERM", "USER", "LOGNAME")


def param_value(value: Any) -> str:
    """How Concourse turns a param into an environment value."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def load_config(build: Build, step: Step, config: dict[str, Any]) -> dict[str, Any]:
    """The task config (``file:`` read from its artifact, or ``config:``) with the step's ``vars`` and the run's
    ((vars)) substituted; StepErrored names the file and the problem."""
    label = f"task {step.name}"
    if config.get("file"):
        path = build.resolve_path(str(config["file"]), what=label)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StepErrored(f"{label}: cannot read task file {config['file']}: {exc.strerror or exc}") from None
        try:
            task = load_task_config(text, where=str(config["file"]))
        except DecodeError as exc:
            raise StepErrored(f"{label}: {exc}") from None
    else:
        task = dict(config.get("config") or {})
        errors = task_config_errors(task)
        if errors:
            raise StepErrored(f"{label}: invalid task configuration:\n" + "\n".join(errors))
    values = dict(build.options.variables)
    values.update(config.get("vars") or {})
    missing: list[str] = []
    task = interpolate(task, VarLookup(values), missing=missing)
    if missing:
        raise StepErrored(f"{label}: undefined vars: {', '.join(sorted(set(missing)))}")
    errors = task_path_errors(task)  # again: a ((var)) may have made a path leave the working directory
    if errors:
        raise StepErrored(f"{label}: invalid task configuration:\n" + "\n".join(errors))
    return dict(task)


def _task_path(item: dict[str, Any]) -> str:
    return str(PurePosixPath(str(item.get("path") or item.get("name") or "")))


def _nested(child: str, parent: str) -> bool:
    return child != parent and (parent == "." or child.startswith(parent + "/"))


def nesting_errors(inputs: list[str], outputs: list[str], caches: list[str]) -> list[str]:
    """Paths nested in an input (or an input nested in an output), in the words of Concourse's former
    ``validateOverlappingPaths``: an input is an overlay, so nothing may be mounted inside it (an output at the same
    path as an input is fine: it starts from the input)."""
    errors: list[str] = []
    for kind, paths in (("inputs", inputs), ("outputs within inputs", outputs), ("caches within inputs", caches)):
        for path in paths:
            for parent in inputs:
                if _nested(path, parent):
                    errors.append(f"cannot nest {kind}: '{path}' is nested under input directory '{parent}'")
    for path in inputs:
        for parent in outputs:
            if _nested(path, parent):
                errors.append(
                    f"cannot nest inputs within outputs: '{path}' is nested under output directory '{parent}'"
                )
    return errors


def run_task(build: Build, step: Step, config: dict[str, Any], ctx: Context) -> bool:
    """Run one task step in its sandbox; True when the process exited 0. Raises StepErrored for anything that stops
    it running (nothing outside the build is touched before the paths are checked)."""
    name = step.name
    task = load_config(build, step, config)
    input_mapping = dict(config.get("input_mapping") or {})
    output_mapping = dict(config.get("output_mapping") or {})

    missing: list[str] = []
    inputs: list[tuple[Path, str]] = []
    for item in task.get("inputs") or []:
        artifact = build.artifact(str(input_mapping.get(item["name"], item["name"])))
        if artifact is None:
            if not item.get("optional"):
                missing.append(item["name"])
            continue
        inputs.append((artifact.resolve(), _task_path(item)))
    if missing:
        raise StepErrored(f"task {name}: missing inputs: {', '.join(missing)}")

    output_paths = [_task_path(item) for item in task.get("outputs") or []]
    errors = nesting_errors(
        [relative for _, relative in inputs],
        output_paths,
        [str(PurePosixPath(str(item.get("path")))) for item in task.get("caches") or []],
    )
    if errors:
        raise StepErrored(f"task {name}: " + "; ".join(errors))

    privileged = bool(config.get("privileged"))
    workdir = build.new_dir("tasks", name)
    # a short private scratch (TMPDIR, HOME): unix sockets made under it (terraform's provider plugins) must fit
    scratch = Path(tempfile.mkdtemp(prefix="sf-task-"))
    box = Sandbox(
        workdir=workdir,
        scratch=scratch,
        privileged=privileged,
        network=needs_network(privileged, config.get("tags") or []),
        artifacts=[artifact for artifact, _ in inputs],
    )
    try:
        status, elapsed, outputs = _run_sandboxed(build, step, task, config, ctx, box, inputs, output_mapping)
    except SandboxError as exc:
        raise StepErrored(f"task {name}: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(box.layers_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    for target, directory in outputs:
        build.register(target, directory)
    if status != 0:
        build.say(f"task {name}: failed with exit status {status} in {elapsed:.1f}s")
        return False
    build.say(f"task {name}: succeeded in {elapsed:.1f}s")
    return True


def _run_sandboxed(
    build: Build,
    step: Step,
    task: dict[str, Any],
    config: dict[str, Any],
    ctx: Context,
    box: Sandbox,
    inputs: list[tuple[Path, str]],
    output_mapping: dict[str, Any],
) -> tuple[int, float, list[tuple[str, Path]]]:
    name = step.name
    box.prepare()
    outputs_at = {_task_path(item) for item in task.get("outputs") or []}
    for artifact, relative in inputs:  # each input: a copy-on-write overlay at its path
        if relative in outputs_at:  # an output at an input's path starts from that input
            box.copy_in(artifact, box.inside(relative))
        else:
            box.add_input(artifact, relative)
    outputs: list[tuple[str, Path]] = []
    for item in task.get("outputs") or []:
        target = str(output_mapping.get(item["name"], item["name"]))
        relative = _task_path(item)
        mount = box.inside(relative)
        directory = build.new_dir("artifacts", target)
        if mount.is_dir():  # an output at an input's path starts from that input
            box.copy_in(mount, directory)
        box.own(directory)
        mount.mkdir(parents=True, exist_ok=True)
        box.binds.append((directory, relative))
        outputs.append((target, directory))
    for item in task.get("caches") or []:
        relative = str(item.get("path") or "")
        mount = box.inside(relative)
        cache = build.work_dir / "caches" / build.job_name / name / relative
        cache.mkdir(parents=True, exist_ok=True)
        box.own(cache)
        mount.mkdir(parents=True, exist_ok=True)
        box.binds.append((cache, relative))

    env = {key: os.environ[key] for key in INHERITED if key in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env = box.environment(env)
    params = dict(task.get("params") or {})
    params.update(config.get("params") or {})
    for key, value in params.items():
        if value is not None:
            env[str(key)] = param_value(value)

    run = task.get("run") or {}
    path = str(run.get("path", ""))
    run_dir = str(PurePosixPath(str(run.get("dir") or ".")))
    cwd = box.workdir / run_dir
    in_input = [(a, r) for a, r in inputs if run_dir == r or _nested(run_dir, r)]
    if in_input:  # a directory of an input: look in the artifact
        artifact, relative = in_input[0]
        exists = (artifact / PurePosixPath(run_dir).relative_to(relative)).is_dir()
    else:
        exists = box.inside(run_dir).is_dir()
    if not exists:
        raise StepErrored(f"task {name}: run.dir '{run.get('dir')}' is not a directory of the task")
    argv = [path, *[str(arg) for arg in run.get("args") or []]]
    mode = "privileged" if box.privileged else f"as uid {TASK_UID}"
    network = "host network" if box.network else "no network"
    build.say(f"task {name}: running {' '.join(argv)} ({mode}, {network})")
    started = time.monotonic()
    status = build.run_process(box.argv(argv, cwd), cwd=box.workdir, env=env, ctx=ctx, label=f"task {name}")
    return status, time.monotonic() - started, outputs
