"""``stemforge cpi ...``: operator commands around the CPI executable.

* ``stemforge cpi wrapper --config CONFIG --out DIR`` writes ``DIR/bin/cpi`` (see :mod:`cpi.wrapper`); a YAML
  CONFIG is validated once and written as ``DIR/config/cpi.json``, the file ``bin/cpi`` names (so the director's
  calls never parse YAML). Run it again after editing the YAML.
* ``stemforge cpi call METHOD [JSON_ARGS] --config CONFIG [--api-version N] [--director-uuid U]`` sends one request
  through a real ``stemforge-cpi`` process and prints its response; the exit status is 0 for a success response,
  1 for an error response, 2 when no valid response came back. ``JSON_ARGS`` is a JSON array (default ``[]``),
  ``@FILE`` to read it from a file or ``-`` for stdin. The CPI's stderr passes through; the call is bounded by
  ``--timeout`` seconds (the CPI's process group is killed then). The request goes through the one director-style
  client (:mod:`stemforge_base.cpi_client`), with this shell's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from stemforge_base.cpi_client import CpiProcessError, build_request, cpi_command, exchange, parse_response

DEFAULT_DIRECTOR_UUID = "stemforge-cli"
#: bosh-cli's choice: it talks to CPIs with min(info.api_version, 2).
DEFAULT_API_VERSION = 2
#: Seconds one ``stemforge cpi call`` may take by default (a create_stemcell of a large image included).
DEFAULT_CALL_TIMEOUT = 3600.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cpi`` with its ``wrapper`` and ``call`` subcommands."""
    parser = subparsers.add_parser("cpi", help="install and call the stemforge BOSH CPI")
    commands = parser.add_subparsers(dest="cpi_command", metavar="CPI_COMMAND")
    commands.required = True

    wrapper = commands.add_parser("wrapper", help="write DIR/bin/cpi, the executable a BOSH director runs")
    wrapper.add_argument("--config", required=True,
                         help="the CPI config file (JSON, or YAML: validated and written as DIR/config/cpi.json)")
    wrapper.add_argument("--out", required=True, metavar="DIR", help="job directory; the script goes to DIR/bin/cpi")
    wrapper.add_argument(
        "--skip-config-check", action="store_true", help="write the wrapper even if the config does not load yet"
    )
    wrapper.set_defaults(handler=run_wrapper)

    call = commands.add_parser("call", help="send one request through stemforge-cpi and print the response")
    call.add_argument("method", help="CPI method, e.g. info, has_vm, create_disk")
    call.add_argument("json_args", nargs="?", default="[]", metavar="JSON_ARGS", help="JSON array, @FILE or -")
    call.add_argument("--config", required=True, help="the CPI config file")
    call.add_argument("--api-version", type=int, default=DEFAULT_API_VERSION, help="request api_version (default 2)")
    call.add_argument("--director-uuid", default=DEFAULT_DIRECTOR_UUID, help="context.director_uuid")
    call.add_argument("--request-id", default=None, help="context.request_id (default cli-<pid>)")
    call.add_argument("--timeout", type=float, default=DEFAULT_CALL_TIMEOUT, metavar="SECONDS",
                      help="kill the CPI after this many seconds (default 3600)")
    call.set_defaults(handler=run_call)


def run_wrapper(args: argparse.Namespace) -> int:
    from cpi.wrapper import WrapperError, write_wrapper

    try:
        path = write_wrapper(args.config, args.out, check_config=not args.skip_config_check)
    except WrapperError as exc:
        print(f"stemforge cpi wrapper: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _load_arguments(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    return json.loads(text)


def run_call(args: argparse.Namespace) -> int:
    try:
        arguments = _load_arguments(args.json_args)
    except (OSError, ValueError) as exc:
        print(f"stemforge cpi call: JSON_ARGS: {exc}", file=sys.stderr)
        return 2
    if not isinstance(arguments, list):
        print("stemforge cpi call: JSON_ARGS must be a JSON array", file=sys.stderr)
        return 2
    request = build_request(args.method, arguments, director_uuid=args.director_uuid, api_version=args.api_version,
                            request_id=args.request_id or f"cli-{os.getpid()}")
    try:
        run = exchange(cpi_command(args.config), request, timeout=args.timeout, env=None, cwd=None,
                       capture_stderr=False)
    except CpiProcessError as exc:  # it did not start, or gave no answer in time
        print(f"stemforge cpi call: {exc.message}", file=sys.stderr)
        return 2
    try:
        response = parse_response(args.method, run.stdout)
    except CpiProcessError as exc:
        sys.stdout.write(run.stdout.decode("utf-8", "replace"))
        print(f"stemforge cpi call: no valid response (exit status {run.returncode}): {exc.message}",
              file=sys.stderr)
        return 2
    print(json.dumps(response, indent=2, sort_keys=True))
    if run.returncode != 0:
        print(f"stemforge cpi call: the CPI exited with status {run.returncode}", file=sys.stderr)
        return 2
    return 0 if response["error"] is None else 1
