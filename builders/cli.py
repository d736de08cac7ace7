"""``stemforge build|validate|inspect``: Packer's commands over ``builders.template`` and ``builders.runner``.

Packer's single-dash long flags are accepted as well as double-dash ones (``-only=a,b``, ``-var 'k=v'``,
``--var-file vars.json``). ``-var`` and ``-var-file`` apply in command-line order (later wins). Handlers return the
exit status: 0 when everything succeeded, 1 for an invalid template, a failed build or an interrupted run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from builders.runner import ON_ERROR_CHOICES, BuildRunner, PrepareError, RunOptions, multi_error
from builders.template import Template, TemplateError, merge_cli_variables, parse_template
from builders.template.hcl2 import HCL2Template, HCLError, is_hcl2, load_hcl2
from builders.template.hcl2.diagnostics import render_all
from builders.template.hcl2.inspect import inspect_hcl2
from builders.template.hcl2.upgrade import upgrade
from builders.ui import Output


class _VarSource(argparse.Action):
    """Collects ``-var``/``-var-file`` in command-line order into ``args.var_sources``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sources = list(getattr(namespace, "var_sources", None) or [])
        sources.append((self.const, str(values)))
        namespace.var_sources = sources


def _names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def _bool(value: str) -> bool:
    if value.lower() in ("1", "t", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


#: A group of Packer's flags: (name, ``add_argument`` keywords), each accepted as ``-name`` (Packer's spelling)
#: and ``--name``.
_Flags = tuple[tuple[str, dict[str, Any]], ...]

_VAR_FLAGS: _Flags = (
    ("var", {"action": _VarSource, "const": "var", "metavar": "KEY=VALUE", "help": "a user variable (repeatable)"}),
    ("var-file", {"action": _VarSource, "const": "var-file", "metavar": "PATH",
                  "help": "a JSON (or YAML) file of user variables (repeatable)"}),
)
_SELECTION_FLAGS: _Flags = (
    ("only", {"type": _names, "default": [], "metavar": "foo,bar", "help": "build only the named builds"}),
    ("except", {"dest": "except_", "type": _names, "default": [], "metavar": "foo,bar",
                "help": "run all builds and post-processors other than these"}),
)
_OUTPUT_FLAGS: _Flags = (
    ("machine-readable", {"action": "store_true",
                          "help": "produce machine-readable output (timestamp,target,type,data...)"}),
    ("color", {"type": _bool, "default": None, "metavar": "true|false",
               "help": "colour build output (default: on a terminal)"}),
)
_BUILD_FLAGS: _Flags = (
    ("parallel-builds", {"type": int, "default": 0, "metavar": "N",
                         "help": "number of builds to run at once; 0 means no limit (default: 0)"}),
    ("on-error", {"choices": ON_ERROR_CHOICES, "default": "cleanup",
                  "help": "when a build fails: clean up (default), abort (leave everything for debugging), or "
                          "ask (on a terminal)"}),
    ("force", {"action": "store_true",
               "help": "replace artifacts of a previous build (e.g. an existing output directory)"}),
    ("timestamp-ui", {"action": "store_true", "help": "prefix each line of output with an RFC 3339 timestamp"}),
)
_VALIDATE_FLAGS: _Flags = (
    ("syntax-only", {"action": "store_true", "help": "only check the document and its structure"}),
    ("evaluate-datasources", {"action": "store_true",
                              "help": "HCL2: evaluate data sources (default: their outputs are unknown, as in "
                                      "Packer)"}),
)
_UPGRADE_FLAGS: _Flags = (
    ("output-file", {"type": Path, "default": None, "metavar": "PATH",
                     "help": "where to write the HCL2 file (default: TEMPLATE.pkr.hcl)"}),
)


def _add_flags(parser: argparse.ArgumentParser, *groups: _Flags) -> None:
    """Add the flag groups in order, then the ``TEMPLATE`` argument; ``-var``/``-var-file`` collect into
    ``args.var_sources`` (empty by default)."""
    for group in groups:
        if group is _VAR_FLAGS:
            parser.set_defaults(var_sources=[])
        for name, options in group:
            parser.add_argument(f"-{name}", f"--{name}", **options)
    parser.add_argument("template", type=Path, metavar="TEMPLATE")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``build``, ``validate``, ``inspect`` and ``hcl2_upgrade`` to the ``stemforge`` CLI."""
    build = subparsers.add_parser(
        "build", allow_abbrev=False, help="build image(s) from a Packer-compatible template",
        description="Run the builds of a Packer-compatible template (JSON or YAML) in parallel and print the "
                    "artifacts they created.")
    _add_flags(build, _SELECTION_FLAGS, _VAR_FLAGS, _OUTPUT_FLAGS, _BUILD_FLAGS)
    build.set_defaults(handler=cmd_build)

    validate = subparsers.add_parser(
        "validate", allow_abbrev=False, help="check that a template is valid",
        description="Check a template: syntax, variables, functions, and every builder, provisioner and "
                    "post-processor option of the selected builds.")
    _add_flags(validate, _VALIDATE_FLAGS, _SELECTION_FLAGS, _VAR_FLAGS, _OUTPUT_FLAGS)
    validate.set_defaults(handler=cmd_validate)

    inspect = subparsers.add_parser(
        "inspect", allow_abbrev=False, help="show the components of a template",
        description="Show a template's variables (sensitive ones masked), builders, provisioners and "
                    "post-processors.")
    _add_flags(inspect, _VAR_FLAGS, _OUTPUT_FLAGS)
    inspect.set_defaults(handler=cmd_inspect)

    upgrade = subparsers.add_parser(
        "hcl2_upgrade", allow_abbrev=False, help="write the HCL2 twin of a JSON template",
        description="Translate a legacy JSON (or YAML) template into HCL2 (TEMPLATE.pkr.hcl by default).")
    _add_flags(upgrade, _UPGRADE_FLAGS)
    upgrade.set_defaults(handler=cmd_hcl2_upgrade)


def _output(args: argparse.Namespace, **extra: Any) -> Output:
    return Output(sys.stdout, machine_readable=bool(getattr(args, "machine_readable", False)),
                  color=getattr(args, "color", None), **extra)


def _parse(args: argparse.Namespace, out: Output, *, syntax_only: bool = False) -> Template | None:
    """Parse the template with the command line's variables; print Packer's error and return None if invalid.
    An HCL2 file or directory goes to :mod:`builders.template.hcl2` (errors printed as HCL diagnostics)."""
    if is_hcl2(args.template):
        try:
            template = load_hcl2(args.template, var_sources=list(getattr(args, "var_sources", []) or []),
                                 syntax_only=syntax_only,
                                 evaluate_data=bool(getattr(args, "evaluate_datasources", True)),
                                 only=list(getattr(args, "only", []) or []),
                                 except_=list(getattr(args, "except_", []) or []))
        except HCLError as exc:
            out.error(render_all(exc.diagnostics))
            return None
        for warning in template.diagnostics:
            out.error(template.mask(warning.render().rstrip("\n")))
        return template
    try:
        overrides = merge_cli_variables(list(getattr(args, "var_sources", []) or []))
        return parse_template(args.template, var_overrides=overrides, syntax_only=syntax_only)
    except TemplateError as exc:
        detail = exc.errors[0] if len(exc.errors) == 1 else multi_error(exc.errors)
        out.error(f"Failed to parse template: {detail}")
        return None


class _MaskedOutputHandler(logging.Handler):
    """Warnings and errors logged by plugins reach the user through the (masked) build output."""

    def __init__(self, out: Output) -> None:
        super().__init__(level=logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("stemforge.build."):
            return  # the build's own UI already showed it, under the build's name
        with contextlib.suppress(Exception):
            self.out.error(record.getMessage())


class _MaskFilter(logging.Filter):
    def __init__(self, out: Output) -> None:
        super().__init__()
        self.out = out

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.out.mask(record.getMessage())
        record.args = None
        return True


@contextlib.contextmanager
def _logging_to(out: Output) -> Iterator[None]:
    """Route log records through ``out`` (masked) for the command's duration; with ``STEMFORGE_LOG_PATH`` set
    (Packer's ``PACKER_LOG_PATH``), also write a debug log there, masked as well."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = [_MaskedOutputHandler(out)]
    path = os.environ.get("STEMFORGE_LOG_PATH")
    if path:
        debug = logging.FileHandler(path, encoding="utf-8")
        debug.setLevel(logging.DEBUG)
        debug.addFilter(_MaskFilter(out))
        debug.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"))
        handlers.append(debug)
    previous_level = root.level
    if path:
        root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)


def cmd_build(args: argparse.Namespace) -> int:
    out = _output(args, timestamp=bool(args.timestamp_ui))
    options = RunOptions(only=args.only, except_=args.except_, parallel_builds=args.parallel_builds,
                         on_error=args.on_error, force=args.force)
    template = _parse(args, out)
    if template is None:
        return 1
    out.mask = template.mask
    runner = BuildRunner(template, out, options)
    with _logging_to(out):
        return runner.run()


def cmd_validate(args: argparse.Namespace) -> int:
    out = _output(args)
    template = _parse(args, out, syntax_only=args.syntax_only)
    if template is None:
        return 1
    out.mask = template.mask
    if args.syntax_only:
        out.say("Syntax-only check passed. Everything looks okay.")
        return 0
    if not isinstance(template, HCL2Template):
        for warning in template.warnings:
            out.say(f"Warning: {warning}")
    only, except_ = list(args.only), list(args.except_)
    if not isinstance(template, HCL2Template):
        # Packer's validate only filters the builds by -only/-except (packer core.go BuildNames): names that match
        # nothing are not an error, and when -only matches nothing there is nothing to check.
        builder_names = {b.name for b in template.builders}
        pp_names = {pp.name for chain in template.post_processors for pp in chain}
        if only and not any(n in builder_names for n in only):
            out.say("The configuration is valid.")
            return 0
        only = [n for n in only if n in builder_names]
        except_ = [n for n in except_ if n in builder_names | pp_names]
    runner = BuildRunner(template, out, RunOptions(only=only, except_=except_))
    try:
        builds = runner.prepare()
    except PrepareError as exc:
        out.error(str(exc))
        return 1
    for build in builds:
        for warning in build.warnings:
            out.say(f'Warning: Warning when preparing build: "{build.name}"\n\n{warning}')
    out.say("The configuration is valid.")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    out = _output(args)
    # Packer's inspect ignores what data sources answer (command/inspect.go drops Initialize's diagnostics):
    # their outputs stay unknown here, so a registry stemforge cannot read does not stop the listing.
    args.evaluate_datasources = False
    template = _parse(args, out, syntax_only=not is_hcl2(args.template))
    if template is None:
        return 1
    out.mask = template.mask
    if isinstance(template, HCL2Template):
        inspect_hcl2(template, out)
        return 0
    inspect_template(template, out, set(template.required_variables))
    return 0


def cmd_hcl2_upgrade(args: argparse.Namespace) -> int:
    out = _output(args)
    target = args.output_file or Path(f"{args.template}.pkr.hcl")
    try:
        text = upgrade(args.template)
    except TemplateError as exc:
        out.error(f"Failed to parse template: {exc}")
        return 1
    target.write_text(text, encoding="utf-8")
    out.say(f"Successfully created {target}. Exit 0")
    return 0


def inspect_template(template: Template, out: Output, required: set[str] | None = None) -> None:
    """Packer's ``inspect`` layout (JSON mode), with a post-processor section."""
    required = required or set()
    out.say("Packer Inspect: JSON mode")
    if template.description:
        out.say("Description:\n")
        out.say(template.description + "\n")
    variables = template.variables
    if not variables:
        out.say("Variables:\n")
        out.say("  <No variables>")
    else:
        names = sorted(variables)
        needed = [n for n in names if n in required]
        if needed:
            out.say("Required variables:\n")
            for name in needed:
                out.machine("template-variable", name, "", "1")
                out.say(f"  {name}")
            out.say("")
        out.say("Optional variables and their defaults:\n")
        width = max(len(n) for n in names)
        for name in names:
            if name in needed:
                continue
            value = variables[name]
            if name in template.sensitive_variables and value:
                value = "<sensitive>"
            out.machine("template-variable", name, value, "0")
            out.say(f"  {name.ljust(width)} = {value}")
    out.say("")
    out.say("Builders:\n")
    if not template.builders:
        out.say("  <No builders>")
    else:
        width = max(len(b.raw_name or b.name) for b in template.builders)
        for b in sorted(template.builders, key=lambda b: b.raw_name or b.name):
            shown = b.raw_name or b.name
            line = f"  {shown.ljust(width)}"
            if shown != b.type:
                line = f"{line} ({b.type})"
            out.machine("template-builder", shown, b.type)
            out.say(line.rstrip() if shown == b.type else line)
    out.say("")
    out.say("Provisioners:\n")
    if not template.provisioners:
        out.say("  <No provisioners>")
    else:
        for p in template.provisioners:
            out.machine("template-provisioner", p.type)
            out.say(f"  {p.type}")
    out.say("")
    out.say("Post-processors:\n")
    if not template.post_processors:
        out.say("  <No post-processors>")
    else:
        for chain in template.post_processors:
            parts = [pp.type if not pp.name or pp.name == pp.type else f"{pp.name} ({pp.type})" for pp in chain]
            for pp in chain:
                out.machine("template-post-processor", pp.name or pp.type, pp.type)
            out.say("  " + " -> ".join(parts))
    out.say("\nNote: If your build names contain user variables or template\n"
            "functions such as 'timestamp', these are processed at build time,\n"
            "and therefore only show in their raw form here.")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m builders.cli build ...`` (the same commands without the rest of ``stemforge``)."""
    parser = argparse.ArgumentParser(prog="stemforge", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
