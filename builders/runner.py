"""Running a template's builds, Packer's way (``packer build``).

Data flows one way: select builds (``-only``/``-except``) -> prepare every build (render the builder config for
that build, find the plugins, validate their options, ``prepare()``; provisioners and post-processors too) and
report *all* configuration errors together before anything runs -> run the builds in parallel threads
(``-parallel-builds``, 0 = no limit) -> print Packer's summary and return the exit status.

One build = its builder's steps run by ``stemforge_base.steps.StepRunner`` (cleanups in reverse on failure or
interruption; ``-on-error=abort`` leaves everything; ``-on-error=ask`` asks on a terminal whether to clean up,
abort or retry the failed step). One of the builder's steps calls the build's provision hook, which runs the
template's provisioners for that build in order (config rendered with the build's generated data at that moment;
``pause_before``, ``timeout``, ``max_retries``; the ``error-cleanup-provisioner`` after a failure). After the steps,
the post-processor chains run with Packer's semantics: every chain starts from the builder's artifact, inside a
chain each output feeds the next, an intermediate artifact is destroyed unless kept (``keep_input_artifact`` or
the post-processor's own keep result), and the builder's artifact survives if any chain's first post-processor
keeps it (or there are no chains).

SIGINT/SIGTERM set the shared cancel event: running steps and commands stop, every build unwinds its cleanups,
and the run ends with ``Cleanly cancelled builds after being interrupted.`` and exit status 1. Further signals
while cleaning up are ignored (with a message).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from builders.core import (
    Artifact,
    BuildContext,
    BuildError,
    BuilderType,
    Communicator,
    ConfigError,
    Plugin,
    PostProcessor,
    Provisioner,
)
from builders.registry import (
    UnknownPluginError,
    load_builder,
    load_post_processor,
    load_provisioner,
    validate_options,
)
from builders.template import BuilderSpec, PostProcessorSpec, ProvisionerSpec, Template, TemplateError
from builders.template.sensitive import sensitive_name_keys
from builders.ui import BuildUi, Output, durafmt, go_duration
from stemforge_base.steps import Cancelled, Step, StepRunner

ON_ERROR_CHOICES = ("cleanup", "abort", "ask")
ASK_PROMPT = ("[c] Clean up and exit, [a] abort without cleanup, or [r] retry step (build may fail even if retry "
              "succeeds)?")
CANCELLED_MESSAGE = "Cleanly cancelled builds after being interrupted."
_SIGNAL_NAMES = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}


@dataclass
class RunOptions:
    """The ``build`` command-line options that shape a run."""

    only: Sequence[str] = ()
    except_: Sequence[str] = ()
    #: Builds running at once; 0 (or less) = no limit.
    parallel_builds: int = 0
    on_error: str = "cleanup"
    force: bool = False


@dataclass
class PreparedBuild:
    """A build whose configuration was fully checked and which is ready to run."""

    spec: BuilderSpec
    ui: BuildUi
    ctx: BuildContext
    builder: BuilderType
    provisioners: list[ProvisionerSpec]
    chains: list[list[PostProcessorSpec]]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class BuildResult:
    name: str
    seconds: float
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None
    cancelled: bool = False


@dataclass
class BuildProblem:
    """Everything wrong with one build's configuration (Packer prints one diagnostic per build)."""

    build: str
    summary: str
    errors: list[str]

    def render(self) -> str:
        if self.summary.startswith("Failed to initialize"):
            return f"Error: {self.summary}\n\n" + "\n".join(self.errors)
        bullets = "\n".join(f"* {e}" for e in self.errors)
        return f"Error: {self.summary}\n\n{len(self.errors)} error(s) occurred:\n\n{bullets}"


class PrepareError(ConfigError):
    """One or more builds have configuration errors; ``problems`` has them per build. ``str()`` is the full
    Packer-style listing."""

    def __init__(self, problems: list[BuildProblem]) -> None:
        self.problems = problems
        super().__init__("\n\n".join(p.render() for p in problems))


