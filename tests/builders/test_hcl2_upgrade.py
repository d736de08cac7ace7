"""``stemforge hcl2_upgrade``: the HCL2 twin of each of the project's own JSON test templates yields the same
build model (every build's config, provisioners and post-processor chains, rendered as the runner renders them),
and a twin built with the ``file`` builder writes the same artifacts and checksums as its JSON original."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builders.template import Template, parse_template
from builders.template.hcl2 import load_hcl2
from builders.template.hcl2.upgrade import upgrade

TEMPLATES = Path(__file__).parents[1] / "templates"
VARS: dict[str, dict[str, str]] = {
    "cloud-image-cidata.json": {"ssh_password": "pw-1234"},
    "release-tested-plans.json": {"cpi_config": "cpi.json", "image": "base.qcow2", "out": "out"},
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _render(t: Template, value: Any, build: str, build_type: str) -> Any:
    rendered = t.render(value, build_name=build, build_type=build_type)
    return json.loads(_UUID.sub("<uuid>", json.dumps(rendered)))


def _model(t: Template) -> list[dict[str, Any]]:
    """Each build as the runner sees it: rendered builder config, provisioners, post-processor chains."""
    builds = []
    for b in t.builders:
        provs = [{"type": p.type, "config": _render(t, p.config_for(b.name), b.name, b.type),
                  "pause_before": p.pause_before, "max_retries": p.max_retries, "timeout": p.timeout}
                 for p in t.provisioners_for(b.name)]
        chains = [[{"type": pp.type, "name": pp.name, "keep": pp.keep_input_artifact,
                    "config": _render(t, pp.config, b.name, b.type)} for pp in chain]
                  for chain in t.post_processor_chains_for(b.name)]
        cleanup = t.error_cleanup_provisioner
        builds.append({"type": b.type, "config": _render(t, b.config, b.name, b.type), "provisioners": provs,
                       "post_processors": chains,
                       "cleanup": None if cleanup is None or not cleanup.applies_to(b.name)
                       else _render(t, cleanup.config_for(b.name), b.name, b.type)})
    return builds


@pytest.mark.parametrize("name", sorted(p.name for p in TEMPLATES.glob("*.json")))
def test_twin_has_the_same_build_model(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMFORGE_TEST_TOKEN", "tok-from-env-99")
    source = TEMPLATES / name
    twin = source.with_name(f".{name}.twin.pkr.hcl")  # beside the original: template_dir is the same
    twin.write_text(upgrade(source))
    try:
        variables = VARS.get(name, {})
        j = parse_template(source, var_overrides=variables)
        h = load_hcl2(twin, var_sources=[("var", f"{k}={v}") for k, v in variables.items()])
    finally:
        twin.unlink()
    h.run_timestamp, h.run_time, h.run_uuid = j.run_timestamp, j.run_time, j.run_uuid
    assert _model(h) == _model(j)
    assert [b.name for b in h.builders] == [b.name for b in j.builders]
    # sensitive values stay masked in the twin
    for secret in (j.variables[n] for n in j.sensitive_variables if j.variables.get(n)):
        assert secret not in json.dumps(h.to_dict())


def test_cli_twin_builds_the_same_artifacts(tmp_path: Path) -> None:
    original = tmp_path / "files.json"
    original.write_text(json.dumps({
        "variables": {"greeting": "hello", "who": "world", "line": "{{user `greeting`}}, {{user `who`}}!"},
        "builders": [
            {"type": "file", "name": "one", "content": "{{user `line`}} from {{build_name}}",
             "target": "out-{{user `who`}}/{{build_name}}.txt"},
            {"type": "file", "name": "two", "content": "${NOT_HCL} %{nope} {{ upper (user `who`) }}",
             "target": "out-{{user `who`}}/{{build_name}}.txt"},
        ],
        "post-processors": [[{"type": "checksum", "checksum_types": ["sha256"],
                              "output": "sums/{{.BuildName}}.{{.ChecksumType}}"}]],
    }))
    run = [sys.executable, "-m", "stemforge.cli"]
    up = subprocess.run([*run, "hcl2_upgrade", str(original)], cwd=tmp_path, text=True, capture_output=True,
                        check=False, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"Successfully created {original}.pkr.hcl" in up.stdout
    twin = tmp_path / "files.json.pkr.hcl"
    assert 'local "line"' in twin.read_text() and '"$${NOT_HCL} %%{nope}' in twin.read_text()
    results = {}
    for label, template in (("json", original), ("hcl2", twin)):
        workdir = tmp_path / label
        workdir.mkdir()
        b = subprocess.run([*run, "build", "-var", "who=there", str(template)], cwd=workdir, text=True,
                           capture_output=True, check=False, timeout=120)
        assert b.returncode == 0, b.stdout + b.stderr
        results[label] = {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
                          if p.is_file()}
    assert results["json"] == results["hcl2"]
    assert results["json"]["out-there/one.txt"] == b"hello, there! from one"
    assert results["json"]["out-there/two.txt"] == b"${NOT_HCL} %{nope} THERE"
    assert any(k.startswith("sums/") for k in results["json"])
