"""Debugging aid: ``python -m builders.template TEMPLATE [-var k=v] [-var-file f] [-syntax-only]`` prints the
parsed template as JSON (sensitive values masked); errors go to stderr with exit status 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from builders.template import TemplateError, merge_cli_variables, parse_template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builders.template", description=__doc__)
    parser.add_argument("template", type=Path)
    parser.add_argument("-var", dest="vars", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-var-file", dest="var_files", action="append", default=[], metavar="FILE")
    parser.add_argument("-syntax-only", action="store_true")
    args = parser.parse_args(argv)
    # argparse loses the interleaving of -var and -var-file; re-read it from argv for Packer's "later wins".
    raw = sys.argv[1:] if argv is None else argv
    items: list[tuple[str, str]] = []
    for i, a in enumerate(raw):
        for flag, kind in (("-var", "var"), ("-var-file", "var-file")):
            if a == flag and i + 1 < len(raw):
                items.append((kind, raw[i + 1]))
            elif a.startswith(flag + "="):
                items.append((kind, a[len(flag) + 1:]))
    try:
        overrides = merge_cli_variables(items)
        template = parse_template(args.template, var_overrides=overrides, syntax_only=args.syntax_only)
    except TemplateError as e:
        print(f"Template validation failed. Errors are shown below.\n\n{e}", file=sys.stderr)
        return 1
    print(json.dumps(template.to_dict(), indent=2))
    for w in template.warnings:
        print(f"Warning: {template.mask(w)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
