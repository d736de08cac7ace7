"""``cd_files``/``cd_content``/``cd_label``: an ISO 9660 CD (Rock Ridge + Joliet names) made with pycdlib.

Packer's layout rules: a file lands in the CD's root under its own name; a directory ``dir`` lands as ``/dir/...``
while ``dir/`` (trailing slash) puts its contents in the root; glob patterns are expanded; ``cd_content`` maps CD
paths to file contents. The label defaults to ``packer``; ``cidata`` makes a cloud-init NoCloud seed.

Text files (UTF-8) containing ``{{`` and every ``cd_content`` value are rendered through the template engine when
the CD is made, so ``{{ build `SSHPublicKey` }}`` in a ``user-data`` file becomes the build's temporary public key.
Files whose first line is ``## template: jinja`` (cloud-init's own templates) are copied verbatim.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pycdlib


class CDError(RuntimeError):
    """A cd_files entry is missing or the CD cannot be written."""


def collect(cd_files: list[str], cd_content: dict[str, str], base_dirs: list[Path]) -> dict[str, bytes | Path]:
    """The CD's files: CD path (``a/b.txt``) -> content or local file. Raises CDError naming a missing entry."""
    entries: dict[str, bytes | Path] = {}
    for spec in cd_files:
        matches = _expand(spec, base_dirs)
        if not matches:
            raise CDError(f"cd_files: {spec!r} matches no file or directory")
        for match in matches:
            if match.is_dir():
                keep_name = not spec.endswith("/")
                for root, dirs, files in os.walk(match, followlinks=True):
                    dirs.sort()
                    rel = Path(root).relative_to(match)
                    prefix = PurePosixPath(match.name) / rel.as_posix() if keep_name else PurePosixPath(
                        rel.as_posix())
                    for name in sorted(files):
                        entries[str(PurePosixPath(prefix, name)).lstrip("./") or name] = Path(root) / name
            else:
                entries[match.name] = match
    for path, content in cd_content.items():
        clean = str(PurePosixPath("/", path)).lstrip("/")
        if not clean:
            raise CDError(f"cd_content: {path!r} is not a file path")
        entries[clean] = content.encode()
    return entries


def _expand(spec: str, base_dirs: list[Path]) -> list[Path]:
    for base in base_dirs:
        pattern = spec if os.path.isabs(spec) else str(base / spec)
        if glob.has_magic(spec):
            found = sorted(Path(p) for p in glob.glob(pattern))
        else:
            found = [Path(pattern)] if os.path.exists(pattern) else []
        if found:
            return found
    return []


def render_text(data: bytes, render: Callable[[str], object]) -> bytes:
    """Render ``data`` through the template engine when it is UTF-8 text containing ``{{`` (not a cloud-init
    Jinja template)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    if "{{" not in text or text.lstrip().lower().startswith("## template: jinja"):
        return data
    return str(render(text)).encode()


def write_iso(entries: dict[str, bytes], label: str, target: Path) -> None:
    """Write an ISO 9660 (interchange level 3) image with Rock Ridge and Joliet names to ``target``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    made_dirs: set[str] = set()
    used: dict[str, set[str]] = {}

    def iso_name(parent: str, name: str, is_dir: bool) -> str:
        stem, dot, ext = name.upper().rpartition(".") if "." in name and not is_dir else (name.upper(), "", "")
        clean = "".join(c if c.isalnum() and c.isascii() else "_" for c in stem)[:24] or "_"
        clean_ext = "".join(c if c.isalnum() and c.isascii() else "_" for c in ext)[:3]
        taken = used.setdefault(parent, set())
        candidate = clean + ("." + clean_ext if dot else "")
        n = 1
        while candidate in taken:
            suffix = f"_{n}"
            candidate = clean[: 24 - len(suffix)] + suffix + ("." + clean_ext if dot else "")
            n += 1
        taken.add(candidate)
        return candidate

    iso_dirs: dict[str, str] = {"": ""}

    def ensure_dir(rel: str) -> str:
        if rel in iso_dirs:
            return iso_dirs[rel]
        parent, _, name = rel.rpartition("/")
        parent_iso = ensure_dir(parent)
        iso_path = f"{parent_iso}/{iso_name(parent_iso, name, True)}"
        iso.add_directory(iso_path, rr_name=name, joliet_path=f"/{rel}")
        made_dirs.add(rel)
        iso_dirs[rel] = iso_path
        return iso_path

    try:
        for rel in sorted(entries):
            parent, _, name = rel.rpartition("/")
            parent_iso = ensure_dir(parent)
            iso_path = f"{parent_iso}/{iso_name(parent_iso, name, False)};1"
            data = entries[rel]
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{rel}")
        iso.write(str(target))
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise CDError(f"cannot write the CD image: {exc}") from None
    finally:
        iso.close()


def read_iso(path: Path) -> tuple[str, dict[str, bytes]]:
    """The label and files (by Rock Ridge path) of an ISO written by :func:`write_iso` (for tests and checks)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files: dict[str, bytes] = {}
        for root, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                rr = f"{root.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=rr)
                files[rr.lstrip("/")] = out.getvalue()
        return label, files
    finally:
        iso.close()
