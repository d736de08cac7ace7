"""Build helpers: a context for post-processor tests (the ``file`` build ``img``, as the build runner makes one) and
the ``stemforge`` command line run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from builders.core import BuildContext
from tests.harness.recording_ui import RecordingUi


def make_ctx(tmp_path: Path, *, run_uuid: str | None = None, on_error: str = "cleanup",
             force: bool = False) -> BuildContext:
    """A context with a :class:`RecordingUi`, a fresh cancel event, ``tmp_path`` as the template directory and a
    new run UUID unless ``run_uuid`` is given (a second run of the same build passes the first one's)."""
    return BuildContext(build_name="img", build_type="file", ui=RecordingUi(), cancel=threading.Event(),
                        template_dir=tmp_path, run_uuid=run_uuid or str(uuid.uuid4()), on_error=on_error, force=force)


def stemforge(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, *,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m stemforge.cli ARGS`` in ``cwd`` as a user runs it: this process's environment without the test
    run's ``STEMFORGE_FAILPOINTS``, then ``env`` on top (which may set failpoints); output captured as text; a
    non-zero exit is returned, not raised."""
    full = {k: v for k, v in os.environ.items() if k != "STEMFORGE_FAILPOINTS"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "stemforge.cli", *args], cwd=cwd, env=full, text=True,
                          capture_output=True, timeout=timeout, check=False)
