"""``stemforge pipeline``: Concourse pipelines: validate them like fly and run a job's plan on this machine.

* ``stemforge pipeline validate FILE [--strict] [--var K=V] [--vars-file F]`` — ``fly validate-pipeline``: prints
  ``looks good`` (exit 0) or fly's warnings/errors and ``configuration invalid`` (exit 1).
* ``stemforge pipeline run FILE JOB [--inputs DIR] [--var K=V] [--vars-file F] [--work-dir DIR]`` — runs the job
  without Concourse (see :mod:`ci.runner`); exit status as ``fly execute``: 0 succeeded, 1 failed, 2 errored,
  3 aborted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pipeline`` command group with ``validate`` and ``run``."""
    parser = subparsers.add_parser("pipeline", help="Concourse pipelines: validate and run jobs locally.")
    commands = parser.add_subparsers(dest="pipeline_command", metavar="PIPELINE_COMMAND")
    commands.required = True

    validate = commands.add_parser("validate", help="validate a pipeline like `fly validate-pipeline`")
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.add_argument("--strict", action="store_true", help="fail on unknown/duplicate keys and on warnings")
    _var_options(validate)
    validate.set_defaults(handler=run_validate)

    run = commands.add_parser("run", help="run one job's plan here, without Concourse")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("job", metavar="JOB")
    run.add_argument(
        "--inputs",
        type=Path,
        default=None,
        metavar="DIR",
        help="DIR/<get step name> is used for a get when it exists (before recorded versions)",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="builds and recorded resource versions (default: $STEMFORGE_CI_DIR or /var/tmp/stemforge-ci/<pipeline>)",
    )
    run.add_argument(
        "--git-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="tree used for gets of git resources (default: the repository holding FILE)",
    )
    _var_options(run)
    run.set_defaults(handler=run_job)


def _var_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--var", "-v", action="append", default=[], metavar="K=V", help="a ((var)) value (string)")
    parser.add_argument(
        "--yaml-var", "-y", action="append", default=[], metavar="K=V", help="a ((var)) value parsed as YAML"
    )
    parser.add_argument(
        "--vars-file", "-l", action="append", default=[], type=Path, metavar="F", help="YAML file of ((var)) values"
    )


def load_variables(pairs: list[str], files: list[Path], yaml_pairs: list[str] | None = None) -> dict[str, Any]:
    """Vars from files (later files win) then ``K=V`` pairs (strings) and ``yaml_pairs`` (values parsed as YAML),
    which win over files, as fly orders them. Raises ValueError naming the bad pair or file."""
    from ci.model import DecodeError, load_yaml  # lazy: every `stemforge` command imports this module (PyYAML)

    values: dict[str, Any] = {}
    for path in files:
        try:
            document = load_yaml(path.read_text(encoding="utf-8"), strict=False)
        except OSError as exc:
            raise ValueError(f"could not read template variables file ({path}): {exc.strerror or exc}") from None
        except DecodeError as exc:
            raise ValueError(f"could not unmarshal template variables ({path}): {exc}") from None
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ValueError(f"could not unmarshal template variables ({path}): not a mapping")
        values.update(document)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"invalid --var {pair!r}: expected NAME=VALUE")
        values[name] = value
    for pair in yaml_pairs or []:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"invalid --yaml-var {pair!r}: expected NAME=VALUE")
        try:
            values[name] = load_yaml(text, strict=True)
        except DecodeError as exc:
            raise ValueError(f"invalid --yaml-var {name}: {exc}") from None
    return values


def run_validate(args: argparse.Namespace) -> int:
    from ci.validate import validate_file  # lazy: every `stemforge` command imports this module

    try:
        variables = load_variables(args.var, args.vars_file, args.yaml_var)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = validate_file(args.file, strict=args.strict, variables=variables)
    text, status = result.render(args.strict)
    if status == 0:
        head, _, tail = text.rpartition("looks good\n")
        sys.stderr.write(head)
        print("looks good")
    else:
        sys.stderr.write(text)
    return status


def run_job(args: argparse.Namespace) -> int:
    from ci.build import RunOptions  # lazy: every `stemforge` command imports this module
    from ci.runner import run_pipeline_job  # lazy: as above (the runner, sandbox and validator)

    try:
        variables = load_variables(args.var, args.vars_file, args.yaml_var)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        pipeline=args.file,
        job=args.job,
        variables=variables,
        inputs=args.inputs,
        work_dir=args.work_dir,
        git_dir=args.git_dir,
    )
    return run_pipeline_job(options)
