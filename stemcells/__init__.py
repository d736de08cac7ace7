"""BOSH stemcell tarballs: the ``stemcell.MF`` manifest, safe extraction, and reading/writing/verifying.

Modules: ``manifest`` (``StemcellManifest``), ``tarball`` (``write_stemcell``, ``read_stemcell``,
``verify_stemcell``, ``extract_stemcell``), ``root_image`` (``open_root_image``: the root disk inside the
director's ``image`` file), ``safe_extract`` (all-or-nothing tar
extraction, bounded extended headers, one symlink judgement), ``image_check`` (bounded ``qemu-img info`` judgement of
a disk image before any use: the CPI providers, ``stemcell create``/``verify`` and the qemu builder's
``disk_image``), ``errors`` (``StemcellError``) and ``cli`` (``stemforge stemcell ...``).

The names below are re-exported lazily, so importing ``stemcells`` (or a subpackage such as
``stemcells.testimage``) does not pull in jsonschema and PyYAML until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stemcells.errors import StemcellError, UnsafeArchiveError
    from stemcells.manifest import EMPTY_SHA1, StemcellManifest, stemcell_filename
    from stemcells.root_image import open_root_image
    from stemcells.safe_extract import ExtractLimits, safe_extract
    from stemcells.tarball import (
        ExtractedStemcell,
        Stemcell,
        VerifyReport,
        detect_image_format,
        extract_stemcell,
        read_stemcell,
        verify_stemcell,
        write_stemcell,
    )

_EXPORTS: dict[str, str] = {
    "StemcellError": "stemcells.errors",
    "UnsafeArchiveError": "stemcells.errors",
    "EMPTY_SHA1": "stemcells.manifest",
    "StemcellManifest": "stemcells.manifest",
    "stemcell_filename": "stemcells.manifest",
    "ExtractLimits": "stemcells.safe_extract",
    "safe_extract": "stemcells.safe_extract",
    "ExtractedStemcell": "stemcells.tarball",
    "Stemcell": "stemcells.tarball",
    "VerifyReport": "stemcells.tarball",
    "detect_image_format": "stemcells.tarball",
    "extract_stemcell": "stemcells.tarball",
    "open_root_image": "stemcells.root_image",
    "read_stemcell": "stemcells.tarball",
    "verify_stemcell": "stemcells.tarball",
    "write_stemcell": "stemcells.tarball",
}

__all__ = [
    "EMPTY_SHA1",
    "ExtractLimits",
    "ExtractedStemcell",
    "Stemcell",
    "StemcellError",
    "StemcellManifest",
    "UnsafeArchiveError",
    "VerifyReport",
    "detect_image_format",
    "extract_stemcell",
    "open_root_image",
    "read_stemcell",
    "safe_extract",
    "stemcell_filename",
    "verify_stemcell",
    "write_stemcell",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stemcells' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
