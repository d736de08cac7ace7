"""``stemforge doctor``: which components this machine has and which it lacks, each gap with the exact fix.

This module only gathers and prints. The checks belong to the packages that need what they check, each exposing
``checks()`` in its ``checks`` module: :mod:`cpi.checks` (the libvirt CPI, bare metal), :mod:`builders.checks`,
:mod:`stemcells.checks` and :mod:`terraform.checks` (AWS/Terraform). The framework they share — :class:`Check`,
:class:`Options`, :class:`Context`, the bounded helpers — and its contracts (a check never changes the machine,
sends no traffic beyond local sockets, bounds every command) are :mod:`stemforge_base.checks`.

A failing check whose ``required_for`` is ``LIBVIRT_CPI`` and that is not ``optional`` makes ``doctor`` exit 1;
gaps for bare metal, image builds and AWS/Terraform are listed as warnings. A CPI config that does not load exits 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from builders import checks as builders_checks
from cpi import checks as cpi_checks
from cpi.config import read_document
from cpi.errors import CpiError
from cpi.providers.libvirt.config import LibvirtConfig
from stemcells import checks as stemcells_checks
from stemforge_base.checks import (
    AREA_TITLES,
    DEFAULT_POOL_PATH,
    DEFAULT_URI,
    LIBVIRT_CPI,
    Check,
    CheckFn,
    Context,
    Options,
    user_name,
)
from terraform import checks as terraform_checks


def gather() -> tuple[CheckFn, ...]:
    """Every package's checks, in report order (grouped by ``required_for`` when printed)."""
    return (*cpi_checks.checks(), *builders_checks.checks(), *stemcells_checks.checks(), *terraform_checks.checks())


def collect(options: Options, checks: Sequence[CheckFn] | None = None) -> list[Check]:
    """Run ``checks`` (default: :func:`gather`) concurrently (each one's external probes are bounded) and return
    their findings in ``checks`` order. A check that raises becomes a failed check naming the exception, so one bug
    cannot hide the rest of the report."""
    checks = gather() if checks is None else checks
    ctx = Context(options)

    def guarded(fn: CheckFn) -> list[Check]:
        try:
            return fn(ctx)
        except Exception as exc:  # noqa: BLE001 - reported as a finding
            name = fn.__name__.removeprefix("check_").replace("_", " ")
            return [Check(name, False, f"the check itself failed: {type(exc).__name__}: {exc}", None, LIBVIRT_CPI,
                          optional=True)]

    with ThreadPoolExecutor(max_workers=len(checks) or 1, thread_name_prefix="doctor") as pool:
        results = list(pool.map(guarded, checks))
    return [c for group in results for c in group]


# -- output -----------------------------------------------------------------------------------------------------


def _marks() -> tuple[str, str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘—".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "OK", "XX", "-"
    return "✔", "✘", "—"


def summary(checks: Sequence[Check]) -> str:
    """One line: how many pass, whether the libvirt CPI can run here, and the warnings by name."""
    passed = sum(c.ok for c in checks)
    blocking = [c.name for c in checks if c.blocking]
    optional = [c.name for c in checks if not c.ok and c.required_for == LIBVIRT_CPI and c.optional]
    warnings = [c for c in checks if not c.ok and c.required_for != LIBVIRT_CPI]
    head = f"{passed}/{len(checks)} checks pass. "
    if blocking:
        head += f"The libvirt CPI is NOT ready: fix {', '.join(blocking)}."
    else:
        head += "The libvirt CPI has everything it needs"
        head += f" (optional gaps: {', '.join(optional)})." if optional else "."
    if warnings:
        by_area: dict[str, list[str]] = {}
        for c in warnings:
            by_area.setdefault(c.required_for, []).append(c.name)
        head += " Warnings: " + "; ".join(f"{AREA_TITLES.get(a, a)}: {', '.join(n)}" for a, n in by_area.items()) + "."
    return head


def render(checks: Sequence[Check]) -> str:
    """The human report: checks grouped by area, ``✔ name — detail`` or ``✘ name — detail`` plus an indented
    ``fix:`` line, then :func:`summary`."""
    ok_mark, bad_mark, dash = _marks()
    lines = [f"stemforge doctor on {socket.gethostname()} ({platform.machine()}, user {user_name()})"]
    areas = list(AREA_TITLES) + sorted({c.required_for for c in checks} - set(AREA_TITLES))
    for area in areas:
        group = [c for c in checks if c.required_for == area]
        if not group:
            continue
        lines.append("")
        suffix = "" if area == LIBVIRT_CPI else " (warnings only)"
        lines.append(f"{AREA_TITLES.get(area, area)}{suffix}")
        for c in group:
            optional = " [optional]" if c.optional and not c.ok else ""
            lines.append(f"{ok_mark if c.ok else bad_mark} {c.name} {dash} {c.detail}{optional}")
            if not c.ok and c.fix:
                lines.append(f"    fix: {c.fix}")
    lines += ["", summary(checks)]
    return "\n".join(lines)


def exit_status(checks: Iterable[Check]) -> int:
    """0 when nothing the libvirt CPI requires is missing, else 1."""
    return 1 if any(c.blocking for c in checks) else 0


# -- command line -----------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``doctor``."""
    parser = subparsers.add_parser(
        "doctor", help="report which components this machine has and lacks, each with the exact fix",
        description="Checks the libvirt CPI's requirements (exit 1 when one is missing) and reports bare-metal, "
                    "image-build and AWS/Terraform gaps as warnings.")
    parser.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    parser.add_argument("--quick", action="store_true", help="skip the KVM boot probe (finishes in a few seconds)")
    parser.add_argument("--config", metavar="FILE",
                        help="a CPI config: take libvirt uri, pool_path and KVM probe settings from it")
    parser.add_argument("--probe-kernel", metavar="VMLINUZ", help="kernel for the KVM boot probe")
    parser.add_argument("--probe-timeout", type=float, metavar="SECONDS",
                        help="bound on the KVM boot probe (default: the config's kvm_probe_timeout, else 15)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound on every other external command (default 10)")
    parser.add_argument("--min-free-gib", type=float, default=5.0, help="free space the pool needs (default 5)")
    parser.set_defaults(handler=run_doctor)


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from the command line, with the CPI config's libvirt section (``--config``) filling the gaps.
    Raises ``cpi.errors.CpiError`` for a config that does not load."""
    uri, pool, kernel, probe_timeout = DEFAULT_URI, DEFAULT_POOL_PATH, None, 15.0
    if args.config:
        document = read_document(args.config)
        properties = ((document.get("cloud") or {}).get("properties") or {})
        libvirt = LibvirtConfig.from_properties(properties.get("libvirt"))
        uri, pool, kernel, probe_timeout = (libvirt.uri, libvirt.pool_path, libvirt.kvm_probe_kernel,
                                            libvirt.kvm_probe_timeout)
    return Options(uri=uri, pool_path=pool, probe_kernel=args.probe_kernel or kernel,
                   probe_timeout=args.probe_timeout if args.probe_timeout is not None else probe_timeout,
                   quick=args.quick, timeout=args.timeout, min_free_gib=args.min_free_gib)


def run_doctor(args: argparse.Namespace) -> int:
    """Handler of ``stemforge doctor``: print the report (or ``--json``) and return :func:`exit_status`."""
    try:
        options = options_from_args(args)
    except CpiError as exc:
        print(f"stemforge doctor: {exc}", file=sys.stderr)
        return 2
    checks = collect(options)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return exit_status(checks)



if __name__ == "__main__":
    from stemforge.cli import main

    sys.exit(main(["doctor", *sys.argv[1:]]))
