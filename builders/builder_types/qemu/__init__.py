"""Packer's ``qemu`` builder type: an installer ISO or a bootable ``disk_image`` run under QEMU (TCG here; KVM only
when a bounded probe proves it runs guests), provisioned over SSH through a loopback host-forward, shut down and
converted into ``output_directory/vm_name``.

Public API:

* ``PLUGIN`` / :class:`QemuBuilder` — the builder type (``prepare``, ``steps``, ``artifact``).
* :func:`measure_convert` — throughput of the builder's convert step against bare ``qemu-img convert``.

Generated data (``{{ build `Key` }}``): ``ID``, ``Host`` (127.0.0.1), ``Port``, ``User``, ``Password``,
``ConnType``, ``SSHPublicKey``, ``SSHPrivateKey`` (never logged, never in the artifact), ``PackerHTTPIP``,
``PackerHTTPPort``, ``PackerHTTPAddr``, ``PackerRunUUID``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from builders.builder_types._sdk.builder import ComposedBuilder
from builders.builder_types.qemu import disk
from builders.builder_types.qemu.config import BUILDER_ID, OPTIONS_SCHEMA, QemuConfig, prepare_config
from builders.builder_types.qemu.steps import SECRET_KEYS, StepConvertDisk, build_steps
from builders.core import Artifact, BuildError, ProvisionHook
from stemforge_base.hashing import sha256_file

__all__ = ["PLUGIN", "QemuBuilder", "measure_convert"]


class QemuBuilder(ComposedBuilder[QemuConfig]):
    """The ``qemu`` builder type. ``prepare`` validates (every problem at once, Packer's words), ``steps`` returns
    the build in Packer's order, ``artifact`` lists the disk file(s) with format and sha256."""

    type_name: ClassVar[str] = "qemu"
    options_schema: ClassVar[dict[str, Any]] = OPTIONS_SCHEMA

    def prepare_config(self, options: Mapping[str, Any]) -> tuple[QemuConfig, list[str]]:
        return prepare_config(options, *self.prepare_args(), prefix=self.label)

    def build_steps(self, cfg: QemuConfig, hook: ProvisionHook) -> Sequence[Any]:
        return build_steps(cfg, self.ctx, hook)

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        cfg = self.cfg
        if cfg is None or not cfg.output_directory.is_dir():
            return None
        files = sorted(p for p in cfg.output_directory.rglob("*") if p.is_file())
        main = cfg.disk_path
        info = disk.image_info(main)
        self.ctx.ui.say(f"Computing sha256 of {main}...")
        digest = sha256_file(main, progress=lambda d, t: self.ctx.ui.progress(f"sha256 {main.name}", d, t),
                             check=self.ctx.check_cancelled)
        generated = {k: v for k, v in self.ctx.generated.items() if k not in SECRET_KEYS}
        return Artifact(
            builder_id=BUILDER_ID, build_name=self.ctx.build_name, builder_type=self.type_name, files=files,
            artifact_id="VM",
            state={
                "format": cfg.format, "sha256": digest, "diskName": cfg.vm_name, "diskType": cfg.format,
                "diskSize": cfg.disk_size, "virtual_size": int(info.get("virtual-size", 0)),
                "backing_file": info.get("full-backing-filename") or info.get("backing-filename"),
                "diskPaths": [str(p) for p in state.get("disk_paths", [main])],
                "domainType": state.get("accelerator", cfg.accelerator), "shutdown": state.get("shutdown"),
                "generated_data": generated,
            },
        )


PLUGIN = QemuBuilder


class _QuietUi:
    def say(self, message: str) -> None: ...
    def message(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...
    def progress(self, label: str, done: int, total: int | None) -> None: ...


def measure_convert(image: Path, *, fmt: str = "qcow2", compress: bool = False, rounds: int = 3) -> dict[str, Any]:
    """Time the builder's convert step (``StepConvertDisk``: ``qemu-img convert -p`` with progress parsing,
    cancellation polling and the rename) against bare ``qemu-img convert`` doing the same work (``fmt`` -> ``fmt``
    of the same disk), interleaved in alternating order, ``rounds`` times each, in a temporary directory removed
    afterwards. ``image`` may be in any format (it is first turned into the step's input, untimed). Returns the
    best seconds of each, throughput in MiB/s of the disk's virtual size and ``ratio`` = step throughput / bare
    throughput (target >= 0.9)."""
    from builders.core import BuildContext

    image = Path(image)
    tmp = Path(tempfile.mkdtemp(prefix="stemforge-measure-convert-"))
    bare: list[float] = []
    step_times: list[float] = []
    progress_calls = 0

    class _Ui(_QuietUi):
        def progress(self, label: str, done: int, total: int | None) -> None:
            nonlocal progress_calls
            progress_calls += 1

    try:
        pristine = tmp / "input"
        src_fmt = str(disk.image_info(image).get("format", "raw"))
        if src_fmt == fmt:
            shutil.copyfile(image, pristine)
        else:
            disk.convert(image, pristine, fmt, source_format=src_fmt)
        virtual = int(disk.image_info(pristine).get("virtual-size", 0))
        work = tmp / "step"
        work.mkdir()
        def run_bare() -> None:
            out = tmp / "bare.img"
            cmd = [disk.qemu_img(), "convert", "-f", fmt] + (["-c"] if compress else []) + [
                "-O", fmt, str(work / "vm"), str(out)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, timeout=3600, stdout=subprocess.DEVNULL)
            bare.append(time.perf_counter() - t0)
            out.unlink()

        def run_step() -> None:
            cfg = QemuConfig(build_name="measure", output_directory=work, vm_name="vm", format=fmt,
                             disk_compression=compress, skip_compaction=False)
            ctx = BuildContext(build_name="measure", build_type="qemu", ui=_Ui(), cancel=threading.Event(),
                               template_dir=tmp, run_uuid="measure")
            step = StepConvertDisk(cfg, ctx)
            state: dict[str, Any] = {}
            t0 = time.perf_counter()
            step.run(state)
            step_times.append(time.perf_counter() - t0)
            step.cleanup(state)
            disk.wait_for_frees()  # the replaced input's freeing must not overlap the next timed run

        for i in range(max(1, rounds)):
            # both convert the same freshly copied, flushed input; the order alternates between rounds
            for runner in (run_bare, run_step) if i % 2 == 0 else (run_step, run_bare):
                shutil.copyfile(pristine, work / "vm")
                with open(work / "vm", "rb+") as fh:
                    os.fsync(fh.fileno())
                runner()
                (work / "vm").unlink()
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"qemu-img convert failed: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = virtual / (1 << 20)
    b, s = min(bare), min(step_times)
    return {
        "image": str(image), "virtual_size": virtual, "format": fmt, "compress": compress, "rounds": len(bare),
        "bare_seconds": b, "step_seconds": s, "bare_mib_s": mib / b if b else 0.0,
        "step_mib_s": mib / s if s else 0.0, "ratio": (b / s) if s else 0.0, "progress_updates": progress_calls,
        "bare_all": bare, "step_all": step_times,
    }
