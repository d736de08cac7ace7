"""``stemforge env``: Terraform-made test environments: up, down, metadata."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``env`` command group (its subcommands are added as they are implemented)."""
    parser = subparsers.add_parser("env", help="Terraform-made test environments: up, down, metadata.")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
