"""BOSH stemcell tarballs: write, read, verify and extract them.

A stemcell is a gzipped tar holding ``stemcell.MF``, ``image`` (itself a gzipped tar holding one root disk
image, ``root.img`` or ``disk.raw``; 0 bytes for a light stemcell), ``packages.txt``,
``dev_tools_file_list.txt`` and optionally SBOMs (``sbom.spdx.json``, ``sbom.cdx.json``). The manifest's
``sha1`` is the sha1 of the ``image`` member's bytes.

Every function streams: images of many GiB are never read into memory, and reading or verifying a tarball
extracts nothing to disk. Writers publish atomically (temporary file beside the target, then rename); extractors
go through ``stemcells.safe_extract``. Library functions print nothing; long operations report steps through an
optional ``progress`` callback, and every failure is a ``StemcellError`` naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, cast

from stemcells.errors import StemcellError, UnsafeArchiveError, printable
from stemcells.image_check import DEFAULT_MAX_VIRTUAL_SIZE, ImageRejected, check_image
from stemcells.manifest import (
    DEFAULT_API_VERSION,
    DEFAULT_BOSH_PROTOCOL,
    EMPTY_SHA1,
    LIGHT_FORMAT_SUFFIX,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    StemcellManifest,
    stemcell_filename,
)
from stemcells.root_image import ROOT_IMAGE_NAMES, open_root_image
from stemcells.safe_extract import (
    ARCHIVE_ERRORS,
    DEFAULT_LIMITS,
    ExtractLimits,
    SymlinkJudge,
    _copy_sparse,
    check_member,
    open_tar_stream,
    safe_extract,
)
from stemcells.tario import (
    HashingReader,
    HashingWriter,
    ImageFormat,
    add_bytes,
    add_file,
    human_size,
    sniff_image,
    tar_member,
)
from stemforge_base.hashing import file_digest

IMAGE_MEMBER: Final = "image"
PACKAGES_MEMBER: Final = "packages.txt"
DEV_TOOLS_MEMBER: Final = "dev_tools_file_list.txt"
SBOM_MEMBERS: Final = ("sbom.spdx.json", "sbom.cdx.json")
REQUIRED_MEMBERS: Final = (MANIFEST_NAME, IMAGE_MEMBER)
#: Receives one human-readable line per step of a long operation.
Progress = Callable[[str], None]

_CHUNK: Final = 1024 * 1024
#: Extraction's reason for a member below a symlink (``safe_extract`` refuses to write through one).
_THROUGH_SYMLINK: Final = "its parent {!r} is a symlink; writing through symlinks is refused"
_INNER_GZIP_LEVEL: Final = 6  # the root image compresses well; gzip's own default
_OUTER_GZIP_LEVEL: Final = 0  # store only: the one large member, image, is already compressed


# -- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StemcellMember:
    """One tar member: its normalised name, size in bytes and kind (file, dir, symlink, hardlink, other)."""

    name: str
    size: int
    kind: str


@dataclass(frozen=True)
class Stemcell:
    """A stemcell tarball as read by ``read_stemcell``: its manifest and member list; nothing extracted."""

    path: Path
    manifest: StemcellManifest
    members: tuple[StemcellMember, ...]

    @property
    def is_light(self) -> bool:
        return self.manifest.is_light

    def member(self, name: str) -> StemcellMember | None:
        """The member called ``name`` (normalised, e.g. ``image``), or None."""
        return next((m for m in self.members if m.name == name), None)

    @property
    def image_size(self) -> int | None:
        """Size of the ``image`` member in bytes, None when the tarball has none."""
        image = self.member(IMAGE_MEMBER)
        return None if image is None else image.size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used by ``stemforge stemcell inspect --json``)."""
        return {
            "path": str(self.path),
            "expected_filename": self.manifest.filename,
            "light": self.is_light,
            "manifest": self.manifest.to_dict(),
            "members": [{"name": m.name, "size": m.size, "kind": m.kind} for m in self.members],
        }


@dataclass(frozen=True)
class Check:
    """One verification step: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of ``verify_stemcell``. ``ok`` only when every check passed."""

    path: Path
    checks: tuple[Check, ...]
    manifest: StemcellManifest | None = None
    root_image: str | None = None
    image_format: ImageFormat | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.ok)


