"""Packer's ``file`` builder: the artifact is a file on this host, either a copy of ``source`` or ``content``
written to ``target`` (an existing image imported as it is, or a quick artifact for testing the runner and the
post-processors without a VM).

Steps: ``StepCreateFile`` (creates missing parent directories, copies or writes through a ``.part`` file, reports
progress for large copies; on failure or cancellation its cleanup removes the target and the directories it
created) and ``StepProvision`` (runs the provision hook with no machine: ``shell-local`` runs, provisioners that
need a machine are skipped with a message, as Packer's mock communicator makes them no-ops).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from builders.communicators import NullCommunicator
from builders.core import Artifact, BuildContext, BuildError, BuilderType, ConfigError, ProvisionHook, StepProvision
from builders.registry import closed_object
from stemforge_base.steps import Step

BUILDER_ID = "packer.file"
_CHUNK = 4 * 1024 * 1024


class FileArtifact(Artifact):
    """Packer's ``FileArtifact``: id ``File``, described as ``Stored file: <target>``."""

    def describe(self) -> str:
        return f"Stored file: {self.files[0]}" if self.files else "Stored file: (none)"


class StepCreateFile(Step):
    """Copy ``source`` (or write ``content``) to ``target``."""

    name = "create_file"

    def __init__(self, ctx: BuildContext, target: Path, source: Path | None, content: str) -> None:
        self.ctx = ctx
        self.target = target
        self.source = source
        self.content = content

    def run(self, state: dict[str, Any]) -> None:
        ui = self.ctx.ui
        created: list[Path] = []
        missing = []
        parent = self.target.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:  # a parallel build made it first: not ours to remove
                continue
            created.append(directory)
        state["file_created_dirs"] = created
        partial = self.target.with_name(f".{self.target.name}.part")
        state["file_partial"] = partial
        if self.source is not None:
            ui.say(f"Copying {self.source} to {self.target}")
            try:
                size = self.source.stat().st_size
                copied = 0
                with open(self.source, "rb") as fin, open(partial, "wb") as fout:
                    while True:
                        self.ctx.check_cancelled()
                        chunk = fin.read(_CHUNK)
                        if not chunk:
                            break
                        fout.write(chunk)
                        copied += len(chunk)
                        if size > _CHUNK:
                            ui.progress(f"copy {self.source.name}", copied, size)
            except OSError as exc:
                raise BuildError(f"copying {self.source} to {self.target} failed: {exc}") from None
            ui.say(f"Copied {copied} bytes")
        else:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.content)
        os.replace(partial, self.target)
        state["file_target"] = self.target

    def cleanup(self, state: dict[str, Any]) -> None:
        partial = state.get("file_partial")
        if isinstance(partial, Path):
            partial.unlink(missing_ok=True)
        target = state.pop("file_target", None)
        if isinstance(target, Path) and target.exists():
            self.ctx.ui.say(f"Deleting {target}...")
            target.unlink(missing_ok=True)
        for directory in reversed(state.pop("file_created_dirs", [])):
            with contextlib.suppress(OSError):
                directory.rmdir()


class FileBuilder(BuilderType):
    type_name: ClassVar[str] = "file"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "source": {"type": "string"},
            "target": {"type": "string"},
            "content": {"type": "string"},
        })

    def prepare(self) -> list[str]:
        errors: list[str] = []
        warnings: list[str] = []
        target = str(self.config.get("target") or "")
        source = str(self.config.get("source") or "")
        content = str(self.config.get("content") or "")
        if not target:
            errors.append("target required")
        if not content and not source:
            warnings.append("Both source file and contents are blank; target will have no content")
        if content and source:
            errors.append("Cannot specify source file AND content")
        if source and not content:
            path = Path(source)
            if not path.is_file():
                errors.append(f"source {source!r} is not a readable file")
        if errors:
            raise ConfigError("\n".join(errors))
        self.target = Path(target)
        self.source = Path(source) if source else None
        self.content = content
        return warnings

    def steps(self, hook: ProvisionHook) -> Sequence[Step]:
        return [
            StepCreateFile(self.ctx, self.target, self.source, self.content),
            StepProvision(hook, lambda state: NullCommunicator("file")),
        ]

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        target = state.get("file_target")
        if not isinstance(target, Path):
            return None
        return FileArtifact(
            builder_id=BUILDER_ID,
            build_name=self.ctx.build_name,
            builder_type=self.type_name,
            files=[target],
            artifact_id="File",
            state={"size": target.stat().st_size},
        )


PLUGIN = FileBuilder
