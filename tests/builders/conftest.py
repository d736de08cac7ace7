"""Fixtures shared by the builder tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.qemu import cached_test_image, use_private_tmp
from tests.harness.sshd import Sshd, running_sshd


@pytest.fixture(scope="session")
def test_image() -> Path:
    """The stemforge test image (busybox; acpid powers off on the power button), built once and cached."""
    return cached_test_image()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR and ``tempfile`` pointed at a directory of the test's own, so it can prove its temporaries are gone."""
    return use_private_tmp(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """The module's own OpenSSH server on 127.0.0.1 (tests/harness/sshd.py)."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
