"""``stemforge stemcell inspect|verify|create``: the command line over ``stemcells.tarball``.

Handlers return the exit status: 0 on success, 1 on a user-facing error (printed as ``Error: ...`` on stderr,
never a traceback) or a failed verification. Results go to stdout; progress lines for long work (packing and
hashing images) go to stderr, prefixed with the elapsed time.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stemcells.errors import StemcellError, printable
from stemcells.image_check import DEFAULT_MAX_VIRTUAL_SIZE, GiB
from stemcells.manifest import DEFAULT_API_VERSION, DEFAULT_BOSH_PROTOCOL
from stemcells.root_image import ROOT_IMAGE_NAMES
from stemcells.tarball import read_stemcell, verify_stemcell, write_stemcell
from stemcells.tario import human_size

Handler = Callable[[argparse.Namespace], int]
_DEFAULT_MAX_GIB = DEFAULT_MAX_VIRTUAL_SIZE // GiB

_CLOUD_PROPERTY_HELP = (
    "a cloud_properties entry (repeatable). Dotted keys nest: 'ami.us-east-1=ami-0abc' gives "
    "{ami: {us-east-1: ami-0abc}}. Values that are decimal integers become numbers and true/false become "
    "booleans; everything else stays a string"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``stemcell`` with its ``inspect``, ``verify`` and ``create`` actions to the ``stemforge`` CLI."""
    parser = subparsers.add_parser(
        "stemcell",
        help="inspect, verify and create BOSH stemcell tarballs",
        description="Inspect, verify and create BOSH stemcell tarballs (.tgz with stemcell.MF and image).",
    )
    actions = parser.add_subparsers(dest="stemcell_command", metavar="ACTION")
    actions.required = True

    inspect = actions.add_parser("inspect", help="show a stemcell's manifest and members")
    inspect.add_argument("path", type=Path, metavar="PATH", help="stemcell tarball (.tgz)")
    inspect.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    inspect.set_defaults(handler=_user_errors(_inspect))

    verify = actions.add_parser(
        "verify", help="check a stemcell's manifest, members, image sha1 and root image; exit 1 on failure"
    )
    verify.add_argument("path", type=Path, metavar="PATH", help="stemcell tarball (.tgz)")
    verify.add_argument("--max-virtual-gib", type=_positive_int, default=_DEFAULT_MAX_GIB, metavar="GIB",
                        help="largest virtual size of the root image (default: %(default)s)")
    verify.set_defaults(handler=_user_errors(_verify))

    create = actions.add_parser("create", help="write a heavy or light stemcell tarball")
    create.add_argument("--name", required=True, help="e.g. bosh-openstack-kvm-ubuntu-jammy-go_agent")
    create.add_argument("--version", required=True, help="stemcell version, kept exactly as given, e.g. 1.50")
    create.add_argument("--os", dest="operating_system", metavar="OS", required=True, help="e.g. ubuntu-jammy")
    create.add_argument(
        "--format",
        dest="formats",
        action="append",
        required=True,
        metavar="FORMAT",
        help="a stemcell format (repeatable), e.g. openstack-qcow2, aws-raw, aws-light",
    )
    image = create.add_mutually_exclusive_group(required=True)
    image.add_argument("--image", type=Path, metavar="ROOT_IMG", help="root disk image (raw or qcow2)")
    image.add_argument("--light", action="store_true", help="a light stemcell: empty image, ids in cloud properties")
    create.add_argument(
        "--root-image-name",
        choices=ROOT_IMAGE_NAMES,
        default=ROOT_IMAGE_NAMES[0],
        help="name of the root image inside image (default: %(default)s; disk.raw for Google)",
    )
    create.add_argument(
        "--cloud-property",
        dest="cloud_property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=_CLOUD_PROPERTY_HELP,
    )
    create.add_argument(
        "--cloud-properties", type=Path, metavar="FILE", help="YAML mapping of cloud_properties (applied first)"
    )
    create.add_argument("--packages", type=Path, metavar="FILE", help="dpkg -l output stored as packages.txt")
    create.add_argument("--dev-tools-file-list", type=Path, metavar="FILE", help="stored as dev_tools_file_list.txt")
    create.add_argument("--sbom", type=Path, action="append", default=[], metavar="FILE", help="SBOM (repeatable)")
    create.add_argument("--api-version", type=int, default=DEFAULT_API_VERSION, help="default: %(default)s")
    create.add_argument("--bosh-protocol", default=DEFAULT_BOSH_PROTOCOL, help="default: %(default)s")
    create.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("."),
        metavar="OUTDIR",
        help="directory for the conventionally named tarball, or a .tgz path (default: current directory)",
    )
    create.add_argument("--force", action="store_true", help="replace an existing tarball")
    create.add_argument("--max-virtual-gib", type=_positive_int, default=_DEFAULT_MAX_GIB, metavar="GIB",
                        help="largest virtual size of the root image (default: %(default)s)")
    create.set_defaults(handler=_user_errors(_create))


