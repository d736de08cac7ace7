"""``stemforge metal serve``: the provisioning services (DHCP/TFTP, HTTP, callback API) in one process."""

from __future__ import annotations

import argparse


def register(metal_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` under ``stemforge metal``."""
