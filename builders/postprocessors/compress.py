"""``compress``: Packer's compress post-processor.

Options (Packer's): ``output`` (a template with ``.BuildName``/``.BuilderType``; default
``packer_{{.BuildName}}_{{.BuilderType}}``), ``format`` (overrides detection from the file name),
``compression_level`` (1-9, default 6; 0 and -1 mean the default, above 9 means 9 -- Packer's rules).
``keep_input_artifact`` is honoured by the runner (this post-processor does not force keeping the input).

The format is detected from the output name exactly as Packer does (the last two ``.ext`` groups): ``.tar`` and
``.zip`` archives; ``.gz`` (gzip), ``.lz4``, ``.xz`` and ``.bgzf`` compression, combinable with ``.tar``
(``.tar.gz``, ``.tar.lz4``, ...); anything else (``.tgz``, no extension) is a gzipped tar under the name given.
Without an archive exactly one input file is allowed (Packer's error otherwise). Tar members and zip entries are
named as Packer names them (tar: the file's base name; zip: the path as given, without a leading ``/``).

Everything streams (1 MiB at a time, progress per file, cancellation honoured) into a temporary file beside the
target that is renamed into place only when complete; on any failure nothing is left. ``.lz4`` uses the ``lz4``
command (Debian package ``lz4``) when the Python ``lz4`` module is absent.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, Final, cast

from builders.core import Artifact, BuildContext, BuildError, ConfigError
from builders.destinations import CHUNK
from builders.postprocessors import Progress, ValidatedPostProcessor, human_size, render_output
from builders.registry import closed_object

BUILDER_ID: Final = "packer.post-processor.compress"
DEFAULT_OUTPUT: Final = "packer_{{.BuildName}}_{{.BuilderType}}"
DEFAULT_LEVEL: Final = 6
_EXT_PATTERN: Final = re.compile(r"(?:\.([a-z0-9]+))")
_ALGORITHMS: Final = {"gz": "pgzip", "lz4": "lz4", "bgzf": "bgzf", "xz": "xz"}


def detect_format(output: str, format_override: str = "") -> tuple[str | None, str | None]:
    """Packer's ``detectFromFilename``: ``(archive, algorithm)`` where archive is ``tar``/``zip``/None and
    algorithm ``pgzip``/``lz4``/``bgzf``/``xz``/None."""
    groups = _EXT_PATTERN.findall(f"{output}.{format_override}" if format_override else output)
    if not groups:
        return "tar", "pgzip"
    last = groups[-1]
    before = groups[-2] if len(groups) > 1 else ""
    archive = "tar" if before == "tar" else None
    if last in ("zip", "tar"):
        return last, None
    if last in _ALGORITHMS:
        return archive, _ALGORITHMS[last]
    return "tar", "pgzip"


def normalise_level(level: int) -> int:
    """Packer's handling of ``compression_level``."""
    if level < -1:
        raise ValueError("Invalid compression level. Expected an integer from -1 to 9.")
    if level in (0, -1):
        return DEFAULT_LEVEL
    return min(level, 9)


class CompressPostProcessor(ValidatedPostProcessor):
    type_name: ClassVar[str] = "compress"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "output": {"type": "string"},
            "format": {"type": "string"},
            "compression_level": {"type": "integer"},
        })

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        try:
            options["compression_level"] = normalise_level(int(options.get("compression_level", 0)))
        except ValueError as exc:
            raise ConfigError(f"{self.ctx.build_name}: post-processor compress: 'compression_level': {exc}") \
                from None
        output = str(options.get("output") or DEFAULT_OUTPUT)
        _archive, algorithm = detect_format(output, str(options.get("format", "")))
        if algorithm == "lz4" and _lz4_frame() is None and shutil.which("lz4") is None:
            raise ConfigError(f"{self.ctx.build_name}: post-processor compress: lz4 compression needs the 'lz4' "
                              "command (Debian package lz4) or the Python lz4 module")
        return options

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        ui = self.ctx.ui
        template = str(self.options.get("output") or DEFAULT_OUTPUT)
        archive, algorithm = detect_format(template, str(self.options.get("format", "")))
        target = Path(render_output(self.ctx, template, {}))
        level = int(self.options["compression_level"])
        files = [Path(f) for f in artifact.files]
        if archive is None and len(files) != 1:
            raise BuildError(f"Can only have 1 input file when not using tar/zip. Found {len(files)} files: "
                             f"[{' '.join(str(f) for f in files)}]")
        try:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(f"Unable to create dir for archive {target}: {exc.strerror or exc}") from exc
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        compression = algorithm or "no compression"
        try:
            with open(tmp, "xb") as raw:
                writer = _compressor(algorithm, raw, level)
                try:
                    if archive == "tar":
                        ui.say(f"Tarring {target} with {compression}")
                        _write_tar(files, writer, self.ctx)
                    elif archive == "zip":
                        ui.say(f"Zipping {target}")
                        _write_zip(files, raw, level, self.ctx)
                    else:
                        ui.say(f"Archiving {files[0]} with {compression}")
                        _copy(files[0], writer, self.ctx)
                finally:
                    writer.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise BuildError(f"Unable to create archive {target}: {exc.strerror or exc}") from exc
            raise
        ui.say(f"Archive {target} completed ({human_size(target.stat().st_size)})")
        out = Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, [target], "",
                       {"archive": archive, "compression": algorithm})
        return out, False


