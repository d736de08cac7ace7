"""stemforge_base.hashing: the file digest hashes holes as zeros, reports progress and stops when asked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from stemforge_base.hashing import CHUNK, file_digest, sha256_file


def _sparse(path: Path) -> bytes:
    """A file with data, a hole of several chunks, data, and a trailing hole; returns its full byte stream."""
    head, middle = os.urandom(CHUNK + 123), os.urandom(4567)
    with open(path, "wb") as fh:
        fh.write(head)
        fh.seek(3 * CHUNK + 17)
        fh.write(middle)
        fh.truncate(6 * CHUNK + 5)
    return head + bytes(3 * CHUNK + 17 - len(head)) + middle + bytes(6 * CHUNK + 5 - (3 * CHUNK + 17 + len(middle)))


def test_sparse_file_digest_is_that_of_its_bytes(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    stream = _sparse(image)
    assert image.stat().st_blocks * 512 < len(stream), "the test file must be sparse"
    assert sha256_file(image) == hashlib.sha256(stream).hexdigest()
    assert file_digest(image, "sha1") == hashlib.sha1(stream).hexdigest()


def test_plain_and_empty_files(tmp_path: Path) -> None:
    plain, empty = tmp_path / "plain", tmp_path / "empty"
    data = os.urandom(2 * CHUNK + 1)
    plain.write_bytes(data)
    empty.write_bytes(b"")
    assert sha256_file(plain) == hashlib.sha256(data).hexdigest()
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_progress_reaches_the_size(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    stream = _sparse(image)
    seen: list[tuple[int, int]] = []
    sha256_file(image, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(stream), len(stream))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen) and len(seen) > 3


def test_check_stops_the_hash(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    _sparse(image)
    calls = 0

    def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise InterruptedError("stop")

    with pytest.raises(InterruptedError, match="stop"):
        sha256_file(image, check=check)
    assert calls == 2


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "nope")


def test_an_open_file_is_hashed_whole_and_left_open(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    stream = _sparse(image)
    fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        fh.read(100)  # wherever the caller left it, the whole file is hashed
        assert sha256_file(fh) == hashlib.sha256(stream).hexdigest()
        assert not fh.closed
