"""Running a ``debian`` build outside a template: a plain UI, a provisioner hook and ``run_build``.

The template runner (``stemforge build``) is the normal entry; this module serves the cached test image, the
timing helper and tests: it drives the builder's own steps with ``stemforge_base.steps.StepRunner`` and the given
provisioners (``[(type, options), ...]``, loaded by the plugin convention ``builders.provisioners.<type>``).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from builders.core import Artifact, BuildContext, Communicator, Provisioner, ProvisionHook
from stemforge_base.steps import StepRunner

from .builder import DebianBuilder


@dataclass
class PlainUi:
    """Plain ``==> name: ...`` lines on a stream; byte progress at most every 10% per label."""

    name: str
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    _last: dict[str, int] = field(default_factory=dict)

    def say(self, message: str) -> None:
        self._write(f"==> {self.name}: {message}")

    def message(self, message: str) -> None:
        self._write(f"    {self.name}: {message}")

    def error(self, message: str) -> None:
        self._write(f"==> {self.name}: ERROR: {message}")

    def progress(self, label: str, done: int, total: int | None) -> None:
        if not total:
            return
        tenth = done * 10 // total
        if self._last.get(label) != tenth:
            self._last[label] = tenth
            self._write(f"    {self.name}: {label}: {done // (1024 * 1024)}/{total // (1024 * 1024)} MiB")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def load_provisioner(type_name: str, options: Mapping[str, Any], ctx: BuildContext) -> Provisioner:
    module = importlib.import_module(f"builders.provisioners.{type_name.replace('-', '_')}")
    plugin: Provisioner = module.PLUGIN(options, ctx)
    plugin.prepare()
    return plugin


@dataclass
class ProvisionerHook:
    """Runs the given provisioners in order over the builder's communicator."""

    provisioners: Sequence[Provisioner]

    def run(self, communicator: Communicator) -> None:
        for provisioner in self.provisioners:
            provisioner.provision(communicator)


@dataclass
class BuildResult:
    artifact: Artifact
    state: dict[str, Any]
    seconds: float
    step_seconds: dict[str, float]


def make_context(build_name: str, *, force: bool = False, cancel: threading.Event | None = None,
                 template_dir: Path | None = None, stream: TextIO | None = None) -> BuildContext:
    ui = PlainUi(build_name, stream) if stream is not None else PlainUi(build_name)
    return BuildContext(build_name=build_name, build_type="debian", ui=ui, cancel=cancel or threading.Event(),
                        template_dir=template_dir or Path.cwd(), run_uuid=str(uuid.uuid4()), force=force)


def run_build(options: Mapping[str, Any], build_name: str, provisioners: Sequence[tuple[str, Mapping[str, Any]]] = (),
              *, force: bool = False, cancel: threading.Event | None = None, template_dir: Path | None = None,
              stream: TextIO | None = None, hook: ProvisionHook | None = None) -> BuildResult:
    """Prepare and run one ``debian`` build; raises what the steps raise (after their cleanups ran). ``hook``
    replaces the default hook (which runs ``provisioners`` in order)."""

    ctx = make_context(build_name, force=force, cancel=cancel, template_dir=template_dir, stream=stream)
    builder = DebianBuilder(options, ctx)
    for warning in builder.prepare():
        ctx.ui.message(f"warning: {warning}")
    if hook is None:
        hook = ProvisionerHook([load_provisioner(t, o, ctx) for t, o in provisioners])
    state: dict[str, Any] = {}
    runner = StepRunner(log=logging.getLogger(f"stemforge.build.{build_name}"), cancel=ctx.cancel)
    started = time.monotonic()
    runner.run(builder.steps(hook), state)
    artifact = builder.artifact(state)
    assert artifact is not None
    return BuildResult(artifact, state, time.monotonic() - started, runner.seconds())
