"""Where a region fan-out publishes an image: one plugin per kind of site (a local directory, an HTTP image
repository, an S3-compatible bucket; later cloud regions).

Every destination speaks the same two-phase protocol so that a fan-out can promise "all or nothing":

1. ``preflight(source, image_name, replace)``: cheap checks before any byte moves (reachable, writable, the name is free
   unless ``replace``). Raises ``DestinationError``.
2. ``stage(source, image_name, io)``: put the bytes where nobody consumes them yet (a temporary name, an
   uncompleted multipart upload) and verify them there where the medium allows. Everything a failed or cancelled
   ``stage`` wrote is removed before it raises. Returns a ``Staged`` handle.
3. ``commit(staged, replace)``: make the staged copy visible under its final name atomically (rename, WebDAV MOVE,
   CompleteMultipartUpload); an image it replaces is kept aside as a backup until ``finalize``. Returns
   ``Committed``.
4. ``check(image_name, expected_sha256, io)``: re-hash the published copy (the proof of consistency).
5. ``finalize(committed)`` drops the backup once every destination succeeded; ``rollback(committed)`` removes the
   copy and restores the backup when any destination failed; ``discard(staged)`` removes a staged copy that was
   never committed.

Destinations are found by type: ``local`` -> ``builders.destinations.local``, ``http`` ->
``builders.destinations.http_repo``, ``s3`` -> ``builders.destinations.s3``, any other ``T`` ->
``builders.destinations.<T>``; each module exposes ``PLUGIN``. Configs carry no secrets except the http type's
optional ``token`` (S3 credentials come from the standard AWS environment and files), and ``describe`` must never
print one.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Final

import jsonschema

#: Bytes per read/write/hash step: large enough that per-chunk overhead is negligible, small enough to stay
#: responsive to cancellation.
CHUNK: Final = 1024 * 1024
#: A final image name: one path segment, no hidden names, nothing a shell or URL would need quoting for.
IMAGE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
#: Names used for copies in flight; ``list_images`` shows them so that a leak is visible.
STAGING_MARK: Final = ".stemforge-staging-"
BACKUP_MARK: Final = ".stemforge-replaced-"

_MODULES: Final = {"local": "local", "http": "http_repo", "s3": "s3"}


class DestinationError(Exception):
    """A destination operation failed; the message says what and why (never a secret). ``transient`` marks
    failures worth retrying (connection resets, timeouts, 5xx, throttling, a checksum mismatch after a transfer)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class TransferCancelled(Exception):
    """The fan-out was cancelled or another destination failed while this one was transferring."""


@dataclass(frozen=True)
class SourceImage:
    """The local image being published: its path, size and sha256 (computed once, before any transfer)."""

    path: Path
    size: int
    sha256: str


@dataclass
class TransferIO:
    """What a long destination operation reports to and polls: ``phase(label)`` when it starts a new pass
    (``upload``, ``verify``), ``progress(done_bytes)`` (cumulative within the current pass) and ``cancelled()``."""

    progress: Callable[[int], None] = field(default=lambda _done: None)
    cancelled: Callable[[], bool] = field(default=lambda: False)
    phase: Callable[[str], None] = field(default=lambda _label: None)

    def check(self) -> None:
        """Raise ``TransferCancelled`` if the fan-out was cancelled."""
        if self.cancelled():
            raise TransferCancelled("cancelled")


@dataclass
class Staged:
    """A copy in flight: ``image_name`` is the final name, ``handle`` whatever the destination needs to commit or
    discard it, ``bytes_written`` what was actually sent or written (holes of a sparse image are skipped locally)."""

    image_name: str
    handle: dict[str, Any]
    bytes_written: int = 0
    verified: bool = False


@dataclass
class Committed:
    """A copy published under its final name; ``backup`` is where a replaced image waits until ``finalize``."""

    image_name: str
    id: str
    backup: str | None = None
    bytes_written: int = 0
    handle: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CopyCheck:
    """The result of re-hashing one published copy."""

    destination: str
    id: str
    exists: bool
    size: int | None
    sha256: str | None
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "id": self.id, "exists": self.exists, "size": self.size,
                "sha256": self.sha256, "ok": self.ok, "detail": self.detail}


