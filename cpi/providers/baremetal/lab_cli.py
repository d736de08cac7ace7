"""``stemforge metal lab``: build and remove the emulated bare-metal lab (namespace, bridge, VMs, Redfish BMCs)."""

from __future__ import annotations

import argparse


def register(metal_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab`` under ``stemforge metal``."""
