"""A build context for post-processor tests (the ``file`` build ``img``), as the build runner makes one."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from builders.core import BuildContext
from tests.harness.recording_ui import RecordingUi


def make_ctx(tmp_path: Path, *, run_uuid: str | None = None, on_error: str = "cleanup",
             force: bool = False) -> BuildContext:
    """A context with a :class:`RecordingUi`, a fresh cancel event, ``tmp_path`` as the template directory and a
    new run UUID unless ``run_uuid`` is given (a second run of the same build passes the first one's)."""
    return BuildContext(build_name="img", build_type="file", ui=RecordingUi(), cancel=threading.Event(),
                        template_dir=tmp_path, run_uuid=run_uuid or str(uuid.uuid4()), on_error=on_error, force=force)
