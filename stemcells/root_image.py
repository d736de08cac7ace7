"""The root disk image inside a stemcell's ``image`` file (a gzipped tar), extracted safely: what a CPI's
``create_stemcell`` gets from the director.

Below both :mod:`stemcells.tarball` (which writes and reads whole stemcells) and :mod:`stemcells.image_check` (which
judges the disk it finds), so neither imports the other's way round.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

from stemcells.errors import StemcellError
from stemcells.safe_extract import DEFAULT_LIMITS, ExtractLimits, safe_extract

#: Names the root disk image may have inside ``image`` (``disk.raw`` is Google's convention).
ROOT_IMAGE_NAMES: Final = ("root.img", "disk.raw")


def open_root_image(image_path: Path, dest_dir: Path, *, limits: ExtractLimits = DEFAULT_LIMITS) -> Path:
    """Extract the root image from a stemcell's ``image`` file (a gzipped tar) into ``dest_dir``.

    This is what a CPI's ``create_stemcell`` receives from the director. ``image`` must hold exactly one
    ``root.img`` or ``disk.raw`` and nothing else; it is extracted safely (see ``safe_extract``) and moved to
    ``dest_dir/<name>``, which must not exist yet. ``dest_dir`` is created if missing. Returns the root image
    path; ``detect_image_format`` tells qcow2 from raw. Raises ``StemcellError`` for an empty ``image`` (a
    light stemcell), an unsafe or malformed archive, or an existing target; nothing is left behind on failure.
    """
    try:
        size = image_path.stat().st_size
    except OSError as exc:
        raise StemcellError(f"{image_path}: cannot read stemcell image: {exc.strerror or exc}") from exc
    if size == 0:
        raise StemcellError(f"{image_path}: is empty (a light stemcell image); there is no root image to extract")

    def exactly_one(tree: Path) -> None:
        names = sorted(p.name for p in tree.iterdir())
        if len(names) != 1:
            found = ", ".join(names) or "nothing"
            raise StemcellError(f"{image_path}: must hold exactly one root image, found {found}")

    created = not dest_dir.exists()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".root-image-", dir=dest_dir))
    except OSError as exc:
        raise StemcellError(f"{dest_dir}: cannot create directory for the root image: {exc}") from exc
    done = False
    try:
        files = safe_extract(
            image_path, staging, limits=limits, allowed_names=ROOT_IMAGE_NAMES, before_commit=exactly_one
        )
        target = dest_dir / files[0].name
        try:
            os.link(files[0], target)  # refuses to replace an existing file
        except FileExistsError as exc:
            raise StemcellError(f"{target}: already exists; not overwriting it") from exc
        done = True
    except OSError as exc:
        raise StemcellError(f"{image_path}: cannot extract root image into {dest_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not done:
            with contextlib.suppress(OSError):
                dest_dir.rmdir()  # the directory this call made; a failure leaves nothing behind
    return target
