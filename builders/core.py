"""The contracts between the build runner and its plugins: builder types, provisioners, post-processors and
communicators. Everything here is small and import-light; plugins live in ``builders.builder_types``,
``builders.provisioners`` and ``builders.postprocessors`` and are found through ``builders.registry``.

Flow of one build (Packer's model): the runner renders the builder's config (template functions, user
variables), constructs the builder type, calls ``prepare`` (config errors name the key), asks it for its ``steps``
and runs them with ``stemforge_base.steps.StepRunner`` (cleanups in reverse on failure, Ctrl-C or SIGTERM). One of those
steps calls ``ProvisionHook.run(communicator)``, which runs the template's provisioners in order over whatever
communicator the builder offers (SSH into a VM, a chroot, the local shell). The builder then returns an
``Artifact``; each post-processor chain turns artifacts into new artifacts.
"""

from __future__ import annotations

import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from stemforge_base.steps import Cancelled, Step

ConfigT = TypeVar("ConfigT")


class ConfigError(Exception):
    """A template or plugin option is invalid; the message names the build, the plugin and the key, e.g.
    ``qemu.ubuntu: unknown configuration key: 'iso_ur'``. Collected errors are joined one per line."""


class BuildError(Exception):
    """A build step failed; the message says which step and why."""


class Ui(Protocol):
    """Where a build reports. Human output goes to the terminal (with progress on a tty); ``-machine-readable``
    turns every call into ``timestamp,target,type,data...`` lines."""

    def say(self, message: str) -> None:
        """A step-level line (``==> name: message``)."""

    def message(self, message: str) -> None:
        """A detail line under the current step (``    name: message``)."""

    def error(self, message: str) -> None:
        """An error line."""

    def progress(self, label: str, done: int, total: int | None) -> None:
        """Byte progress of a copy/convert/upload (rendered as a bar on a terminal, throttled lines otherwise)."""


@dataclass
class BuildContext:
    """What a plugin may know about the run it is part of."""

    build_name: str
    build_type: str
    ui: Ui
    cancel: threading.Event
    template_dir: Path
    run_uuid: str
    on_error: str = "cleanup"  # cleanup | abort | ask
    force: bool = False
    #: Packer's "generated data" for the ``build`` template function (ID, Host, Port, User, SSHPublicKey, ...),
    #: filled by builder steps and read by provisioners at provision time.
    generated: dict[str, Any] = field(default_factory=dict)
    #: Renders template strings in provisioner configs once ``generated`` is known (set by the runner).
    render: Callable[[Any], Any] = field(default=lambda value: value)
    #: Hides sensitive values (and values derived from them) in text a plugin writes to a file, e.g. a manifest
    #: (set by the runner to the template's mask; terminal output is masked by the UI already).
    mask: Callable[[str], str] = field(default=lambda text: text)

    def check_cancelled(self) -> None:
        """Raise ``stemforge_base.steps.Cancelled`` if the run was cancelled; long waits call this while polling."""
        if self.cancel.is_set():
            raise Cancelled(f"{self.build_name}: cancelled")


@dataclass
class CommandResult:
    exit_status: int
    stdout: str = ""
    stderr: str = ""


class Communicator(ABC):
    """How provisioners reach the machine being built. Output of commands is streamed to the UI line by line."""

    @abstractmethod
    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        """Run ``command`` through the remote shell; never raises for a non-zero exit status (the caller decides).
        ``timeout`` bounds it (BuildError on expiry); cancellation interrupts it."""

    @abstractmethod
    def upload(self, source: Path, destination: str) -> None:
        """Copy a local file or directory (recursively, Packer's trailing-slash rules) to the machine."""

    @abstractmethod
    def download(self, source: str, destination: Path) -> None:
        """Copy a file or directory from the machine to the local path."""


