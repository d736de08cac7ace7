"""Packaging by role (issue 14, item 6): the core install (the CPI protocol and stemcells) plus one provider's extra.

A virtual environment holding the core plus the ``libvirt`` extra only, made the way the BOSH release makes it: the
working tree built into a wheel (``pip wheel --no-deps``), the wheels of ``stemforge[libvirt]`` collected with pip
(pinned to this interpreter's versions, so they come from pip's caches and local wheel directories), then the
release's own ``packages/stemforge/packaging`` script run on that compile directory (``--no-index``: nothing but
those wheels). No ``--system-site-packages``: the venv sees only what was installed into it. In it:

* the installed distributions are exactly the core and libvirt ones (no boto3, paramiko, sushy, python-hcl2 ...);
* importing ``cpi``, ``cpi.main`` and ``cpi.providers.libvirt`` pulls no module of builders, ci, terraform or boto3
  (checked in a subprocess, in that venv and in the development venv, where those are installed and could leak);
* ``stemforge cpi wrapper`` (the README's path) turns a YAML config into the job's JSON config, and the wrapper
  answers ``info`` and runs create_stemcell / create_vm / has_vm / delete_vm / delete_stemcell on real libvirt;
* what needs another extra says which one: the aws and baremetal providers (through the CPI and the wrapper), the
  ``stemforge build`` command, a builder plugin through ``builders.registry``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpi.wrapper import command
from stemforge_base.cpi_client import DIRECTOR_ENV
from tests.harness.libvirt import USER_NET, libvirt_unavailable_reason, session_cpi

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "release" / "packages" / "stemforge" / "packaging"
FIRST_PARTY = ("cpi", "builders", "stemcells", "stemforge", "terraform", "ci")
#: Distributions the core + libvirt install must have, and ones of other roles it must not.
EXPECTED = {"stemforge", "jsonschema", "pyyaml", "pycdlib", "libvirt-python", "tenacity"}
OTHER_ROLES = {"boto3", "botocore", "paramiko", "sushy", "pyghmi", "python-terraform", "python-hcl2", "lark",
               "cryptography", "bcrypt", "requests", "moto", "pytest"}
#: Top-level modules importing the CPI must not load.
NOT_ON_THE_CPI_PATH = ("builders", "ci", "terraform", "boto3", "botocore")
TIMEOUT = 300


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs)
    assert proc.returncode == 0, (
        f"{shlex.join(argv)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def packaged() -> list[str]:
    """The top-level packages the wheel holds: directories matching ``[tool.setuptools.packages.find] include``."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    found = sorted(d.name for d in REPO.iterdir() if (d / "__init__.py").is_file()
                   and any(fnmatch.fnmatchcase(d.name, pattern) for pattern in patterns))
    assert set(FIRST_PARTY) <= set(found), found
    return found


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of the package's ``libvirt`` venv (core + libvirt extra), built as described above."""
    work = tmp_path_factory.mktemp("roles")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in packaged():  # a copy: building in place would write build/ and egg-info into the shared tree
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(work / "dist"), str(src)])
    (wheel,) = (work / "dist").glob("stemforge-*.whl")
    constraints = work / "constraints.txt"
    constraints.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in importlib.metadata.distributions()
                                   if d.metadata["Name"] and d.metadata["Name"].lower() != "stemforge"))
    compile_dir = work / "compile"
    wheels = compile_dir / "stemforge" / "wheels"
    run([*pip, "wheel", "-q", "--wheel-dir", str(wheels), "-c", str(constraints), f"{wheel}[libvirt]"])
    (wheels / wheel.name).unlink()  # as build-candidate.sh: the stemforge wheel beside wheels/, not in it
    shutil.copy2(wheel, compile_dir / "stemforge" / wheel.name)
    target = work / "package"
    run(["bash", "-e", str(PACKAGING)], cwd=compile_dir,
        env={"PATH": DIRECTOR_ENV["PATH"], "HOME": str(work), "BOSH_INSTALL_TARGET": str(target),
             "STEMFORGE_PACKAGE_PROVIDERS": "libvirt"})
    assert sorted(p.name for p in target.iterdir()) == ["libvirt"]
    return target / "libvirt" / "bin"


def loaded_modules(python: str, imports: str) -> set[str]:
    """Top-level names in ``sys.modules`` after ``python -I -c 'import <imports>'`` under the director's env."""
    code = f"import sys, json\nimport {imports}\nprint(json.dumps(sorted(sys.modules)))"
    proc = run([python, "-I", "-c", code], env=DIRECTOR_ENV, cwd="/")
    return {name.partition(".")[0] for name in json.loads(proc.stdout)}


