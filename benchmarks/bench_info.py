#!/usr/bin/env python3
"""The cost of a CPI process round trip versus the cost of starting the interpreter at all.

The director runs ``bin/cpi`` once per call and calls ``info`` before almost every other call, so ``info`` should
cost little more than the interpreter's own start-up. This script measures, each in a fresh process with the
director's environment (``PATH=/usr/sbin:/usr/bin:/sbin:/bin`` only) and the same stdin:

* the floors: ``<python> -c pass`` and ``<python> -I -c pass`` with the SAME interpreter (``sys.executable``), and
  ``<python> -IS -c pass`` (no ``site``), reported because ``bin/cpi`` runs ``-IS`` with ``site``'s ``sys.path``
  baked in;
* ``info`` through the director-style wrapper ``bin/cpi`` (``cpi.wrapper.write_wrapper``, which runs ``python -I``)
  and through the venv's ``stemforge-cpi`` console script (``python`` without ``-I``);
* ``info`` the README's way: ``stemforge cpi wrapper --config examples/cpi-libvirt.yml --out DIR`` run as a
  command, then ``DIR/bin/cpi`` (the wrapper validated the YAML and wrote ``DIR/config/cpi.json``); beside it, for
  comparison, a ``bin/cpi`` that names the YAML itself (``--skip-config-check``: every call parses YAML);
* an argument error (``has_vm`` with an empty CID) the same two ways;
* ``has_vm`` of an unknown CID (this one loads the provider and connects to libvirt; reported, no target).

All variants are interleaved (one run of each per round, the order rotated every round) so that machine noise hits
them alike. Each CPI path is compared with its like-for-like floor: the wrapper with ``python -I -c pass`` (it
runs ``-I``), the console script with ``python -c pass``; the target is a ratio of medians <= 1.25 for ``info``
through ``bin/cpi`` (the README's path and the JSON one). A one-off run of each request through the wrapper's
exact command line, listing ``sys.modules`` afterwards, reports which modules the path imports beyond the bare
interpreter (the provider must stay off the first two, and PyYAML off the README's path).

Run: ``.venv/bin/python benchmarks/bench_info.py [--runs 30]``. Exit status 0 unless a CPI call answered wrongly
(2) or, with ``--strict``, a target was missed (1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stemforge_base.cpi_client import DIRECTOR_ENV  # noqa: E402 - after the path set-up

TARGET = 1.25
#: The README's example config (YAML), converted to JSON by ``stemforge cpi wrapper``.
README_EXAMPLE = REPO / "examples" / "cpi-libvirt.yml"
#: Modules whose presence on a path is worth naming (the provider and the heavy dependencies).
WATCHED = ("libvirt", "jsonschema", "yaml", "logging", "dataclasses", "typing")
CALL_TIMEOUT = 120.0


class BenchError(Exception):
    """A measured command did not do what it should (the numbers would be meaningless)."""


def request(method: str, *arguments: Any, api_version: int | None = 2) -> bytes:
    body: dict[str, Any] = {"method": method, "arguments": list(arguments),
                            "context": {"director_uuid": "bench-director", "request_id": "cpi-424242"}}
    if api_version is not None:
        body["api_version"] = api_version
    return json.dumps(body).encode()


INFO = request("info", api_version=None)  # the director's first probe carries no api_version
ARG_ERROR = request("has_vm", "")
HAS_VM_UNKNOWN = request("has_vm", "vm-00000000-0000-4000-8000-000000000000")


def check_info(response: dict[str, Any]) -> None:
    result = response.get("result")
    if response.get("error") is not None or not isinstance(result, dict) or "api_version" not in result:
        raise BenchError(f"info answered {response!r}")


def check_arg_error(response: dict[str, Any]) -> None:
    error = response.get("error")
    if not isinstance(error, dict) or error.get("type") != "Bosh::Clouds::CpiError":
        raise BenchError(f"has_vm('') should be a CpiError, answered {response!r}")


def check_has_vm_false(response: dict[str, Any]) -> None:
    error = response.get("error")
    if isinstance(error, dict):
        raise BenchError(f"has_vm(unknown) answered {error.get('type')}: {error.get('message')}")
    if response.get("result") is not False:
        raise BenchError(f"has_vm(unknown) should answer false, answered {response!r}")


@dataclass
class Variant:
    key: str
    label: str
    argv: list[str]
    stdin: bytes
    check: Callable[[dict[str, Any]], None] | None = None  # None: a floor (no response expected)
    floor: str | None = None  # the key of the like-for-like floor
    target: float | None = None
    optional: bool = False  # needs libvirt: dropped (and said so) when its probe run fails
    samples: list[float] = field(default_factory=list)  # seconds

    def run_once(self) -> float:
        start = time.perf_counter()
        proc = subprocess.run(self.argv, input=self.stdin, capture_output=True, env=DIRECTOR_ENV, cwd="/",
                              timeout=CALL_TIMEOUT, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise BenchError(f"{self.label}: exit status {proc.returncode}: {proc.stderr.decode(errors='replace')}")
        if self.check is not None:
            try:
                response = json.loads(proc.stdout)
            except ValueError:
                raise BenchError(f"{self.label}: stdout is not JSON: {proc.stdout[:500]!r}") from None
            self.check(response)
        return elapsed


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def measure(variants: list[Variant], runs: int, warmup: int) -> None:
    """One run of every variant per round, rotating the order each round; ``warmup`` rounds are discarded."""
    for round_no in range(warmup + runs):
        shift = round_no % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            elapsed = variant.run_once()
            if round_no >= warmup:
                variant.samples.append(elapsed)


def wrapper_argv(wrapper: Path) -> list[str]:
    """The command ``bin/cpi`` runs, as an argv of the form ``python [flags] -c <entry> --config <config>``."""
    from cpi.wrapper import WrapperError, command

    try:
        return command(wrapper)
    except WrapperError as exc:
        raise BenchError(str(exc)) from None


def imported_modules(argv: list[str], stdin: bytes, out: Path) -> set[str]:
    """The modules in ``sys.modules`` when ``argv`` (an interpreter command line with ``-c CODE``) has run: CODE is
    run as is, then the module names are written to ``out``. (``-X importtime`` would miss modules loaded with
    ``importlib.import_module``, which is how the dispatcher loads a provider.)"""
    index = argv.index("-c") + 1
    code = (f"import sys\ntry:\n    exec(compile({argv[index]!r}, '<cpi>', 'exec'))\nfinally:\n"
            f"    open({str(out)!r}, 'w').write('\\n'.join(sorted(sys.modules)))\n")
    proc = subprocess.run([*argv[:index], code, *argv[index + 1:]], input=stdin, capture_output=True,
                          env=DIRECTOR_ENV, cwd="/", timeout=CALL_TIMEOUT, check=False)
    if proc.returncode != 0 or not out.exists():
        raise BenchError(f"module listing of {argv}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    names = set(out.read_text().split())
    out.unlink()
    return names


def provider_modules(modules: set[str]) -> list[str]:
    """The provider's modules among ``modules`` (its config schemas, deliberately cheap, excepted)."""
    return sorted(m for m in modules if m in ("libvirt", "libvirtmod")
                  or (m.startswith("cpi.providers.libvirt.") and m != "cpi.providers.libvirt.config"))