# -- streams --------------------------------------------------------------------------------------------------


class _Passthrough:
    """No compression: write straight to the file (closing does not close it)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, data: bytes | memoryview) -> int:
        return self.raw.write(data)

    def close(self) -> None:
        self.raw.flush()


class _Lz4Command:
    """Stream through the ``lz4`` command into ``raw``."""

    def __init__(self, raw: IO[bytes], level: int) -> None:
        args = ["lz4", "-q", "-c", "-z"]
        if level > 0:
            args.append(f"-{level}")
        raw.flush()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=raw.fileno(), stderr=subprocess.PIPE)

    def write(self, data: bytes | memoryview) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        return len(data)

    def close(self) -> None:
        try:
            _out, err = self.proc.communicate(timeout=600)  # closes stdin: lz4 finishes the frame
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise BuildError("lz4 did not finish within 10 minutes after its input ended") from None
        if self.proc.returncode != 0:
            raise BuildError(f"lz4 failed (exit {self.proc.returncode}): {err.decode(errors='replace').strip()}")


class _BgzfWriter:
    """BGZF (blocked gzip, as samtools/htslib and Packer's ``.bgzf``): gzip members of at most 64 KiB input each,
    carrying their size in a ``BC`` extra field, then the standard empty EOF block. Readable by any gzip reader."""

    BLOCK: Final = 0xFF00
    EOF: Final = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

    def __init__(self, raw: IO[bytes], level: int) -> None:
        self.raw = raw
        self.level = level
        self.pending = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        self.pending += data
        while len(self.pending) >= self.BLOCK:
            self._block(bytes(self.pending[: self.BLOCK]))
            del self.pending[: self.BLOCK]
        return len(data)

    def _block(self, data: bytes) -> None:
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, -15)
        body = compressor.compress(data) + compressor.flush()
        size = len(body) + 25  # header 18 + body + crc/isize 8 -> BSIZE = total - 1
        header = struct.pack("<BBBBIBBHBBHH", 0x1F, 0x8B, 8, 4, 0, 0, 0xFF, 6, ord("B"), ord("C"), 2, size)
        self.raw.write(header + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF))

    def close(self) -> None:
        if self.pending:
            self._block(bytes(self.pending))
            self.pending.clear()
        self.raw.write(self.EOF)
        self.raw.flush()


def _lz4_frame() -> Any:
    try:
        import lz4.frame
    except ImportError:
        return None
    return lz4.frame


def _compressor(algorithm: str | None, raw: IO[bytes], level: int) -> Any:
    if algorithm == "pgzip":
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0)
    if algorithm == "xz":
        return lzma.LZMAFile(raw, "wb", preset=level)
    if algorithm == "bgzf":
        return _BgzfWriter(raw, level)
    if algorithm == "lz4":
        frame = _lz4_frame()
        if frame is not None:
            return frame.LZ4FrameFile(raw, "wb", compression_level=level)
        return _Lz4Command(raw, level)
    return _Passthrough(raw)


class _Reader:
    """A file reader that reports progress and raises ``Cancelled`` when the build is cancelled."""

    def __init__(self, fh: IO[bytes], progress: Callable[[int], None], ctx: BuildContext) -> None:
        self.fh = fh
        self.progress = progress
        self.ctx = ctx
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        self.ctx.check_cancelled()
        data = self.fh.read(size if size is not None and size >= 0 else CHUNK)
        self.done += len(data)
        self.progress(self.done)
        return data


def _copy(path: Path, writer: Any, ctx: BuildContext) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        reader = _Reader(fh, Progress(ctx, f"compress {path.name}", size), ctx)
        while data := reader.read(CHUNK):
            writer.write(data)


def _write_tar(files: list[Path], writer: Any, ctx: BuildContext) -> None:
    with tarfile.open(fileobj=cast(IO[bytes], writer), mode="w|", format=tarfile.PAX_FORMAT,
                      bufsize=CHUNK) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.name)
            with open(path, "rb") as fh:
                reader = _Reader(fh, Progress(ctx, f"tar {path.name}", info.size), ctx)
                tar.addfile(info, cast(IO[bytes], reader))


def _write_zip(files: list[Path], raw: IO[bytes], level: int, ctx: BuildContext) -> None:
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for path in files:
            name = path.as_posix().lstrip("/")
            size = path.stat().st_size
            with open(path, "rb") as fh, archive.open(name, "w", force_zip64=size >= 0x7FFFFFFF) as entry:
                reader = _Reader(fh, Progress(ctx, f"zip {path.name}", size), ctx)
                while data := reader.read(CHUNK):
                    entry.write(data)


PLUGIN = CompressPostProcessor
