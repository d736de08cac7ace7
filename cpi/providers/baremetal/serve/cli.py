"""``stemforge metal serve``: the provisioning services (DHCP/TFTP, HTTP, callback API) in one process.

The flags live here (cheap to import: every ``stemforge`` command builds its parser); the work is in
``cpi.providers.baremetal.serve.daemon``, imported only when the command runs (``python -m
cpi.providers.baremetal.serve`` is ``__main__.py``: the same flags and handler).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

USAGE = """Run dnsmasq (DHCP + TFTP with iPXE) and the provisioning HTTP server (iPXE scripts, ramdisk, images,
config drives, callback API) on the provisioning network until SIGTERM/SIGINT. See
cpi/providers/baremetal/serve/daemon.py for the start-up steps and the ready file."""


def _dhcp_range(value: str) -> tuple[str, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"must be START,END (two IPv4 addresses), got {value!r}")
    return parts[0], parts[1]


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value!r}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``metal serve`` (``stemforge metal serve`` and ``python -m cpi.providers.baremetal.serve``)."""
    parser.add_argument("--state-dir", required=True, type=Path, help="the bare-metal state dir (metal.db, images/)")
    parser.add_argument("--listen", required=True, help="IPv4 address of --interface to serve on (never 0.0.0.0)")
    parser.add_argument("--http-port", type=_port, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("--interface", required=True, help="the provisioning bridge (DHCP and TFTP bind only to it)")
    parser.add_argument("--dhcp-range", required=True, type=_dhcp_range, metavar="START,END",
                        help="DHCP addresses to hand out, inside --listen's subnet")  # fmt: skip
    parser.add_argument("--ramdisk-dir", required=True, type=Path, help="deploy ramdisk (vmlinuz, initrd.img)")
    parser.add_argument("--tftp-root", type=Path, default=None,
                        help="TFTP directory (default STATE_DIR/tftp; iPXE boot files are copied in)")  # fmt: skip
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="write JSON here once DHCP, TFTP and HTTP all serve; removed on exit")  # fmt: skip
    parser.add_argument("--lease-time", default="1h", help="DHCP lease time (dnsmasq syntax, default 1h)")
    parser.add_argument("--enrolled-only", action="store_true", help="answer DHCP only for enrolled MACs")
    parser.add_argument("--log-dhcp", action="store_true", help="dnsmasq logs every DHCP option and tag")
    parser.add_argument("--ramdisk-debug", action="store_true", help="boot the ramdisk with sf.debug=1")
    parser.add_argument("--ipxe-dir", type=Path, default=Path("/usr/lib/ipxe"), help=argparse.SUPPRESS)


def _run(args: argparse.Namespace) -> Any:
    from cpi.providers.baremetal.serve import daemon  # lazy: every stemforge command builds this parser

    return daemon.run(args)


def register(metal_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` under ``stemforge metal``."""
    parser = metal_subparsers.add_parser(
        "serve",
        help="Run dnsmasq (DHCP + TFTP with iPXE) and the provisioning HTTP server on the provisioning network.",
        description=USAGE,
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run)
