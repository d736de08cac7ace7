"""``stemforge env``: Terraform-made test environments: up, down, metadata.

``up NAME`` makes (or converges) the AWS test environment ``<root>/NAME`` and prints the path of its metadata file;
``down NAME`` destroys it (nothing to do is success); ``metadata NAME`` prints the flat metadata JSON. Credentials
come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (never from the command line, where ``ps`` shows them).
Exit status: 0 done, 1 failed (the message says what is left behind), 2 bad usage or setup (terraform/provider
missing), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from terraform.env import Environment, EnvironmentError, EnvironmentSpec, default_root
from terraform.mirror import TerraformSetupError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``env`` command group."""
    parser = subparsers.add_parser(
        "env",
        help="Terraform-made test environments: up, down, metadata.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="env_command", metavar="SUBCOMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("name", help="environment name: prefixes everything it makes (2-28 of a-z, 0-9, '-')")
        sub.add_argument(
            "--root",
            type=Path,
            default=None,
            help="directory holding the environments (default: $STEMFORGE_ENV_ROOT or ~/.local/state/stemforge/envs)",
        )

    up = commands.add_parser("up", help="init and apply the environment, write environment/metadata")
    common(up)
    up.add_argument("--region", default="us-east-1", help="AWS region (default us-east-1)")
    up.add_argument(
        "--endpoint", default=None, help="one endpoint URL for every AWS service (a moto server); default: real AWS"
    )
    up.add_argument("--availability-zone", default=None, help="zone of the subnets (default: the region's first)")
    up.add_argument(
        "--no-load-balancers",
        dest="load_balancers",
        action="store_false",
        help="skip the application load balancer (against moto its creation waits about a minute)",
    )
    up.add_argument("--terraform", default=None, help="terraform binary (default: PATH, then the usual places)")
    up.add_argument(
        "--keep-on-failure",
        action="store_true",
        help="leave what a failed up made in place (for debugging) instead of destroying it",
    )
    up.add_argument("--timeout", type=float, default=1800.0, help="seconds each terraform command may take")
    up.set_defaults(handler=run_up)

    down = commands.add_parser("down", help="destroy the environment (idempotent)")
    common(down)
    down.add_argument("--terraform", default=None, help="terraform binary")
    down.add_argument("--timeout", type=float, default=1800.0, help="seconds each terraform command may take")
    down.set_defaults(handler=run_down)

    metadata = commands.add_parser("metadata", help="print the environment's metadata JSON")
    common(metadata)
    metadata.set_defaults(handler=run_metadata)

    def usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=usage)


def _environment(args: argparse.Namespace) -> Environment:
    root = args.root or default_root()
    return Environment(
        root / args.name,
        terraform_binary=getattr(args, "terraform", None),
        sink=lambda line: print(line, file=sys.stderr, flush=True),
        timeout=getattr(args, "timeout", 1800.0),
    )


def run_up(args: argparse.Namespace) -> int:
    spec = EnvironmentSpec(
        name=args.name, region=args.region, endpoint=args.endpoint, availability_zone=args.availability_zone
    )
    try:
        spec.validate()
        env = _environment(args)
        env.up(spec, keep_on_failure=args.keep_on_failure)
    except ValueError as exc:
        print(f"stemforge env up: {exc}", file=sys.stderr)
        return 2
    except TerraformSetupError as exc:
        print(f"stemforge env up: {exc}", file=sys.stderr)
        return 2
    except EnvironmentError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(env.metadata_path)
    return 0


def run_down(args: argparse.Namespace) -> int:
    try:
        EnvironmentSpec(name=args.name).validate()
        _environment(args).down()
    except ValueError as exc:
        print(f"stemforge env down: {exc}", file=sys.stderr)
        return 2
    except TerraformSetupError as exc:
        print(f"stemforge env down: {exc}", file=sys.stderr)
        return 2
    except EnvironmentError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def run_metadata(args: argparse.Namespace) -> int:
    try:
        EnvironmentSpec(name=args.name).validate()
        doc = _environment(args).metadata()
    except ValueError as exc:
        print(f"stemforge env metadata: {exc}", file=sys.stderr)
        return 2
    except EnvironmentError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0
