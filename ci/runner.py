"""``stemforge pipeline run``: one job's plan executed on this machine, without Concourse.

The plan is the tree :mod:`ci.model` parses; each node runs as Concourse runs it:

* ``get`` — an artifact directory named after the step: ``--inputs DIR/<name>`` when that exists; a ``git``
  resource is the repository holding the pipeline (or ``--git-dir``); ``time`` writes its ``input`` file; anything
  else is the version an earlier ``put`` recorded under ``<work>/resources/<resource>``, with the job that made it.
* ``put`` — ``terraform`` resources run the real Terraform module through ``stemforge env up|down``
  (:mod:`ci.resources`); ``semver`` records a version; other types record the files ``params.file`` names; then
  the implicit get.
* ``task`` — ``file:`` (read from an artifact) or ``config:``; inputs and outputs are directories linked into a
  fresh working directory (``input_mapping``/``output_mapping``), params are the environment, ``run`` the process.
* ``load_var``, ``try``, ``do``, ``in_parallel`` (``limit``, ``fail_fast``), ``across`` (``max_in_flight``) and
  the modifiers ``ensure``, ``on_success``, ``on_failure``, ``on_error``, ``on_abort``, ``attempts``, ``timeout``.

Outcome and exit status as ``fly execute``: succeeded 0, failed 1 (a task exited non-zero), errored 2 (the plan
could not run: a missing input, var or file, a timeout), aborted 3 (SIGINT/SIGTERM: running processes are ended and
the ``on_abort``/``ensure`` hooks still run). Each step prints a line with the build's elapsed time.
"""

from __future__ import annotations

import functools
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from ci.build import Aborted, Build, Context, RunOptions, StepErrored
from ci.model import DecodeError, Step, VarLookup, interpolate, is_local, load_yaml, parse_step, var_names
from ci.resources import get, put, record_passed
from ci.task_step import run_task
from ci.validate import decode, validate_file, validate_pipeline
from stemforge_base.durations import parse_duration

EXIT_STATUS = {"succeeded": 0, "failed": 1, "errored": 2, "aborted": 3}


# -- running steps -----------------------------------------------------------------------------------------------------


