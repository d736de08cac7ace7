"""create_stemcell's image work: the disk image inside the director's ``image`` file, judged by
``stemcells.image_check``, copied or converted to a sparse raw file (what ``metal serve`` streams to the ramdisk)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cpi.errors import CloudError
from stemcells.errors import StemcellError
from stemcells.image_check import ImageRejected, prepare_root_image

QCOW2_MAGIC = b"QFI\xfb"


def root_image(image: Path, work: Path) -> Path:
    """The disk image inside the director's ``image`` file (a gzipped tar), or the file itself, judged by
    ``stemcells.image_check`` (qcow2/raw, no backing or data file, not encrypted, bounded virtual size)."""
    try:
        return prepare_root_image(image, work).path
    except ImageRejected as exc:
        raise CloudError(f"create_stemcell: root image {exc.path.name} of {image} refused: {exc.reason}") from None
    except StemcellError as exc:
        raise CloudError(f"create_stemcell: {exc.message}") from None


def to_raw(source: Path, target: Path) -> None:
    """Copy (raw) or convert (qcow2, sniffed by magic, never by name) to a sparse raw file."""
    with open(source, "rb") as fh:
        magic = fh.read(4)
    if magic != QCOW2_MAGIC:
        proc = subprocess.run(
            ["cp", "--sparse=always", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    else:
        qemu_img = shutil.which("qemu-img") or "/usr/bin/qemu-img"
        proc = subprocess.run(
            [qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if proc.returncode != 0:
        raise CloudError(f"create_stemcell: converting the image to raw failed: {proc.stderr.strip()[:500]}")

