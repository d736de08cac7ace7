"""Shared helpers for the qemu builder tests (no tests here): a recording UI, a build context whose ``render`` is
the real template engine, a step-runner driver and leftover checks (QEMU processes, temporary files)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builders.builder_types.qemu import QemuBuilder
from builders.core import Artifact, BuildContext, Communicator
from stemforge_base.steps import StepRunner
from tests.harness.recording_ui import RecordingUi


def make_ctx(tmp: Path, *, force: bool = False, ui: RecordingUi | None = None, name: str = "test") -> BuildContext:
    from builders.template.functions import RenderContext, render_string

    ctx = BuildContext(build_name=name, build_type="qemu", ui=ui or RecordingUi(), cancel=threading.Event(),
                       template_dir=tmp, run_uuid="0123456789abcdef", force=force)

    def render(value: Any) -> Any:
        return render_string(str(value), RenderContext(build_name=name, build_type="qemu", data=ctx.generated))

    ctx.render = render
    return ctx


class Hook:
    """A ProvisionHook that calls ``fn(communicator, state)``."""

    def __init__(self, state: dict[str, Any], fn: Callable[[Communicator, dict[str, Any]], None] | None = None):
        self.state = state
        self.fn = fn
        self.calls = 0

    def run(self, communicator: Communicator) -> None:
        self.calls += 1
        if self.fn is not None:
            self.fn(communicator, self.state)


def run_build(config: dict[str, Any], ctx: BuildContext,
              fn: Callable[[Communicator, dict[str, Any]], None] | None = None,
              ) -> tuple[QemuBuilder, dict[str, Any], Artifact | None, Hook]:
    builder = QemuBuilder(config, ctx)
    builder.prepare()
    state: dict[str, Any] = {}
    hook = Hook(state, fn)
    StepRunner(log=logging.getLogger("test.qemu"), cancel=ctx.cancel).run(builder.steps(hook), state)
    return builder, state, builder.artifact(state), hook


def qemu_pids(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions ``marker`` (e.g. the test's output directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if marker in cmd and "qemu" in cmd and ") Z " not in stat:
            found.append(int(entry))
    return found


def use_private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TMPDIR (and ``tempfile``) at a private directory so a test can prove its temporary files are gone."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def cached_test_image() -> Path:
    """The stemforge test stemcell image (busybox, acpid powers off on the power button); built once, cached."""
    from stemcells.testimage.build import build_test_image

    return build_test_image()
