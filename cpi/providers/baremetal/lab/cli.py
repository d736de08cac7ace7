"""``stemforge metal lab``: build and remove the emulated bare-metal lab (namespace, bridge, VMs, Redfish BMCs).

    stemforge metal lab up --servers N [--plans bios1,uefi2,hints3] [--state-dir DIR] [--name ID] [--memory MIB]
                           [--no-serve]
    stemforge metal lab down [--name ID | --state-dir DIR | --all]
    stemforge metal lab status [--name ID | --state-dir DIR] [--json]
    stemforge metal lab disk detach|attach [--name ID | --state-dir DIR] SERVER INDEX

The flags live here (cheap to import); the work is in :mod:`cpi.providers.baremetal.lab.lifecycle`, imported when a
verb runs.
Progress goes to stderr, one line per step with its elapsed time; ``up`` prints the lab's id and files on stdout.
SIGTERM during ``up`` unwinds like Ctrl-C: nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the step runner unwinds as it does for Ctrl-C."""


def _logging(verbose: bool) -> None:
    started = time.monotonic()

    class _Elapsed(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"[{time.monotonic() - started:6.1f}s] {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Elapsed())
    for name in ("stemforge.metal.lab",):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _up(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal.lab import lifecycle as lab  # lazy: every stemforge command builds this parser

    _logging(args.verbose)

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        rec = lab.up(
            args.servers,
            lab_id=args.name,
            lab_dir=args.state_dir,
            memory_mib=args.memory,
            plans=args.plans,
            with_serve=not args.no_serve,
        )
    except lab.LabError as exc:
        print(f"stemforge metal lab up: {exc}", file=sys.stderr)
        return 1
    except _Terminated:
        print("stemforge metal lab up: terminated; everything it made was removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("stemforge metal lab up: interrupted; everything it made was removed", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the steps already unwound; say what failed in one line
        print(f"stemforge metal lab up failed (everything it made was removed): {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"lab {rec.id} is up: {len(rec.servers)} server(s), provisioning network {rec.bridge_ip}/{rec.prefix} "
        f"in namespace {rec.namespace}"
    )
    print(f"  inventory:  {rec.inventory}   (stemforge metal enroll {rec.inventory})")
    print(f"  CPI config: {rec.cpi_config}")
    print(f"  Redfish:    {(rec.bmc or {}).get('address')}  (credentials in the inventory)")
    print(f"  remove it:  stemforge metal lab down --name {rec.id}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal.lab import lifecycle as lab  # lazy: every stemforge command builds this parser

    _logging(args.verbose)
    if args.all:
        if args.name or args.state_dir:
            print("stemforge metal lab down: --all takes no --name/--state-dir", file=sys.stderr)
            return 2
        targets: list[tuple[str | None, str | None]] = [(i, None) for i in lab.list_labs()]
    else:
        targets = [(args.name, args.state_dir)]
    status = 0
    for name, state_dir in targets:
        try:
            removed = lab.down(name, lab_dir=state_dir)
        except (lab.LabError, ValueError) as exc:
            print(f"stemforge metal lab down: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"lab {name or state_dir}: " + (f"removed {len(removed)} item(s)" if removed else "nothing left"))
    if args.all and not targets:
        print("no labs")
    return status


def _status(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal.lab import lifecycle as lab  # lazy: every stemforge command builds this parser

    try:
        if args.name is None and args.state_dir is None:
            ids = lab.list_labs()
            report: Any = [_safe_status(lab, i) for i in ids]
        else:
            report = lab.status(args.name, lab_dir=args.state_dir)
    except (lab.LabError, ValueError) as exc:
        print(f"stemforge metal lab status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for item in report if isinstance(report, list) else [report]:
        if "error" in item:
            print(f"lab {item['id']}: {item['error']}")
            continue
        print(
            f"lab {item['id']} ({item['phase']}): namespace {item['namespace']} "
            f"{'present' if item['namespace_exists'] else 'MISSING'}, vde_switch {item['vde_switch']}, "
            f"redfish {item['redfish']['address']} {'up' if item['redfish']['running'] else 'DOWN'}, "
            f"serve {'up' if item['serve']['running'] else 'down'} ({item['provisioning_url']})"
        )
        for s in item["servers"]:
            print(f"  {s['name']}: {s['power']}, MAC {', '.join(s['macs'])}, system {s['system_id']}")
    if isinstance(report, list) and not report:
        print("no labs")
    return 0


def _disk(args: argparse.Namespace) -> int:
    from cpi.providers.baremetal.lab import disks  # lazy: every stemforge command builds this parser
    from cpi.providers.baremetal.lab.record import LabError

    attached = args.disk_command == "attach"
    try:
        disk = disks.set_attached(args.name, args.server, args.index, attached, lab_dir=args.state_dir)
    except (LabError, ValueError) as exc:
        print(f"stemforge metal lab disk {args.disk_command}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.server}: disk {args.index} (serial {disk['serial']}) {'attached' if attached else 'detached'}")
    return 0


def _safe_status(lab: Any, lab_id: str) -> dict[str, Any]:
    try:
        return dict(lab.status(lab_id))
    except lab.LabError as exc:
        return {"id": lab_id, "error": str(exc)}


def _name(value: str) -> str:
    import re

    if not re.fullmatch(r"[0-9a-f]{6}", value):
        raise argparse.ArgumentTypeError(f"must be 6 lower-case hex characters (e.g. 3fa2c1), got {value!r}")
    return value


def _servers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise argparse.ArgumentTypeError(f"must be a number of servers from 1 to 16, got {value!r}")
    return int(value)


def register(metal_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab`` under ``stemforge metal``."""
    parser = metal_subparsers.add_parser(
        "lab",
        help="The emulated bare-metal lab: libvirt VMs as servers, Redfish BMCs, a PXE network namespace.",
        description=__doc__,
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="VERB")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)

    up = sub.add_parser("up", help="build a lab (nothing is left behind if it fails or is interrupted)")
    up.add_argument("--servers", type=_servers, required=True, help="number of emulated servers (1-16)")
    up.add_argument(
        "--state-dir", default=None, help="the lab directory (new or empty; default /var/lib/stemforge/labs/<id>)"
    )
    up.add_argument("--name", type=_name, default=None, help="lab id, 6 hex characters (default: random)")
    up.add_argument("--memory", type=int, default=512, help="MiB of memory per server (default 512)")
    up.add_argument(
        "--plans",
        default=None,
        help="hardware plans cycled over the servers, comma-separated: bios1 (SeaBIOS, 1x8 GiB), uefi2 (OVMF, "
        "2x8 GiB, RAID1+LVM layout), hints3 (SeaBIOS, SCSI 5/6/10 GiB, root hints on the 6 GiB disk); "
        "default: 4+1 GiB SeaBIOS servers",
    )
    up.add_argument("--no-serve", action="store_true", help="do not start `metal serve` in the namespace")
    up.add_argument("-v", "--verbose", action="store_true")
    up.set_defaults(handler=_up)

    for verb, help_text, handler in (
        ("down", "remove a lab (idempotent; works after a crash)", _down),
        ("status", "show a lab (or every lab) and what of it is running", _status),
    ):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument("--name", type=_name, default=None, help="lab id")
        p.add_argument("--state-dir", default=None, help="the lab directory (instead of --name)")
        if verb == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            p.add_argument("--all", action="store_true", help="remove every lab under the labs root")
            p.add_argument("-v", "--verbose", action="store_true")
        p.set_defaults(handler=handler)

    disk = sub.add_parser("disk", help="detach or attach a disk of a powered-off server (e.g. a RAID member)")
    disk_sub = disk.add_subparsers(dest="disk_command", metavar="detach|attach", required=True)
    for verb in ("detach", "attach"):
        p = disk_sub.add_parser(verb, help=f"{verb} disk INDEX of SERVER (domain config; the server must be off)")
        p.add_argument("--name", type=_name, default=None, help="lab id")
        p.add_argument("--state-dir", default=None, help="the lab directory (instead of --name)")
        p.add_argument("server", help="server: domain name, s<N> or N")
        p.add_argument("index", type=int, help="disk index (0 = the first disk of the plan)")
        p.set_defaults(handler=_disk)
