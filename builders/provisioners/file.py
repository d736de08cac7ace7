"""Packer's ``file`` provisioner: copy files between the build host and the machine being built.

``direction: upload`` (default) copies each of ``source``/``sources`` (or ``content`` written to a temporary
file) to ``destination`` on the machine; ``direction: download`` copies from the machine to the host. Packer's
path rules:

* a source directory ending in ``/`` copies its contents into ``destination``; without the slash the directory
  itself is created inside ``destination`` (rsync semantics);
* a file whose ``destination`` ends in ``/`` keeps its name inside that directory;
* on download, a ``destination`` ending in ``/`` receives the source under its own name (a directory source
  without a trailing ``/`` arrives as that directory), the local parent directories are created, and a source
  containing ``*?[`` is expanded on the machine, every match landing in the ``destination`` directory.

Sources and destinations are handed to the communicator as strings so the trailing slash survives (the ssh,
chroot and local communicators apply the same rules).

Sources must exist at prepare time unless ``generated`` is true (made earlier in the build).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from builders.core import BuildError, Communicator, ConfigError, Provisioner
from builders.provisioners import command_timeout


class FileProvisioner(Provisioner):
    type_name: ClassVar[str] = "file"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "source": {"type": "string"},
            "sources": {"type": "array", "items": {"type": "string"}},
            "content": {"type": "string"},
            "destination": {"type": "string"},
            "direction": {"type": "string"},
            "generated": {"type": "boolean"},
        },
    }

    def prepare(self) -> list[str]:
        c = self.config
        errors: list[str] = []
        self.direction: str = c.get("direction") or "upload"
        if self.direction not in ("upload", "download"):
            errors.append("Direction must be one of: download, upload.")
        sources = [str(s) for s in c.get("sources") or []]
        if c.get("source"):
            sources.append(str(c["source"]))
        self.sources: list[str] = sources
        self.content: str | None = c.get("content")
        if self.content is not None and sources:
            errors.append("Cannot specify both source(s) and content.")
        if self.content is not None and self.direction == "download":
            errors.append("content can only be used with direction upload.")
        if self.direction == "upload" and not c.get("generated"):
            for src in sources:
                try:
                    os.stat(src)
                except OSError as exc:
                    errors.append(f"Bad source '{src}': {exc.strerror or exc}")
        if not sources and self.content is None:
            errors.append("Source must be specified.")
        self.destination: str = c.get("destination") or ""
        if not self.destination:
            errors.append("Destination must be specified.")
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    def provision(self, communicator: Communicator) -> None:
        if self.direction == "download":
            self._download(communicator)
        else:
            self._upload(communicator)

    # ------------------------------------------------------------------------------------------------- upload
    def _upload(self, communicator: Communicator) -> None:
        ui = self.ctx.ui
        dst = self.destination
        temporary: Path | None = None
        try:
            sources = list(self.sources)
            if self.content is not None:
                fd, name = tempfile.mkstemp(prefix="packer-file-content")
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.content)
                temporary = Path(name)
                sources = [name]
            for src in sources:
                shown = "<content>" if temporary is not None else src
                ui.say(f"Uploading {shown} => {dst}")
                self.ctx.check_cancelled()
                path = Path(src)
                try:
                    is_dir = path.is_dir()
                    if not path.exists():
                        raise BuildError(f"Bad source '{src}': no such file or directory")
                    if is_dir:
                        # keep the trailing slash: it decides between "contents" and "the directory itself"
                        communicator.upload(src if src.endswith("/") else path, dst)  # type: ignore[arg-type]
                        continue
                    filedst = dst + path.name if dst.endswith("/") else dst
                    communicator.upload(path, filedst)
                except BuildError as exc:
                    hint = ("; this can occur when your file destination is a folder without a trailing slash."
                            if "directory" in str(exc) and not dst.endswith("/") else "")
                    ui.error(f"Upload failed: {exc}{hint}")
                    raise
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------- download
    def _download(self, communicator: Communicator) -> None:
        ui = self.ctx.ui
        for src in self.sources:
            dst = self.destination
            ui.say(f"Downloading {src} => {dst}")
            self.ctx.check_cancelled()
            directory = dst if dst.endswith("/") else os.path.dirname(dst)
            if directory:
                Path(directory).mkdir(parents=True, exist_ok=True)
            try:
                if any(ch in src for ch in "*?["):
                    self._download_glob(communicator, src, dst)
                else:
                    # the communicator applies the trailing-slash rules (a str keeps the slash; Path drops it)
                    communicator.download(src, dst)  # type: ignore[arg-type]
            except BuildError as exc:
                ui.error(f"Download failed: {exc}")
                raise

    def _download_glob(self, communicator: Communicator, pattern: str, dst: str) -> None:
        """Expand ``pattern`` on the machine and download every match into the directory ``dst``."""
        script = f'for f in {_glob_quote(pattern)}; do [ -e "$f" ] && printf "%s\\n" "$f"; done; true'
        result = communicator.run(script, capture=True, timeout=command_timeout(self.ctx) or 120)
        matches = [line for line in result.stdout.splitlines() if line]
        if not matches:
            raise BuildError(f"no file on the machine matches {pattern}")
        Path(dst).mkdir(parents=True, exist_ok=True)
        for match in matches:
            self.ctx.check_cancelled()
            communicator.download(match, dst.rstrip("/") + "/")  # type: ignore[arg-type]


def _glob_quote(pattern: str) -> str:
    """Quote ``pattern`` for the shell but leave its glob characters active."""
    out = []
    for part in _split_glob(pattern):
        out.append(part if part in ("*", "?") or part.startswith("[") else shlex.quote(part))
    return "".join(out)


def _split_glob(pattern: str) -> list[str]:
    parts: list[str] = []
    literal = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch in "*?":
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(ch)
        elif ch == "[" and "]" in pattern[i + 1:]:
            if literal:
                parts.append(literal)
                literal = ""
            end = pattern.index("]", i + 1)
            parts.append(pattern[i:end + 1])
            i = end
        else:
            literal += ch
        i += 1
    if literal:
        parts.append(literal)
    return parts


PLUGIN = FileProvisioner
