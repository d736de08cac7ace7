"""``stemforge pipeline``: Concourse pipelines: validate and run jobs locally."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pipeline`` command group (its subcommands are added as they are implemented)."""
    parser = subparsers.add_parser("pipeline", help="Concourse pipelines: validate and run jobs locally.")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)