class Destination(ABC):
    """One publishing target. ``name`` is the region/site name recorded in artifact ids (``name:id``)."""

    type_name: ClassVar[str] = ""
    options_schema: ClassVar[dict[str, Any]] = {"type": "object"}

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = dict(config)

    def validate(self) -> list[str]:
        """Check the config against ``options_schema``; return one message per problem (empty when valid)."""
        return schema_errors(self.options_schema, self.config)

    def describe(self) -> str:
        """Human-readable location for logs and tables (never includes a secret)."""
        return self.type_name

    @abstractmethod
    def image_id(self, image_name: str) -> str:
        """The id of ``image_name`` at this destination (a path, a URL, ``s3://bucket/key``)."""

    @abstractmethod
    def preflight(self, source: SourceImage, image_name: str, replace: bool) -> None:
        """Fail fast (``DestinationError``) when the destination is unusable (unreachable, not writable, too
        little space for ``source``) or ``image_name`` exists and not ``replace``."""

    @abstractmethod
    def stage(self, source: SourceImage, image_name: str, io: TransferIO) -> Staged:
        """Transfer ``source`` to a place nobody consumes yet and verify it there where possible. On any failure
        (including ``TransferCancelled``) remove whatever was written, then raise."""

    @abstractmethod
    def discard(self, staged: Staged) -> None:
        """Remove a staged copy that will not be committed. Idempotent."""

    @abstractmethod
    def commit(self, staged: Staged, replace: bool) -> Committed:
        """Publish the staged copy under its final name atomically; keep a replaced image aside as a backup."""

    @abstractmethod
    def rollback(self, committed: Committed) -> None:
        """Remove a committed copy and restore the image it replaced, if any. Idempotent."""

    @abstractmethod
    def finalize(self, committed: Committed) -> None:
        """Drop the backup of a replaced image (the fan-out succeeded everywhere). Idempotent."""

    @abstractmethod
    def check(self, image_name: str, expected_sha256: str | None, io: TransferIO) -> CopyCheck:
        """Re-hash the published ``image_name`` by reading it back in full; never raises for a missing or
        different copy (that is what the result says), only ``TransferCancelled``."""

    @abstractmethod
    def list_images(self) -> list[str]:
        """Every name stored at the destination, including staging and backup leftovers (sorted)."""


def load_destination(config: Mapping[str, Any], index: int) -> Destination:
    """Build the destination described by ``config`` (``type`` and ``name`` required). Raises ``ValueError``
    naming ``destinations[index]`` and the problem."""
    where = f"destinations[{index}]"
    if not isinstance(config, Mapping):
        raise ValueError(f"{where}: must be an object with 'type' and 'name'")
    kind = config.get("type")
    name = config.get("name")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"{where}: missing 'type'")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", name):
        raise ValueError(f"{where}: 'name' must be a region/site name of letters, digits, '.', '_' or '-' "
                         f"(got {name!r})")
    module_name = _MODULES.get(kind, kind.replace("-", "_"))
    if not re.match(r"^[a-z][a-z0-9_]*$", module_name):
        raise ValueError(f"{where}: unknown destination type {kind!r}")
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{module_name}":
            known = ", ".join(sorted(_MODULES))
            raise ValueError(f"{where}: unknown destination type {kind!r} (known: {known})") from None
        raise
    plugin: type[Destination] = module.PLUGIN
    options = {k: v for k, v in config.items() if k not in ("type", "name")}
    try:  # Go-style weak typing, as for every other plugin option ("30" is a fine timeout: variables are strings)
        from builders.registry import coerce

        options = coerce(options, plugin.options_schema)
    except ImportError:  # pragma: no cover - the registry ships with builders
        pass
    return plugin(name, options)


def schema_errors(schema: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """Validate ``config`` against ``schema``; messages use Packer's words for unknown keys."""
    messages: list[str] = []
    validator = jsonschema.Draft202012Validator(schema)
    for error in sorted(validator.iter_errors(dict(config)), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            allowed = set(error.schema.get("properties", {}))
            for key in sorted(k for k in error.instance if k not in allowed):
                full = f"{path}.{key}" if path else key
                messages.append(f"unknown configuration key: '{full}'")
        elif error.validator == "required" and isinstance(error.instance, Mapping):
            for key in error.validator_value:
                if key not in error.instance:
                    full = f"{path}.{key}" if path else key
                    messages.append(f"'{full}' is required")
        else:
            messages.append(f"'{path}': {error.message}" if path else error.message)
    return messages


def hash_stream(stream: IO[bytes], io: TransferIO) -> tuple[str, int]:
    """sha256 and length of everything ``stream`` yields, reading ``CHUNK`` at a time, reporting progress and
    honouring cancellation. Never holds more than one chunk in memory."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    done = 0
    while True:
        io.check()
        count = stream.readinto(view)  # type: ignore[attr-defined]
        if not count:
            break
        digest.update(view[:count])
        done += count
        io.progress(done)
    return digest.hexdigest(), done


def hash_file(path: Path, io: TransferIO | None = None) -> tuple[str, int]:
    """sha256 and size of the file at ``path`` (streamed)."""
    with open(path, "rb") as fh:
        return hash_stream(fh, io or TransferIO())


def check_image_name(name: str) -> str | None:
    """None when ``name`` is a valid final image name, else why not."""
    if not IMAGE_NAME_RE.match(name):
        return (f"{name!r} is not a valid image name (one path segment of letters, digits, '.', '_', '+', '-', "
                "not starting with '.' or '-', at most 255 characters)")
    return None
