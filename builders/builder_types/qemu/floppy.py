"""``floppy_files`` / ``floppy_dirs`` / ``floppy_content``: a 1.44 MB FAT12 floppy image attached as drive A:
(packer-plugin-sdk ``multistep/commonsteps/step_create_floppy.go``), the way legacy preseed and Windows
``Autounattend.xml`` templates hand files to an installer.

The image is made with dosfstools' ``mkfs.fat`` and filled with mtools (``mmd``/``mcopy``), both in
``scripts/apt-packages.txt``. Entries are gathered as for ``cd_files`` (:func:`cdrom.collect`: a file lands at the
root, a directory keeps its name unless given with a trailing slash, globs expand); file contents are not rendered
(Packer copies floppy files as they are).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from builders.builder_types.qemu import cdrom
from builders.builder_types.qemu.config import QemuConfig
from builders.core import BuildError, BuildStep

#: 1.44 MB, in the 1 KiB blocks ``mkfs.fat`` counts.
FLOPPY_KIB = 1440


class FloppyError(Exception):
    """The floppy image could not be made; the message says why."""


def write_floppy(entries: dict[str, bytes | Path], label: str, path: Path) -> None:
    """A FAT12 floppy image at ``path`` holding ``entries`` (floppy path -> content or local file)."""
    path.unlink(missing_ok=True)
    _run(["mkfs.fat", "-C", "-n", label[:11].upper(), str(path), str(FLOPPY_KIB)])
    made: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="stemforge-floppy-") as tmp:
        for n, (rel, src) in enumerate(sorted(entries.items())):
            parts = PurePosixPath(rel).parts
            for i in range(1, len(parts)):
                folder = "/".join(parts[:i])
                if folder not in made:
                    _run(["mmd", "-i", str(path), f"::/{folder}"])
                    made.add(folder)
            if isinstance(src, bytes):
                local = Path(tmp) / str(n)
                local.write_bytes(src)
                src = local
            _run(["mcopy", "-i", str(path), "-o", str(src), f"::/{rel}"])


def _run(argv: list[str]) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FloppyError(f"{argv[0]}: {exc}") from None
    if proc.returncode != 0:
        raise FloppyError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()}")


class StepCreateFloppy(BuildStep[QemuConfig]):
    """Packer's ``StepCreateFloppy``: the floppy image (state ``floppy_path``), removed on cleanup."""

    name = "create_floppy"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.floppy_files and not cfg.floppy_dirs and not cfg.floppy_content:
            return
        self.ui.say("Creating floppy disk...")
        try:
            entries = cdrom.collect(cfg.floppy_files + cfg.floppy_dirs, cfg.floppy_content,
                                    [Path.cwd(), self.ctx.template_dir])
        except cdrom.CDError as exc:
            raise BuildError(f"Error creating floppy: {str(exc).replace('cd_', 'floppy_')}") from None
        fd, tmp = tempfile.mkstemp(prefix="packer", suffix=".img")
        os.close(fd)
        state["floppy_path"] = Path(tmp)
        try:
            write_floppy(entries, cfg.floppy_label or "packer", Path(tmp))
        except FloppyError as exc:
            raise BuildError(f"Error creating floppy: {exc}") from None
        self.ui.message(f"Floppy {cfg.floppy_label or 'packer'!r} with {len(entries)} file(s): "
                        + ", ".join(sorted(entries)))

    def cleanup(self, state: dict[str, Any]) -> None:
        path = state.pop("floppy_path", None)
        if path is not None:
            Path(path).unlink(missing_ok=True)
