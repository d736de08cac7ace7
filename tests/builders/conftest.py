"""Fixtures shared by the builder tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.qemu import cached_test_image, use_private_tmp


@pytest.fixture(scope="session")
def test_image() -> Path:
    """The stemforge test image (busybox; acpid powers off on the power button), built once and cached."""
    return cached_test_image()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR and ``tempfile`` pointed at a directory of the test's own, so it can prove its temporaries are gone."""
    return use_private_tmp(tmp_path, monkeypatch)
