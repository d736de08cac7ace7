"""``stemforge metal``: bare-metal servers (inventory and state verbs), the provisioning services and the lab.

Inventory verbs (each takes ``--state-dir``, default ``$STEMFORGE_METAL_STATE_DIR`` or /var/lib/stemforge/metal):
``enroll FILE``, ``list``, ``show NAME``, ``manage NAME... [--no-inspect]``, ``inspect NAME...``,
``provide NAME... [--skip-cleaning]``, ``clean NAME...``, ``undeploy NAME...``,
``maintenance set|unset NAME [--reason TEXT]``. The work is in
``inventory.py``, imported only when a verb runs (every ``stemforge`` command builds this parser).
Credentials are shown as ``***``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.config import DEFAULT_STATE_DIR, STATE_DIR_ENV, MetalConfig, Timeouts
from cpi.providers.baremetal.lab import cli as lab_cli
from cpi.providers.baremetal.serve import cli as serve_cli


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``metal`` command group: inventory verbs here, ``serve`` and ``lab`` from their own modules."""
    parser = subparsers.add_parser(
        "metal", help="Bare-metal servers: inventory, provisioning services and the emulated lab."
    )

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
    metal_subparsers = parser.add_subparsers(dest="metal_command", metavar="COMMAND")
    _register_inventory(metal_subparsers)
    serve_cli.register(metal_subparsers)
    lab_cli.register(metal_subparsers)


def _state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        default=os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR,
        help=f"bare-metal state dir holding metal.db (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR})",
    )


