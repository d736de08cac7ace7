"""``stemforge``: the user-facing command line.

Each concern registers its own subcommands through a ``register(subparsers)`` function in its package, so this
module only assembles them; subcommand handlers return the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules exposing ``register(subparsers: argparse._SubParsersAction) -> None``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "stemcells.cli",
    "cpi.cli",
    "stemforge.demo",
    "stemforge.doctor",
    "builders.cli",
    "builders.image_repo",
    "cpi.providers.baremetal.cli",
    "terraform.cli",
    "ci.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemforge",
        description="Build OS images, package them as BOSH stemcells and run them through the stemforge CPI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        status: int = handler(args)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