def test_core_venv_holds_the_core_and_libvirt_extra_only(core_venv: Path) -> None:
    proc = run([str(core_venv / "python"), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    installed = {entry["name"].lower() for entry in json.loads(proc.stdout)}
    assert installed >= EXPECTED, sorted(EXPECTED - installed)
    assert not installed & OTHER_ROLES, sorted(installed & OTHER_ROLES)
    assert (core_venv.parent / "pyvenv.cfg").read_text().count("include-system-site-packages = false") == 1


@pytest.mark.parametrize("where", ["core venv", "development venv"])
def test_importing_the_cpi_pulls_no_other_role(core_venv: Path, where: str) -> None:
    python = str(core_venv / "python") if where == "core venv" else sys.executable
    modules = loaded_modules(python, "cpi, cpi.main, cpi.dispatcher, cpi.providers.libvirt, "
                                     "cpi.providers.libvirt.provider")
    assert "cpi" in modules and "libvirt" in modules
    leaked = sorted(set(NOT_ON_THE_CPI_PATH) & modules)
    assert not leaked, f"{where}: importing the CPI loaded {leaked}"


def test_missing_extras_are_named(core_venv: Path, tmp_path: Path) -> None:
    python, stemforge, cpi = (str(core_venv / name) for name in ("python", "stemforge", "stemforge-cpi"))
    request = json.dumps({"method": "has_vm", "arguments": ["vm-1"], "context": {"director_uuid": "roles"}})
    for plugin, extra, section in (("aws", "aws", {"region": "us-east-1"}), ("baremetal", "metal", {})):
        config = tmp_path / f"{plugin}.yml"
        config.write_text(yaml.safe_dump({"cloud": {"plugin": plugin, "properties": {
            "state_dir": str(tmp_path / "state"), plugin: section}}}))
        hint = f"pip install 'stemforge[{extra}]'"
        # through the CPI: a CloudError naming the extra, one JSON response, exit 0
        proc = run([cpi, str(config)], input=request, env=DIRECTOR_ENV)
        error = json.loads(proc.stdout)["error"]
        assert error["type"] == "Bosh::Clouds::CloudError"
        assert f"the {plugin} provider needs `{hint}`" in error["message"]
        # the wrapper refuses to write bin/cpi for an interpreter without the provider
        proc = subprocess.run([stemforge, "cpi", "wrapper", "--config", str(config), "--out", str(tmp_path / plugin)],
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert proc.returncode == 1 and hint in proc.stderr, proc.stderr
        assert not (tmp_path / plugin / "bin" / "cpi").exists() and not (tmp_path / plugin / "config").exists()
    # a command of another role is listed and says what to install
    for argv in (["build", "template.json"], ["build", "-var", "a=b", "-only=qemu.x", "template.pkr.hcl"]):
        proc = subprocess.run([stemforge, *argv], capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 2 and "`stemforge build` needs `pip install 'stemforge[build]'`" in proc.stderr
        assert "unrecognized arguments" not in proc.stderr, proc.stderr
    # a builder plugin whose module needs the build extra (the ssh communicator: paramiko)
    proc = run([python, "-I", "-c", "from builders.registry import load_communicator\ntry:\n"
                "    load_communicator('ssh')\nexcept Exception as exc:\n    print(exc)"], cwd="/")
    assert "the communicator 'ssh' needs `pip install 'stemforge[build]'`" in proc.stdout


def test_core_venv_answers_info_and_runs_the_libvirt_lifecycle(
    core_venv: Path, stemcell_image: tuple[Path, dict[str, Any]]
) -> None:
    reason = libvirt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    image, cloud_properties = stemcell_image
    with session_cpi("roles") as cpi:
        # the README's path, with the core venv's own `stemforge`: a YAML config, validated once, written as JSON
        config = cpi.root / "cpi.yml"
        config.write_text(yaml.safe_dump(json.loads(cpi.config_path.read_text())))
        job = cpi.root / "job-core"
        proc = run([str(core_venv / "stemforge"), "cpi", "wrapper", "--config", str(config), "--out", str(job)])
        cpi.wrapper = Path(proc.stdout.strip())
        argv = command(cpi.wrapper)
        assert argv[:2] == [str(core_venv / "python"), "-IS"]  # isolated, site's sys.path baked in
        assert argv[-2:] == ["--config", str(job / "config" / "cpi.json")]
        assert json.loads((job / "config" / "cpi.json").read_text()) == json.loads(cpi.config_path.read_text())

        info = cpi.ok("info", api_version=None)
        assert info["stemcell_formats"][0] == "libvirt-qcow2"
        stemcell_cid = cpi.ok("create_stemcell", str(image), cloud_properties, api_version=3)
        vm_cid = None
        try:
            vm_cid, _ = cpi.ok("create_vm", "agent-roles", stemcell_cid, {"ram": 128, "cpu": 1},
                               {"n": {"type": "dynamic", **USER_NET}}, [], {})
            assert cpi.ok("has_vm", vm_cid) is True
            assert len(cpi.our_domains()) == 1
        finally:
            if vm_cid is not None:
                cpi.ok("delete_vm", vm_cid)
            cpi.ok("delete_stemcell", stemcell_cid)
        assert cpi.ok("has_vm", vm_cid) is False
        assert cpi.our_domains() == [] and cpi.volumes() == []
