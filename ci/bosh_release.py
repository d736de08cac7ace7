"""The BOSH release of the CPI (``release/``): build its tarball and render its job templates.

Tarball layout (what ``bosh create-release --tarball`` writes and the director uploads)::

    release.MF                  name, version, commit_hash, uncommitted_changes, jobs[], packages[]
    jobs/<job>.tgz              ./job.MF (the job spec), ./monit, ./templates/...
    packages/<package>.tgz      ./packaging and the files the package spec lists

Each job and package entry in ``release.MF`` carries ``name``, ``version`` = ``fingerprint`` (a SHA-1 over the
sorted relative paths, modes and content digests of its files, so identical content gives the same version) and
``sha1`` of its ``.tgz``; packages also list ``dependencies``.

Rendering follows the director: the properties a template sees are exactly those the job spec declares, each taken
from the manifest (dotted names looked up in nested mappings) or the spec's default; templates are rendered by real
Ruby ERB through ``ci/erb_render.rb`` (``p``, ``if_p``, ``spec``).

``python -m ci.bosh_release create|render ...`` is the command line the CI tasks use.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

RENDERER = Path(__file__).with_name("erb_render.rb")
RELEASE_DIR = Path(__file__).resolve().parent.parent / "release"


class ReleaseError(Exception):
    """The release cannot be built or rendered (the message names the file or property)."""


# -- specs and properties ----------------------------------------------------------------------------------------------


def load_spec(path: Path) -> dict[str, Any]:
    """A job or package spec (YAML mapping); ReleaseError names the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ReleaseError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data.get("name"):
        raise ReleaseError(f"{path}: a spec must be a mapping with a name")
    return data


