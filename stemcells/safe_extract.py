"""Safe tar extraction for stemcell tarballs and their inner ``image`` archives.

``safe_extract`` reads an archive once, as a stream (plain tar or gzip, bzip2, xz), and writes every member into a
fresh temporary directory next to the destination; only when the whole archive has been accepted is that
directory renamed to the destination. A refused member raises ``UnsafeArchiveError`` naming the member and the
reason, and the temporary directory is removed, so a refusal never leaves files behind.

Refused: absolute names, names with ``..`` components, symlinks whose target is absolute or resolves outside
the destination, hardlinks to anything but a regular file extracted earlier from the same archive, device
nodes, FIFOs and other special members, members written through a symlink or over a non-directory, duplicate
files, members larger than ``ExtractLimits.max_member_bytes``, archives whose members add up to more than
``max_total_bytes`` or number more than ``max_members``, and names outside ``allowed_names`` when given.
Python's ``tarfile.data_filter`` runs as a second opinion after these checks. Ownership is never restored;
set-id and group/other write bits are dropped; regular files keep their mtime; runs of zero bytes become
holes, so a sparse raw disk image stays sparse.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, NoReturn, Self, cast

from stemcells.errors import StemcellError, UnsafeArchiveError

GiB: Final = 1024**3
_CHUNK: Final = 1024 * 1024
_ZEROS: Final = bytes(_CHUNK)
#: What a corrupt or truncated (compressed) tar stream raises besides plain I/O errors.
ARCHIVE_ERRORS: Final = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)
#: tarfile's stream buffer: small enough that its per-header buffer copies stay cheap, large enough for skipping.
_STREAM_BUFSIZE: Final = 64 * 1024


@dataclass(frozen=True)
class ExtractLimits:
    """Upper bounds for one archive: bytes per member, bytes in total, and number of members."""

    max_member_bytes: int = 64 * GiB
    max_total_bytes: int = 64 * GiB
    max_members: int = 10_000


DEFAULT_LIMITS: Final = ExtractLimits()


@contextlib.contextmanager
def open_tar_stream(source: Path | IO[bytes]) -> Iterator[tarfile.TarFile]:
    """Open a tar archive (plain, gzip, bzip2 or xz, detected by magic) for one sequential pass.

    ``source`` is a path or a readable file object (which is not closed). Decompression goes through the
    standard library's ``GzipFile``/``BZ2File``/``LZMAFile``, whose reads return bounded amounts: tarfile's own
    ``r|gz`` mode decompresses a whole input buffer at once, which for a sparse disk image (a thousand to one)
    means gigabyte-sized buffers copied on every read. Raises ``tarfile.TarError``/``OSError`` on bad input.
    """
    with contextlib.ExitStack() as stack:
        raw: IO[bytes] = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        head = raw.read(6)
        stream = cast(IO[bytes], _Prefixed(head, raw))
        decompressed = stack.enter_context(_decompressing(head, stream))
        yield stack.enter_context(
            tarfile.open(fileobj=decompressed, mode="r|", bufsize=_STREAM_BUFSIZE, tarinfo=_bounded_tarinfo())
        )


#: Extended headers (PAX ``x``/``g``, Solaris ``X``) and GNU long names/links (``L``/``K``) are read whole into
#: memory by ``tarfile`` and, before Python 3.11.10/3.12.6, parsed with a regex that is quadratic in their size
#: (CVE-2024-6232: a few hundred compressed bytes kept a process busy for minutes). Real archives need a few hundred
#: bytes per member (a path of up to PATH_MAX plus times); these bounds refuse anything bigger before tarfile reads it.
MAX_EXTENDED_HEADER_BYTES: Final = 8 * 1024
#: ... and all extended headers of one archive together (bounds the total parsing work to well under a second).
MAX_EXTENDED_TOTAL_BYTES: Final = 64 * 1024
_EXTENDED_TYPES: Final = {b"x": "PAX header", b"g": "PAX global header", b"X": "Solaris extended header",
                          b"L": "GNU long name", b"K": "GNU long link name"}


def raw_header_size(block: bytes) -> int:
    """The size field (bytes 124-135) of a raw 512-byte tar header: octal digits, or GNU base-256 when the first
    byte has its high bit set (the encoding ``tarfile.nti`` reads). Raises ``tarfile.HeaderError`` when malformed."""
    field = block[124:136]
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** 11) if field[:1] == b"\xff" else value
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise tarfile.HeaderError("invalid size field in tar header") from None


def check_raw_header(block: bytes, spent: int) -> int:
    """Refuse an extended header whose size (read from the raw 512-byte ``block``) is over
    ``MAX_EXTENDED_HEADER_BYTES``, or which would bring the archive's ``spent`` extended-header bytes over
    ``MAX_EXTENDED_TOTAL_BYTES``; return the new total. Other members pass unchanged (their data is streamed)."""
    kind = _EXTENDED_TYPES.get(block[156:157])
    if kind is None or len(block) < 512:
        return spent
    size = raw_header_size(block)
    if size < 0 or size > MAX_EXTENDED_HEADER_BYTES:
        raise ExtendedHeaderError(f"{kind} of {size} bytes exceeds the limit of {MAX_EXTENDED_HEADER_BYTES} bytes")
    if spent + size > MAX_EXTENDED_TOTAL_BYTES:
        raise ExtendedHeaderError(
            f"extended headers add up to more than {MAX_EXTENDED_TOTAL_BYTES} bytes (at a {kind} of {size} bytes)"
        )
    return spent + size


class ExtendedHeaderError(tarfile.HeaderError):
    """An extended tar header over the limits above (raised while reading, before tarfile parses it)."""


def _bounded_tarinfo() -> type[tarfile.TarInfo]:
    """A ``TarInfo`` subclass for one archive whose ``frombuf`` (the documented hook every header goes through,
    including those read after a PAX or GNU long-name header) checks the raw header with ``check_raw_header``."""
    spent = 0

    class BoundedTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            nonlocal spent
            spent = check_raw_header(bytes(buf), spent)
            return super().frombuf(buf, encoding, errors)

    return BoundedTarInfo


def _decompressing(head: bytes, stream: IO[bytes]) -> contextlib.AbstractContextManager[IO[bytes]]:
    """A context manager yielding ``stream`` decompressed according to its magic bytes ``head``."""
    if head.startswith(b"\x1f\x8b"):
        return cast(contextlib.AbstractContextManager[IO[bytes]], gzip.GzipFile(fileobj=stream, mode="rb"))
    if head.startswith(b"BZh"):
        return cast(contextlib.AbstractContextManager[IO[bytes]], bz2.BZ2File(stream, mode="rb"))
    if head.startswith(b"\xfd7zXZ\x00"):
        return cast(contextlib.AbstractContextManager[IO[bytes]], lzma.LZMAFile(stream, mode="rb"))
    return contextlib.nullcontext(stream)


class _Prefixed:
    """A read-only file object returning ``head`` and then the rest of ``rest`` (a peek for unseekable input)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0:
            data, self._head = self._head, b""
            return data + self._rest.read()
        data, self._head = self._head[:size], self._head[size:]
        if len(data) < size:
            data += self._rest.read(size - len(data))
        return data


