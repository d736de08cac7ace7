"""A ``task`` step run locally: config, directories, environment, process (see :mod:`ci.runner`).

The task's working directory is fresh per run: each input is a symlink (at the input's ``path``) to the artifact it
maps to, each output a new empty directory that becomes an artifact under its (mapped) name when the task ends.
The environment is what a container image would give (``PATH``, ``HOME``, ``LANG``, a short private ``TMPDIR``
removed afterwards) plus the params: the task config's, overridden by the step's; non-string values are written as
JSON like Concourse does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci.model import DecodeError, VarLookup, interpolate
from ci.validate import load_task_config, task_config_errors

if TYPE_CHECKING:
    from ci.model import Step
    from ci.runner import Context, Runner

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


def load_config(runner: Runner, step: Step, config: dict[str, Any]) -> dict[str, Any]:
    """The task config (``file:`` read from its artifact, or ``config:``) with the step's ``vars`` and the run's
    ((vars)) substituted; StepErrored names the file and the problem."""
    from ci.runner import StepErrored

    build = runner.build
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
    return dict(task)


def run_task(runner: Runner, step: Step, config: dict[str, Any], ctx: Context) -> bool:
    """Run one task step; True when the process exited 0. Raises StepErrored for anything that stops it running."""
    from ci.runner import StepErrored

    build = runner.build
    name = step.name
    task = load_config(runner, step, config)
    workdir = build.new_dir("tasks", name)
    input_mapping = dict(config.get("input_mapping") or {})
    output_mapping = dict(config.get("output_mapping") or {})

    missing: list[str] = []
    for item in task.get("inputs") or []:
        source = input_mapping.get(item["name"], item["name"])
        artifact = build.artifact(source)
        if artifact is None:
            if not item.get("optional"):
                missing.append(item["name"])
            continue
        link = workdir / str(item.get("path") or item["name"])
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(artifact, target_is_directory=True)
    if missing:
        raise StepErrored(f"task {name}: missing inputs: {', '.join(missing)}")
    outputs: list[tuple[str, Path]] = []
    for item in task.get("outputs") or []:
        target = output_mapping.get(item["name"], item["name"])
        directory = build.new_dir("artifacts", target)
        link = workdir / str(item.get("path") or item["name"])
        if link.is_symlink() or link.exists():  # an output at an input's path starts from that input
            source = link.resolve()
            link.unlink()
            shutil.copytree(source, directory, symlinks=True, dirs_exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(directory, target_is_directory=True)
        outputs.append((target, directory))

    # a short private TMPDIR: unix sockets made under it (terraform's provider plugins) must fit in 108 bytes
    tmp = Path(tempfile.mkdtemp(prefix="sf-task-"))
    tmp.chmod(0o711)  # traversable (not listable) by libvirt's QEMU user: tasks keep VM disks under their TMPDIR
    env = {key: os.environ[key] for key in INHERITED if key in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = os.environ.get("HOME", str(tmp))
    env["TMPDIR"] = str(tmp)
    params = dict(task.get("params") or {})
    params.update(config.get("params") or {})
    for key, value in params.items():
        if value is not None:
            env[str(key)] = param_value(value)

    run = task.get("run") or {}
    path = str(run.get("path", ""))
    cwd = workdir / str(run.get("dir") or "")
    if not cwd.is_dir():
        raise StepErrored(f"task {name}: run.dir '{run.get('dir')}' is not a directory of the task")
    executable = path
    if "/" in path and not os.path.isabs(path):
        executable = str(cwd / path)
    argv = [executable, *[str(arg) for arg in run.get("args") or []]]
    build.say(f"task {name}: running {path} {' '.join(argv[1:])}".rstrip())
    started = time.monotonic()
    try:
        status = build.run_process(argv, cwd=cwd, env=env, ctx=ctx, label=f"task {name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    for target, directory in outputs:
        build.register(target, directory)
    if status != 0:
        build.say(f"task {name}: failed with exit status {status} in {elapsed:.1f}s")
        return False
    build.say(f"task {name}: succeeded in {elapsed:.1f}s")
    return True
