#!/usr/bin/env python3
"""create_vm through the CPI versus the cost of the disk work a VM needs, and the disk space VMs take.

With a private storage pool and state directory (``tests/harness/libvirt.py``: the same set-up and teardown as the
libvirt tests), the test stemcell is imported once; then ``--vms`` VMs are created from it through the
director-style ``bin/cpi`` (``create_vm`` v2, ``{"ram": --ram}``, one QEMU user-mode NIC, no ephemeral disk). Each
create_vm is timed from process start to response; the CPI answers once the domain is confirmed running (it
watches it for ``start_confirm_seconds``, 1 s by default), so guest boot is excluded. Interleaved with the VMs,
the floors run on the same filesystem as the pool:

* ``qemu-img create -f qcow2 -b <stemcell> -F qcow2`` of an overlay: the cheapest possible VM disk;
* ``qemu-img convert -O qcow2`` of the stemcell image: what a full copy per VM would cost;
* ``dd`` of the stemcell image file.

Disk use: the allocated bytes (``st_blocks * 512``) of every volume the VMs own (root overlay, config drive,
ephemeral disk) against the stemcell image's allocated and virtual size. Every VM is deleted at the end (in a
``finally``) and what is left is printed; the harness then removes the pool and directory whatever happened.

Run (root, libvirtd up): ``.venv/bin/python benchmarks/bench_create_vm.py [--vms 20]``. Exit status 0 when every
create and delete worked and nothing was left, 2 otherwise, 3 when libvirt is not usable here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.libvirt import USER_NET, LibvirtCpi, libvirt_unavailable_reason, session_cpi  # noqa: E402

STEMCELL_DIR = Path("/var/lib/stemforge/tests/stemcells")  # shared with the tests' cache (tests/conftest.py)
MIB = 1024 * 1024
CALL_TIMEOUT = 180.0
TOOL_TIMEOUT = 120.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def qemu_img_info(path: Path) -> dict[str, Any]:
    proc = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, check=True)
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, timeout=TOOL_TIMEOUT, check=True)
    return time.perf_counter() - start


class Floors:
    """The disk-work floors, run into a scratch directory next to the pool and removed right after."""

    def __init__(self, stemcell: Path, scratch: Path) -> None:
        self.stemcell = stemcell
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self.samples: dict[str, list[float]] = {"overlay": [], "convert": [], "dd": []}

    def run_once(self) -> None:
        out = self.scratch / "floor.img"
        commands = {
            "overlay": ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.stemcell), "-F", "qcow2", str(out)],
            "convert": ["qemu-img", "convert", "-O", "qcow2", str(self.stemcell), str(out)],
            "dd": ["dd", f"if={self.stemcell}", f"of={out}", "bs=4M", "status=none"],
        }
        for name, argv in commands.items():
            try:
                self.samples[name].append(timed(argv))
            finally:
                out.unlink(missing_ok=True)


LOG_LINE = re.compile(r"^\[stemforge-cpi\] \[[^\]]*\] [A-Z]+ (?P<t>[0-9.]+)s (?P<msg>.*)$")
STEP_DONE = re.compile(r"^step (?P<name>\S+): done in (?P<s>[0-9.]+)s$")


def phases(log: str, wall: float) -> dict[str, float]:
    """Where one create_vm's time went, from its response ``log`` (lines carry seconds since the CPI started):
    start-up to the first log line (interpreter, imports, validation, config), each create step, and the rest
    of the wall time (process spawn and exit, libvirt connection, planning)."""
    out: dict[str, float] = {}
    first: float | None = None
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        if first is None:
            first = float(match["t"])
        step = STEP_DONE.match(match["msg"])
        if step:
            out[step["name"]] = float(step["s"])
    out = {"start-up to dispatch": first or 0.0, **out}
    out["other (spawn, connect, plan, exit)"] = max(0.0, wall - sum(out.values()))
    return out


def create_vm(cpi: LibvirtCpi, stemcell_cid: str, index: int, ram: int) -> tuple[str, float, dict[str, float]]:
    networks = {"default": {"type": "dynamic", "default": ["dns", "gateway"], **USER_NET}}
    req = cpi.request("create_vm", f"agent-bench-{index:03d}", stemcell_cid, {"ram": ram, "cpu": 1}, networks, [],
                      {"bosh": {"group": "bench"}})
    res = cpi.run(req, timeout=CALL_TIMEOUT)
    vm_cid, _networks = res.result
    return str(vm_cid), res.seconds, phases(res.response["log"], res.seconds)


def vm_volumes(pool: Path, vm_cid: str) -> list[Path]:
    """Everything in the pool that belongs to ``vm_cid`` (``<cid>-root.qcow2``, ``<cid>-config-<n>.iso``,
    ``<cid>-ephemeral.qcow2``)."""
    return sorted(p for p in pool.iterdir() if p.name.startswith(f"{vm_cid}-"))


def fmt_s(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):6.3f} s  p90 {percentile(values, 90):6.3f} s  (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--vms", type=int, default=20, help="VMs to create (default 20)")
    parser.add_argument("--ram", type=int, default=128, help="MiB of RAM per VM (default 128)")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="stop creating VMs once this much time has passed (default 240)")
    args = parser.parse_args(argv)
    if not 1 <= args.vms <= 64:
        parser.error("--vms must be between 1 and 64")

    reason = libvirt_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 3

    import libvirt

    from cpi.providers.libvirt.config import LibvirtConfig
    from stemcells.tarball import extract_stemcell
    from stemcells.testimage.stemcell import build_test_stemcell

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    STEMCELL_DIR.mkdir(parents=True, exist_ok=True)
    tarball = build_test_stemcell(STEMCELL_DIR)
    problems: list[str] = []
    create_s: list[float] = []
    delete_s: list[float] = []
    vm_cids: list[str] = []
    phase_samples: dict[str, list[float]] = {}
    domain_types: set[str] = set()
    with session_cpi("bench") as cpi:
        extracted = extract_stemcell(tarball, cpi.root / "stemcell")
        t0 = time.perf_counter()
        stemcell_cid: str = cpi.ok("create_stemcell", str(extracted.image_path),
                                   extracted.manifest.cloud_properties, {"tags": {"bench": "create_vm"}},
                                   api_version=3)
        create_stemcell_s = time.perf_counter() - t0
        stemcell_volume = next(p for p in cpi.pool_path.iterdir() if p.name.startswith(f"{stemcell_cid}."))
        sc_info = qemu_img_info(stemcell_volume)
        sc_allocated = allocated(stemcell_volume)
        sc_virtual = int(sc_info["virtual-size"])
        sc_apparent = stemcell_volume.stat().st_size
        print(f"stemcell {stemcell_cid}: {stemcell_volume.name}, {sc_info['format']}, "
              f"{sc_allocated / MIB:.1f} MiB allocated, {sc_apparent / MIB:.1f} MiB file, "
              f"{sc_virtual / MIB:.0f} MiB virtual (create_stemcell {create_stemcell_s:.2f} s)")
        confirm_s = LibvirtConfig.from_properties(
            json.loads(cpi.config_path.read_text())["cloud"]["properties"].get("libvirt")).start_confirm_seconds
        floors = Floors(stemcell_volume, cpi.root / "floors")
        conn = libvirt.open("qemu:///system")
        usage: dict[str, dict[str, int]] = {}  # after the last create_vm (guests booting meanwhile)
        at_create: list[int] = []  # each VM's allocated bytes right after its create_vm returned
        backed = 0
        try:
            for index in range(args.vms):
                if time.monotonic() - started > args.max_seconds:
                    problems.append(f"stopped after {index} VMs: --max-seconds {args.max_seconds:.0f} reached")
                    break
                floors.run_once()
                try:
                    vm_cid, seconds, split = create_vm(cpi, stemcell_cid, index, args.ram)
                except AssertionError as exc:  # the harness asserts on an error response
                    problems.append(f"create_vm #{index}: {exc}")
                    break
                vm_cids.append(vm_cid)
                create_s.append(seconds)
                for phase, phase_s in split.items():
                    phase_samples.setdefault(phase, []).append(phase_s)
                at_create.append(sum(allocated(p) for p in vm_volumes(cpi.pool_path, vm_cid)))
                dom = conn.lookupByName(vm_cid)
                state = dom.state()[0]
                domain_types.add(dom.XMLDesc(0).split("type='", 1)[1].split("'", 1)[0])
                if state != libvirt.VIR_DOMAIN_RUNNING:
                    problems.append(f"{vm_cid}: state {state} right after create_vm (expected running)")
                print(f"  vm {index + 1:2}/{args.vms}: {vm_cid} create_vm {seconds:6.3f} s  "
                      f"(floors: overlay {floors.samples['overlay'][-1] * 1000:.0f} ms, "
                      f"convert {floors.samples['convert'][-1] * 1000:.0f} ms, "
                      f"dd {floors.samples['dd'][-1] * 1000:.0f} ms)", flush=True)

            for vm_cid in vm_cids:
                files = vm_volumes(cpi.pool_path, vm_cid)
                usage[vm_cid] = {p.name: allocated(p) for p in files}
                root = cpi.pool_path / f"{vm_cid}-root.qcow2"
                info = qemu_img_info(root)
                backing = info.get("full-backing-filename") or info.get("backing-filename")
                if backing == str(stemcell_volume):
                    backed += 1
                else:
                    problems.append(f"{root.name}: backing file {backing!r}, not the stemcell volume")
        finally:
            conn.close()
            for vm_cid in vm_cids:
                try:
                    res = cpi.run(cpi.request("delete_vm", vm_cid), timeout=CALL_TIMEOUT)
                    if res.response["error"] is not None:
                        problems.append(f"delete_vm {vm_cid}: {res.response['error']}")
                    else:
                        delete_s.append(res.seconds)
                except Exception as exc:  # noqa: BLE001 - keep deleting the others
                    problems.append(f"delete_vm {vm_cid}: {type(exc).__name__}: {exc}")
            left_domains = cpi.our_domains()
            left_volumes = [v for v in cpi.volumes() if v != stemcell_volume.name]
            stemcell_deleted = cpi.call("delete_stemcell", stemcell_cid).response["error"] is None
            left_after_stemcell = cpi.volumes()
            print(f"cleanup: deleted {len(delete_s)}/{len(vm_cids)} VMs; left: domains {left_domains}, "
                  f"volumes {left_volumes}; after delete_stemcell ({'ok' if stemcell_deleted else 'FAILED'}): "
                  f"volumes {left_after_stemcell}")
            if left_domains or left_volumes or left_after_stemcell or not stemcell_deleted:
                problems.append("cleanup left something behind (see above)")
    session_gone = not cpi.root.exists()
    elapsed = time.monotonic() - started

    n = len(vm_cids)
    total = sum(sum(v.values()) for v in usage.values())
    by_kind: dict[str, int] = {"root": 0, "config": 0, "ephemeral": 0}
    for volumes in usage.values():
        for name, size in volumes.items():
            kind = "root" if name.endswith("-root.qcow2") else "ephemeral" if "-ephemeral" in name else "config"
            by_kind[kind] += size
    per_vm = [sum(v.values()) for v in usage.values()]

    print()
    print(f"=== bench_create_vm summary: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"domain type {'/'.join(sorted(domain_types)) or '?'} (qemu = TCG), Python {platform.python_version()}, "
          f"{n} VMs x {args.ram} MiB, {elapsed:.0f} s, load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f} ===")
    print(f"create_vm (bin/cpi, to confirmed running): {fmt_s(create_s)}")
    if create_s:
        half = max(1, n // 2)
        print(f"  first {half}: median {statistics.median(create_s[:half]):.3f} s; last {n - half}: "
              f"median {statistics.median(create_s[half:] or create_s):.3f} s (earlier guests still boot under TCG)")
    if phase_samples:
        split_text = ", ".join(f"{name} {statistics.median(values):.3f}" for name, values in phase_samples.items())
        print(f"  median split (s, from the response log): {split_text}")
    if create_s:
        print(f"  includes the CPI's watch of the running domain (start_confirm_seconds = {confirm_s:g} s); without "
              f"it: median {statistics.median(create_s) - confirm_s:.3f} s")
    for name, label in (("overlay", "qemu-img create -b (overlay)"), ("convert", "qemu-img convert (full copy)"),
                        ("dd", "dd of the image (full copy)")):
        values = floors.samples[name]
        ratio = (f"  create_vm = {statistics.median(create_s) / statistics.median(values):.1f}x"
                 if create_s and values else "")
        print(f"floor {label:30} {fmt_s(values)}{ratio}")
    print(f"delete_vm (bin/cpi): {fmt_s(delete_s)}")
    print(f"stemcell image: {sc_allocated / MIB:.1f} MiB allocated, {sc_virtual / MIB:.0f} MiB virtual")
    if n:
        created = sum(at_create)
        print(f"{n} VMs use {created / MIB:.1f} MiB = {created / sc_allocated:.2f}x one stemcell image "
              f"(each measured as its create_vm returned; {created / sc_virtual:.3f}x the virtual size; "
              f"per VM median {statistics.median(at_create) / MIB:.2f} MiB)")
        print(f"  after the last create_vm, with the guests booting and writing to their overlays: "
              f"{total / MIB:.1f} MiB = {total / sc_allocated:.2f}x; per VM median "
              f"{statistics.median(per_vm) / MIB:.2f} MiB, max {max(per_vm) / MIB:.2f} MiB "
              f"(root overlays {by_kind['root'] / MIB:.1f} MiB, config drives {by_kind['config'] / MIB:.1f} MiB, "
              f"ephemeral {by_kind['ephemeral'] / MIB:.1f} MiB)")
        print(f"  a full copy per VM would take >= {n * sc_allocated / MIB:.1f} MiB ({n}x); "
              f"root overlays backed by the stemcell volume: {backed}/{n}")
    print(f"left after cleanup: domains {left_domains}, volumes {left_after_stemcell}; "
          f"session pool dir removed: {session_gone}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 2 if problems or not session_gone else 0


if __name__ == "__main__":
    sys.exit(main())