def _register_inventory(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("enroll", help="Enrol servers from an inventory file (YAML or JSON); all or nothing.")
    p.add_argument("file", help="inventory file: {nodes: [{name, bmc, macs, plan, root_hints}]}")
    _state_dir_arg(p)
    p.set_defaults(handler=_enroll)

    p = sub.add_parser("list", help="List servers with state, maintenance and claim.")
    p.add_argument("--json", action="store_true", help="print JSON")
    _state_dir_arg(p)
    p.set_defaults(handler=_list)

    p = sub.add_parser("show", help="Show one server (credentials as ***) and its recent transitions.")
    p.add_argument("name")
    _state_dir_arg(p)
    p.set_defaults(handler=_show)

    p = sub.add_parser(
        "manage", help="Verify each server's BMC answers (power-state read): enroll → manageable; then inspect it."
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--no-inspect", action="store_true", help="skip the inspection (the ramdisk's hardware report)")
    p.add_argument("--timeout", type=float, default=600.0, help="inspection bound in seconds (default 600)")
    _state_dir_arg(p)
    p.set_defaults(handler=_manage)

    p = sub.add_parser(
        "inspect", help="Boot the ramdisk on manageable servers and record their hardware (disks, NICs, CPU, ...)."
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", type=float, default=600.0, help="inspection bound in seconds (default 600)")
    _state_dir_arg(p)
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("provide", help="Clean each server through the ramdisk and make it available.")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--skip-cleaning", action="store_true", help="the disks are known blank (a new lab)")
    p.add_argument("--timeout", type=float, default=600.0, help="cleaning bound in seconds (default 600)")
    _state_dir_arg(p)
    p.set_defaults(handler=_provide)

    p = sub.add_parser("clean", help="Manual cleaning of manageable servers (they stay manageable).")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", type=float, default=600.0, help="cleaning bound in seconds (default 600)")
    _state_dir_arg(p)
    p.set_defaults(handler=_clean)

    p = sub.add_parser("undeploy", help="Power off and clean servers left in 'deploy failed'; they become available.")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--timeout", type=float, default=600.0, help="cleaning bound in seconds (default 600)")
    _state_dir_arg(p)
    p.set_defaults(handler=_undeploy)

    p = sub.add_parser("maintenance", help="Set or clear a server's maintenance flag.")
    p.add_argument("action", choices=["set", "unset"])
    p.add_argument("name")
    p.add_argument("--reason", default="", help="why (required for set)")
    _state_dir_arg(p)
    p.set_defaults(handler=_maintenance)


# -- handlers ---------------------------------------------------------------------------------------------------
def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _open(args: argparse.Namespace) -> Any:
    from cpi.providers.baremetal.store import MetalStore  # lazy: every stemforge command builds this parser

    return MetalStore(args.state_dir)


def _config(args: argparse.Namespace) -> Any:
    return MetalConfig(state_dir=Path(args.state_dir), timeouts=Timeouts(clean=getattr(args, "timeout", 600.0)))


def _logger() -> Any:
    log = logging.getLogger("stemforge.metal")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        # the level on the handler, not the logger, and records still propagate: a CLI call made in-process (tests,
        # other tools) must not change what the rest of the process logs or captures
        handler.setLevel(logging.WARNING)
        log.addHandler(handler)
    return log


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _known_errors() -> tuple[type[BaseException], ...]:
    # lazy: every stemforge command builds this parser
    from cpi.providers.baremetal.interfaces.base import InterfaceError
    from cpi.providers.baremetal.inventory import InventoryError
    from cpi.providers.baremetal.store import StoreError

    return (InventoryError, StoreError, InterfaceError)


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


def _enroll(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal import inventory  # lazy: every stemforge command builds this parser

    try:
        nodes = inventory.enroll_file(_open(args), args.file, _who())
    except _known_errors() as exc:
        return _fail(_message(exc))
    for node in nodes:
        print(
            f"enrolled {node.name} ({node.bmc.driver} {node.bmc.address}, {len(node.macs)} NIC(s)):",
            node.provision_state,
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal import inventory  # lazy: every stemforge command builds this parser

    rows = [dict(inventory.summary(n)) for n in _open(args).nodes()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "state", "maintenance", "claimed_by", "bmc", "plan", "labels"]
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    node = store.node(args.name)
    if node is None:
        return _fail(f"node {args.name!r} is not enrolled")
    from cpi.providers.baremetal import inspection, inventory, placement  # lazy: every command builds this parser

    out = node.public()
    out["storage"] = inventory.storage_summary(node)
    try:  # whether create_vm could place a VM here by its own storage (placement.py), else why not
        placement.check(store, node, {})
        out["deployable"] = "yes"
    except placement.NotPlaceable as exc:
        out["deployable"] = f"no: {exc}"
    record = store.inspection(args.name)
    out["inspection"] = inspection.public(record) if record is not None else None
    out["transitions"] = [
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.ts)),
            "verb": t.verb,
            "from": t.from_state,
            "to": t.to_state,
            "who": t.who,
            "why": t.why,
        }  # fmt: skip
        for t in store.transitions(args.name)[-20:]
    ]
    print(json.dumps(out, indent=2))
    return 0


def _each(args: argparse.Namespace, verb: str, run: Any) -> int:
    status = 0
    for name in args.names:
        started = time.monotonic()
        try:
            node = run(name)
        except _known_errors() as exc:
            status = _fail(_message(exc))
            continue
        print(f"{name}: {verb}: {node.provision_state} ({time.monotonic() - started:.1f}s)")
    return status


def _progress(line: str) -> None:
    print(line, flush=True)


def _operator(args: argparse.Namespace) -> Any:
    from cpi.providers.baremetal import inventory  # lazy: every stemforge command builds this parser

    return inventory.Operator(_open(args), _config(args), _logger(), _who(), progress=_progress)


def _manage(args: argparse.Namespace) -> int:
    op = _operator(args)

    def manage(name: str) -> Any:
        node = op.manage(name)
        return node if args.no_inspect else op.inspect(name)

    return _each(args, "manage", manage)


def _inspect(args: argparse.Namespace) -> int:
    return _each(args, "inspect", _operator(args).inspect)


def _provide(args: argparse.Namespace) -> int:
    op = _operator(args)
    return _each(args, "provide", lambda n: op.provide(n, skip_cleaning=args.skip_cleaning))


def _clean(args: argparse.Namespace) -> int:
    return _each(args, "clean", _operator(args).clean)


def _undeploy(args: argparse.Namespace) -> int:
    return _each(args, "undeploy", _operator(args).undeploy)


def _maintenance(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal import inventory  # lazy: every stemforge command builds this parser

    try:
        node = inventory.set_maintenance(_open(args), args.name, args.action == "set", args.reason, _who())
    except _known_errors() as exc:
        return _fail(_message(exc))
    state = f"in maintenance ({node.maintenance_reason})" if node.maintenance else "out of maintenance"
    print(f"{node.name}: {state}")
    return 0