@dataclass(frozen=True)
class ExtractedStemcell:
    """A stemcell extracted by ``extract_stemcell``; its manifest was validated and its image sha1 checked."""

    root: Path
    manifest: StemcellManifest
    manifest_path: Path
    image_path: Path
    files: tuple[Path, ...] = field(default=())

    @property
    def is_light(self) -> bool:
        return self.manifest.is_light

    def extract_root_image(self, dest_dir: Path | None = None, *, limits: ExtractLimits = DEFAULT_LIMITS) -> Path:
        """Extract the root image from ``image`` into ``dest_dir`` (default: the stemcell's directory).

        See ``open_root_image``; raises ``StemcellError`` for a light stemcell, which has no root image.
        """
        return open_root_image(self.image_path, self.root if dest_dir is None else dest_dir, limits=limits)


# -- writing -----------------------------------------------------------------------------------------------


def write_stemcell(
    out: Path,
    *,
    name: str,
    version: str,
    operating_system: str,
    stemcell_formats: Sequence[str],
    cloud_properties: Mapping[str, Any] | None = None,
    root_image: Path | None = None,
    root_image_name: str = "root.img",
    api_version: int = DEFAULT_API_VERSION,
    bosh_protocol: int | str = DEFAULT_BOSH_PROTOCOL,
    packages_txt: str = "",
    dev_tools_file_list: str = "",
    sbom_files: Sequence[Path] = (),
    overwrite: bool = False,
    mtime: int | None = None,
    progress: Progress | None = None,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
) -> Path:
    """Write a stemcell tarball and return its path.

    ``out`` is an existing directory (the file is named ``[light-]bosh-stemcell-<version>-...tgz`` from the
    manifest) or a path ending ``.tgz``. With ``root_image`` (a raw or qcow2 disk image) the stemcell is heavy:
    ``image`` is a gzipped tar holding that file as ``root_image_name``. With ``root_image=None`` it is light:
    ``image`` is empty and the MF ``sha1`` is that of empty input; per-region image ids go in
    ``cloud_properties`` (e.g. ``{"ami": {"us-east-1": "ami-..."}}``). ``sbom_files`` are stored under their own
    base names. ``mtime`` (default ``$SOURCE_DATE_EPOCH``, else now) stamps every member and gzip header, so
    equal inputs give byte-identical tarballs.

    The root image is judged by ``image_check.check_image`` first (no backing or data file, not encrypted, qcow2
    or raw, virtual size at most ``max_virtual_size``). The manifest is validated before any work; the tarball is
    written beside the target and renamed into place, so on any failure nothing is left behind. An existing target
    is an error unless ``overwrite``.
    Raises ``StemcellError``.
    """
    report = progress or _quiet
    if isinstance(stemcell_formats, str):
        raise StemcellError(f"stemcell_formats must be a list of format names, not the string {stemcell_formats!r}")
    manifest = StemcellManifest(
        name=name,
        version=version,
        sha1=EMPTY_SHA1,  # placeholder until the image is packed; validates every other field now
        operating_system=operating_system,
        stemcell_formats=list(stemcell_formats),
        cloud_properties=dict(cloud_properties or {}),  # the manifest keeps its own deep copy
        api_version=api_version,
        bosh_protocol=bosh_protocol,
    )
    light = root_image is None
    if root_image is not None:
        _check_root_image_input(root_image, root_image_name, manifest, max_virtual_size)
    extras = _extra_members(packages_txt, dev_tools_file_list, sbom_files)
    final = _output_path(out, stemcell_filename(name, version, light=light))
    if not overwrite and os.path.lexists(final):
        raise StemcellError(f"{final}: already exists (pass overwrite to replace it)")
    stamp = _default_mtime() if mtime is None else mtime

    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as exc:
        raise StemcellError(f"{final.parent}: cannot write there: {exc.strerror or exc}") from exc
    try:
        image_file = staging / IMAGE_MEMBER
        manifest = manifest.replace(sha1=_stage_image(image_file, root_image, root_image_name, stamp, report))
        report(f"Writing {final.name}")
        tmp_tgz = staging / "stemcell.tgz"
        _write_outer(tmp_tgz, manifest, image_file, extras, stamp)
        _publish(tmp_tgz, final, overwrite)
    except OSError as exc:
        raise StemcellError(f"{final}: cannot write stemcell: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(f"Wrote {final} ({human_size(final.stat().st_size)})")
    return final


def _check_root_image_input(
    root_image: Path, root_image_name: str, manifest: StemcellManifest, max_virtual_size: int
) -> None:
    if root_image_name not in ROOT_IMAGE_NAMES:
        raise StemcellError(f"root image name {root_image_name!r} must be one of {', '.join(ROOT_IMAGE_NAMES)}")
    if not root_image.is_file():
        raise StemcellError(f"{root_image}: root image does not exist or is not a regular file")
    light_formats = [fmt for fmt in manifest.stemcell_formats if fmt.endswith(LIGHT_FORMAT_SUFFIX)]
    if light_formats:
        raise StemcellError(
            f"stemcell_formats {', '.join(light_formats)} are for light stemcells, but a root image was given"
        )
    checked = check_image(root_image, max_virtual_size=max_virtual_size)  # backing files, encryption, sizes...
    mismatch = _format_mismatch(manifest, cast(ImageFormat, checked.format))
    if mismatch:
        raise StemcellError(f"{root_image}: {mismatch}")


def _extra_members(packages_txt: str, dev_tools: str, sbom_files: Sequence[Path]) -> list[tuple[str, Path | bytes]]:
    members: list[tuple[str, Path | bytes]] = [
        (PACKAGES_MEMBER, packages_txt.encode()),
        (DEV_TOOLS_MEMBER, dev_tools.encode()),
    ]
    reserved = {MANIFEST_NAME, IMAGE_MEMBER, PACKAGES_MEMBER, DEV_TOOLS_MEMBER}
    for sbom in sbom_files:
        if sbom.name in reserved:
            raise StemcellError(f"{sbom}: an SBOM cannot be stored as {sbom.name!r}; that name is taken")
        if not sbom.is_file():
            raise StemcellError(f"{sbom}: SBOM file does not exist or is not a regular file")
        reserved.add(sbom.name)
        members.append((sbom.name, sbom))
    return members


def _output_path(out: Path, filename: str) -> Path:
    if out.is_dir():
        return out / filename
    if out.name.endswith((".tgz", ".tar.gz")):
        if not out.parent.is_dir():
            raise StemcellError(f"{out}: directory {out.parent} does not exist")
        return out
    raise StemcellError(f"{out}: is neither an existing directory nor a path ending in .tgz")


def _default_mtime() -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(epoch) if epoch.isdigit() else int(time.time())


def _stage_image(image_file: Path, root_image: Path | None, member_name: str, mtime: int, report: Progress) -> str:
    """Write the ``image`` member to ``image_file`` (empty for a light stemcell); return its sha1."""
    if root_image is None:
        image_file.touch()
        return EMPTY_SHA1
    report(f"Packing {root_image} ({human_size(root_image.stat().st_size)}) into image as {member_name}")
    sha1 = _pack_root_image(root_image, member_name, image_file, mtime)
    report(f"Packed image: {human_size(image_file.stat().st_size)}, sha1 {sha1}")
    return sha1


def _pack_root_image(root_image: Path, member_name: str, image_file: Path, mtime: int) -> str:
    """Write ``image`` (gzipped tar holding ``root_image`` as ``member_name``); return its sha1."""
    with open(image_file, "xb") as raw:
        hashing = HashingWriter(raw)
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=hashing, compresslevel=_INNER_GZIP_LEVEL, mtime=mtime) as gz,
            tarfile.open(fileobj=cast(IO[bytes], gz), mode="w", format=tarfile.PAX_FORMAT) as tar,
            open(root_image, "rb") as source,
        ):
            tar.copybufsize = _CHUNK  # type: ignore[attr-defined]  # real attribute, missing from typeshed
            info = tar_member(member_name, os.fstat(source.fileno()).st_size, mtime)
            tar.addfile(info, source)
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.hexdigest()