def multi_error(errors: Sequence[str]) -> str:
    """Packer's ``MultiError`` text."""
    points = "\n".join(f"* {e}" for e in errors)
    return f"{len(errors)} error(s) occurred:\n\n{points}"


def _config_lines(exc: BaseException, where: str) -> list[str]:
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return [line if line.startswith(where + ":") else f"{where}: {line}" for line in lines]


class _DeadlineEvent(threading.Event):
    """A cancel event that is also set once ``deadline`` (``time.monotonic()``) has passed or when ``parent``
    is set: what a provisioner with a ``timeout`` sees as its ``ctx.cancel``."""

    def __init__(self, parent: threading.Event, seconds: float) -> None:
        super().__init__()
        self.parent = parent
        self.deadline = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def is_set(self) -> bool:
        return super().is_set() or self.parent.is_set() or self.expired()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                break
            super().wait(left)
        return self.is_set()


class _UiLogHandler(logging.Handler):
    """Step-runner warnings and errors (failed cleanups, resources left by -on-error=abort) go to the build UI.
    Records still propagate (to a debug log file); output handlers on the root skip ``stemforge.build.*``."""

    def __init__(self, ui: BuildUi) -> None:
        super().__init__(level=logging.WARNING)
        self.ui = ui

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.ui.error(record.getMessage())


