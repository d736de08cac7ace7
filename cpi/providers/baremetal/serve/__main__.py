"""``python -m cpi.providers.baremetal.serve``: ``stemforge metal serve`` without the ``stemforge`` parser (the lab
starts it this way inside its network namespace); the same flags (:mod:`.cli`) and handler (:mod:`.daemon`)."""

from __future__ import annotations

import argparse
import sys

from cpi.providers.baremetal.serve import daemon
from cpi.providers.baremetal.serve.cli import add_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cpi.providers.baremetal.serve", description=daemon.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    return daemon.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