def _write_outer(
    target: Path,
    manifest: StemcellManifest,
    image_file: Path,
    extras: Sequence[tuple[str, Path | bytes]],
    mtime: int,
) -> None:
    with open(target, "xb") as raw:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=_OUTER_GZIP_LEVEL, mtime=mtime) as gz,
            tarfile.open(fileobj=cast(IO[bytes], gz), mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.copybufsize = _CHUNK  # type: ignore[attr-defined]
            add_bytes(tar, MANIFEST_NAME, manifest.to_yaml().encode(), mtime)
            add_file(tar, IMAGE_MEMBER, image_file, mtime)
            for name, content in extras:
                if isinstance(content, bytes):
                    add_bytes(tar, name, content, mtime)
                else:
                    add_file(tar, name, content, mtime)
        raw.flush()
        os.fsync(raw.fileno())


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``final`` atomically; without ``overwrite`` never replace an existing file."""
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # atomic and refuses to clobber
    except FileExistsError as exc:
        raise StemcellError(f"{final}: already exists (pass overwrite to replace it)") from exc
    except OSError:  # filesystem without hard links
        if os.path.lexists(final):
            raise StemcellError(f"{final}: already exists (pass overwrite to replace it)") from None
        os.replace(tmp, final)


# -- reading -----------------------------------------------------------------------------------------------


def read_stemcell(path: Path, *, limits: ExtractLimits = DEFAULT_LIMITS) -> Stemcell:
    """Read the manifest and member list of the stemcell tarball at ``path`` without extracting anything.

    The whole tarball is streamed once (to list every member); only ``stemcell.MF`` is kept in memory. Raises
    ``StemcellError`` when the file is unreadable, not a tar, has no valid ``stemcell.MF`` or holds an unsafe
    member (``UnsafeArchiveError``).
    """
    members: list[StemcellMember] = []
    names: set[str] = set()
    links = SymlinkJudge(path.name)
    manifest_bytes: bytes | None = None
    with _open_stream(path) as tar:
        for info in tar:
            if len(members) >= limits.max_members:
                raise UnsafeArchiveError(path.name, info.name, f"more than {limits.max_members} members")
            name = check_member(info, path.name, limits)
            if name is None:
                continue
            if name in names:
                raise UnsafeArchiveError(path.name, info.name, "duplicate member")
            through = links.parent_link(name)
            if through is not None:
                raise UnsafeArchiveError(path.name, info.name, _THROUGH_SYMLINK.format(through))
            names.add(name)
            if info.issym():
                links.add(name, info.name, info.linkname)
            members.append(StemcellMember(name, info.size, _kind(info)))
            if name == MANIFEST_NAME and info.isreg():
                manifest_bytes = _read_small(tar, info, path)
    links.finish()
    if manifest_bytes is None:
        raise StemcellError(f"{path}: has no {MANIFEST_NAME}; not a stemcell tarball")
    manifest = StemcellManifest.from_yaml(manifest_bytes, f"{MANIFEST_NAME} in {path}")
    return Stemcell(path=path, manifest=manifest, members=tuple(members))


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """Open ``path`` as a tar stream (compression detected); turn read failures into ``StemcellError``."""
    try:
        with open_tar_stream(path) as tar:
            yield tar
    except ARCHIVE_ERRORS as exc:
        raise StemcellError(f"{path}: not a readable stemcell tarball: {exc}") from exc
    except OSError as exc:
        raise StemcellError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path) -> bytes:
    if info.size > MAX_MANIFEST_BYTES:
        raise StemcellError(f"{MANIFEST_NAME} in {path}: is {info.size} bytes; the limit is {MAX_MANIFEST_BYTES}")
    source = tar.extractfile(info)
    return b"" if source is None else source.read()


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "other"


# -- verifying ---------------------------------------------------------------------------------------------


@dataclass
class _ImageScan:
    """What one streaming pass over the ``image`` member found."""

    sha1: str = ""
    size: int = 0
    root_name: str | None = None
    image_format: ImageFormat | None = None
    virtual_size: int | None = None
    problem: str | None = None


@dataclass
class _ArchiveScan:
    members: dict[str, StemcellMember] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    manifest_bytes: bytes | None = None
    image: _ImageScan | None = None
    read_error: str | None = None


def verify_stemcell(
    path: Path,
    *,
    limits: ExtractLimits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE,
) -> VerifyReport:
    """Check the stemcell at ``path`` in one streaming pass, extracting nothing to disk.

    Checks, each reported in the result (never raised): ``archive`` (readable tar, every member safe),
    ``members`` (``stemcell.MF`` and ``image`` present as regular files), ``manifest`` (valid ``stemcell.MF``),
    ``image sha1`` (sha1 of ``image`` equals the MF's), ``root image`` (light: ``image`` is empty; heavy: a
    gzipped tar holding exactly one ``root.img`` or ``disk.raw``, whose qcow2/raw format, found by magic,
    agrees with ``stemcell_formats`` and ``cloud_properties.disk_format``, and which ``image_check.check_image``
    accepts: the root image is copied, sparse, to a temporary file for that and removed again).
    """
    report = progress or _quiet
    report(f"Reading {path}")
    scan = _scan_archive(path, limits, report, max_virtual_size)
    checks: list[Check] = []
    if scan.read_error:
        checks.append(Check("archive", False, scan.read_error))
    elif scan.problems:
        shown = "; ".join(scan.problems[:5])
        more = f"; and {len(scan.problems) - 5} more" if len(scan.problems) > 5 else ""
        checks.append(Check("archive", False, shown + more))
    else:
        checks.append(Check("archive", True, f"readable tar with {len(scan.members)} safe members"))
    checks.append(_check_members(scan))
    manifest: StemcellManifest | None = None
    if scan.manifest_bytes is None:
        checks.append(Check("manifest", False, f"no {MANIFEST_NAME} to validate"))
    else:
        try:
            manifest = StemcellManifest.from_yaml(scan.manifest_bytes, f"{MANIFEST_NAME} in {path}")
        except StemcellError as exc:
            checks.append(Check("manifest", False, exc.message))
        else:
            formats = ", ".join(manifest.stemcell_formats) or "none"
            detail = f"{manifest.name} {manifest.version} ({manifest.operating_system}; formats: {formats})"
            checks.append(Check("manifest", True, detail))
    checks.append(_check_sha1(manifest, scan.image))
    checks.append(_check_root_image(manifest, scan.image))
    image = scan.image
    return VerifyReport(
        path=path,
        checks=tuple(checks),
        manifest=manifest,
        root_image=image.root_name if image else None,
        image_format=image.image_format if image else None,
    )


def _scan_archive(path: Path, limits: ExtractLimits, report: Progress, max_virtual_size: int) -> _ArchiveScan:
    scan = _ArchiveScan()
    count = 0
    links = SymlinkJudge(path.name)
    try:
        with _open_stream(path) as tar:
            for info in tar:
                count += 1
                if count > limits.max_members:
                    scan.problems.append(f"more than {limits.max_members} members")
                    break
                try:
                    name = check_member(info, path.name, limits)
                except UnsafeArchiveError as exc:
                    scan.problems.append(exc.message)
                    continue
                if name is None:
                    continue
                if name in scan.members:
                    scan.problems.append(f"{path.name}: member {info.name!r} rejected: duplicate member")
                    continue
                through = links.parent_link(name)
                if through is not None:
                    error = UnsafeArchiveError(path.name, info.name, _THROUGH_SYMLINK.format(through))
                    scan.problems.append(error.message)
                    continue
                if info.issym():
                    try:
                        links.add(name, info.name, info.linkname)
                    except UnsafeArchiveError as exc:
                        scan.problems.append(exc.message)
                        continue
                scan.members[name] = StemcellMember(name, info.size, _kind(info))
                if name == MANIFEST_NAME and info.isreg() and info.size <= MAX_MANIFEST_BYTES:
                    source = tar.extractfile(info)
                    scan.manifest_bytes = source.read() if source else b""
                elif name == IMAGE_MEMBER and info.isreg():
                    report(f"Hashing image ({human_size(info.size)}) and checking its root image")
                    started = time.monotonic()
                    source = tar.extractfile(info)
                    scan.image = _scan_image(cast(IO[bytes], source), info.size, limits, max_virtual_size)
                    report(f"Hashed image in {time.monotonic() - started:.1f}s")
    except StemcellError as exc:
        scan.read_error = exc.message
    try:
        links.finish()  # the same judgement extraction makes
    except UnsafeArchiveError as exc:
        if exc.message not in scan.problems:
            scan.problems.append(exc.message)
    return scan


def _check_members(scan: _ArchiveScan) -> Check:
    missing = [name for name in REQUIRED_MEMBERS if name not in scan.members]
    if missing:
        return Check("members", False, f"missing required member(s): {', '.join(missing)}")
    not_files = [name for name in REQUIRED_MEMBERS if scan.members[name].kind != "file"]
    if not_files:
        return Check("members", False, f"not regular files: {', '.join(not_files)}")
    if scan.members[MANIFEST_NAME].size > MAX_MANIFEST_BYTES:
        return Check("members", False, f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    present = ", ".join(printable(name) for name in scan.members)
    return Check("members", True, f"present: {present}")


def _check_sha1(manifest: StemcellManifest | None, image: _ImageScan | None) -> Check:
    if manifest is None or image is None:
        return Check("image sha1", False, "not checked: needs a valid manifest and an image member")
    if image.sha1 != manifest.sha1:
        return Check("image sha1", False, f"sha1 of image is {image.sha1} but {MANIFEST_NAME} says {manifest.sha1}")
    return Check("image sha1", True, f"{image.sha1} matches {MANIFEST_NAME} ({human_size(image.size)})")


def _check_root_image(manifest: StemcellManifest | None, image: _ImageScan | None) -> Check:
    if manifest is None or image is None:
        return Check("root image", False, "not checked: needs a valid manifest and an image member")
    if manifest.is_light:
        if image.size:
            return Check("root image", False, f"light stemcell, but image is {image.size} bytes, not empty")
        regions = ", ".join(sorted(manifest.region_image_ids())) or "no per-region image ids"
        return Check("root image", True, f"light stemcell: image is empty ({regions})")
    if image.size == 0:
        return Check("root image", False, "image is empty but the manifest describes a heavy stemcell")
    if image.problem:
        return Check("root image", False, image.problem)
    if image.root_name is None or image.image_format is None:
        names = " or ".join(ROOT_IMAGE_NAMES)
        return Check("root image", False, f"image holds no root image ({names})")
    mismatch = _format_mismatch(manifest, image.image_format)
    if mismatch:
        return Check("root image", False, mismatch)
    detail = f"{image.root_name}: {image.image_format}"
    if image.virtual_size is not None:
        detail += f", virtual size {human_size(image.virtual_size)}"
    return Check("root image", True, detail)


def _format_mismatch(manifest: StemcellManifest, found: ImageFormat) -> str | None:
    declared = {fmt.rsplit("-", 1)[-1] for fmt in manifest.stemcell_formats}
    other = "raw" if found == "qcow2" else "qcow2"
    if other in declared and found not in declared:
        return f"root image is {found} but stemcell_formats say {other}"
    disk_format = manifest.cloud_properties.get("disk_format")
    if disk_format in ("qcow2", "raw") and disk_format != found:
        return f"root image is {found} but cloud_properties.disk_format is {disk_format}"
    return None


def _check_streamed_image(
    data: IO[bytes], size: int, name: str, scan: _ImageScan, max_virtual_size: int
) -> None:
    """Copy the root image streaming out of ``image`` to a sparse temporary file and judge it with
    ``image_check.check_image``, the check the CPI and ``stemcell create`` make; record format, virtual size or
    the reason for refusing it in ``scan``."""
    with tempfile.TemporaryDirectory(prefix="stemforge-verify-") as tmp:
        copy = Path(tmp) / name
        with open(copy, "xb") as out:
            missing = _copy_sparse(data, out, size)
        if missing:
            scan.problem = f"image: {name} ends {missing} bytes early"
            return
        scan.image_format, scan.virtual_size = sniff_image(copy.open("rb").read(512))
        try:
            checked = check_image(copy, max_virtual_size=max_virtual_size)
        except StemcellError as exc:
            reason = exc.reason if isinstance(exc, ImageRejected) else exc.message
            scan.problem = f"{name}: {reason}"
            return
        scan.image_format = cast(ImageFormat, checked.format)
        scan.virtual_size = checked.virtual_size


def _scan_image(
    source: IO[bytes], size: int, limits: ExtractLimits, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
) -> _ImageScan:
    """Hash ``image`` while reading it as a tar; note its root image's name, format and virtual size, and refuse
    a root image that ``image_check.check_image`` refuses."""
    reader = HashingReader(source)
    scan = _ImageScan()
    if size == 0:
        scan.sha1 = reader.hexdigest()
        return scan
    try:
        with open_tar_stream(cast(IO[bytes], reader)) as inner:
            for info in inner:
                name = check_member(info, IMAGE_MEMBER, limits)
                if name is None:
                    continue
                if name not in ROOT_IMAGE_NAMES or not info.isreg():
                    allowed = " or ".join(ROOT_IMAGE_NAMES)
                    scan.problem = f"image holds {info.name!r}; it may hold only one root image ({allowed})"
                    break
                if scan.root_name is not None:
                    scan.problem = f"image holds more than one root image ({scan.root_name}, {name})"
                    break
                data = inner.extractfile(info)
                scan.root_name = name
                if data is not None:
                    _check_streamed_image(data, info.size, name, scan, max_virtual_size)
    except UnsafeArchiveError as exc:
        scan.problem = exc.message
    except (*ARCHIVE_ERRORS, OSError) as exc:
        scan.problem = f"image is not a gzipped tar: {exc}"
    reader.drain()
    scan.sha1, scan.size = reader.hexdigest(), reader.size
    return scan


# -- extracting --------------------------------------------------------------------------------------------


def extract_stemcell(
    path: Path,
    dest: Path,
    *,
    limits: ExtractLimits = DEFAULT_LIMITS,
    verify_sha1: bool = True,
) -> ExtractedStemcell:
    """Safely extract the stemcell tarball at ``path`` into ``dest`` (absent or an empty directory).

    Before anything appears at ``dest`` the extracted tree must hold ``stemcell.MF`` and ``image`` as regular
    files, the manifest must be valid and (with ``verify_sha1``) the sha1 of ``image`` must match it;
    otherwise ``StemcellError`` is raised and nothing is left behind. The root image stays packed in
    ``image``: call ``ExtractedStemcell.extract_root_image`` to get it.
    """
    found: list[StemcellManifest] = []

    def check(tree: Path) -> None:
        for name in REQUIRED_MEMBERS:
            member = tree / name
            if member.is_symlink() or not member.is_file():
                raise StemcellError(f"{path}: has no {name} file; not a stemcell tarball")
        if (tree / MANIFEST_NAME).stat().st_size > MAX_MANIFEST_BYTES:
            raise StemcellError(f"{MANIFEST_NAME} in {path}: is larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = StemcellManifest.from_yaml((tree / MANIFEST_NAME).read_bytes(), f"{MANIFEST_NAME} in {path}")
        if verify_sha1:
            digest = file_digest(tree / IMAGE_MEMBER, "sha1")
            if digest != manifest.sha1:
                raise StemcellError(f"{path}: sha1 of image is {digest} but {MANIFEST_NAME} says {manifest.sha1}")
        found.append(manifest)

    files = safe_extract(path, dest, limits=limits, before_commit=check)
    return ExtractedStemcell(
        root=dest,
        manifest=found[0],
        manifest_path=dest / MANIFEST_NAME,
        image_path=dest / IMAGE_MEMBER,
        files=tuple(files),
    )


def detect_image_format(path: Path) -> ImageFormat:
    """``qcow2`` when the file starts with the qcow2 magic ``QFI\\xfb``, else ``raw``."""
    try:
        with open(path, "rb") as source:
            return sniff_image(source.read(512))[0]
    except OSError as exc:
        raise StemcellError(f"{path}: cannot read disk image: {exc.strerror or exc}") from exc


# -- helpers -----------------------------------------------------------------------------------------------


def _quiet(_message: str) -> None:
    """The default progress callback: library functions print nothing."""