@dataclass
class Artifact:
    """What a builder or post-processor produced (Packer's packersdk.Artifact)."""

    builder_id: str
    build_name: str
    builder_type: str
    files: list[Path]
    artifact_id: str
    #: Extra data (Packer's ``Artifact.State(name)``): e.g. ``{"format": "qcow2", "regions": {"site-a": "<id>"},
    #: "sha256": "...", "tests": {...}}``. It travels down a post-processor chain: a post-processor that makes a new
    #: artifact starts from ``carried_state`` so what an earlier one recorded (``cpi-test``'s results) reaches a later
    #: one (``release``); there is no other channel between post-processors.
    state: dict[str, Any] = field(default_factory=dict)

    def carried_state(self, **updates: Any) -> dict[str, Any]:
        """A copy of this artifact's state with ``updates`` on top: the state of an artifact made from this one."""
        return {**self.state, **updates}

    def describe(self) -> str:
        listing = "\n".join(f"  {f}" for f in self.files) or "  (no files)"
        return f"{self.build_name}: {self.artifact_id}\n{listing}"

    def destroy(self) -> None:
        """Remove the artifact's files (used when a post-processor does not keep its input)."""
        for f in self.files:
            if f.is_dir():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)


class Plugin:
    """Base of every configurable plugin. ``options_schema`` is a JSON schema of the options (with
    ``additionalProperties: false`` so an unknown key is a ConfigError naming it); ``type_name`` is the
    template's ``type``."""

    type_name: ClassVar[str] = ""
    options_schema: ClassVar[dict[str, Any]] = {"type": "object"}

    def __init__(self, config: Mapping[str, Any], ctx: BuildContext) -> None:
        self.config = dict(config)
        self.ctx = ctx

    def prepare(self) -> list[str]:
        """Validate the (rendered) config; return warnings; raise ConfigError listing every problem."""
        return []


class ProvisionHook(Protocol):
    def run(self, communicator: Communicator) -> None:
        """Run the template's provisioners (those selected for this build) over ``communicator``."""


class BuildStep(Step, Generic[ConfigT]):
    """A builder type's step (``qemu``, ``amazon-ebs``, ``debian``): its prepared config and the build context."""

    def __init__(self, cfg: ConfigT, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @property
    def ui(self) -> Any:
        return self.ctx.ui

    def sleep(self, seconds: float) -> None:
        """Sleep, waking up for cancellation (raises ``Cancelled``)."""
        if seconds > 0 and self.ctx.cancel.wait(seconds):
            self.ctx.check_cancelled()
        self.ctx.check_cancelled()


class StepProvision(Step):
    """Packer's ``StepProvision``, shared by every builder type: run the template's provisioners over the build's
    communicator: ``state["communicator"]``, or what ``communicator(state)`` returns (None: nothing to run)."""

    name = "provision"

    def __init__(self, hook: ProvisionHook,
                 communicator: Callable[[dict[str, Any]], Communicator | None] | None = None) -> None:
        self.hook = hook
        self._communicator = communicator

    def run(self, state: dict[str, Any]) -> None:
        comm = state["communicator"] if self._communicator is None else self._communicator(state)
        if comm is not None:
            self.hook.run(comm)


class BuilderType(Plugin):
    """A builder type (``qemu``, ``debian``, ``file``). ``steps`` returns the build as Packer-style steps;
    one of them must call ``hook.run(communicator)`` unless the builder has no communicator (then provisioners
    are an error at prepare time)."""

    @abstractmethod
    def steps(self, hook: ProvisionHook) -> Sequence[Step]:
        """The build's steps (``stemforge_base.steps.Step``), sharing a state dict."""

    @abstractmethod
    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        """The artifact after the steps succeeded (None when the build produced nothing)."""


class Provisioner(Plugin):
    @abstractmethod
    def provision(self, communicator: Communicator) -> None:
        """Do the provisioning; raise BuildError with a clear message on failure."""


class PostProcessor(Plugin):
    @abstractmethod
    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        """Return the new artifact and whether the input artifact must be kept regardless of
        ``keep_input_artifact`` (Packer's ``keep`` result). Must remove anything it created before raising."""
