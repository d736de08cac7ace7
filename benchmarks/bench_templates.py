#!/usr/bin/env python3
"""Template front ends: ``validate`` of one generated template with ``--builds`` builds (default 100) and
``--provisioners`` provisioners (default 200), written as legacy JSON and as its HCL2 twin
(``stemforge hcl2_upgrade``), timed interleaved in one process (one run of each per round, the order alternating,
``--warmup`` rounds discarded). Target: HCL2 median <= 1.5x the JSON median.

``validate`` here is what the command does after reading the arguments: parse the template (JSON: Go-exact JSON
decode, structure checks, variables; HCL2: python-hcl2's Lark parse of the files, then our evaluation into the
build model) and prepare every build (``BuildRunner.prepare``: render and check every builder, provisioner and
post-processor config). The HCL2 time is split into parse (python-hcl2's grammar and post-lexer through
``builders.template.hcl2.parser.parse_text``, measured on the same text each round) and the rest (evaluation +
prepare), printed beside it; python-hcl2's own ``hcl2.parses_to_tree`` (which also records positions) is timed
for reference.

The builds use the ``file`` builder and ``shell-local`` provisioners (checked, never run), so the numbers are the
template layer's own. Each provisioner has an ``only`` list naming a third of the builds, as real templates do.

Run: ``.venv/bin/python benchmarks/bench_templates.py [--builds 100] [--provisioners 200] [--rounds 7]``;
``--quick`` runs a tiny template (for the smoke test). Exit status 0, or 1 with ``--strict`` when the target is
missed."""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hcl2  # noqa: E402

from builders.runner import BuildRunner, RunOptions  # noqa: E402
from builders.template import parse_template  # noqa: E402
from builders.template.hcl2 import load_hcl2  # noqa: E402
from builders.template.hcl2.parser import parse_text  # noqa: E402
from builders.template.hcl2.upgrade import upgrade  # noqa: E402
from builders.ui import Output  # noqa: E402

TARGET_RATIO = 1.5


def generate(builds: int, provisioners: int, where: Path) -> dict[str, Any]:
    names = [f"b{i:03d}" for i in range(builds)]
    return {
        "description": f"{builds} builds, {provisioners} provisioners",
        "variables": {"greeting": "hello", "out": str(where / "out"), "region": "eu-west-1",
                      "token": "t0k3n-not-printed"},
        "sensitive-variables": ["token"],
        "builders": [{"type": "file", "name": n, "content": "{{user `greeting`}} from {{build_name}}",
                      "target": "{{user `out`}}/{{build_name}}.txt"} for n in names],
        "provisioners": [{"type": "shell-local",
                          "inline": [f"echo step {i} on {{{{build_name}}}} in {{{{user `region`}}}}",
                                     "echo token {{user `token`}}"],
                          "environment_vars": [f"STEP={i}", "REGION={{user `region`}}"],
                          "only": names[i % 3::3]} for i in range(provisioners)],
        "post-processors": [{"type": "manifest", "output": "{{user `out`}}/manifest.json"}],
    }


def validate_json(path: Path) -> int:
    t = parse_template(path)
    return len(BuildRunner(t, Output(io.StringIO()), RunOptions()).prepare())


def validate_hcl2(path: Path) -> int:
    t = load_hcl2(path)
    return len(BuildRunner(t, Output(io.StringIO()), RunOptions()).prepare())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=100)
    ap.add_argument("--provisioners", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10 builds, 20 provisioners, 2 rounds")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args()
    if args.quick:
        args.builds, args.provisioners, args.rounds, args.warmup = 10, 20, 2, 0
    with tempfile.TemporaryDirectory(prefix="bench-templates-") as tmp:
        where = Path(tmp)
        json_path = where / "template.json"
        json_path.write_text(json.dumps(generate(args.builds, args.provisioners, where), indent=2))
        hcl_path = where / "template.pkr.hcl"
        hcl_path.write_text(upgrade(json_path))
        hcl_text = hcl_path.read_text()
        print(f"template: {args.builds} builds x {args.provisioners} provisioners; JSON {json_path.stat().st_size} "
              f"bytes, HCL2 {len(hcl_text)} bytes")
        assert validate_json(json_path) == args.builds
        assert validate_hcl2(hcl_path) == args.builds
        times: dict[str, list[float]] = {"json": [], "hcl2": [], "hcl2 parse": [], "parses_to_tree": []}
        for r in range(args.warmup + args.rounds):
            order = [("json", json_path), ("hcl2", hcl_path)]
            if r % 2:
                order.reverse()
            sample: dict[str, float] = {}
            for label, path in order:
                t0 = time.perf_counter()
                (validate_json if label == "json" else validate_hcl2)(path)
                sample[label] = time.perf_counter() - t0
            t0 = time.perf_counter()
            parse_text(hcl_text)
            sample["hcl2 parse"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            hcl2.parses_to_tree(hcl_text)
            sample["parses_to_tree"] = time.perf_counter() - t0
            if r >= args.warmup:
                for k, v in sample.items():
                    times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["hcl2"] / med["json"]
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        print(f"\n=== bench_templates summary (load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds) ===")
        print(f"  validate JSON : median {med['json'] * 1000:8.1f} ms  (min {min(times['json']) * 1000:.1f})")
        print(f"  validate HCL2 : median {med['hcl2'] * 1000:8.1f} ms  (min {min(times['hcl2']) * 1000:.1f})  "
              f"= parse {med['hcl2 parse'] * 1000:.1f} ms (python-hcl2) + evaluation and prepare "
              f"{(med['hcl2'] - med['hcl2 parse']) * 1000:.1f} ms")
        print(f"  (python-hcl2's own hcl2.parses_to_tree, with positions: {med['parses_to_tree'] * 1000:.1f} ms)")
        print(f"  HCL2 / JSON   : {ratio:.2f}x  target <= {TARGET_RATIO}x  {verdict}")
    return 1 if args.strict and verdict == "MISS" else 0


if __name__ == "__main__":
    sys.exit(main())
