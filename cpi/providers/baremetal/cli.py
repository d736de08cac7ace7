"""``stemforge metal``: Bare-metal servers: inventory, provisioning services and the emulated lab."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``metal`` command group (its subcommands are added as they are implemented)."""
    parser = subparsers.add_parser(
        "metal", help="Bare-metal servers: inventory, provisioning services and the emulated lab."
    )

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