class Runner:
    """Executes a plan tree for one :class:`Build`. ``run(step, ctx)`` returns True (succeeded) or False (failed) and
    raises StepErrored or Aborted."""

    def __init__(self, build: Build) -> None:
        self.build = build

    def run(self, step: Step, ctx: Context) -> bool:
        ctx.check()
        handler: Callable[[Step, Context], bool] = getattr(self, f"run_{step.kind}")
        return handler(step, ctx)

    # hooks: a fresh abort flag for hooks that run because of an abort, so teardown still happens
    def _hook(self, step: Step, ctx: Context, *, after_abort: bool = False) -> bool:
        assert step.hook is not None
        hook_ctx = ctx.child(cancel=threading.Event(), deadline=None) if after_abort else ctx.child(deadline=None)
        self.build.say(f"{step.kind}: running hook")
        return self.run(step.hook, hook_ctx)

    def run_ensure(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        try:
            ok = self.run(step.inner, ctx)
        except Aborted:
            self._quiet_hook(step, ctx, after_abort=True)
            raise
        except StepErrored:
            self._quiet_hook(step, ctx)
            raise
        return self._hook(step, ctx) and ok

    def _quiet_hook(self, step: Step, ctx: Context, *, after_abort: bool = False) -> None:
        try:
            self._hook(step, ctx, after_abort=after_abort)
        except (StepErrored, Aborted) as exc:
            self.build.say(f"{step.kind}: hook errored: {exc}")

    def run_on_success(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        if self.run(step.inner, ctx):
            return self._hook(step, ctx)
        return False

    def run_on_failure(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        if self.run(step.inner, ctx):
            return True
        self._hook(step, ctx)
        return False

    def run_on_error(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        try:
            return self.run(step.inner, ctx)
        except StepErrored:
            self._quiet_hook(step, ctx)
            raise

    def run_on_abort(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        try:
            return self.run(step.inner, ctx)
        except Aborted:
            self._quiet_hook(step, ctx, after_abort=True)
            raise

    def run_attempts(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        attempts = int(step.value)
        for attempt in range(1, attempts + 1):
            try:
                if self.run(step.inner, ctx):
                    return True
                outcome = "failed"
            except StepErrored as exc:
                if attempt == attempts:
                    raise
                outcome = f"errored: {exc}"
            if attempt < attempts:
                self.build.say(f"attempt {attempt}/{attempts} {outcome}; retrying")
        return False

    def run_timeout(self, step: Step, ctx: Context) -> bool:
        assert step.inner is not None
        try:
            seconds = parse_duration(str(step.value).strip(), mode="go")
        except ValueError as exc:
            raise StepErrored(str(exc)) from None
        deadline = time.monotonic() + seconds
        if ctx.deadline is not None and ctx.deadline < deadline:
            return self.run(step.inner, ctx)
        return self.run(step.inner, ctx.child(deadline=deadline, deadline_label=str(step.value)))

    def run_across(self, step: Step, ctx: Context) -> bool:
        names: list[str] = []
        value_lists: list[list[Any]] = []
        limit = 1
        for var in step.value:
            values = var.get("values")
            if isinstance(values, str):
                found, resolved = VarLookup(ctx.local_vars).get(values.strip("() "))
                values = resolved if found else None
            if not isinstance(values, list):
                raise StepErrored(f"across: values of '{var.get('var')}' must be a list")
            names.append(str(var.get("var")))
            value_lists.append(values)
            in_flight = var.get("max_in_flight", 1)
            limit = max(limit, len(values) if in_flight == "all" else int(in_flight))
        combinations = list(itertools.product(*value_lists))
        self.build.say(f"across {', '.join(names)}: {len(combinations)} combination(s), {limit} at a time")

        def one(combination: tuple[Any, ...]) -> Callable[[Context], bool]:
            local = dict(ctx.local_vars)
            local.update(zip(names, combination, strict=True))
            raw = interpolate(step.raw, VarLookup(local), only=is_local)

            def go(inner_ctx: Context) -> bool:
                label = ", ".join(f"{n}={v}" for n, v in zip(names, combination, strict=True))
                self.build.say(f"across [{label}]")
                return self.run(parse_step(raw), inner_ctx.child(local_vars=local))

            return go

        return self._parallel([one(c) for c in combinations], ctx, limit=limit, fail_fast=step.fail_fast)

    # composites
    def run_do(self, step: Step, ctx: Context) -> bool:
        return all(self.run(child, ctx) for child in step.children)

    def run_try(self, step: Step, ctx: Context) -> bool:
        try:
            ok = self.run(step.children[0], ctx)
        except StepErrored as exc:
            self.build.say(f"try: errored, ignored: {exc}")
            return True
        if not ok:
            self.build.say("try: failed, ignored")
        return True

    def run_in_parallel(self, step: Step, ctx: Context) -> bool:
        calls: list[Callable[[Context], bool]] = [functools.partial(self._run_branch, child) for child in step.children]
        return self._parallel(calls, ctx, limit=step.limit or len(calls), fail_fast=step.fail_fast)

    def _run_branch(self, step: Step, ctx: Context) -> bool:
        return self.run(step, ctx)

    def _parallel(self, calls: list[Callable[[Context], bool]], ctx: Context, *, limit: int, fail_fast: bool) -> bool:
        if not calls:
            return True
        stop = threading.Event()
        local_cancel = threading.Event()

        def watch() -> None:  # the build's abort reaches the branches; fail_fast stops them too
            while not stop.is_set():
                if ctx.cancel.wait(0.2):
                    local_cancel.set()
                    return

        branch_ctx = ctx.child(cancel=local_cancel)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        results: list[bool] = []
        errors: list[BaseException] = []
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(limit, len(calls)))) as pool:
                pending: set[Future[bool]] = {pool.submit(call, branch_ctx) for call in calls}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        try:
                            results.append(future.result())
                        except (StepErrored, Aborted) as exc:
                            errors.append(exc)
                            results.append(False)
                    if fail_fast and not all(results) and not local_cancel.is_set():
                        self.build.say("in_parallel: fail_fast, stopping the other steps")
                        local_cancel.set()
        finally:
            stop.set()
            watcher.join()
        if ctx.cancel.is_set():
            raise Aborted()
        real_errors = [e for e in errors if isinstance(e, StepErrored)]
        if real_errors:
            raise real_errors[0]
        if errors and not fail_fast:
            raise errors[0]
        return all(results)

    # core steps
    def _local(self, step: Step, ctx: Context) -> dict[str, Any]:
        missing: list[str] = []
        config = interpolate(step.config, VarLookup(ctx.local_vars), missing=missing, only=is_local)
        if missing:
            raise StepErrored(f"undefined local vars: {', '.join(sorted(set(missing)))}")
        return dict(config)

    def run_get(self, step: Step, ctx: Context) -> bool:
        config = self._local(step, ctx)
        started = time.monotonic()
        path, description = get(self.build, step.name, config, ctx)
        self.build.register(step.name, path)
        self.build.say(f"get {step.name}: {description} ({time.monotonic() - started:.1f}s)")
        return True

    def run_put(self, step: Step, ctx: Context) -> bool:
        config = self._local(step, ctx)
        started = time.monotonic()
        self.build.say(f"put {step.name}: starting")
        path, description = put(self.build, step.name, config, ctx)
        if path is not None and not config.get("no_get"):
            self.build.register(step.name, path)
        self.build.say(f"put {step.name}: {description} ({time.monotonic() - started:.1f}s)")
        return True

    def run_load_var(self, step: Step, ctx: Context) -> bool:
        config = self._local(step, ctx)
        path = self.build.resolve_path(str(config.get("file", "")), what=f"load_var {step.name}")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StepErrored(f"load_var {step.name}: cannot read {config.get('file')}: {exc.strerror}") from None
        fmt = config.get("format") or {".json": "json", ".yml": "yaml", ".yaml": "yaml"}.get(path.suffix, "trim")
        value: Any
        if fmt == "json":
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise StepErrored(f"load_var {step.name}: {config.get('file')} is not JSON: {exc}") from None
        elif fmt == "yaml":
            try:
                value = load_yaml(text, strict=False)
            except DecodeError as exc:
                raise StepErrored(f"load_var {step.name}: {exc}") from None
        elif fmt == "trim":
            value = text.strip()
        elif fmt == "raw":
            value = text
        else:
            raise StepErrored(f"load_var {step.name}: invalid format '{fmt}' (json, yaml, trim or raw)")
        ctx.local_vars[step.name] = value
        shown = "(redacted)" if not config.get("reveal") else repr(value)[:80]
        self.build.say(f"load_var {step.name}: {shown}")
        return True

    def run_set_pipeline(self, step: Step, ctx: Context) -> bool:
        config = self._local(step, ctx)
        path = self.build.resolve_path(str(config.get("file", "")), what=f"set_pipeline {step.name}")
        result = validate_file(path, strict=False, variables=dict(config.get("vars") or {}))
        text, status = result.render(False)
        if status != 0:
            self.build.write(text)
            raise StepErrored(f"set_pipeline {step.name}: the pipeline is invalid")
        self.build.say(f"set_pipeline {step.name}: valid; not applied (no Concourse in a local run)")
        return True

    def run_task(self, step: Step, ctx: Context) -> bool:
        return run_task(self.build, step, self._local(step, ctx), ctx)


# -- entry point -------------------------------------------------------------------------------------------------------


def _job_vars(pipeline_text: str, job_name: str) -> set[str]:
    """The ((vars)) the job itself needs: its plan, the resources it touches and the resource types, so a run never
    asks for another job's secrets. When the document only decodes once its vars are known (``attempts: ((n))``),
    every var it names is needed."""
    try:
        pipeline = decode(pipeline_text, strict=False)
    except DecodeError:
        scope: Any = load_yaml(pipeline_text, strict=False)
    else:
        found = pipeline.job(job_name)
        if found is None:
            return set()
        job, plan = found
        touched = {s.resource for s in plan.walk() if s.kind in ("get", "put")}
        scope = [job, pipeline.resource_types, *(r for r in pipeline.resources if r.get("name") in touched)]
    return {name for name in var_names(scope) if not is_local(name)}


@contextmanager
def _signals_abort(cancel: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        cancel.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_pipeline_job(options: RunOptions) -> int:
    """Validate the pipeline, run the job, print the outcome; returns fly execute's exit status."""
    out = options.out or sys.stdout
    err = sys.stderr if options.out is None else out

    def fail(message: str) -> int:
        err.write(f"error: {message}\n")
        return EXIT_STATUS["errored"]

    try:
        text = options.pipeline.read_text(encoding="utf-8")
        needed = _job_vars(text, options.job)
    except OSError as exc:
        return fail(f"could not read file: {exc.strerror or exc}")
    except DecodeError as exc:
        return fail(str(exc))
    lookup = VarLookup(options.variables)
    missing = sorted(name for name in needed if not lookup.get(name)[0])
    if missing:
        return fail(f"undefined vars: {', '.join(missing)} (give them with --var NAME=VALUE or --vars-file FILE)")
    try:
        pipeline = decode(text, strict=False, variables=options.variables)
    except DecodeError as exc:
        return fail(str(exc))
    result = validate_pipeline(pipeline)
    if result.errors:
        rendered, _ = result.render(False)
        err.write(rendered)
        return fail(f"{options.pipeline}: the pipeline is invalid")
    found = pipeline.job(options.job)
    if found is None:
        known = ", ".join(str(j.get("name")) for j in pipeline.jobs)
        return fail(f"job '{options.job}' not found in {options.pipeline} (jobs: {known})")
    job, plan = found
    build = Build(options, pipeline, job)
    build.say(f"job {build.job_name} build {build.number}: {build.dir}")
    cancel = threading.Event()
    status = "succeeded"
    with _signals_abort(cancel):
        try:
            ok = Runner(build).run(plan, Context(cancel=cancel))
            status = "succeeded" if ok else "failed"
        except StepErrored as exc:
            build.say(f"errored: {exc}")
            status = "errored"
        except Aborted:
            status = "aborted"
    if status == "succeeded":
        for resource, version in build.gotten:
            record_passed(build, resource, version)
    build.say(status)
    (build.dir / "status").write_text(status + "\n", encoding="utf-8")
    return EXIT_STATUS[status]