class BuildRunner:
    """Prepares and runs the builds of one template. ``run()`` is the whole ``stemforge build``; ``prepare()``
    alone is ``stemforge validate`` (after parsing)."""

    def __init__(self, template: Template, output: Output, options: RunOptions | None = None, *,
                 cancel: threading.Event | None = None) -> None:
        self.template = template
        self.output = output
        self.options = options or RunOptions()
        if self.options.on_error not in ON_ERROR_CHOICES:
            raise ConfigError(f"-on-error: must be one of {', '.join(ON_ERROR_CHOICES)}, "
                              f"got {self.options.on_error!r}")
        self.cancel = cancel if cancel is not None else threading.Event()
        #: Set by a signal (SIGINT/SIGTERM): the run ends with Packer's "Cleanly cancelled" line.
        self.interrupted = threading.Event()
        self.results: dict[str, BuildResult] = {}
        self._results_lock = threading.Lock()
        self._signals_seen = 0
        self._pending_notes: list[str] = []
        self._ask = self.options.on_error == "ask"

    # ------------------------------------------------------------------------------------------------ prepare
    def prepare(self) -> list[PreparedBuild]:
        """Check every selected build's whole configuration; PrepareError listing all problems if any."""
        try:
            specs = self.template.select_builders(list(self.options.only), list(self.options.except_))
        except TemplateError as exc:
            raise PrepareError([BuildProblem("", "Invalid build selection", exc.errors)]) from None
        builds: list[PreparedBuild] = []
        problems: list[BuildProblem] = []
        for index, spec in enumerate(specs):
            try:
                builds.append(self._prepare_build(spec, index))
            except _BuildConfigError as exc:
                problems.append(exc.problem)
        if problems:
            raise PrepareError(problems)
        return builds

    def _label(self, spec: BuilderSpec) -> str:
        return spec.type if spec.name == spec.type else f"{spec.type}.{spec.name}"

    def _prepare_build(self, spec: BuilderSpec, index: int) -> PreparedBuild:
        ui = self.output.build_ui(spec.name, index)
        ctx = BuildContext(
            build_name=spec.name, build_type=spec.type, ui=ui, cancel=self.cancel,
            template_dir=self.template.path.parent, run_uuid=self.template.run_uuid,
            on_error=self.options.on_error, force=self.options.force, mask=self.template.mask,
        )
        ctx.render = self._renderer(ctx, f"builder '{spec.name}'")
        label = self._label(spec)
        try:
            builder_cls = load_builder(spec.type)
        except UnknownPluginError as exc:
            raise _BuildConfigError(BuildProblem(spec.name, f'Failed to initialize build "{spec.name}"',
                                                 [str(exc)])) from None
        except ConfigError as exc:
            raise _BuildConfigError(BuildProblem(spec.name, f'Failed to initialize build "{spec.name}"',
                                                 [str(exc)])) from None
        errors: list[str] = []
        warnings: list[str] = []
        builder: BuilderType | None = None
        try:
            rendered = self.template.render(spec.config, build_name=spec.name, build_type=spec.type,
                                            where=f"builder '{spec.name}'")
            self._refuse_sensitive_names(rendered, label)
            config = validate_options(builder_cls, rendered, label)
            builder = builder_cls(config, ctx)
            warnings += builder.prepare() or []
        except (ConfigError, TemplateError) as exc:
            errors += _config_lines(exc, label)
        except Exception as exc:  # noqa: BLE001 - a plugin bug is reported, not a traceback
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
        provisioners = self.template.provisioners_for(spec.name)
        checks: list[tuple[ProvisionerSpec, str]] = [(p, f"provisioner {p.index + 1} ({p.type})")
                                                     for p in provisioners]
        cleanup = self.template.error_cleanup_provisioner
        if cleanup is not None and cleanup.applies_to(spec.name):
            checks.append((cleanup, f"error-cleanup-provisioner ({cleanup.type})"))
        for pspec, where in checks:
            try:
                self._make_provisioner(pspec, ctx, where, generated=None)
            except (ConfigError, TemplateError) as exc:
                errors += _config_lines(exc, where)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{where}: {type(exc).__name__}: {exc}")
        chains = self.template.post_processor_chains_for(spec.name, list(self.options.except_))
        for chain in chains:
            for pp in chain:
                where = f"post-processor {pp.index[0] + 1}.{pp.index[1] + 1} ({pp.type})"
                try:
                    self._make_post_processor(pp, ctx, where, generated=None)
                except (ConfigError, TemplateError) as exc:
                    errors += _config_lines(exc, where)
                except Exception as exc:  # noqa: BLE001
                    errors.append(f"{where}: {type(exc).__name__}: {exc}")
        if errors or builder is None:
            raise _BuildConfigError(BuildProblem(spec.name, f'Failed to prepare build: "{spec.name}"',
                                                 errors or [f"{label}: could not be prepared"]))
        return PreparedBuild(spec, ui, ctx, builder, provisioners, chains, warnings)

    def _renderer(self, ctx: BuildContext, where: str) -> Callable[[Any], Any]:
        template = self.template

        def render(value: Any) -> Any:
            return template.render(value, build_name=ctx.build_name, build_type=ctx.build_type,
                                   generated=ctx.generated or None, where=where)

        return render

    def _render_plugin_config(self, plugin_cls: type[Plugin], config: Mapping[str, Any], ctx: BuildContext,
                              where: str, generated: Mapping[str, Any] | None) -> dict[str, Any]:
        runtime = frozenset(getattr(plugin_cls, "render_at_runtime", frozenset()))
        now = {k: v for k, v in config.items() if k not in runtime}
        rendered = self.template.render(now, build_name=ctx.build_name, build_type=ctx.build_type,
                                        generated=generated, where=where)
        rendered.update({k: v for k, v in config.items() if k in runtime})
        return dict(rendered)

    def _refuse_sensitive_names(self, config: Mapping[str, Any], where: str) -> None:
        """A file, image or artifact name derived from a sensitive value is refused, not masked (see
        ``builders.template.sensitive``); the error names the keys and shows their values only masked."""
        found = sensitive_name_keys(config, self.template.mask)
        if found:
            keys = ", ".join(f"{key} ({shown!r})" for key, shown in found)
            raise ConfigError(f"{where}: {keys}: derived from a sensitive variable; a file, image or artifact name "
                              f"would reveal it, so stemforge refuses it (use a non-sensitive value)")

    def _make_provisioner(self, spec: ProvisionerSpec, ctx: BuildContext, where: str,
                          generated: Mapping[str, Any] | None) -> Provisioner:
        cls = load_provisioner(spec.type)
        config = self._render_plugin_config(cls, spec.config_for(ctx.build_name), ctx, where, generated)
        config = validate_options(cls, config, where)
        plugin = cls(config, ctx)
        plugin.prepare()
        return plugin

    def _make_post_processor(self, spec: PostProcessorSpec, ctx: BuildContext, where: str,
                             generated: Mapping[str, Any] | None) -> PostProcessor:
        cls = load_post_processor(spec.type)
        config = self._render_plugin_config(cls, spec.config, ctx, where, generated)
        self._refuse_sensitive_names(config, where)
        config = validate_options(cls, config, where)
        plugin = cls(config, ctx)
        plugin.prepare()
        return plugin

    # ---------------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        """Prepare, run every build, print Packer's summary; the exit status (1 if any build failed, the
        configuration is invalid or the run was interrupted)."""
        with self.handle_signals():
            for warning in self.template.warnings:
                self.output.say(f"Warning: {warning}")
            try:
                builds = self.prepare()
            except PrepareError as exc:
                self.output.error(str(exc))
                return 1
            for build in builds:
                for warning in build.warnings:
                    self.output.say(f'Warning: Warning when preparing build: "{build.name}"\n\n{warning}')
            if self.interrupted.is_set():
                self._flush_notes()
                self.output.say(CANCELLED_MESSAGE)
                return 1
            return self.run_prepared(builds)

    def run_prepared(self, builds: Sequence[PreparedBuild]) -> int:
        if self._ask and not all(b.ui.can_ask() for b in builds):
            self.output.say("-on-error=ask needs a terminal to ask on; failed builds will be cleaned up "
                            "(-on-error=cleanup)")
            self._ask = False
        if self.output.color:
            for build in builds:
                self.output.line("say", f"{build.name}: output will be in this color.", build.ui.color)
            self.output.say("")
        started = time.monotonic()
        limit = self.options.parallel_builds if self.options.parallel_builds > 0 else len(builds) or 1
        slots = threading.Semaphore(limit)
        threads: list[threading.Thread] = []
        with self.output.live():
            for build in builds:
                if self.cancel.is_set():
                    logging.getLogger("stemforge.build").info("Interrupted, not going to start any more builds.")
                    break
                while not slots.acquire(timeout=0.2):
                    self._flush_notes()
                    if self.cancel.is_set():
                        break
                if self.cancel.is_set():
                    break
                thread = threading.Thread(target=self._thread_main, args=(build, slots), name=f"build-{build.name}",
                                          daemon=True)
                thread.start()
                threads.append(thread)
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.2)
                    self._flush_notes()
            self._flush_notes()
        return self._summary(builds, time.monotonic() - started)

    def _thread_main(self, build: PreparedBuild, slots: threading.Semaphore) -> None:
        try:
            result = self.run_build(build)
        finally:
            slots.release()
        with self._results_lock:
            self.results[build.name] = result

    def run_build(self, build: PreparedBuild) -> BuildResult:
        """Run one prepared build to the end (steps, provisioners, post-processors); never raises."""
        ui = build.ui
        started = time.monotonic()
        result = BuildResult(build.name, 0.0)
        log = logging.getLogger(f"stemforge.build.{build.name}")
        handler = _UiLogHandler(ui)
        log.addHandler(handler)
        try:
            result.artifacts = self._run_steps_and_post_process(build, log)
        except Cancelled:
            result.cancelled = True
            result.error = "Build was cancelled."
        except Exception as exc:  # noqa: BLE001 - any failure ends this build, not the others
            result.error = str(exc) or type(exc).__name__
            if not isinstance(exc, BuildError | ConfigError | TemplateError | OSError):
                result.error = f"{type(exc).__name__}: {result.error}"
                log.debug("build %s failed", build.name, exc_info=True)
        finally:
            log.removeHandler(handler)
            self.output.build_finished(build.name)
        result.seconds = time.monotonic() - started
        duration = durafmt(result.seconds)
        if result.error is not None:
            self.output.line("error", f"Build '{build.name}' errored after {duration}: {result.error}")
        else:
            self.output.line("say", f"Build '{build.name}' finished after {duration}.", ui.color)
        return result

    def _run_steps_and_post_process(self, build: PreparedBuild, log: logging.Logger) -> list[Artifact]:
        hook = _ProvisionHook(self, build)
        steps = list(build.builder.steps(hook))
        aborted = threading.Event()
        wrapped = [_ReportingStep(self, build, step, i + 1, len(steps), aborted) for i, step in enumerate(steps)]
        runner = StepRunner(log=log, cancel=self.cancel, cleanup_on_failure=self.options.on_error != "abort")
        state: dict[str, Any] = {}
        runner.run(wrapped, state)
        artifact = build.builder.artifact(state)
        if self.cancel.is_set():
            log.info("Build was cancelled. Skipping post-processors.")
            raise Cancelled("Build was cancelled.")
        return self._post_process(build, artifact)

    # ---------------------------------------------------------------------------------------- post-processors
    def _post_process(self, build: PreparedBuild, artifact: Artifact | None) -> list[Artifact]:
        """Packer's ``CoreBuild.Run`` post-processing; returns the build's artifacts (the builder's first when
        kept); raises BuildError listing post-processor failures."""
        if artifact is None:
            return []
        results: list[Artifact] = []
        errors: list[str] = []
        keep_original = not build.chains
        for chain in build.chains:
            prior: Artifact = artifact
            completed = True
            for position, spec in enumerate(chain):
                if self.cancel.is_set():
                    raise Cancelled("Build was cancelled.")
                name = spec.name or spec.type
                if name == spec.type:
                    build.ui.say(f"Running post-processor: {spec.type}")
                else:
                    build.ui.say(f"Running post-processor: {name} (type {spec.type})")
                where = f"post-processor {spec.index[0] + 1}.{spec.index[1] + 1} ({spec.type})"
                pp_ctx = dataclasses.replace(build.ctx, ui=build.ui.targeted(f"{build.name} ({spec.type})"))
                try:
                    plugin = self._make_post_processor(spec, pp_ctx, where, build.ctx.generated or None)
                    new, forced_keep = plugin.post_process(prior)
                except Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - a post-processor failure ends its chain only
                    errors.append(f"Post-processor failed: {exc}")
                    completed = False
                    break
                if new is None:
                    completed = False
                    break
                keep = bool(forced_keep) or bool(spec.keep_input_artifact)
                if position == 0:
                    keep_original = keep_original or keep
                elif keep:
                    results.append(prior)
                else:
                    try:
                        prior.destroy()
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"Failed cleaning up prior artifact: {exc}; pp is {spec.type}")
                prior = new
            if completed:
                results.append(prior)
        if keep_original:
            results.insert(0, artifact)
        else:
            try:
                artifact.destroy()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"Error destroying builder artifact: {exc}; bad artifact: "
                              f"{[str(f) for f in artifact.files]}")
        if errors:
            raise BuildError(multi_error(errors))
        return results

    # -------------------------------------------------------------------------------------------------- summary
    def _summary(self, builds: Sequence[PreparedBuild], seconds: float) -> int:
        out = self.output
        out.say(f"\n==> Wait completed after {durafmt(seconds)}")
        if self.interrupted.is_set():
            out.say(CANCELLED_MESSAGE)
            return 1
        order = [b.name for b in builds]
        results = [self.results[n] for n in order if n in self.results]
        failed = [r for r in results if r.error is not None]
        succeeded = [r for r in results if r.error is None and r.artifacts]
        if failed:
            out.machine("error-count", str(len(failed)))
            out.error("\n==> Some builds didn't complete successfully and had errors:")
            for r in failed:
                out.machine("error", r.error or "", target=r.name)
                out.error(f"--> {r.name}: {r.error}")
        if succeeded:
            out.say("\n==> Builds finished. The artifacts of successful builds are:")
            for r in succeeded:
                out.machine("artifact-count", str(len(r.artifacts)), target=r.name)
                for i, artifact in enumerate(r.artifacts):
                    description = describe(artifact)
                    index = str(i)
                    out.machine("artifact", index, "builder-id", artifact.builder_id, target=r.name)
                    out.machine("artifact", index, "id", artifact.artifact_id, target=r.name)
                    out.machine("artifact", index, "string", description, target=r.name)
                    out.machine("artifact", index, "files-count", str(len(artifact.files)), target=r.name)
                    for fi, path in enumerate(artifact.files):
                        out.machine("artifact", index, "file", str(fi), str(path), target=r.name)
                    out.machine("artifact", index, "end", target=r.name)
                    out.say(f"--> {r.name}: {description}")
        else:
            out.say("\n==> Builds finished but no artifacts were created.")
        return 1 if failed or len(results) < len(order) else 0

    # -------------------------------------------------------------------------------------------------- signals
    def interrupt(self, signame: str = "interrupt") -> None:
        """Cancel every build as SIGINT does (usable from another thread)."""
        self._signals_seen += 1
        if self._signals_seen == 1:
            self._pending_notes.append(f"Cancelling build after receiving {signame}")
            self.interrupted.set()
            self.cancel.set()
        else:
            self._pending_notes.append(
                f"Received {signame} again: ignored while the builds clean up (cleanups must finish so nothing is "
                "left behind); please wait.")

    def _flush_notes(self) -> None:
        while self._pending_notes:
            self.output.error(self._pending_notes.pop(0))

    @contextlib.contextmanager
    def handle_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into cancellation while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            self.interrupt(_SIGNAL_NAMES.get(signal.Signals(signum), signal.Signals(signum).name))

        previous = {sig: signal.signal(sig, handler) for sig in _SIGNAL_NAMES}
        try:
            yield
        finally:
            self._flush_notes()
            for sig, old in previous.items():
                signal.signal(sig, old)


def describe(artifact: Artifact) -> str:
    """The artifact's description for ``--> build: <description>`` (a leading ``<build>: `` is dropped)."""
    text = artifact.describe()
    prefix = f"{artifact.build_name}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class _BuildConfigError(Exception):
    def __init__(self, problem: BuildProblem) -> None:
        super().__init__(problem.render())
        self.problem = problem


