"""One run of one job, as the plan's steps see it: :class:`Build` (its directory, artifacts, output and processes),
:class:`Context` (abort flag, deadline, local vars), :class:`RunOptions`, and the two ways a step stops short:
:class:`StepErrored` (Concourse's "errored") and :class:`Aborted`.

:mod:`ci.runner` walks the plan; :mod:`ci.resources` (get/put) and :mod:`ci.task_step` (task) act on the
:class:`Build` they are given. None of them imports the runner, so the three form no import cycle.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci.validate import Pipeline
from stemforge_base.processes import signal_group, spawn, stop_group

#: Builds kept per job under the work dir (older ones are removed when a new one starts).
KEEP_BUILDS = 5
#: Seconds between SIGTERM and SIGKILL when a task is ended (abort or timeout).
KILL_GRACE = 10.0


class StepErrored(Exception):
    """The step could not run (Concourse's "errored"): the message says why."""


class Aborted(Exception):
    """The build was aborted."""


@dataclass
class RunOptions:
    """What ``stemforge pipeline run`` was asked to do."""

    pipeline: Path
    job: str
    variables: dict[str, Any] = field(default_factory=dict)
    inputs: Path | None = None
    work_dir: Path | None = None
    git_dir: Path | None = None
    out: Any = None  # a text stream; default sys.stdout


def default_work_dir(pipeline: Path) -> Path:
    """``$STEMFORGE_CI_DIR/<pipeline stem>`` or ``/var/tmp/stemforge-ci/<pipeline stem>``."""
    base = os.environ.get("STEMFORGE_CI_DIR") or "/var/tmp/stemforge-ci"
    return Path(base) / pipeline.stem


def repository_root(start: Path) -> Path:
    """The git work tree holding ``start`` (the directory itself when it is in none)."""
    here = start.resolve()
    for candidate in [here, *here.parents]:
        if (candidate / ".git").exists():
            return candidate
    return here if here.is_dir() else here.parent


# -- the build ---------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a step runs under: the build's abort flag, an optional deadline (``timeout``) and local vars."""

    cancel: threading.Event
    deadline: float | None = None
    deadline_label: str = ""
    local_vars: dict[str, Any] = field(default_factory=dict)

    def child(self, **changes: Any) -> Context:
        """A copy with ``changes`` applied (local vars are shared unless replaced)."""
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Aborted()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise StepErrored(f"timeout exceeded ({self.deadline_label})")


class Build:
    """One run of one job: its directory, artifacts (name → directory) and output."""

    def __init__(self, options: RunOptions, pipeline: Pipeline, job: dict[str, Any]) -> None:
        self.options = options
        self.pipeline = pipeline
        self.job = job
        self.job_name = str(job.get("name"))
        self.work_dir = (options.work_dir or default_work_dir(options.pipeline)).absolute()
        self.git_dir = (options.git_dir or repository_root(options.pipeline.parent)).absolute()
        self.out = options.out or sys.stdout
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.artifacts: dict[str, Path] = {}
        self.counter = itertools.count(1)
        self.processes: set[subprocess.Popen[bytes]] = set()
        #: (resource, version) of every recorded version the build got or put; marked passed when the build succeeds
        self.gotten: list[tuple[str, str]] = []
        jobs_dir = self.work_dir / "builds" / self.job_name
        jobs_dir.mkdir(parents=True, exist_ok=True)
        numbers = sorted(int(p.name) for p in jobs_dir.iterdir() if p.name.isdigit())
        for old in numbers[: max(0, len(numbers) - KEEP_BUILDS + 1)]:
            shutil.rmtree(jobs_dir / str(old), ignore_errors=True)
        self.number = (numbers[-1] + 1) if numbers else 1
        while True:  # another run of the same job may take a number first
            self.dir = jobs_dir / str(self.number)
            try:
                self.dir.mkdir()
                break
            except FileExistsError:
                self.number += 1

    # output
    def say(self, message: str) -> None:
        with self.lock:
            self.out.write(f"[{time.monotonic() - self.started:7.1f}s] {message}\n")
            self.out.flush()

    def write(self, text: str) -> None:
        with self.lock:
            self.out.write(text)
            self.out.flush()

    # artifacts
    def register(self, name: str, path: Path) -> None:
        with self.lock:
            self.artifacts[name] = path

    def artifact(self, name: str) -> Path | None:
        with self.lock:
            return self.artifacts.get(name)

    def new_dir(self, kind: str, name: str) -> Path:
        path = self.dir / kind / f"{next(self.counter):03d}-{name}"
        path.mkdir(parents=True)
        return path

    def resolve_path(self, relative: str, *, what: str) -> Path:
        """``<artifact>/<rest>`` → a path inside that artifact; StepErrored names the missing artifact."""
        head, _, rest = str(relative).strip("/").partition("/")
        base = self.artifact(head)
        if base is None:
            known = ", ".join(sorted(self.artifacts)) or "none"
            raise StepErrored(f"{what}: unknown artifact source: '{head}' in '{relative}' (artifacts: {known})")
        return base / rest if rest else base

    def resource(self, name: str) -> dict[str, Any]:
        resource = self.pipeline.resource(name)
        if resource is None:
            raise StepErrored(f"unknown resource '{name}'")
        return resource

    def resource_store(self, name: str) -> Path:
        return self.work_dir / "resources" / name

    # processes
    def run_process(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        ctx: Context,
        label: str,
        prefix: str = "",
    ) -> int:
        """Run ``argv`` in its own session, streaming its output; end it on abort or deadline (SIGTERM, then
        SIGKILL after :data:`KILL_GRACE`; :func:`stemforge_base.processes.stop_group` is done when no process of the
        group is left, not when the first one exits: a task's sandbox, ended while bwrap sets it up, can outlive
        bwrap). Returns the exit status; raises Aborted/StepErrored when ended."""
        try:
            process = spawn(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise StepErrored(f"{label}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        with self.lock:
            self.processes.add(process)
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in iter(stream.readline, b""):
                self.write(prefix + line.decode("utf-8", errors="replace"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        ended: BaseException | None = None
        try:
            while process.poll() is None:
                try:
                    ctx.check()
                except (Aborted, StepErrored) as exc:
                    ended = exc
                    stop_group(process, grace=KILL_GRACE)
                    break
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.2)
        finally:
            if process.poll() is None:
                stop_group(process, grace=KILL_GRACE)
            else:  # what it left in its process group (a task's sandbox: its PID namespace's init) ends with it
                signal_group(process)
            reader.join(timeout=5)
            if not reader.is_alive():  # closing under a blocked reader would wait for its writers
                stream.close()
            with self.lock:
                self.processes.discard(process)
        if ended is not None:
            raise ended
        return process.returncode
