"""``stemforge``: the user-facing command line.

Each concern registers its own subcommands through a ``register(subparsers)`` function in its package, so this
module only assembles them; subcommand handlers return the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cpi.extras import missing_extra, missing_module

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
#: Subcommand modules of an optional role: the pip extra they need and the commands they register. When the extra
#: is not installed, those commands are still listed and say which extra to install.
OPTIONAL_SUBCOMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "builders.cli": ("build", ("build", "validate", "inspect", "hcl2_upgrade")),
    "builders.image_repo": ("build", ("image-repo",)),
    "cpi.providers.baremetal.cli": ("metal", ("metal",)),
    "terraform.cli": ("terraform", ("env",)),
    "ci.cli": ("ci", ("pipeline",)),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemforge",
        description="Build OS images, package them as BOSH stemcells and run them through the stemforge CPI.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if name not in OPTIONAL_SUBCOMMANDS or missing_module(exc) is None:
                raise
            _register_missing(subparsers, name, exc)
            continue
        module.register(subparsers)
    return parser


def _register_missing(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                      exc: ModuleNotFoundError) -> None:
    """Register the commands of ``name`` as stand-ins that name the extra to install and exit 2."""
    extra, commands = OPTIONAL_SUBCOMMANDS[name]
    for command in commands:
        message = str(missing_extra(f"`stemforge {command}`", exc, extra))
        parser = subparsers.add_parser(command, help=f"(not installed: {message})", add_help=False)
        parser.add_argument("arguments", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=lambda _args, message=message: _missing(message), missing_extra=True)


def _missing(message: str) -> int:
    print(f"stemforge: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # a stand-in for a command whose extra is missing takes any arguments (argparse's REMAINDER does not take
    # leading options such as `build -var a=b`): it names the extra instead of "unrecognized arguments"
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "missing_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