# -- handlers ------------------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    stemcell = read_stemcell(args.path)
    if args.json:
        print(json.dumps(stemcell.to_dict(), indent=2))
        return 0
    manifest = stemcell.manifest
    rows = [
        ("Path", str(stemcell.path)),
        ("Name", manifest.name),
        ("Version", manifest.version),
        ("Operating system", manifest.operating_system),
        ("Formats", ", ".join(manifest.stemcell_formats) or "(none)"),
        ("Kind", "light" if stemcell.is_light else "heavy"),
        ("API version", str(manifest.api_version)),
        ("BOSH protocol", str(manifest.bosh_protocol)),
        ("Image sha1", manifest.sha1),
    ]
    if stemcell.path.name != manifest.filename:
        rows.append(("Conventional name", manifest.filename))
    for label, value in rows:
        print(f"{label + ':':<19}{printable(value)}")
    print("Cloud properties:")
    for line in yaml.safe_dump(manifest.cloud_properties, sort_keys=False).splitlines():
        print(f"  {printable(line)}")
    print("Members:")
    names = [printable(m.name) for m in stemcell.members]  # raw bytes and escape sequences never reach the terminal
    width = max((len(name) for name in names), default=0)
    for name, member in zip(names, stemcell.members, strict=True):
        kind = "" if member.kind == "file" else f"  ({member.kind})"
        print(f"  {name:<{width}}  {human_size(member.size):>10}{kind}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = verify_stemcell(args.path, progress=_StepReporter(), max_virtual_size=args.max_virtual_gib * GiB)
    for check in report.checks:
        print(f"{'ok' if check.ok else 'FAIL':<5} {check.name}: {printable(check.detail)}")
    if report.ok:
        print(f"{args.path}: stemcell OK")
        return 0
    print(f"{args.path}: {len(report.failures)} check(s) failed", file=sys.stderr)
    return 1


def _create(args: argparse.Namespace) -> int:
    base: Mapping[str, Any] = {}
    if args.cloud_properties is not None:
        base = _load_cloud_properties_file(args.cloud_properties)
    cloud_properties = parse_cloud_properties(args.cloud_property, base)
    path = write_stemcell(
        args.output,
        name=args.name,
        version=args.version,
        operating_system=args.operating_system,
        stemcell_formats=args.formats,
        cloud_properties=cloud_properties,
        root_image=None if args.light else args.image,
        root_image_name=args.root_image_name,
        api_version=args.api_version,
        bosh_protocol=args.bosh_protocol,
        packages_txt=_read_text(args.packages, "--packages"),
        dev_tools_file_list=_read_text(args.dev_tools_file_list, "--dev-tools-file-list"),
        sbom_files=args.sbom,
        overwrite=args.force,
        progress=_StepReporter(),
        max_virtual_size=args.max_virtual_gib * GiB,
    )
    print(path)
    return 0


# -- helpers -------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,5}", text):
        raise argparse.ArgumentTypeError(f"expected a whole number of GiB from 1 to 999999, got {text!r}")
    return int(text)


def parse_cloud_properties(pairs: Sequence[str], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` pairs (dotted keys nest) on top of a copy of ``base``; see ``_CLOUD_PROPERTY_HELP``.

    Raises ``StemcellError`` for a pair without ``=``, an empty key segment, or a key that would turn a value
    into a mapping or a mapping into a value.
    """
    result: dict[str, Any] = copy.deepcopy(dict(base or {}))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = key.split(".")
        if not sep or not all(part.strip() for part in parts):
            raise StemcellError(
                f"--cloud-property {pair!r}: expected KEY=VALUE, e.g. disk=5120 or ami.us-east-1=ami-0abc"
            )
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise StemcellError(f"--cloud-property {pair!r}: {prefix} already holds a value, not a mapping")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise StemcellError(f"--cloud-property {pair!r}: {key} is a mapping; set its keys ({key}.KEY=VALUE)")
        node[parts[-1]] = _scalar(raw)
    return result


def _scalar(raw: str) -> int | bool | str:
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", raw):
        return int(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw


def _load_cloud_properties_file(path: Path) -> dict[str, Any]:
    text = _read_text(path, "--cloud-properties")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StemcellError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StemcellError(f"{path}: cloud properties must be a YAML mapping")
    return data


def _read_text(path: Path | None, option: str) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StemcellError(f"{option} {path}: cannot read: {reason}") from exc


def _user_errors(handler: Handler) -> Handler:
    """Turn ``StemcellError`` and ``OSError`` into ``Error: ...`` on stderr and exit status 1."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except StemcellError as exc:
            print(f"Error: {printable(exc.message)}", file=sys.stderr)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"Error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1

    return wrapper


class _StepReporter:
    """Progress callback: one ``[  12.3s] message`` line per step on stderr."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)
