"""Hostile inputs for the stemcell and CPI hardening tests: real qcow2/qed images made with ``qemu-img`` that the
image check must refuse (a backing file on a host secret, an external data file, LUKS encryption, a header claiming
8 EiB, an unknown format) and gzipped tars whose first member is a huge extended header."""

from __future__ import annotations

import gzip
import struct
import subprocess
import tarfile
from pathlib import Path


def qemu_img(*args: str) -> None:
    """``qemu-img ARGS`` (raises on failure)."""
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=120)


def make_hostile_images(directory: Path) -> dict[str, tuple[Path, str]]:
    """Each hostile image with the phrase its refusal must contain."""
    directory.mkdir(parents=True, exist_ok=True)
    backing = directory / "backing.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(backing))
    data_file = directory / "datafile.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={directory / 'outside.raw'}", str(data_file), "16M")
    encrypted = directory / "luks.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=hunter2",
             "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", str(encrypted), "16M")
    huge = directory / "huge.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(huge), "16M")
    with open(huge, "r+b") as fh:  # a corrupt header claiming 8 EiB
        fh.seek(24)
        fh.write(struct.pack(">Q", 8 * 1024**6 - 512))
    qed = directory / "disk.qed"
    qemu_img("create", "-q", "-f", "qed", str(qed), "16M")
    return {
        "backing file": (backing, "has a backing file (/etc/shadow)"),
        "external data file": (data_file, "uses an external data file"),
        "encryption": (encrypted, "is encrypted (luks)"),
        "8 EiB header": (huge, "Image is too big"),
        "unknown format": (qed, "unsupported image format 'qed'"),
    }


KINDS = ["backing file", "external data file", "encryption", "8 EiB header", "unknown format"]


def tar_header(name: str, kind: bytes, size: int) -> bytes:
    """One ustar header block (``kind`` member of ``size`` bytes)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def hostile_header_tgz(path: Path, kind: bytes, size: int) -> Path:
    """A gzipped tar whose first member is an extended header of ``size`` digits (the CVE-2024-6232 shape: the
    hdrcharset regex of Python < 3.11.10 backtracks quadratically over a run of digits), then a small file."""
    body = tar_header("x", kind, size) + b"1" * size + bytes(-size % 512)
    body += tar_header("stemcell.MF", tarfile.REGTYPE, 0) + bytes(1024)
    path.write_bytes(gzip.compress(body, 9))
    return path