def _lookup(properties: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = properties
    if dotted in properties:  # a manifest may also use the flat dotted name
        return True, properties[dotted]
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def job_properties(spec: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The nested properties a job's templates see: every declared property with its manifest value or default."""
    result: dict[str, Any] = {}
    for name, declaration in (spec.get("properties") or {}).items():
        found, value = _lookup(manifest, name)
        if not found:
            if not isinstance(declaration, Mapping) or "default" not in declaration:
                continue
            value = declaration["default"]
        node = result
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def render_job(
    job_dir: Path,
    manifest_properties: Mapping[str, Any],
    out_dir: Path,
    *,
    spec_context: Mapping[str, Any] | None = None,
    ruby: str = "ruby",
) -> list[Path]:
    """Render every template of the job at ``job_dir`` (a release's ``jobs/<name>`` or an extracted job tarball
    with ``job.MF``) into ``out_dir``; ``bin/*`` become executable. All templates render before anything is
    written to ``out_dir``. Returns the written paths; ReleaseError carries the renderer's message."""
    spec_path = job_dir / "spec" if (job_dir / "spec").is_file() else job_dir / "job.MF"
    spec = load_spec(spec_path)
    properties = job_properties(spec, manifest_properties)
    context = {
        "properties": properties,
        "spec": {
            "name": spec["name"],
            "job": {"name": spec["name"]},
            "index": 0,
            "id": "00000000-0000-0000-0000-000000000000",
            "az": "z1",
            "deployment": "stemforge",
            "bootstrap": True,
            "address": "127.0.0.1",
            "ip": "127.0.0.1",
            "networks": {},
            **(spec_context or {}),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".render-", dir=out_dir) as staging_name:
        staging = Path(staging_name)
        context_path = staging / "context.json"
        context_path.write_text(json.dumps(context), encoding="utf-8")
        rendered: list[tuple[Path, str]] = []
        for source, destination in (spec.get("templates") or {}).items():
            target = staging / "out" / destination
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run(
                    [ruby, str(RENDERER), str(context_path), str(job_dir / "templates" / source), str(target)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            except OSError as exc:
                raise ReleaseError(f"cannot run {ruby}: {exc.strerror or exc} (apt-get install ruby)") from None
            if proc.returncode != 0:
                raise ReleaseError(f"job {spec['name']}: {proc.stderr.strip() or f'ruby exited {proc.returncode}'}")
            rendered.append((target, str(destination)))
        written = []
        for target, destination in rendered:
            final = out_dir / destination
            final.parent.mkdir(parents=True, exist_ok=True)
            if destination.startswith("bin/"):
                target.chmod(0o755)
            os.replace(target, final)
            written.append(final)
    return written


# -- the tarball -------------------------------------------------------------------------------------------------------


def fingerprint(files: Sequence[tuple[str, bytes, int]]) -> str:
    """SHA-1 over ``(relative path, mode, SHA-1 of content)`` of each file, in path order."""
    digest = hashlib.sha1(usedforsecurity=False)
    for name, content, mode in sorted(files):
        digest.update(f"{name}\0{mode:o}\0{hashlib.sha1(content, usedforsecurity=False).hexdigest()}\n".encode())
    return digest.hexdigest()


def _tgz(files: Sequence[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, content, mode in sorted(files):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            info.mode = mode
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _read(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644


def _job_files(job_dir: Path) -> tuple[dict[str, Any], list[tuple[str, bytes, int]]]:
    spec = load_spec(job_dir / "spec")
    files: list[tuple[str, bytes, int]] = [("job.MF", (job_dir / "spec").read_bytes(), 0o644)]
    monit = job_dir / "monit"
    files.append(("monit", monit.read_bytes() if monit.is_file() else b"", 0o644))
    for source in spec.get("templates") or {}:
        path = job_dir / "templates" / source
        if not path.is_file():
            raise ReleaseError(f"job {spec['name']}: template {source} is missing ({path})")
        content, mode = _read(path)
        files.append((f"templates/{source}", content, mode))
    return spec, files


def _package_files(package_dir: Path, blobs: Mapping[str, Path]) -> tuple[dict[str, Any], list[tuple[str, bytes, int]]]:
    spec = load_spec(package_dir / "spec")
    packaging = package_dir / "packaging"
    if not packaging.is_file():
        raise ReleaseError(f"package {spec['name']}: {packaging} is missing")
    files: list[tuple[str, bytes, int]] = [("packaging", packaging.read_bytes(), 0o755)]
    for pattern in spec.get("files") or []:
        matched = sorted(name for name in blobs if fnmatch.fnmatchcase(name, pattern))
        if not matched:  # as bosh create-release: every glob of a package spec must match a file
            raise ReleaseError(f"package {spec['name']}: no file given for '{pattern}'")
        for name in matched:
            content, mode = _read(blobs[name])
            files.append((name, content, mode))
    return spec, files


def create_release(
    release_dir: Path,
    version: str,
    blobs: Mapping[str, Path],
    out: Path,
    *,
    commit_hash: str = "unknown",
    uncommitted_changes: bool = False,
) -> dict[str, Any]:
    """Write the release tarball to ``out`` (atomically) and return its ``release.MF``. ``blobs`` maps each package
    file's path inside the package (``stemforge/stemforge-1.0-py3-none-any.whl``) to the file on disk."""
    final = load_spec(release_dir / "config" / "final.yml")
    manifest: dict[str, Any] = {
        "name": final["name"],
        "version": version,
        "commit_hash": commit_hash[:8] if commit_hash != "unknown" else commit_hash,
        "uncommitted_changes": uncommitted_changes,
        "jobs": [],
        "packages": [],
    }
    members: list[tuple[str, bytes]] = []
    for job_dir in sorted(p for p in (release_dir / "jobs").iterdir() if p.is_dir()):
        spec, files = _job_files(job_dir)
        data = _tgz(files)
        fp = fingerprint(files)
        manifest["jobs"].append(
            {
                "name": spec["name"],
                "version": fp,
                "fingerprint": fp,
                "sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                "packages": list(spec.get("packages") or []),
            }
        )
        members.append((f"jobs/{spec['name']}.tgz", data))
    for package_dir in sorted(p for p in (release_dir / "packages").iterdir() if p.is_dir()):
        spec, files = _package_files(package_dir, blobs)
        data = _tgz(files)
        fp = fingerprint(files)
        manifest["packages"].append(
            {
                "name": spec["name"],
                "version": fp,
                "fingerprint": fp,
                "sha1": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                "dependencies": list(spec.get("dependencies") or []),
            }
        )
        members.append((f"packages/{spec['name']}.tgz", data))
    members.insert(0, ("release.MF", yaml.safe_dump(manifest, sort_keys=False).encode()))
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(temporary, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
            for name, content in members:
                info = tarfile.TarInfo(f"./{name}")
                info.size = len(content)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(content))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return manifest


def read_release(tarball: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(release.MF, {member name: content})`` of a release tarball; ReleaseError when it is not one."""
    try:
        with tarfile.open(tarball, mode="r:gz") as archive:
            contents: dict[str, bytes] = {}
            for member in archive.getmembers():
                if member.isfile():
                    handle = archive.extractfile(member)
                    assert handle is not None
                    contents[member.name.removeprefix("./")] = handle.read()
    except (OSError, tarfile.TarError) as exc:
        raise ReleaseError(f"{tarball}: not a release tarball: {exc}") from None
    if "release.MF" not in contents:
        raise ReleaseError(f"{tarball}: release.MF is missing")
    return yaml.safe_load(contents["release.MF"]), contents


def extract_job(tarball: Path, job: str, dest: Path) -> Path:
    """Extract ``jobs/<job>.tgz`` of a release tarball into ``dest``, checking its SHA-1 against release.MF."""
    manifest, contents = read_release(tarball)
    entry = next((j for j in manifest.get("jobs") or [] if j.get("name") == job), None)
    data = contents.get(f"jobs/{job}.tgz")
    if entry is None or data is None:
        raise ReleaseError(f"{tarball}: no job {job}")
    if hashlib.sha1(data, usedforsecurity=False).hexdigest() != entry.get("sha1"):
        raise ReleaseError(f"{tarball}: jobs/{job}.tgz does not match its sha1 in release.MF")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        archive.extractall(dest, filter="data")
    return dest


# -- command line ------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.bosh_release", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write the release tarball")
    create.add_argument("--release-dir", type=Path, default=RELEASE_DIR)
    create.add_argument("--version", required=True)
    create.add_argument("--blob", action="append", default=[], metavar="PATH_IN_PACKAGE=FILE")
    create.add_argument("--commit-hash", default="unknown")
    create.add_argument("--uncommitted-changes", action="store_true")
    create.add_argument("--out", type=Path, required=True)
    render = commands.add_parser("render", help="render a job of a release tarball (or of release/)")
    render.add_argument("--release", type=Path, default=None, help="release tarball (default: the release/ tree)")
    render.add_argument("--job", default="stemforge_cpi")
    render.add_argument("--properties", type=Path, required=True, help="YAML/JSON manifest properties of the job")
    render.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            blobs: dict[str, Path] = {}
            for item in args.blob:
                name, sep, path = item.partition("=")
                if not sep:
                    raise ReleaseError(f"--blob {item!r}: expected PATH_IN_PACKAGE=FILE")
                blobs[name] = Path(path)
            manifest = create_release(
                args.release_dir,
                args.version,
                blobs,
                args.out,
                commit_hash=args.commit_hash,
                uncommitted_changes=args.uncommitted_changes,
            )
            print(
                f"{args.out}: {manifest['name']}/{manifest['version']}, jobs "
                f"{', '.join(j['name'] for j in manifest['jobs'])}, packages "
                f"{', '.join(p['name'] for p in manifest['packages'])}"
            )
        else:
            properties = yaml.safe_load(args.properties.read_text(encoding="utf-8")) or {}
            if args.release is not None:
                with tempfile.TemporaryDirectory(prefix="job-") as tmp:
                    job_dir = extract_job(args.release, args.job, Path(tmp))
                    written = render_job(job_dir, properties, args.out)
            else:
                written = render_job(RELEASE_DIR / "jobs" / args.job, properties, args.out)
            for path in written:
                print(path)
    except (ReleaseError, OSError) as exc:
        print(f"bosh_release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
