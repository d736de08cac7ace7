"""``manifest``: Packer's ``packer-manifest.json``, byte for byte.

Options (Packer's): ``output`` (default ``packer-manifest.json``, relative to the working directory),
``strip_path`` (file names without their directory), ``strip_time`` (no ``build_time``), ``custom_data``
(string values, rendered as templates with the build's generated data).

Format, as Go's ``json.MarshalIndent(manifest, "", "  ")`` writes it (no trailing newline, ``<``, ``>`` and ``&``
escaped as ``\\u003c``/``\\u003e``/``\\u0026``, map keys sorted, ``null`` for a build without files or custom data)::

    {
      "builds": [
        {
          "name": "...", "builder_type": "...", "build_time": 1700000000,
          "files": [{"name": "...", "size": 123}],
          "artifact_id": "site-a:/srv/x.qcow2,site-b:...", "packer_run_uuid": "...", "custom_data": null
        }
      ],
      "last_run_uuid": "..."
    }

Each run appends its build to an existing manifest's ``builds`` and sets ``last_run_uuid``; with ``-force`` a
manifest last written by another run is started afresh. Parallel builds in one process serialise on a lock, and
separate processes on ``<output>.lock`` (created exclusively, as Packer does). The file is replaced atomically.
The post-processor returns its input artifact and forces it to be kept (it only records).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.core import Artifact, BuildError
from builders.postprocessors import ValidatedPostProcessor, render_output
from builders.registry import closed_object

DEFAULT_OUTPUT: Final = "packer-manifest.json"
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD: Final = threading.Lock()
_BUILD_KEYS: Final = ("name", "builder_type", "build_time", "files", "artifact_id", "packer_run_uuid", "custom_data")


def go_json(value: Any) -> str:
    """``json.MarshalIndent(value, "", "  ")`` as Go writes it (HTML-safe escapes, raw UTF-8)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, separators=(",", ": "))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def normalise_build(entry: Any) -> dict[str, Any]:
    """One ``builds`` element the way Go round-trips it through its struct: known fields only, in struct order,
    zero values for missing ones, ``build_time`` omitted when 0."""
    data = entry if isinstance(entry, Mapping) else {}
    files = data.get("files")
    custom = data.get("custom_data")
    out: dict[str, Any] = {
        "name": str(data.get("name") or ""),
        "builder_type": str(data.get("builder_type") or ""),
        "build_time": int(data.get("build_time") or 0),
        "files": None if not isinstance(files, list) else [
            {"name": str((f or {}).get("name") or ""), "size": int((f or {}).get("size") or 0)}
            for f in files if isinstance(f, Mapping) or f is None],
        "artifact_id": str(data.get("artifact_id") or ""),
        "packer_run_uuid": str(data.get("packer_run_uuid") or ""),
        "custom_data": None if not isinstance(custom, Mapping) else {str(k): str(v) for k, v in
                                                                       sorted(custom.items())},
    }
    if not out["build_time"]:
        del out["build_time"]
    return out


def render_manifest(builds: list[dict[str, Any]], last_run_uuid: str) -> str:
    """The whole file's text."""
    return go_json({"builds": builds or None, "last_run_uuid": last_run_uuid})


def _masked(value: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {k: _masked(v, mask) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, mask) for v in value]
    return value


class ManifestPostProcessor(ValidatedPostProcessor):
    """Record the artifact in a Packer manifest."""

    type_name: ClassVar[str] = "manifest"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "output": {"type": "string"},
            "strip_path": {"type": "boolean"},
            "strip_time": {"type": "boolean"},
            "custom_data": {"type": "object", "additionalProperties": {"type": "string"}},
        })

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        options = self.options
        output = Path(render_output(self.ctx, str(options.get("output") or DEFAULT_OUTPUT), {}))
        custom = options.get("custom_data")
        custom_data = None if custom is None else {
            str(k): render_output(self.ctx, str(v), {}, key=f"custom_data.{k}") for k, v in custom.items()}
        files = []
        for name in artifact.files:
            try:
                size = os.stat(name).st_size
            except OSError:
                size = 0
            files.append({"name": os.path.basename(name) if options.get("strip_path") else str(name),
                          "size": size})
        entry = normalise_build({
            "name": self.ctx.build_name,
            "builder_type": self.ctx.build_type,
            "build_time": 0 if options.get("strip_time") else int(time.time()),
            "files": files or None,
            "artifact_id": artifact.artifact_id,
            "packer_run_uuid": self.ctx.run_uuid,
            "custom_data": custom_data,
        })
        entry = _masked(entry, self.ctx.mask)  # values derived from sensitive variables never reach the file
        self._append(output, entry)
        self.ctx.ui.message(f"Adding build '{self.ctx.build_name}' artifact to {output}")
        return artifact, True

    def _append(self, output: Path, entry: dict[str, Any]) -> None:
        key = os.path.abspath(output)
        with _PROCESS_LOCKS_GUARD:
            lock = _PROCESS_LOCKS.setdefault(key, threading.Lock())
        with lock, _file_lock(output):
            builds: list[dict[str, Any]] = []
            last_run = ""
            try:
                raw = output.read_bytes()
            except FileNotFoundError:
                raw = b""
            except OSError as exc:
                raise BuildError(f"Unable to open {output} for reading: {exc.strerror or exc}") from exc
            if raw:
                try:
                    existing = json.loads(raw)
                except ValueError as exc:
                    raise BuildError(f"Unable to parse content from {output}: {exc}") from exc
                if isinstance(existing, Mapping):
                    builds = [normalise_build(b) for b in existing.get("builds") or []]
                    last_run = str(existing.get("last_run_uuid") or "")
            if self.ctx.force and last_run != self.ctx.run_uuid:
                builds = []
            builds.append(entry)
            text = render_manifest(builds, self.ctx.run_uuid)
            if output.parent and not output.parent.exists():
                output.parent.mkdir(parents=True, exist_ok=True)
            tmp = output.with_name(f".{output.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o664)
                with open(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, output)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise BuildError(f"Unable to write {output}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _file_lock(output: Path) -> Any:
    """Packer's ``<output>.lock``: created exclusively (3 tries, 200 ms apart), removed afterwards; an flock on
    it as well so that two stemforge processes never interleave."""
    lock_path = Path(f"{output}.lock")
    fd = None
    for attempt in range(3):
        time.sleep(attempt * 0.2)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
        except OSError:
            break  # an unwritable directory: the write below reports it
    if fd is None:
        with contextlib.suppress(OSError):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)
            with contextlib.suppress(OSError):
                lock_path.unlink()


PLUGIN = ManifestPostProcessor
