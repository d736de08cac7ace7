"""The ISO config part (packer-plugin-sdk ``multistep/commonsteps/iso_config.go`` ``ISOConfig``) and the
``iso_checksum`` grammar it checks at prepare time.

Checksums: ``none``, ``md5|sha1|sha256|sha512:<hex>``, a bare hex digest (type from its length) or
``file:<path or URL>`` naming a checksum list (fetched later, by the download step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from builders.builder_types._sdk.options import Options

DIGEST_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
HEX_DIGEST = re.compile(r"^[0-9a-fA-F]+$")


class ChecksumError(ValueError):
    """An ``iso_checksum`` that cannot be parsed or a checksum list without the file's entry."""


@dataclass(frozen=True)
class Checksum:
    kind: str  # md5 | sha1 | sha256 | sha512 | none | file
    value: str  # hex digest, or the checksum list's location for kind "file"

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.value}"


def parse_checksum(text: str) -> Checksum:
    """Parse an ``iso_checksum`` value (does not fetch ``file:`` lists); ChecksumError naming what is wrong."""
    text = text.strip()
    if text.lower() == "none":
        return Checksum("none", "")
    kind, sep, value = text.partition(":")
    if sep and kind.lower() == "file":
        if not value:
            raise ChecksumError("file: needs a path or URL of a checksum list")
        return Checksum("file", value)
    if sep and kind.lower() in ("md5", "sha1", "sha256", "sha512"):
        kind = kind.lower()
        if not HEX_DIGEST.match(value) or DIGEST_LENGTHS.get(len(value)) != kind:
            raise ChecksumError(f"{text!r} is not a valid {kind} checksum")
        return Checksum(kind, value.lower())
    if sep:
        raise ChecksumError(f"unknown checksum type {kind!r} (md5, sha1, sha256, sha512, file or none)")
    if HEX_DIGEST.match(text) and len(text) in DIGEST_LENGTHS:
        return Checksum(DIGEST_LENGTHS[len(text)], text.lower())
    raise ChecksumError(f"{text!r} is not a checksum (a hex digest, 'type:digest', 'file:list' or 'none')")


@dataclass(kw_only=True)
class ISOConfig:
    """Where the source comes from and how it is verified."""

    iso_urls: list[str] = field(default_factory=list)
    iso_checksum: str = ""
    iso_target_path: str = ""
    iso_target_extension: str = "iso"

    def prepare_iso(self, opts: Options) -> None:
        """Packer's ``ISOConfig.Prepare``: exactly one of ``iso_url``/``iso_urls``, a checksum (``none`` warns)."""
        iso_url = opts.text("iso_url")
        iso_urls = opts.strings("iso_urls")
        if iso_url and iso_urls:
            opts.errors.append("Only one of iso_url or iso_urls must be specified")
        self.iso_urls = [iso_url] if iso_url else iso_urls
        if not self.iso_urls:
            opts.errors.append("One of iso_url or iso_urls must be specified")
        self.iso_checksum = opts.text("iso_checksum").strip()
        if self.iso_checksum == "none":
            opts.warnings.append("A checksum of 'none' was specified. Since ISO files are so big,\n"
                                 "a checksum is highly recommended.")
        elif not self.iso_checksum:
            opts.errors.append("A checksum must be specified")
        elif self.iso_checksum.lower().endswith(".iso"):
            opts.errors.append("Error parsing checksum: .iso is not a valid checksum ending")
        else:
            try:
                parse_checksum(self.iso_checksum)
            except ChecksumError as exc:
                opts.errors.append(f"iso_checksum: {exc}")
        self.iso_target_path = opts.text("iso_target_path")
        self.iso_target_extension = opts.text("iso_target_extension", "iso").lower() or "iso"