def write_config(root: Path, uri: str) -> Path:
    """A libvirt CPI config whose state lives under ``root``; nothing in it is created by these requests except
    the state database (has_vm connects to libvirt and looks a domain up, nothing more)."""
    config = {"cloud": {"plugin": "libvirt", "properties": {
        "state_dir": str(root / "state"),
        "libvirt": {"uri": uri, "storage_pool": "sfbench-unused", "pool_path": str(root / "pool"),
                    "create_pool": False},
    }}}
    path = root / "cpi.json"
    path.write_text(json.dumps(config))
    return path


def readme_wrappers(root: Path) -> tuple[Path, Path]:
    """``bin/cpi`` made the README's way from the YAML example (``stemforge cpi wrapper --config ... --out DIR``,
    run as a command: the YAML validated once and written as ``DIR/config/cpi.json``), and one that names the YAML
    itself (``--skip-config-check``), for comparison."""
    wrappers = []
    for name, extra in (("readme-job", []), ("yaml-job", ["--skip-config-check"])):
        out = root / name
        proc = subprocess.run([sys.executable, "-m", "stemforge.cli", "cpi", "wrapper", "--config",
                               str(README_EXAMPLE), "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise BenchError(f"stemforge cpi wrapper --config {README_EXAMPLE}: {proc.stderr.strip()}")
        wrappers.append(out / "bin" / "cpi")
    converted = wrapper_argv(wrappers[0])[-1]
    if not converted.endswith("/config/cpi.json") or wrapper_argv(wrappers[1])[-1] != str(README_EXAMPLE):
        raise BenchError(f"unexpected config paths in {wrappers}: {converted}")
    return wrappers[0], wrappers[1]


def build_variants(wrapper: Path, console: Path | None, config: Path, readme: tuple[Path, Path] | None = None,
                   ) -> list[Variant]:
    py = sys.executable
    variants = [
        Variant("floor", f"floor: {Path(py).name} -c pass", [py, "-c", "pass"], INFO),
        Variant("floor-I", f"floor: {Path(py).name} -I -c pass", [py, "-I", "-c", "pass"], INFO),
        # reported only: bin/cpi runs -IS (site's sys.path baked in by the wrapper), so this shows what is left
        Variant("floor-IS", f"floor: {Path(py).name} -IS -c pass", [py, "-IS", "-c", "pass"], INFO),
        Variant("info-wrapper", "info via bin/cpi", [str(wrapper)], INFO, check_info, "floor-I", TARGET),
    ]
    if readme is not None:
        variants += [
            Variant("info-readme", "info via bin/cpi, README path (YAML)", [str(readme[0])], INFO, check_info,
                    "floor-I", TARGET),
            Variant("info-yaml", "info via bin/cpi naming the YAML", [str(readme[1])], INFO, check_info, "floor-I"),
        ]
    variants += [
        # argument errors: no speed target (they validate with jsonschema); they must not import the provider
        Variant("argerr-wrapper", "arg error via bin/cpi", [str(wrapper)], ARG_ERROR, check_arg_error, "floor-I"),
        Variant("hasvm-wrapper", "has_vm unknown via bin/cpi", [str(wrapper)], HAS_VM_UNKNOWN, check_has_vm_false,
                "floor-I", optional=True),
    ]
    if console is not None:
        cmd = [str(console), str(config)]
        variants += [
            # the console script pip generates imports re (~7 ms); the director runs bin/cpi, which carries the target
            Variant("info-console", "info via stemforge-cpi", cmd, INFO, check_info, "floor"),
            Variant("argerr-console", "arg error via stemforge-cpi", cmd, ARG_ERROR, check_arg_error, "floor"),
            Variant("hasvm-console", "has_vm unknown via stemforge-cpi", cmd, HAS_VM_UNKNOWN, check_has_vm_false,
                    "floor", optional=True),
        ]
    return variants


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="measured runs of each variant (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="discarded rounds before measuring (default 2)")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI for the has_vm variants")
    parser.add_argument("--console-script", type=Path, default=Path(sys.executable).parent / "stemforge-cpi",
                        help="the stemforge-cpi console script (default: next to the interpreter)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    from cpi.wrapper import write_wrapper

    console: Path | None = args.console_script if args.console_script.is_file() else None
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="stemforge-bench-info-") as tmp:
        root = Path(tmp)
        config = write_config(root, args.uri)
        wrapper = write_wrapper(config, root / "job")
        try:
            readme = readme_wrappers(root) if README_EXAMPLE.is_file() else None
        except BenchError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
        variants = build_variants(wrapper, console, config, readme)
        skipped: list[str] = []
        for v in [v for v in variants if v.optional]:
            try:
                v.run_once()
            except BenchError as exc:
                variants.remove(v)
                skipped.append(f"{v.label}: skipped, {exc}")
        by_key = {v.key: v for v in variants}
        print(f"interpreter: {sys.executable} (Python {platform.python_version()})")
        print(f"wrapper:     {wrapper} -> {shlex.join(wrapper_argv(wrapper))}")
        print(f"console:     {console if console else 'not found: ' + str(args.console_script)}")
        print(f"measuring {len(variants)} variants x {args.runs} runs (+{args.warmup} warm-up rounds), "
              f"interleaved, env {DIRECTOR_ENV}")
        try:
            measure(variants, args.runs, args.warmup)
            exec_argv = wrapper_argv(wrapper)
            listing = root / "modules.txt"
            baseline = imported_modules([sys.executable, "-I", "-c", "pass"], b"", listing)
            requests = [("info", INFO), ("arg error", ARG_ERROR)]
            if "hasvm-wrapper" in by_key:
                requests.append(("has_vm unknown", HAS_VM_UNKNOWN))
            imports = {name: imported_modules(exec_argv, data, listing) - baseline for name, data in requests}
            if readme is not None:
                imports["info (README)"] = imported_modules(wrapper_argv(readme[0]), INFO, listing) - baseline
        except BenchError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
    elapsed = time.monotonic() - started

    rows: list[str] = []
    missed = 0
    header = f"{'variant':36} {'median ms':>9} {'p90 ms':>8} {'x floor':>8} {'x floor -I':>10}  target"
    for v in variants:
        median = statistics.median(v.samples)
        p90 = percentile(v.samples, 90)
        ratios = ""
        verdict = ""
        if v.floor is not None:
            r_plain = median / statistics.median(by_key["floor"].samples)
            r_isolated = median / statistics.median(by_key["floor-I"].samples)
            ratios = f"{r_plain:8.2f} {r_isolated:10.2f}"
            ratio = r_isolated if v.floor == "floor-I" else r_plain
            if v.target is not None:
                ok = ratio <= v.target
                missed += not ok
                verdict = f"  {ratio:.2f}x vs {by_key[v.floor].label.split(': ')[1]} <= {v.target}x: " \
                          f"{'PASS' if ok else 'MISS'}"
            else:
                verdict = f"  {ratio:.2f}x vs {by_key[v.floor].label.split(': ')[1]} (no target)"
        else:
            ratios = f"{'':8} {'':10}"
        rows.append(f"{v.label:36} {ms(median):>9} {ms(p90):>8} {ratios}{verdict}")

    print()
    print(f"=== bench_info summary: {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, N={args.runs} per variant, {elapsed:.0f} s, "
          f"load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f} ===")
    print(header)
    for row in rows:
        print(row)
    for note in skipped:
        print(note)
    print("modules imported beyond bare `python -I -c pass` (bin/cpi's exec line, sys.modules at exit):")
    bad_imports: list[str] = []
    for name, mods in imports.items():
        watched = ", ".join(f"{m} {'yes' if m in mods else 'no'}" for m in WATCHED)
        provider = provider_modules(mods)
        # the README's path runs the JSON the wrapper wrote: PyYAML must stay off it like the provider
        if (provider and name != "has_vm unknown") or (name == "info (README)" and "yaml" in mods):
            bad_imports.append(name)
        expect = "expected" if name == "has_vm unknown" else ("BAD" if name in bad_imports else "ok")
        print(f"  {name:15} {len(mods):4} modules; provider modules: {len(provider)} ({expect}); {watched}")
    print(f"targets (ratio of medians <= {TARGET}x, like-for-like floor): "
          f"{'all PASS' if not missed else f'{missed} MISS'}")
    if bad_imports:
        print(f"provider (or PyYAML on the README path) imported on: {', '.join(bad_imports)}")
        return 2
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