def member_path(info: tarfile.TarInfo, archive: str) -> str | None:
    """The member's normalised relative name (``./a//b`` -> ``a/b``), or None for the archive root (``.``).

    Raises ``UnsafeArchiveError`` for empty or absolute names, ``..`` components and NUL bytes.
    """
    name = info.name
    if not name or "\0" in name:
        raise UnsafeArchiveError(archive, name, "empty or malformed name")
    if name.startswith("/"):
        raise UnsafeArchiveError(archive, name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(archive, name, "path contains a '..' component")
    return "/".join(parts) or None


def check_member(info: tarfile.TarInfo, archive: str, limits: ExtractLimits = DEFAULT_LIMITS) -> str | None:
    """Everything that can be checked from the header alone, without touching the filesystem.

    Returns the normalised name (None for the archive root). Raises ``UnsafeArchiveError`` for unsafe names,
    special members, links whose target leaves the archive, and members over ``limits.max_member_bytes``.
    Used by ``safe_extract`` and by inspection code that never extracts.
    """
    path = member_path(info, archive)
    if info.ischr() or info.isblk():
        raise UnsafeArchiveError(archive, info.name, "device nodes are not allowed")
    if info.isfifo():
        raise UnsafeArchiveError(archive, info.name, "FIFOs are not allowed")
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        raise UnsafeArchiveError(archive, info.name, f"unsupported member type {info.type!r}")
    if path is None and not info.isdir():
        raise UnsafeArchiveError(archive, info.name, "only a directory may stand for the archive root")
    if info.isreg() and info.size > limits.max_member_bytes:
        raise UnsafeArchiveError(
            archive, info.name, f"size {info.size} bytes exceeds the limit of {limits.max_member_bytes} bytes"
        )
    if info.issym():
        _check_symlink_target(info, path or "", archive)
    if info.islnk():
        _hardlink_source(info, archive)
    return path


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    limits: ExtractLimits = DEFAULT_LIMITS,
    allowed_names: Collection[str] | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Extract ``archive`` (tar, optionally gzip/bzip2/xz) to ``dest``, all or nothing.

    ``dest`` must not exist or be an empty directory; its parent must exist. ``allowed_names`` (normalised
    names such as ``root.img``), when given, is the complete list of members the archive may hold.
    ``before_commit(tmp_root)``, when given, sees the fully extracted tree before it is published and may
    raise to abort. Returns the paths under ``dest`` of the regular files extracted, in archive order.
    Raises ``UnsafeArchiveError`` for a refused member and ``StemcellError`` for an unreadable archive or a
    bad destination; in every failure case nothing is left at ``dest`` or beside it.
    """
    label = archive.name
    _check_destination(dest)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        os.chmod(tmp_root, 0o755)  # mkdtemp's 0700 is for the private phase; the result is an ordinary tree
        extractor = _Extractor(tmp_root, label, limits, allowed_names)
        try:
            with open_tar_stream(archive) as tar:
                for info in tar:
                    extractor.add(tar, info)
        except (*ARCHIVE_ERRORS, OSError) as exc:
            raise StemcellError(f"{label}: extraction failed: {exc}") from exc
        extractor.finish()
        if before_commit is not None:
            before_commit(tmp_root)
        os.replace(tmp_root, dest)  # replaces an empty directory atomically; refuses a non-empty one
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    return [dest / name for name in extractor.files]


# -- internals -------------------------------------------------------------------------------------


#: Symlinks followed while resolving one path before it counts as a loop (Linux's ELOOP limit).
MAX_SYMLINK_HOPS: Final = 40


def symlink_parent(path: str, links: Collection[str]) -> str | None:
    """The first proper prefix of ``path`` that is a symlink in ``links`` (a member would be written through it),
    or None."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        prefix = "/".join(parts[:end])
        if prefix in links:
            return prefix
    return None


class SymlinkJudge:
    """The one judgement of an archive's symlinks, for extraction and for ``verify``/``inspect`` alike.

    Each symlink is resolved as the kernel would, following the archive's other links (chains such as ``a -> .``
    and ``b -> a/..``): one that ends outside the archive root, or needs more than ``MAX_SYMLINK_HOPS`` links (a
    loop), is refused with ``UnsafeArchiveError`` naming it. ``add`` judges a new link against the links seen so
    far (what an extractor has on disk at that moment); ``finish`` judges every link against all of them (a later
    link can make an earlier one escape).
    """

    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.links: dict[str, tuple[str, str]] = {}  # normalised path -> (member name as stored, target)
        self._targets: dict[str, str] = {}

    def add(self, path: str, name: str, target: str) -> None:
        self.links[path] = (name, target)
        self._targets[path] = target
        self._judge(path)

    def parent_link(self, path: str) -> str | None:
        """The symlink a member at ``path`` would be written through, or None."""
        return symlink_parent(path, self._targets)

    def finish(self) -> None:
        for path in self.links:
            self._judge(path)

    def _judge(self, path: str) -> None:
        verdict = _resolve(path, self._targets)
        if verdict:
            raise UnsafeArchiveError(self.archive, self.links[path][0], verdict)


def _resolve(path: str, targets: dict[str, str]) -> str | None:
    """Why ``path`` cannot be resolved inside the root following ``targets``, or None when it can."""
    stack = list(reversed(path.split("/")))
    resolved: list[str] = []
    hops = 0
    while stack:
        part = stack.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return "symlink resolves outside the destination"
            resolved.pop()
            continue
        resolved.append(part)
        target = targets.get("/".join(resolved))
        if target is None:
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return f"symlink chain longer than {MAX_SYMLINK_HOPS} links (a loop)"
        if target.startswith("/"):
            return f"symlink target {target!r} is absolute"
        resolved.pop()
        stack.extend(reversed(target.split("/")))
    return None


def _check_destination(dest: Path) -> None:
    if not dest.parent.is_dir():
        raise StemcellError(f"{dest}: parent directory {dest.parent} does not exist")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise StemcellError(f"{dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise StemcellError(f"{dest}: exists and is not empty")


def _check_symlink_target(info: tarfile.TarInfo, path: str, archive: str) -> None:
    target = info.linkname
    if not target or "\0" in target:
        raise UnsafeArchiveError(archive, info.name, "symlink with an empty or malformed target")
    if target.startswith("/"):
        raise UnsafeArchiveError(archive, info.name, f"symlink target {target!r} is absolute")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(archive, info.name, f"symlink target {target!r} escapes the destination")


def _hardlink_source(info: tarfile.TarInfo, archive: str) -> str:
    target = info.linkname
    if not target or "\0" in target or target.startswith("/"):
        raise UnsafeArchiveError(archive, info.name, f"hardlink target {target!r} is outside the archive")
    parts = [part for part in target.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise UnsafeArchiveError(archive, info.name, f"hardlink target {target!r} escapes the destination")
    return "/".join(parts)


class _Extractor:
    """Writes accepted members under ``root`` and remembers what it wrote for the final checks."""

    def __init__(self, root: Path, archive: str, limits: ExtractLimits, allowed_names: Collection[str] | None) -> None:
        self.root = root
        self.archive = archive
        self.limits = limits
        self.allowed = None if allowed_names is None else frozenset(allowed_names)
        self.count = 0
        self.total = 0
        self.files: list[str] = []
        self._file_set: set[str] = set()
        self.symlinks = SymlinkJudge(archive)
        self.dirs: dict[str, int] = {}

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            self._reject(info, f"the archive has more than {self.limits.max_members} members")
        path = check_member(info, self.archive, self.limits)
        if path is None:  # "." : the destination itself
            return
        if self.allowed is not None and path not in self.allowed:
            self._reject(info, f"unexpected member; allowed: {', '.join(sorted(self.allowed)) or 'none'}")
        if info.isreg():
            self.total += info.size
            if self.total > self.limits.max_total_bytes:
                limit = self.limits.max_total_bytes
                self._reject(info, f"archive contents exceed the limit of {limit} bytes")
        if info.issym():
            self._check_symlink_chain(info, path)
        self._second_opinion(info)
        target = self._prepare_parent(info, path)
        if info.isdir():
            self._make_dir(info, path, target)
        elif info.issym():
            self._exists_check(info, target)
            os.symlink(info.linkname, target)
        elif info.islnk():
            self._make_hardlink(info, target)
        else:
            self._write_file(tar, info, path, target)

    def finish(self) -> None:
        """Final-state checks (symlink chains) and directory modes, applied deepest first."""
        self.symlinks.finish()  # the judgement verify and inspect make too
        real_root = os.path.realpath(self.root)
        for path, (name, _target) in self.symlinks.links.items():  # second opinion: the kernel's view
            resolved = os.path.realpath(self.root / path)
            if os.path.commonpath([real_root, resolved]) != real_root:
                raise UnsafeArchiveError(self.archive, name, "symlink resolves outside the destination")
        for path in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            os.chmod(self.root / path, self.dirs[path])

    # -- member kinds ------------------------------------------------------------------------------

    def _make_dir(self, info: tarfile.TarInfo, path: str, target: Path) -> None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            os.mkdir(target, 0o700)
        else:
            if not stat.S_ISDIR(st.st_mode):
                self._reject(info, "a directory would replace an earlier non-directory member")
        self.dirs[path] = (info.mode & 0o755) | 0o700

    def _make_hardlink(self, info: tarfile.TarInfo, target: Path) -> None:
        source = _hardlink_source(info, self.archive)
        if source not in self._file_set:
            self._reject(info, f"hardlink target {info.linkname!r} is not a regular file extracted earlier")
        self._exists_check(info, target)
        os.link(self.root / source, target, follow_symlinks=False)

    def _write_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, path: str, target: Path) -> None:
        self._exists_check(info, target)
        source = tar.extractfile(info)
        if source is None:  # pragma: no cover - isreg() members always have data
            self._reject(info, "member has no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            missing = _copy_sparse(source, out, info.size)
        if missing:
            self._reject(info, f"archive data ends {missing} bytes early")
        os.chmod(target, info.mode & 0o755 | 0o600)
        os.utime(target, (info.mtime, info.mtime))
        self.files.append(path)
        self._file_set.add(path)

    # -- checks ------------------------------------------------------------------------------------

    def _prepare_parent(self, info: tarfile.TarInfo, path: str) -> Path:
        """Create missing parent directories; refuse to go through a symlink or a file."""
        current = self.root
        for part in path.split("/")[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o700)
                self.dirs.setdefault(str(current.relative_to(self.root)), 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                self._reject(info, f"its parent {part!r} is a symlink; writing through symlinks is refused")
            if not stat.S_ISDIR(st.st_mode):
                self._reject(info, f"its parent {part!r} is not a directory")
        return self.root / path

    def _exists_check(self, info: tarfile.TarInfo, target: Path) -> None:
        if os.path.lexists(target):
            self._reject(info, "duplicate member: a file of that name was already extracted")

    def _check_symlink_chain(self, info: tarfile.TarInfo, path: str) -> None:
        through = self.symlinks.parent_link(path)
        if through is not None:
            self._reject(info, f"its parent {through!r} is a symlink; writing through symlinks is refused")
        self.symlinks.add(path, info.name, info.linkname)

    def _second_opinion(self, info: tarfile.TarInfo) -> None:
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is None:  # pragma: no cover - Python < 3.11.4
            return
        try:
            data_filter(info, str(self.root))
        except tarfile.FilterError as exc:
            self._reject(info, str(exc))

    def _reject(self, info: tarfile.TarInfo, reason: str) -> NoReturn:
        raise UnsafeArchiveError(self.archive, info.name, reason)


def _copy_sparse(source: IO[bytes], out: IO[bytes], size: int) -> int:
    """Copy ``size`` bytes, seeking over whole zero chunks so the output stays sparse; return how many
    bytes were missing when ``source`` ended early (0 when complete)."""
    remaining = size
    while remaining:
        chunk = source.read(min(_CHUNK, remaining))
        if not chunk:
            return remaining
        if chunk == _ZEROS[: len(chunk)]:
            out.seek(len(chunk), os.SEEK_CUR)
        else:
            out.write(chunk)
        remaining -= len(chunk)
    out.truncate(size)
    return 0
