"""Packer's ``artifice`` post-processor (packer ``post-processor/artifice/``): replace the artifact with files the
build produced (e.g. something a ``file`` provisioner downloaded), so later post-processors (``checksum``,
``compress``, ``manifest``) work on those.

``files`` (required: ``No files specified in artifice configuration``) are glob patterns relative to the working
directory, expanded at post-process time in order, each match in lexical order (Go's ``filepath.Glob``); a
pattern that matches nothing adds nothing, as in Packer (stemforge says so). The new artifact's builder id is
``packer.post-processor.artifice`` and its id is empty. The input artifact is kept by default (Packer's default;
stemforge's runner cannot let ``keep_input_artifact: false`` override a post-processor's choice).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.core import Artifact, BuildError, ConfigError, PostProcessor
from builders.postprocessors import validated_options
from builders.registry import closed_object

BUILDER_ID: Final = "packer.post-processor.artifice"


class ArtificePostProcessor(PostProcessor):
    type_name: ClassVar[str] = "artifice"
    options_schema: ClassVar[dict[str, Any]] = closed_object({"files": {"type": "array", "items": {"type": "string"}}})

    def prepare(self) -> list[str]:
        options = validated_options(self)
        self.files: list[str] = [str(f) for f in options.get("files") or []]
        if not self.files:
            raise ConfigError(f"{self.ctx.build_name}: post-processor artifice: No files specified in artifice "
                              "configuration")
        return []

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if not hasattr(self, "files"):
            self.prepare()
        ui = self.ctx.ui
        if artifact.files:
            ui.say(f"Discarding files from artifact: {', '.join(str(f) for f in artifact.files)}")
        found: list[Path] = []
        for pattern in self.files:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
                [pattern] if os.path.lexists(pattern) else [])
            if not matches:
                ui.say(f"artifice: no file matches {pattern!r}")
            for match in matches:
                try:
                    os.stat(match)
                except OSError as exc:
                    raise BuildError(f"stat {match}: {exc.strerror or exc}") from None
                found.append(Path(match))
        ui.say(f"Using these artifact files: {', '.join(str(f) for f in found)}")
        return Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, found, "", {}), True


PLUGIN = ArtificePostProcessor
