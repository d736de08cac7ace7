"""The tiny test stemcell image (busybox + Debian kernel) and its test agent.

See :mod:`stemcells.testimage.build` for the image and ``agent.sh`` for the guest protocol;
:mod:`stemcells.testimage.debs` (Debian packages, the download cache, build steps) and
:mod:`stemcells.testimage.rootfs` (kernel modules, busybox, initramfs archives) are public for the bare-metal deploy
ramdisk's build, which shares them.
The public names below are imported lazily so ``python -m stemcells.testimage.build`` runs
the module only once.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ImageBuildError", "build_test_image", "image_manifest", "kernel_version", "packages_txt"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("stemcells.testimage.build"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
