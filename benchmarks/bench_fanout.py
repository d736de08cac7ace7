#!/usr/bin/env python3
"""Fan-out: time to publish ONE image to 20 destinations versus to 1 (target <= 2x: the copies run in parallel),
and bytes copied versus the image size.

The image is ``--size-mib`` MiB of incompressible, non-zero data (nothing is sparse, so every byte moves). Every
publication is the real ``fanout`` post-processor: hash the source, stage every copy, verify every copy by sha256
(local: re-read from the device; http: the repository's reported hash and a streamed GET re-hash), then commit.

The image repositories run as separate ``stemforge image-repo serve`` processes on 127.0.0.1, as sites run them.
Two scenarios, each with its own PASS/MISS:

* ``loopback``: 10 local directories + 10 image repositories on 127.0.0.1, no link limit. Here nothing is
  network-bound: all 20 copies share this machine's 2 cores and one disk, and each copy costs at least two sha256
  passes of the whole image (the repository's and the verification's), so the work -- not the waiting -- grows
  20x. The baseline is the slower of a single local and a single http publication.
* ``site links``: 20 image repositories, each behind a simulated site link of ``--link-mib`` MiB/s (the repository
  accepts the upload no faster: ``image-repo serve --limit-rate``; the verification GET is not limited). This is
  the situation fan-out is for (every site is far away): serial publishing would take ~20x, parallel should stay
  near 1x -- as long as N x link stays below what this machine can push through all the copies at once (the
  ``loopback`` line shows that capacity as "aggregate"; on 2 cores it is a few hundred MB/s, so the default link is
  8 MiB/s, a 64 Mbit/s site link). At 32 MiB/s x 20 sites the run measures this machine's CPU, not parallelism.

Run: ``.venv/bin/python benchmarks/bench_fanout.py [--size-mib 256] [--destinations 20] [--link-mib 32]``.
``--quick`` runs tiny sizes (for the smoke test). Exit status 0 unless a publication failed (2) or, with
``--strict``, a target was missed (1). Everything it creates (directories, servers) is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builders.core import Artifact, BuildContext  # noqa: E402
from builders.postprocessors.fanout import FanoutPostProcessor  # noqa: E402

MIB = 1024 * 1024
TARGET_RATIO = 2.0


class QuietUi:
    def say(self, message: str) -> None:
        pass

    def message(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        print(f"  error: {message}", file=sys.stderr)

    def progress(self, label: str, done: int, total: int | None) -> None:
        pass


class RepoProcesses:
    """Image repositories as separate ``stemforge image-repo serve`` processes (as real sites run them), on
    127.0.0.1 with ports the kernel picks; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, roots: list[Path], rate_mib: float | None = None) -> list[str]:
        started = []
        for root in roots:
            args = [sys.executable, "-m", "stemforge.cli", "image-repo", "serve", "--root", str(root),
                    "--listen", "127.0.0.1:0"]
            if rate_mib:
                args += ["--limit-rate", str(rate_mib)]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.procs.append(proc)
            started.append(proc)
        urls = []
        for proc in started:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if " at http://" not in line:
                raise RuntimeError(f"image-repo did not start: {line!r}")
            urls.append(line.rsplit(" at ", 1)[1].strip())
        return urls

    def __enter__(self) -> RepoProcesses:
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def make_image(path: Path, size: int) -> None:
    """Incompressible and not sparse: sha256-chained blocks (no zero runs)."""
    seed = hashlib.sha256(b"stemforge-bench").digest()
    block = bytearray()
    while len(block) < MIB:
        seed = hashlib.sha256(seed).digest()
        block += seed
    with open(path, "wb") as fh:
        for index in range(size // MIB):
            fh.write(bytes(block[:MIB - 8]) + index.to_bytes(8, "little"))
        fh.write(bytes(block[: size % MIB]))


def publish(work: Path, image: Path, destinations: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    ctx = BuildContext("bench", "file", QuietUi(), threading.Event(), work, str(uuid.uuid4()))
    pp = FanoutPostProcessor({"destinations": destinations, "image_name": f"bench-{uuid.uuid4().hex[:8]}.raw"},
                             ctx)
    pp.prepare()
    started = time.monotonic()
    out, _keep = pp.post_process(Artifact("bench", "bench", "file", [image], str(image)))
    return time.monotonic() - started, out.state


def wipe(paths: list[Path]) -> None:
    """Remove published copies: local site directories whole, a repository's images (it keeps its own dirs)."""
    for path in paths:
        if (path / ".repo~meta").is_dir():
            for entry in [*path.iterdir(), *(path / ".repo~meta").iterdir()]:
                if entry.is_file():
                    entry.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    size = args.size_mib * MIB
    n = args.destinations
    results: list[tuple[str, float, float, float, int, int]] = []  # name, t1, tn, ratio, bytes, expected bytes
    with tempfile.TemporaryDirectory(prefix="bench-fanout-", dir=args.workdir) as tmp, RepoProcesses() as repos:
        work = Path(tmp)
        image = work / "image.raw"
        make_image(image, size)
        print(f"image: {args.size_mib} MiB, not sparse; {n} destinations; cores: {os.cpu_count()}")

        # -- loopback: half local directories, half image repositories ----------------------------------------
        n_local = n // 2
        repo_roots = [work / f"repo-{i}" for i in range(n - n_local)]
        urls = repos.start(repo_roots)
        local_dirs = [work / f"site-{i}" for i in range(n_local)]
        many = ([{"type": "local", "name": f"site-{i}", "path": str(d)} for i, d in enumerate(local_dirs)]
                + [{"type": "http", "name": f"repo-{i}", "url": url} for i, url in enumerate(urls)])
        t1_local, _ = publish(work, image, [many[0]])
        wipe(local_dirs)
        t1_http, _ = publish(work, image, [many[-1]])
        wipe(repo_roots)
        t1 = max(t1_local, t1_http)
        tn, state = publish(work, image, many)
        wipe(local_dirs + repo_roots)
        results.append(("loopback", t1, tn, tn / t1, state["bytes_copied"], n * size))
        print(f"loopback: 1 local {t1_local:.2f}s, 1 http {t1_http:.2f}s, {n} mixed {tn:.2f}s "
              f"(aggregate {n * size / tn / MIB:.0f} MiB/s published and verified)")

        # -- site links: every destination an image repository behind a limited link --------------------------
        link_roots = [work / f"link-{i}" for i in range(n)]
        urls = repos.start(link_roots, args.link_mib)
        configs = [{"type": "http", "name": f"site-{i}", "url": url} for i, url in enumerate(urls)]
        t1, _ = publish(work, image, [configs[0]])
        wipe(link_roots)
        tn, state = publish(work, image, configs)
        wipe(link_roots)
        results.append((f"site links {args.link_mib:g} MiB/s", t1, tn, tn / t1, state["bytes_copied"], n * size))
        print(f"site links: 1 site {t1:.2f}s, {n} sites {tn:.2f}s (serial would be ~{n * t1:.0f}s)")

    print(f"\n=== bench_fanout summary (image {args.size_mib} MiB, {n} destinations vs 1; target <= "
          f"{TARGET_RATIO:.0f}x) ===")
    print(f"{'scenario':<24}{'1 dest':>10}{f'{n} dests':>10}{'ratio':>8}{'bytes copied / (N x size)':>28}  verdict")
    missed = False
    for name, t1, tn, ratio, copied, expected in results:
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        missed |= verdict == "MISS"
        print(f"{name:<24}{t1:>9.2f}s{tn:>9.2f}s{ratio:>7.2f}x{copied / expected:>27.3f}x  {verdict}")
    return 1 if missed and args.strict else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--destinations", type=int, default=20)
    parser.add_argument("--link-mib", type=float, default=8, help="simulated per-site link in MiB/s")
    parser.add_argument("--workdir", default=None, help="where to put the image and the copies (default: $TMPDIR)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: 8 MiB to 4 destinations (smoke test)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.destinations, args.link_mib = 8, 4, 16
    try:
        return run(args)
    except Exception as exc:  # noqa: BLE001 - a failed publication is a benchmark failure, reported plainly
        print(f"bench_fanout: publication failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
