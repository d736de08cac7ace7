"""Which paths are HCL2 configurations (cheap: the CLI asks before it loads the HCL2 front end)."""

from __future__ import annotations

from pathlib import Path


def is_hcl2(path: Path) -> bool:
    """Whether ``path`` is an HCL2 configuration: a directory, or a ``.pkr.hcl``/``.pkr.json``/``.hcl`` file."""
    return path.is_dir() or path.name.endswith((".pkr.hcl", ".pkr.json", ".hcl"))
