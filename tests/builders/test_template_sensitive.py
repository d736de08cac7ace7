"""Values derived from sensitive variables are sensitive too (issue 12 item 7, templates): ``{{user `secret` |
upper}}``, ``split``, ``replace``, ``printf``, ``len`` and variables whose default references a sensitive one are
masked in build output (human and ``-machine-readable``), in the debug log and in a manifest's ``custom_data``; a file
or artifact name derived from one is refused. The taint-tracking piece (``builders.template.sensitive``) is tested on
its own so that the HCL2 front end can rely on its contract."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from builders.template import parse_template
from builders.template.functions import RenderContext, render_string
from builders.template.sensitive import (
    MIN_DERIVED_LENGTH,
    SensitiveValues,
    Tainted,
    derive,
    is_tainted,
    sensitive_name_keys,
    taint,
)
from tests.harness.builds import stemforge

SECRET = "Hunter2-Secret-Value"
#: What the template derives from SECRET; none may appear anywhere a user can read.
DERIVED = ("HUNTER2-SECRET-VALUE", "hunter2-secret-value", "Hunter2_Secret_Value", "Secret", "<<Hunter2-Secret-Value>>",
           "Hunter2+Secret+Value")


# -- the reusable piece -----------------------------------------------------------------------------------------


def test_taint_derive_record_and_mask_contract() -> None:
    values = SensitiveValues()
    values.add_literal("ab")  # a sensitive variable's own value is masked at any length
    x = taint(SECRET)
    assert isinstance(x, Tainted) and x == SECRET and json.dumps(x) == json.dumps(SECRET)
    assert not isinstance(x.upper(), Tainted)  # Python drops the mark ...
    y = derive(x.upper(), x)  # ... and an engine puts it back
    assert isinstance(y, Tainted)
    assert derive("plain", "other") == "plain" and not is_tainted(derive("plain", "other"))
    assert is_tainted({"k": ["a", taint("b")]}) and not is_tainted({"k": ["a", "b"]})
    values.record(y)
    values.record(taint("xyz"))  # shorter than MIN_DERIVED_LENGTH: not masked in free text
    assert MIN_DERIVED_LENGTH == 4
    assert values.mask(f"name is {y}; xyz stays; ab goes") == "name is <sensitive>; xyz stays; <sensitive> goes"
    values.record(taint("HUNTER2"))
    assert values.mask("HUNTER2-SECRET-VALUE") == "<sensitive>"  # the longest match wins
    assert values.mask_value({"a": [y], y: 1}) == {"a": ["<sensitive>"], "<sensitive>": 1}
    config = {"output": taint("out"), "vm_name": "plain", "destinations": [{"path": derive(f"/srv/{y}", y)}],
              "content": y, "ssh_username": y}
    assert sensitive_name_keys(config, values.mask) == [("output", "<sensitive>"),
                                                        ("destinations[0].path", "/srv/<sensitive>")]
    # a name that merely contains a sensitive literal as text ("ubuntu" as password, "ubuntu-22.04" as name) is
    # not derived from it: only the taint decides (Packer accepts such templates)
    values.add_literal("ubuntu")
    assert sensitive_name_keys({"vm_name": "ubuntu-22.04"}, values.mask) == []


# -- the Go template engine -----------------------------------------------------------------------------------


def render(text: str, values: SensitiveValues) -> str:
    ctx = RenderContext(user_variables={"secret": SECRET, "region": "eu-1", "short": "q"},
                        sensitive_variables=frozenset({"secret", "short"}), sensitive=values)
    return render_string(text, ctx)


@pytest.mark.parametrize(("template", "derived"), [
    ("{{user `secret` | upper}}", "HUNTER2-SECRET-VALUE"),
    ("{{lower (user `secret`)}}", "hunter2-secret-value"),
    ("{{split (user `secret`) \"-\" 1}}", "Secret"),
    ("{{replace_all \"-\" \"_\" (user `secret`)}}", "Hunter2_Secret_Value"),
    ("{{replace \"-\" \"+\" -1 (user `secret`)}}", "Hunter2+Secret+Value"),
    ("{{printf \"<<%s>>\" (user `secret`)}}", "<<Hunter2-Secret-Value>>"),
    ("{{user `secret` | upper | lower | clean_resource_name}}", "hunter2-secret-value"),
])
def test_every_function_result_over_a_sensitive_value_is_masked(template: str, derived: str) -> None:
    values = SensitiveValues()
    out = render(f"id-{template}-end", values)
    assert out == f"id-{derived}-end" and isinstance(out, Tainted)
    assert values.mask(f"log: {out} and {derived}") == "log: id-<sensitive>-end and <sensitive>"


def test_short_derived_values_mask_the_whole_string_and_plain_values_stay_plain() -> None:
    values = SensitiveValues()
    out = render("len={{user `secret` | len}}", values)
    assert out == f"len={len(SECRET)}" and isinstance(out, Tainted)
    assert values.mask(f"echo {out}") == "echo <sensitive>"
    assert values.mask("20 apples") == "20 apples"  # the bare number is not hidden everywhere
    plain = render("{{user `region` | upper}}-{{ isotime \"2006\" }}", values)
    assert not isinstance(plain, Tainted) and values.mask(plain) == plain
    assert render("{{ .HTTPIP }}:{{user `secret`}}", values) == "{{ .HTTPIP }}:" + SECRET


def write(tmp_path: Path, data: Mapping[str, Any], name: str = "template.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def test_a_variable_derived_from_a_sensitive_one_is_sensitive(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "variables": {"secret": SECRET, "derived": "pre-{{user `secret` | upper}}", "region": "eu"},
        "sensitive-variables": ["secret"],
        "builders": [{"type": "file", "target": str(tmp_path / "o.txt"), "content": "{{user `derived`}}"}],
    })
    template = parse_template(path)
    assert is_tainted(template.variables["derived"]) and not is_tainted(template.variables["region"])
    assert template.mask(f"x {template.variables['derived']} y") == "x <sensitive> y"
    shown = json.dumps(template.to_dict())
    assert "HUNTER2" not in shown and SECRET not in shown and '"region": "eu"' in shown


# -- end to end: stemforge build -------------------------------------------------------------------------------



def assert_hidden(text: str, where: str) -> None:
    for value in (SECRET, *DERIVED):
        assert value not in text, f"{value!r} shown in {where}"


@pytest.mark.parametrize("machine", [False, True])
def test_build_output_log_and_manifest_never_show_a_derived_value(tmp_path: Path, machine: bool) -> None:
    manifest = tmp_path / "manifest.json"
    path = write(tmp_path, {
        "variables": {"secret": SECRET, "derived": "{{user `secret` | lower}}"},
        "sensitive-variables": ["secret"],
        "builders": [{"type": "file", "name": "img", "target": str(tmp_path / "out" / "img.txt"),
                      "content": "{{user `secret` | upper}}"}],
        "provisioners": [{"type": "shell-local", "inline": [
            "echo up={{user `secret` | upper}}",
            "echo low={{user `derived`}}",
            "echo part={{split (user `secret`) \"-\" 1}}",
            "echo repl={{replace_all \"-\" \"_\" (user `secret`)}}",
            "echo 'fmt={{printf \"<<%s>>\" (user `secret`)}}'",
            "echo plus={{replace \"-\" \"+\" -1 (user `secret`)}}",
        ]}],
        "post-processors": [{"type": "manifest", "output": str(manifest), "custom_data": {
            "upper": "{{user `secret` | upper}}", "part": "{{split (user `secret`) \"-\" 1}}",
            "plain": "release-1"}}],
    })
    log = tmp_path / "debug.log"
    args = ["build", *(["-machine-readable"] if machine else []), str(path)]
    result = stemforge(args, tmp_path, {"STEMFORGE_LOG_PATH": str(log)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<sensitive>" in result.stdout
    assert_hidden(result.stdout + result.stderr, "build output")
    assert_hidden(log.read_text(), "the debug log")
    text = manifest.read_text()
    assert_hidden(text, "the manifest")
    custom = json.loads(text)["builds"][0]["custom_data"]
    assert custom == {"upper": "<sensitive>", "part": "<sensitive>", "plain": "release-1"}
    # the builder itself got the real value (masking is for what users read, not for what plugins use)
    assert (tmp_path / "out" / "img.txt").read_text() == SECRET.upper()


@pytest.mark.parametrize(("where", "patch"), [
    ("target", {"builders": [{"type": "file", "target": "OUT/{{user `secret` | lower}}.txt", "content": "x"}]}),
    ("output", {"post-processors": [{"type": "manifest", "output": "OUT/m-{{split (user `secret`) \"-\" 1}}.json"}]}),
    ("destinations[0].path", {"post-processors": [{"type": "fanout", "image_name": "img.raw", "destinations": [
        {"type": "local", "name": "site-a", "path": "OUT/{{user `derived`}}"}]}]}),
    ("image_name", {"post-processors": [{"type": "fanout", "image_name": "img-{{user `secret` | upper}}.raw",
                                         "destinations": [{"type": "local", "name": "site-a", "path": "OUT/a"}]}]}),
])
def test_a_file_or_artifact_name_derived_from_a_sensitive_value_is_refused(
        tmp_path: Path, where: str, patch: dict[str, Any]) -> None:
    out = tmp_path / "out"
    data: dict[str, Any] = {
        "variables": {"secret": SECRET, "derived": "{{user `secret` | lower}}"},
        "sensitive-variables": ["secret"],
        "builders": [{"type": "file", "target": str(out / "img.raw"), "content": "x"}],
    }
    data.update(json.loads(json.dumps(patch).replace("OUT", str(out))))
    path = write(tmp_path, data)
    for command in ("validate", "build"):
        result = stemforge([command, str(path)], tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{where} ('" in result.stdout and "derived from a sensitive variable" in result.stdout, result.stdout
        assert "<sensitive>" in result.stdout
        assert_hidden(result.stdout + result.stderr, f"{command} output")
    assert not out.exists() or not any(SECRET.lower() in p.name.lower() or "secret" in p.name.lower()
                                       for p in out.rglob("*"))