# ------------------------------------------------------------------------------------------------------- steps
class _ReportingStep(Step):
    """Wraps a builder step: status/elapsed of each attempt on the UI, Packer's -on-error=ask prompt and abort
    messages (which name the step by its type, as Packer's ``typeName(step)`` does)."""

    def __init__(self, runner: BuildRunner, build: PreparedBuild, inner: Any, index: int, count: int,
                 aborted: threading.Event) -> None:
        self.runner = runner
        self.build = build
        self.inner = inner
        self.index = index
        self.count = count
        self.aborted = aborted
        # a plugin's step may be any object with name/run/cleanup (the ``Step`` base is not required of plugins)
        self.name = str(getattr(inner, "name", "") or type(inner).__name__)
        self.temporary = bool(getattr(inner, "temporary", False))
        self.type_name = type(inner).__name__

    def done(self, seconds: float) -> None:
        if isinstance(self.inner, Step):
            self.inner.done(seconds)

    def run(self, state: dict[str, Any]) -> None:
        ui = self.build.ui
        while True:
            ui.step_started(self.name, self.index, self.count)
            started = time.monotonic()
            ok = False
            try:
                self.inner.run(state)
                ok = True
                return
            except Cancelled:
                raise
            except Exception as exc:
                if self.runner.options.on_error == "abort":
                    ui.error(str(exc))
                    ui.error(f'Step "{self.type_name}" failed, aborting...')
                    raise
                if not self.runner._ask:
                    raise
                ui.error(str(exc))
                answer = self._ask()
                if answer == "retry":
                    continue
                if answer == "abort":
                    self.aborted.set()
                raise
            finally:
                ui.step_finished(self.name, time.monotonic() - started, ok)

    def _ask(self) -> str:
        ui = self.build.ui
        ui.say(f'Step "{self.type_name}" failed')
        for _ in range(100):
            line = ui.ask(ASK_PROMPT, self.runner.cancel)
            if line is None:
                return "cleanup"
            choice = (line.lower() + "c")[0]
            if choice == "c":
                return "cleanup"
            if choice == "a":
                return "abort"
            if choice == "r":
                return "retry"
            ui.say(f"Incorrect input: {json.dumps(line)}")
        return "cleanup"

    def cleanup(self, state: dict[str, Any]) -> None:
        if self.aborted.is_set():
            self.build.ui.error(f'aborted: skipping cleanup of step "{self.type_name}"')
            return
        self.inner.cleanup(state)


