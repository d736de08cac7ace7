"""Resources in a local run: where a ``get`` comes from and what a ``put`` does (see :mod:`ci.runner`).

Recorded versions live under ``<work>/resources/<resource>/``: ``versions/<id>/`` (the files), ``current`` (a symlink
to the latest) and ``passed.json`` (``{version id: [jobs whose build succeeded with it]}``), which is what a get's
``passed:`` constraint is checked against. Directories given with ``--inputs`` win and skip the constraint (like
``fly execute -i``). A ``git`` get is the repository's working tree; its version is the HEAD commit.
"""

from __future__ import annotations

import datetime
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ci.build import Build, Context, StepErrored

#: Resource types whose put runs the real Terraform module (ljfranklin/terraform-resource's interface).
TERRAFORM_TYPES = ("terraform",)
SEMVER_RE = r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$"


# -- versions ----------------------------------------------------------------------------------------------------------


def _store(build: Build, resource: str) -> Path:
    return build.resource_store(resource)


def _passed(build: Build, resource: str) -> dict[str, list[str]]:
    try:
        data = json.loads((_store(build, resource) / "passed.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_passed(build: Build, resource: str, version: str) -> None:
    """Mark ``version`` of ``resource`` as having passed this build's job (called when the build succeeded, for
    every version the build got or put)."""
    store = _store(build, resource)
    store.mkdir(parents=True, exist_ok=True)
    data = _passed(build, resource)
    jobs = set(data.get(version, []))
    jobs.add(build.job_name)
    data[version] = sorted(jobs)
    temporary = store / f".passed.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, store / "passed.json")


def _check_passed(build: Build, step: str, resource: str, version: str, passed: list[str]) -> None:
    if not passed:
        return
    jobs = set(_passed(build, resource).get(version, []))
    required = [j for j in (str(p) for p in passed) if not any(fnmatch.fnmatchcase(done, j) for done in jobs)]
    if required:
        raise StepErrored(
            f"get {step}: version {version} of '{resource}' has not passed {', '.join(required)} "
            "(run those jobs first, or give the input with --inputs)"
        )


def git_version(tree: Path) -> str:
    """HEAD of the git work tree (``unknown`` outside git)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _digest_tree(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _commit_version(build: Build, resource: str, staged: Path, meta: Mapping[str, Any]) -> Path:
    """Move a staged directory into the store as a new version (atomic ``current`` switch); returns its path."""
    store = _store(build, resource)
    version = _digest_tree(staged)
    (staged / ".version.json").write_text(
        json.dumps({"version": version, "job": build.job_name, "build": build.number, **meta}, indent=1),
        encoding="utf-8",
    )
    target = store / "versions" / version
    if target.exists():
        shutil.rmtree(staged)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    link = store / f".current.{os.getpid()}"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(Path("versions") / version)
    os.replace(link, store / "current")
    return target


def _current(build: Build, resource: str) -> tuple[Path, str] | None:
    current = _store(build, resource) / "current"
    if not current.exists():
        return None
    path = current.resolve()
    try:
        version = json.loads((path / ".version.json").read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        version = path.name
    return path, str(version)


# -- get ---------------------------------------------------------------------------------------------------------------


def get(build: Build, name: str, config: Mapping[str, Any], ctx: Context) -> tuple[Path, str]:
    """Resolve a get step to a directory; returns ``(path, description)``. StepErrored says what is missing."""
    resource_name = str(config.get("resource") or name)
    given = build.options.inputs / name if build.options.inputs is not None else None
    if given is not None and given.is_dir():
        return given.absolute(), f"from --inputs {given}"
    resource = build.resource(resource_name)
    kind = str(resource.get("type"))
    passed = list(config.get("passed") or [])
    if kind == "git":
        version = git_version(build.git_dir)
        _check_passed(build, name, resource_name, version, passed)
        build.gotten.append((resource_name, version))
        return build.git_dir, f"working tree {build.git_dir} (HEAD {version[:12]})"
    if kind == "time":
        directory = build.new_dir("artifacts", name)
        now = datetime.datetime.now(datetime.UTC).isoformat()
        (directory / "input").write_text(json.dumps({"time": now}), encoding="utf-8")
        return directory, f"time {now}"
    if kind == "semver":
        return _get_semver(build, name, resource_name, resource, config)
    found = _current(build, resource_name)
    if found is None:
        raise StepErrored(
            f"get {name}: no version of resource '{resource_name}' yet: run a job that puts it first, or pass "
            f"--inputs DIR with DIR/{name}"
        )
    path, version = found
    _check_passed(build, name, resource_name, version, passed)
    build.gotten.append((resource_name, version))
    return path, f"version {version} of {resource_name}"


def _bump(version: str, params: Mapping[str, Any]) -> str:
    match = re.match(SEMVER_RE, version)
    if match is None:
        raise StepErrored(f"semver: '{version}' is not a semantic version")
    major, minor, patch = (int(match.group(i)) for i in (1, 2, 3))
    pre = match.group(4)
    bump = params.get("bump")
    if bump == "major":
        major, minor, patch, pre = major + 1, 0, 0, None
    elif bump == "minor":
        minor, patch, pre = minor + 1, 0, None
    elif bump == "patch":
        patch, pre = patch + 1, None
    elif bump == "final":
        pre = None
    elif bump is not None:
        raise StepErrored(f"semver: unknown bump '{bump}' (major, minor, patch or final)")
    if params.get("pre"):
        label = str(params["pre"])
        number = 1
        if pre and pre.startswith(label + "."):
            tail = pre[len(label) + 1 :]
            number = int(tail) + 1 if tail.isdigit() else 1
        pre = f"{label}.{number}"
    return f"{major}.{minor}.{patch}" + (f"-{pre}" if pre else "")


def _get_semver(
    build: Build, name: str, resource_name: str, resource: Mapping[str, Any], config: Mapping[str, Any]
) -> tuple[Path, str]:
    found = _current(build, resource_name)
    if found is not None:
        version = (found[0] / "version").read_text(encoding="utf-8").strip()
        _check_passed(build, name, resource_name, found[1], list(config.get("passed") or []))
        build.gotten.append((resource_name, found[1]))
    else:
        version = str((resource.get("source") or {}).get("initial_version") or "0.0.0")
    version = _bump(version, config.get("params") or {})
    directory = build.new_dir("artifacts", name)
    (directory / "version").write_text(version + "\n", encoding="utf-8")
    (directory / "number").write_text(version + "\n", encoding="utf-8")
    return directory, f"version {version}"


# -- put ---------------------------------------------------------------------------------------------------------------


def put(build: Build, name: str, config: Mapping[str, Any], ctx: Context) -> tuple[Path | None, str]:
    """Run a put; returns the implicit get's directory (None when there is none) and a description."""
    resource_name = str(config.get("resource") or name)
    resource = build.resource(resource_name)
    kind = str(resource.get("type"))
    params = dict(config.get("params") or {})
    if kind in TERRAFORM_TYPES:
        return _put_terraform(build, name, resource_name, resource, params, ctx)
    if kind == "semver":
        staged = _stage(build, resource_name)
        if params.get("file"):
            source = build.resolve_path(str(params["file"]), what=f"put {name}")
            try:
                version = source.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise StepErrored(f"put {name}: cannot read {params['file']}: {exc.strerror}") from None
            version = _bump(version, params)
        else:
            current = _current(build, resource_name)
            start = (
                (current[0] / "version").read_text(encoding="utf-8").strip()
                if current
                else str((resource.get("source") or {}).get("initial_version") or "0.0.0")
            )
            version = _bump(start, params)
        (staged / "version").write_text(version + "\n", encoding="utf-8")
        (staged / "number").write_text(version + "\n", encoding="utf-8")
        path = _commit_version(build, resource_name, staged, {"semver": version})
        build.gotten.append((resource_name, path.name))  # a build's outputs have passed its job, as in Concourse
        return path, f"version {version}"
    if kind == "time":
        return None, "nothing to do for a time resource"
    if kind == "git":
        raise StepErrored(f"put {name}: local runs do not push to git resources")
    patterns = [params["file"]] if params.get("file") else list(params.get("globs") or [])
    if not patterns:
        raise StepErrored(f"put {name}: params.file (or params.globs) must name the files to record for '{kind}'")
    staged = _stage(build, resource_name)
    count = 0
    for pattern in patterns:
        base = build.resolve_path(str(pattern), what=f"put {name}")
        matches = sorted(glob.glob(str(base)))
        if not matches:
            shutil.rmtree(staged, ignore_errors=True)
            raise StepErrored(f"put {name}: no file matches '{pattern}'")
        for match in matches:
            shutil.copy2(match, staged / os.path.basename(match))
            count += 1
    path = _commit_version(build, resource_name, staged, {"files": sorted(os.listdir(staged))})
    build.gotten.append((resource_name, path.name))
    return path, f"recorded {count} file(s) as version {path.name} of {resource_name}"


def _stage(build: Build, resource: str) -> Path:
    store = _store(build, resource)
    store.mkdir(parents=True, exist_ok=True)
    staged = store / f".staging-{os.getpid()}-{build.number}-{id(build)}"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir()
    return staged


# -- terraform ---------------------------------------------------------------------------------------------------------


#: Terraform vars a put passes to ``stemforge env up`` (the environment's module is terraform/aws of the tree).
ENV_UP_VARS = {"region": "--region", "endpoint": "--endpoint", "availability_zone": "--availability-zone"}


def env_command(action: str, env_name: str, root: Path, variables: Mapping[str, Any]) -> list[str]:
    """The ``stemforge env up|down|metadata NAME --root ROOT`` command line of a terraform put."""
    argv = [sys.executable, "-m", "stemforge.cli", "env", action, env_name, "--root", str(root)]
    if action == "up":
        for key, value in sorted(variables.items()):
            if key == "load_balancers":  # the module's ALB (the e2e extras); on unless turned off
                if str(value).lower() in ("false", "0", "no"):
                    argv.append("--no-load-balancers")
            elif key in ENV_UP_VARS and value not in (None, ""):
                argv += [ENV_UP_VARS[key], str(value)]
            elif key not in ENV_UP_VARS and key != "env_name":
                known = ", ".join([*ENV_UP_VARS, "load_balancers"])
                raise StepErrored(f"terraform var '{key}' is not one stemforge env up takes ({known})")
    return argv


def _put_terraform(
    build: Build,
    name: str,
    resource_name: str,
    resource: Mapping[str, Any],
    params: dict[str, Any],
    ctx: Context,
) -> tuple[Path | None, str]:
    """ljfranklin/terraform-resource's put: ``env_name`` (or ``env_name_file``), ``terraform_source``, ``vars``,
    ``action: destroy``, ``delete_on_failure``; credentials come from ``source.env``. The implicit get holds
    ``metadata`` (the flat outputs JSON) and ``name``."""
    source = dict(resource.get("source") or {})
    env_name = params.get("env_name")
    if not env_name and params.get("env_name_file"):
        env_name = build.resolve_path(str(params["env_name_file"]), what=f"put {name}").read_text().strip()
    if not env_name:
        raise StepErrored(f"put {name}: params.env_name (or env_name_file) is required for a terraform put")
    action = "down" if params.get("action") == "destroy" else "up"
    module_ref = params.get("terraform_source") or source.get("terraform_source")
    if not module_ref:
        raise StepErrored(f"put {name}: params.terraform_source names the Terraform module (e.g. src/terraform/aws)")
    module = build.resolve_path(str(module_ref), what=f"put {name}")
    if not any(module.glob("*.tf")):
        raise StepErrored(f"put {name}: terraform_source {module_ref} holds no *.tf files")
    variables = dict(source.get("vars") or {})
    variables.update(params.get("vars") or {})
    root = _store(build, resource_name) / "envs"
    root.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ)
    for key, value in (source.get("env") or {}).items():
        environment[str(key)] = value if isinstance(value, str) else json.dumps(value)
    label = f"put {name}"
    argv = env_command(action, str(env_name), root, variables)
    status = build.run_process(argv, cwd=build.dir, env=environment, ctx=ctx, label=label, prefix="  ")
    if status != 0:
        if action == "up" and params.get("delete_on_failure"):
            build.say(f"put {name}: env up failed; delete_on_failure: destroying {env_name}")
            down = env_command("down", str(env_name), root, {})
            build.run_process(down, cwd=build.dir, env=environment, ctx=ctx, label=label, prefix="  ")
        raise StepErrored(f"put {name}: stemforge env {action} {env_name} exited {status}")
    if action == "down":
        return None, f"environment {env_name} destroyed"
    output = build.new_dir("artifacts", name)
    proc = subprocess.run(
        env_command("metadata", str(env_name), root, {}),
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise StepErrored(f"put {name}: stemforge env metadata {env_name}: {proc.stderr.strip()[-500:]}")
    (output / "metadata").write_text(proc.stdout, encoding="utf-8")
    (output / "name").write_text(str(env_name) + "\n", encoding="utf-8")
    return output, f"environment {env_name} up; metadata: {', '.join(sorted(json.loads(proc.stdout)))}"
