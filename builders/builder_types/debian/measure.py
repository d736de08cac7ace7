"""Timings for the benchmark: a cold ``debian`` build (empty cache), a warm rebuild (bootstrap cache hit) and a
bare ``debootstrap --variant=minbase <suite>`` of the same suite from the same mirror, all on this machine.

Targets (issue 3): cold <= 2x bare debootstrap; warm <= 10% of cold.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import chroot, proc
from .config import default_mirror
from .run import run_build

#: The measured image: the same recipe as the test image (kernel, GRUB, sshd, cloud-init), minus provisioning.
DEFAULT_OPTIONS: dict[str, Any] = {
    "suite": "bookworm",
    "variant": "minbase",
    "include_sshd": True,
    "include_cloud_init": True,
    "datasource": "ConfigDrive",
    "disk_size": "2G",
    "format": "qcow2",
}


def bare_debootstrap_seconds(suite: str, mirror: str, workdir: Path) -> float:
    target = workdir / "bare"
    started = time.monotonic()
    try:
        proc.run(["debootstrap", "--variant=minbase", suite, str(target), mirror], what="bare debootstrap",
                 timeout=3600)
        return time.monotonic() - started
    finally:
        chroot.remove_tree(target)


def measure(options: Mapping[str, Any] | None = None, *, workdir: Path | None = None,
            quiet: bool = True) -> dict[str, Any]:
    """Run a bare debootstrap, a cold build into a fresh cache, a warm rebuild, and a second bare debootstrap
    (the two bare runs bracket the cold build, so load drift on a shared machine shows; their mean is the
    floor). Everything is created under a temporary directory in ``workdir`` (default: the system temp dir)
    and removed afterwards. Returns seconds and ratios: ``bare_debootstrap_s`` (mean), ``bare_runs_s``,
    ``cold_s``, ``warm_s``, ``cold_over_bare``, ``warm_over_cold``, the per-step seconds of both builds
    (``cold_steps``, ``warm_steps``) and the cold bootstrap's parts (``cold_bootstrap_parts``: debootstrap,
    apt, initramfs, publish)."""
    opts = dict(DEFAULT_OPTIONS if options is None else options)
    base = Path(tempfile.mkdtemp(prefix="stemforge-debian-measure-", dir=workdir))
    stream = io.StringIO() if quiet else None
    try:
        suite = opts.get("suite", "bookworm")
        mirror = opts.get("mirror") or default_mirror()
        bare_runs = [bare_debootstrap_seconds(suite, mirror, base)]
        opts["cache_dir"] = str(base / "cache")
        cold = run_build({**opts, "output_directory": str(base / "cold")}, "measure-cold", stream=stream)
        chroot.remove_tree(base / "cold")
        warm = run_build({**opts, "output_directory": str(base / "warm")}, "measure-warm", stream=stream)
        bare_runs.append(bare_debootstrap_seconds(suite, mirror, base))
        bare = sum(bare_runs) / len(bare_runs)
        if not warm.state.get("bootstrap_cached"):
            raise RuntimeError("measure: the warm rebuild did not hit the bootstrap cache")
        return {
            "suite": suite,
            "bare_debootstrap_s": round(bare, 2),
            "bare_runs_s": [round(b, 2) for b in bare_runs],
            "cold_s": round(cold.seconds, 2),
            "warm_s": round(warm.seconds, 2),
            "cold_over_bare": round(cold.seconds / bare, 3),
            "warm_over_cold": round(warm.seconds / cold.seconds, 3),
            "cold_steps": {k: round(v, 2) for k, v in cold.step_seconds.items()},
            "warm_steps": {k: round(v, 2) for k, v in warm.step_seconds.items()},
            "cold_bootstrap_parts": {k: round(v, 2) for k, v in cold.state.get("bootstrap_parts", {}).items()},
            "targets": {"cold_over_bare": 2.0, "warm_over_cold": 0.10},
        }
    finally:
        chroot.remove_tree(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(measure(quiet=False), indent=2))
