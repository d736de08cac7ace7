"""Finding and verifying the source: ``iso_url``/``iso_urls`` + ``iso_checksum`` (Packer's StepDownload).

* Sources: a local path (relative paths from the working directory, then the template's directory), a ``file://``
  URL, or an ``http(s)://`` URL. Local files are verified and used in place; downloads go to the cache
  (``$PACKER_CACHE_DIR``, else ``$STEMFORGE_CACHE/packer_cache``, else ``~/.cache/stemforge/packer_cache``) under
  ``sha1(url + checksum).<iso_target_extension>`` (or ``iso_target_path``), through a ``.part`` file renamed into
  place once its checksum matched; a cached file whose checksum still matches is reused.
* ``iso_urls`` are tried in order; a URL that fails (or whose content has the wrong checksum) moves on to the next.
* Checksums: ``none``, ``md5|sha1|sha256|sha512:<hex>``, a bare hex digest (type from its length) or
  ``file:<path or URL>`` naming a checksum list (GNU ``<hash>  <name>`` or BSD ``SHA256 (<name>) = <hash>`` lines)
  where the entry for the source's file name is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from builders.builder_types._sdk.iso import HEX_DIGEST, Checksum, ChecksumError, parse_checksum

_CHUNK = 1 << 20


class SourceError(RuntimeError):
    """No source could be fetched and verified; the message lists what happened to each URL."""


def is_remote(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("http", "https")


def local_path(url: str, template_dir: Path) -> Path:
    """The file a local source names (``file://`` URL or path)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        raw = urllib.parse.unquote(parts.netloc + parts.path)
    elif parts.scheme and len(parts.scheme) > 1:
        raise SourceError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (file, http or https)")
    else:
        raw = url
    path = Path(raw).expanduser()
    if not path.is_absolute() and not path.exists() and (template_dir / path).exists():
        path = template_dir / path
    return path


def resolve_checksum(checksum: Checksum, source_url: str, template_dir: Path, timeout: float = 60.0) -> Checksum:
    """Turn a ``file:`` checksum into the digest listed for ``source_url``'s file name."""
    if checksum.kind != "file":
        return checksum
    loc = checksum.value
    if loc.startswith("file:") and not loc.startswith("file://"):
        loc = loc[len("file:"):]
    try:
        if is_remote(loc):
            with urllib.request.urlopen(loc, timeout=timeout) as resp:  # noqa: S310 - http(s) only
                text = resp.read(16 << 20).decode("utf-8", "replace")
        else:
            text = local_path(loc, template_dir).read_text(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise ChecksumError(f"cannot read checksum list {checksum.value!r}: {exc}") from None
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(source_url).path)).name
    entries: list[tuple[str, str]] = []  # (file name, digest)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        bsd = re.match(r"^(MD5|SHA1|SHA256|SHA512) \((.+)\) = ([0-9a-fA-F]+)$", line)
        if bsd:
            entries.append((bsd.group(2), bsd.group(3)))
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and HEX_DIGEST.match(parts[0]):
            entries.append((parts[1].lstrip("*").strip(), parts[0]))
        elif len(parts) == 1 and HEX_DIGEST.match(parts[0]):
            entries.append(("", parts[0]))
    for fname, digest in entries:
        if fname == name or fname.lstrip("./") == name or Path(fname).name == name:
            return parse_checksum(digest)
    if len(entries) == 1 and entries[0][0] == "":
        return parse_checksum(entries[0][1])
    raise ChecksumError(f"no checksum for {name!r} in {checksum.value!r}")


def file_digest(path: Path, kind: str, progress: Callable[[int, int | None], None] | None = None,
                check_cancel: Callable[[], None] | None = None) -> str:
    h = hashlib.new(kind)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if check_cancel is not None:
                check_cancel()
            if progress is not None:
                progress(done, total)
    return h.hexdigest()


def cache_dir() -> Path:
    explicit = os.environ.get("PACKER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("STEMFORGE_CACHE") or os.path.expanduser("~/.cache/stemforge")
    return Path(base) / "packer_cache"


def cache_target(url: str, checksum: Checksum, extension: str) -> Path:
    key = hashlib.sha1(f"{url}{checksum}".encode()).hexdigest()  # noqa: S324 - a file name, as Packer does
    return cache_dir() / f"{key}.{extension}"


def download(url: str, target: Path, part: Path, *, progress: Callable[[int, int | None], None],
             check_cancel: Callable[[], None], timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``part`` (the caller renames it after verification and removes it on failure)."""
    part.parent.mkdir(parents=True, exist_ok=True)
    req = urllib.request.Request(url, headers={"User-Agent": "stemforge"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as out:  # noqa: S310
        total = resp.headers.get("Content-Length")
        size = int(total) if total and total.isdigit() else None
        done = 0
        while True:
            check_cancel()
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            progress(done, size)
        if size is not None and done != size:
            raise SourceError(f"{url}: got {done} of {size} bytes")
