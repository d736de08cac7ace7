"""``checksum``: Packer's checksum files.

Options (Packer's): ``checksum_types`` (any of md5, sha1, sha224, sha256, sha384, sha512; default ``["md5"]``),
``output`` (a template; default ``packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum``, with
``.BuildName``, ``.BuilderType``, ``.ChecksumType`` and the build's generated data as its dot).

For every type and every artifact file, ``<hex digest>\\t<file base name>\\n`` is appended to the rendered output
file (created 0644 with its directories), exactly as Packer writes it. The new artifact's files are the input's
plus every checksum file this run created; its id is empty (Packer's). Files are hashed once for all requested
types, streamed, with progress. On failure every checksum file this run created is removed and every file it
appended to is truncated back, so nothing half-written is left. The input is always kept (Packer forces it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.core import Artifact, BuildError, ConfigError
from builders.destinations import CHUNK
from builders.postprocessors import Progress, ValidatedPostProcessor, render_output
from builders.registry import closed_object

BUILDER_ID: Final = "packer.post-processor.checksum"
DEFAULT_OUTPUT: Final = "packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum"
CHECKSUM_TYPES: Final = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def file_digests(path: Path, types: list[str], progress: Progress | None = None) -> dict[str, str]:
    """Hex digests of ``path`` for every type in ``types``, reading the file once."""
    hashers = {t: hashlib.new(t) for t in types}
    done = 0
    with open(path, "rb", buffering=0) as fh:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while count := fh.readinto(view):
            chunk = view[:count]
            for hasher in hashers.values():
                hasher.update(chunk)
            done += count
            if progress is not None:
                progress(done)
    return {t: h.hexdigest() for t, h in hashers.items()}


class ChecksumPostProcessor(ValidatedPostProcessor):
    type_name: ClassVar[str] = "checksum"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "checksum_types": {"type": "array", "items": {"type": "string"}},
            "output": {"type": "string"},
        })

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        types = options.get("checksum_types")
        if types is None:
            types = ["md5"]
        bad = [t for t in types if t not in CHECKSUM_TYPES]
        if bad:
            where = f"{self.ctx.build_name}: post-processor checksum"
            raise ConfigError("\n".join(f"{where}: Unrecognized checksum type: {t}" for t in bad))
        options["checksum_types"] = list(types)
        return options

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        types: list[str] = self.options["checksum_types"]
        template = str(self.options.get("output") or DEFAULT_OUTPUT)
        created: list[Path] = []
        appended: dict[Path, int] = {}
        new_files = [Path(f) for f in artifact.files]
        recorded: dict[str, dict[str, str]] = {}
        try:
            for name in artifact.files:
                source = Path(name)
                try:
                    digests = file_digests(source, types, Progress(self.ctx, f"checksum {source.name}",
                                                                   _size(source)))
                except OSError as exc:
                    raise BuildError(f"unable to open file {source}: {exc.strerror or exc}") from exc
                recorded[str(source)] = digests
                for checksum_type in types:
                    target = Path(render_output(self.ctx, template, {"ChecksumType": checksum_type}))
                    if not target.exists() and target not in created:
                        created.append(target)
                        new_files.append(target)
                    elif target not in appended and target not in created:
                        appended[target] = target.stat().st_size
                    try:
                        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                        with open(fd, "w", encoding="utf-8") as sums:
                            sums.write(f"{digests[checksum_type]}\t{source.name}\n")
                    except OSError as exc:
                        raise BuildError(f"unable to create file {target}: {exc.strerror or exc}") from exc
        except BaseException:
            for path in created:
                with contextlib.suppress(OSError):
                    path.unlink()
            for path, size in appended.items():
                with contextlib.suppress(OSError):
                    os.truncate(path, size)
            raise
        for path in created:
            self.ctx.ui.message(f"Wrote checksum file {path}")
        out = Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, new_files, "",
                       {"checksums": recorded})
        return out, True


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


PLUGIN = ChecksumPostProcessor
