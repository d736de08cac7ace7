"""``stemforge metal``: bare-metal servers (inventory and state verbs), the provisioning services and the lab."""

from __future__ import annotations

import argparse

from cpi.providers.baremetal import lab_cli, serve_cli


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
    serve_cli.register(metal_subparsers)
    lab_cli.register(metal_subparsers)