# ------------------------------------------------------------------------------------------------ provisioning
class _ProvisionHook:
    """``builders.core.ProvisionHook`` for one build: the template's provisioners in order."""

    def __init__(self, runner: BuildRunner, build: PreparedBuild) -> None:
        self.runner = runner
        self.build = build

    def run(self, communicator: Communicator) -> None:
        if not self.build.provisioners:
            return
        try:
            for spec in self.build.provisioners:
                self._run_one(spec, communicator, f"provisioner {spec.index + 1} ({spec.type})")
        except Cancelled:
            raise
        except Exception as exc:
            self.build.ui.say("Provisioning step had errors: Running the cleanup provisioner, if present...")
            cleanup = self.runner.template.error_cleanup_provisioner
            if cleanup is not None and cleanup.applies_to(self.build.name) and not self.runner.cancel.is_set():
                try:
                    self._run_one(cleanup, communicator, f"error-cleanup-provisioner ({cleanup.type})")
                except Cancelled:
                    raise
                except Exception as cleanup_exc:  # noqa: BLE001
                    raise BuildError(f"Cleanup failed: {cleanup_exc}. Original Provisioning error: {exc}") from exc
            raise

    def _run_one(self, spec: ProvisionerSpec, communicator: Communicator, where: str) -> None:
        build = self.build
        ui = build.ui
        cls = load_provisioner(spec.type)
        if getattr(communicator, "is_null", False) and getattr(cls, "needs_communicator", True):
            ui.say(f"Skipping provisioner '{spec.type}': the {build.spec.type} builder has no machine to run it on")
            return
        if spec.pause_before:
            ui.say(f"Pausing {go_duration(spec.pause_before)} before the next provisioner...")
            if self.runner.cancel.wait(spec.pause_before):
                raise Cancelled("cancelled while pausing before a provisioner")
        error: Exception | None = None
        for attempt in range(spec.max_retries + 1):
            if attempt:
                if self.runner.cancel.is_set():
                    raise Cancelled("Build was cancelled.")
                ui.say(f"Provisioner failed with {json.dumps(str(error))}, retrying with "
                       f"{spec.max_retries - attempt + 1} trie(s) left")
            try:
                self._attempt(spec, communicator, where)
                return
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then re-raised
                error = exc
        if spec.max_retries:
            ui.say("retry limit reached.")
        assert error is not None
        raise error

    def _attempt(self, spec: ProvisionerSpec, communicator: Communicator, where: str) -> None:
        build = self.build
        ctx = build.ctx
        deadline: _DeadlineEvent | None = None
        if spec.timeout:
            build.ui.say(f"Setting a {go_duration(spec.timeout)} timeout for the next provisioner...")
            deadline = _DeadlineEvent(self.runner.cancel, spec.timeout)
            ctx = dataclasses.replace(ctx, cancel=deadline)
        try:
            plugin = self.runner._make_provisioner(spec, ctx, where, generated=dict(build.ctx.generated))
            plugin.provision(communicator)
        except Exception:
            if deadline is not None and deadline.expired() and not self.runner.cancel.is_set():
                build.ui.error("Cancelling provisioner after a timeout...")
                raise BuildError(f"{where}: timed out after {go_duration(spec.timeout or 0)}") from None
            raise
