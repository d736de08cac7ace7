"""Fixtures shared by the bare-metal tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.redfish import Emulator, sushy_emulator


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    """A fake-driver sushy-emulator of its own (state dir under the test's tmp_path), stopped after the test."""
    with sushy_emulator(tmp_path / "emulator") as emu:
        yield emu
