"""Parser conformance: one small template per Packer rule (good and bad), asserting Packer's exact words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builders.template import TemplateError, merge_cli_variables, parse_template

Q = {"type": "qemu", "iso_url": "a.qcow2", "iso_checksum": "none", "disk_image": True}


def _write(tmp_path: Path, doc: Any, name: str = "t.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return p


def _errors(tmp_path: Path, doc: Any, name: str = "t.json", **kw: Any) -> list[str]:
    with pytest.raises(TemplateError) as info:
        parse_template(_write(tmp_path, doc, name), **kw)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# (id, template, kwargs, exact errors)
BAD: list[tuple[str, Any, dict[str, Any], list[str]]] = [
    ("unknown-root-key", {"builders": [Q], "foo": 1}, {}, ["Unknown root level key in template: 'foo'"]),
    ("several-unknown-root-keys-sorted", {"zeta": 1, "builders": [Q], "alpha": {}}, {},
     ["Unknown root level key in template: 'alpha'", "Unknown root level key in template: 'zeta'"]),
    ("underscore-root-key-not-string", {"_comment": ["x"], "builders": [Q]}, {},
     ['Failed to cast root level comment value in comment "_comment" to string.']),
    ("no-builders", {"variables": {}}, {}, ["at least one builder must be defined"]),
    ("empty-builders", {"builders": []}, {}, ["at least one builder must be defined"]),
    ("builders-not-a-list", {"builders": {"type": "qemu"}}, {},
     ["'builders': source data must be an array or slice, got map", "at least one builder must be defined"]),
    ("builder-missing-type", {"builders": [Q, {"name": "x"}]}, {}, ["builder 2: missing 'type'"]),
    ("builder-not-an-object", {"builders": ["qemu"]}, {}, ["builder 1: '' expected a map, got 'string'"]),
    ("builder-duplicate-default-name", {"builders": [Q, Q]}, {},
     ["builder 2: builder with name 'qemu' already exists"]),
    ("builder-duplicate-explicit-name", {"builders": [dict(Q, name="a"), dict(Q, name="b"), dict(Q, name="a")]}, {},
     ["builder 3: builder with name 'a' already exists"]),
    ("builder-duplicate-after-rendering",
     {"variables": {"n": "x"}, "builders": [dict(Q, name="x"), dict(Q, name="{{user `n`}}")]}, {},
     ["builder 2: builder with name 'x' already exists"]),
    ("required-variable", {"variables": {"pw": None, "other": None}, "builders": [Q]}, {},
     ["required variable not set: other", "required variable not set: pw"]),
    ("variable-not-a-string", {"variables": {"n": 5}, "builders": [Q]}, {},
     ["variable n: '' expected type 'string', got unconvertible type 'float64', value: '5'"]),
    ("variables-not-an-object", {"variables": ["a"], "builders": [Q]}, {},
     ["'variables' expected a map, got 'slice'"]),
    ("provisioner-missing-type", {"builders": [Q], "provisioners": [{"inline": ["x"]}]}, {},
     ["provisioner 1: Provisioner missing 'type'"]),
    ("provisioner-only-unknown", {"builders": [Q], "provisioners": [{"type": "shell", "only": ["nope"]}]}, {},
     ["provisioner 1: 'only' specified builder 'nope' not found"]),
    ("provisioner-except-unknown", {"builders": [Q], "provisioners": [{"type": "shell", "except": ["nope"]}]}, {},
     ["provisioner 1: 'except' specified builder 'nope' not found"]),
    ("provisioner-only-and-except",
     {"builders": [Q], "provisioners": [{"type": "shell", "only": ["qemu"], "except": ["qemu"]}]}, {},
     ["provisioner 1: only one of 'only' or 'except' may be specified"]),
    ("provisioner-override-unknown",
     {"builders": [Q], "provisioners": [{"type": "shell", "override": {"vbox": {"inline": []}}}]}, {},
     ["provisioner 1: override 'vbox' doesn't exist"]),
    ("pause-before-invalid", {"builders": [Q], "provisioners": [{"type": "shell", "pause_before": "soon"}]}, {},
     ["provisioner 1: Error decoding provisioner: error decoding 'pause_before': time: invalid duration \"soon\""]),
    ("timeout-missing-unit", {"builders": [Q], "provisioners": [{"type": "shell", "timeout": "10"}]}, {},
     ["provisioner 1: Error decoding provisioner: error decoding 'timeout': time: missing unit in duration \"10\""]),
    ("timeout-unknown-unit", {"builders": [Q], "provisioners": [{"type": "shell", "timeout": "10y"}]}, {},
     ['provisioner 1: Error decoding provisioner: error decoding \'timeout\': time: unknown unit "y" in duration '
      '"10y"']),
    ("max-retries-not-integer", {"builders": [Q], "provisioners": [{"type": "shell", "max_retries": "many"}]}, {},
     ['provisioner 1: `max_retries` must be a valid integer: strconv.Atoi: parsing "many": invalid syntax']),
    ("error-cleanup-missing-type", {"builders": [Q], "error-cleanup-provisioner": {"inline": ["x"]}}, {},
     ["On Error Cleanup Provisioner error: Provisioner missing 'type'"]),
    ("post-processor-missing-type", {"builders": [Q], "post-processors": [{"output": "x"}]}, {},
     ["post-processor 1.1: type is required"]),
    ("post-processor-nested-sequence", {"builders": [Q], "post-processors": [["manifest", ["checksum"]]]}, {},
     ["post-processor 1.2: sequence not allowed to be nested in a sequence"]),
    ("post-processor-unknown-format-in-chain", {"builders": [Q], "post-processors": [["manifest", 5]]}, {},
     ["post-processor 1.2: unknown format"]),
    ("post-processor-bad-format", {"builders": [Q], "post-processors": [5]}, {}, ["post-processor 1: bad format"]),
    ("post-processor-only-unknown",
     {"builders": [Q], "post-processors": [{"type": "manifest", "only": ["x"]}]}, {},
     ["post-processor 1.1: 'only' specified builder 'x' not found"]),
    ("post-processor-only-and-except",
     {"builders": [Q], "post-processors": [[{"type": "manifest", "only": ["qemu"], "except": ["qemu"]}]]}, {},
     ["post-processor 1.1: only one of 'only' or 'except' may be specified"]),
    ("keep-input-artifact-not-bool",
     {"builders": [Q], "post-processors": [{"type": "manifest", "keep_input_artifact": "yes"}]}, {},
     ["post-processor 1.1: 'keep_input_artifact' expected type 'bool', got unconvertible type 'string', "
      "value: 'yes'"]),
    ("min-packer-version-too-high", {"min_packer_version": "1.14", "builders": [Q]}, {},
     ["This template requires Packer version 1.14.0 or higher; using 1.13.0"]),
    ("min-packer-version-malformed", {"min_packer_version": "banana", "builders": [Q]}, {},
     ["min_version is invalid: Malformed version: banana"]),
    ("every-error-reported-together",
     {"bogus": 1, "builders": [Q, {"name": "n"}], "provisioners": [{"type": "shell", "only": ["zz"]}, {}],
      "post-processors": [{"only": ["qemu"]}]}, {},
     ["Unknown root level key in template: 'bogus'", "builder 2: missing 'type'",
      "post-processor 1.1: type is required", "provisioner 2: Provisioner missing 'type'",
      "provisioner 1: 'only' specified builder 'zz' not found"]),
]


@pytest.mark.parametrize("doc,kwargs,expected", [pytest.param(d, k, e, id=i) for i, d, k, e in BAD])
def test_rule_violations_give_packers_words(tmp_path: Path, doc: Any, kwargs: dict[str, Any],
                                            expected: list[str]) -> None:
    assert _errors(tmp_path, doc, **kwargs) == expected


# (id, template, one error must start with / contain this text)
BAD_PARTIAL: list[tuple[str, Any, str]] = [
    ("duplicate-key-nested",
     '{"builders": [{"type": "qemu", "iso_url": "a", "iso_url": "b"}]}',
     "template has duplicate field: iso_url (at line 1, column 48)"),
    ("duplicate-key-root", '{"builders": [{"type": "qemu"}],\n "builders": []}',
     "template has duplicate field: builders (at line 2, column 2)"),
    ("duplicate-key-deep-in-variables", '{"variables": {"a": "1", "b": "2", "a": "3"}, "builders": [{"type": "q"}]}',
     "template has duplicate field: a (at line 1, column 36)"),
    ("undefined-variable-in-variables", {"variables": {"a": "{{user `zz`}}"}, "builders": [Q]},
     'Failed to interpolate "a": "{{user `zz`}}"; error: template: root:1:2: executing "root" at <user `zz`>: '
     "error calling user: Error: variable not set: zz: Please make sure that the variable you're referencing has "
     "been defined; Packer treats all variables used to interpolate other user variables as required."),
    ("variable-cycle", {"variables": {"a": "{{user `b`}}", "b": "{{user `a`}}"}, "builders": [Q]},
     "Failed to interpolate"),
    ("env-outside-variables", {"builders": [dict(Q, vm_name="{{env `HOME`}}")]},
     "builder 'qemu': vm_name: template: root:1:2: executing \"root\" at <env `HOME`>: error calling env: env vars "
     "are not allowed here in \"{{env `HOME`}}\""),
    ("env-in-provisioner", {"builders": [Q], "provisioners": [{"type": "shell", "inline": ["{{ env `X` }}"]}]},
     "provisioner 1 (shell): inline[0]: template: root:1:3: executing \"root\" at <env `X`>: error calling env: "
     "env vars are not allowed here"),
    ("unknown-function", {"builders": [dict(Q, vm_name="{{ nope }}")]},
     "builder 'qemu': vm_name: template: root:1: function \"nope\" not defined"),
    ("unknown-function-in-variables", {"variables": {"a": "{{ nope `x` }}"}, "builders": [Q]},
     "error interpolating default value for 'a': template: root:1: function \"nope\" not defined"),
    ("wrong-arity", {"builders": [dict(Q, vm_name="{{ split `a` }}")]},
     "executing \"root\" at <split>: wrong number of args for split: want 3 got 1"),
    ("unclosed-action", {"builders": [dict(Q, vm_name="{{ user `a` ")]}, "template: root:1: unclosed action"),
    ("sed-is-deprecated", {"builders": [dict(Q, vm_name="{{ sed `s/a/b/` `a` }}")]},
     "error calling sed: template function `sed` is deprecated use `replace` or `replace_all` instead."),
    ("post-processor-env", {"builders": [Q], "post-processors": [{"type": "manifest", "output": "{{env `X`}}"}]},
     "post-processor 1.1 (manifest): output: template:"),
    ("builder-name-render-error", {"builders": [dict(Q, name="{{ nope }}")]},
     "Error interpolating builder '{{ nope }}': template: root:1: function \"nope\" not defined"),
    ("json-syntax", '{\n  "builders": [{"type": "qemu"}],\n}\n',
     'Error parsing JSON: invalid character \'}\' looking for beginning of object key string\n'
     'At line 3, column 2 (offset 37):\n'
     '    2:   "builders": [{"type": "qemu"}],\n'
     '    3: }\n'
     '       ^'),
    ("json-eof", '{"builders": [',
     "Error parsing JSON: unexpected end of JSON input\nAt line 1, column 14 (offset 14)"),
    ("top-level-not-object", "[]", "a template must be an object at the top level, got 'slice'"),
]


@pytest.mark.parametrize("doc,expected", [pytest.param(d, e, id=i) for i, d, e in BAD_PARTIAL])
def test_rule_violations_partial(tmp_path: Path, doc: Any, expected: str) -> None:
    errors = _errors(tmp_path, doc)
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "builders:\n  - type: qemu\n    name: a\n    name: b\n", "t.yaml")
    assert errors == ["template has duplicate field: name (at line 4, column 5)"]


def test_yaml_syntax_error_has_line_column_and_highlight(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "builders:\n  - type: qemu\n  bad: [1, 2\n", "t.yml")
    assert len(errors) == 1
    assert errors[0].startswith("Error parsing YAML: ")
    assert "At line 4, column 1:" in errors[0] or "At line 3" in errors[0]
    assert errors[0].rstrip().endswith("^")


def test_yaml_same_rules_as_json(tmp_path: Path) -> None:
    assert _errors(tmp_path, "builders:\n  - name: x\nfoo: 1\n", "t.yaml") == [
        "Unknown root level key in template: 'foo'", "builder 1: missing 'type'"]


def test_yaml_keys_are_strings_and_dates_stay_strings(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, "variables:\n  day: 2024-01-02\n  on: 'x'\nbuilders:\n  - type: qemu\n"
                                        "    yes: 1\n", "t.yaml"), var_overrides={})
    assert t.variables == {"day": "2024-01-02", "on": "x"}
    assert t.builders[0].config == {"yes": 1}


# ---- good templates --------------------------------------------------------------------------------------


def test_minimal_builder_defaults(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [{"type": "qemu"}]}))
    assert [(b.name, b.type, b.config, b.index) for b in t.builders] == [("qemu", "qemu", {}, 0)]
    assert t.provisioners == [] and t.post_processors == [] and t.error_cleanup_provisioner is None
    assert t.path == tmp_path / "t.json" and t.format == "json"


def test_comments_root_and_nested_dropped(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {
        "_comment": "root", "_x": "y", "builders": [dict(Q, _comment="b")],
        "provisioners": [{"type": "shell", "_comment": "p", "inline": [], "override": {"qemu": {"_c": "o"}}}],
        "post-processors": [{"type": "manifest", "_comment": "pp"}]}))
    assert t.comments == {"_comment": "root", "_x": "y"}
    assert "_comment" not in t.builders[0].config
    assert t.provisioners[0].config == {"inline": []} and t.provisioners[0].override == {"qemu": {}}
    assert t.post_processors[0][0].config == {}


def test_post_processor_forms(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [Q], "post-processors": [
        "checksum", {"type": "manifest", "name": "m", "keep_input_artifact": True},
        ["compress", {"type": "manifest", "output": "o.json", "keep_input_artifact": False}]]}))
    chains = [[(p.type, p.name, p.keep_input_artifact, p.config) for p in c] for c in t.post_processors]
    assert chains == [[("checksum", "checksum", None, {})], [("manifest", "m", True, {})],
                      [("compress", "compress", None, {}), ("manifest", "manifest", False, {"output": "o.json"})]]


def test_provisioner_meta_keys(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [dict(Q, name="a"), dict(Q, name="b")], "provisioners": [
        {"type": "shell", "inline": ["x"], "only": "a", "pause_before": "1m30s", "timeout": "1h", "max_retries": 3},
        {"type": "shell", "inline": ["y"], "except": ["a"], "max_retries": "2",
         "override": {"b": {"inline": ["z"]}}}]}))
    p1, p2 = t.provisioners
    assert (p1.only, p1.pause_before, p1.timeout, p1.max_retries) == (["a"], 90.0, 3600.0, 3)
    assert p1.config == {"inline": ["x"]}
    assert p1.applies_to("a") and not p1.applies_to("b")
    assert (p2.except_, p2.max_retries, p2.timeout, p2.pause_before) == (["a"], 2, None, 0.0)
    assert not p2.applies_to("a") and p2.applies_to("b")
    assert p2.config_for("b") == {"inline": ["z"]} and p2.config_for("a") == {"inline": ["y"]}


def test_variables_reference_variables_in_any_order(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"variables": {
        "a_full": "{{user `b_mid`}}-a", "b_mid": "{{user `c_base`}}-b", "c_base": "c",
        "boot": "{{ .HTTPIP }}:{{user `c_base`}}"}, "builders": [Q]}))
    assert t.variables == {"a_full": "c-b-a", "b_mid": "c-b", "c_base": "c", "boot": "{{ .HTTPIP }}:c"}


def test_env_in_variable_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEMFORGE_T_ENV", "from-env")
    monkeypatch.delenv("STEMFORGE_T_UNSET", raising=False)
    t = parse_template(_write(tmp_path, {"variables": {"a": "{{env `STEMFORGE_T_ENV`}}",
                                                       "b": "{{env `STEMFORGE_T_UNSET`}}"}, "builders": [Q]}))
    assert t.variables == {"a": "from-env", "b": ""}


def test_var_precedence(tmp_path: Path) -> None:
    f1 = _write(tmp_path, {"a": "file1", "b": "file1"}, "v1.json")
    f2 = _write(tmp_path, {"b": "file2"}, "v2.json")
    tpl = _write(tmp_path, {"variables": {"a": "d", "b": "d", "c": "d", "r": None}, "builders": [Q]})
    t = parse_template(tpl, var_files=[f1, f2], var_overrides={"c": "cli", "r": "req"})
    assert t.variables == {"a": "file1", "b": "file2", "c": "cli", "r": "req"}
    # command-line order: a later -var-file beats an earlier -var
    merged = merge_cli_variables([("var", "b=cli"), ("var-file", str(f2)), ("var", "a=x=y")])
    assert merged == {"b": "file2", "a": "x=y"}


def test_var_file_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path, {"a": 1}, "bad.json")
    tpl = _write(tmp_path, {"variables": {"a": "d"}, "builders": [Q]})
    errors = _errors(tmp_path, {"variables": {"a": "d"}, "builders": [Q]}, var_files=[bad])
    assert errors[0].startswith(f"Error reading variables in '{bad}': json: cannot unmarshal number")
    with pytest.raises(TemplateError, match="No '=' value in arg: novalue"):
        merge_cli_variables([("var", "novalue")])
    with pytest.raises(TemplateError, match=f"Error reading variables in '{tmp_path / 'missing.json'}'"):
        parse_template(tpl, var_files=[tmp_path / "missing.json"])


def test_min_packer_version_accepted(tmp_path: Path) -> None:
    for v in ("1.9.0", "1.2", "v0.12.1", "1.9.0-beta1"):
        assert parse_template(_write(tmp_path, {"min_packer_version": v, "builders": [Q]})).min_packer_version == v


def test_syntax_only_skips_variables_and_validation(tmp_path: Path) -> None:
    doc = {"variables": {"pw": None}, "min_packer_version": "9.0", "builders": [Q],
           "provisioners": [{"type": "shell", "only": ["nope"]}]}
    t = parse_template(_write(tmp_path, doc), syntax_only=True)
    assert t.builders[0].name == "qemu" and t.required_variables == ["pw"]
    with pytest.raises(TemplateError):
        parse_template(_write(tmp_path, "{"), syntax_only=True)


def test_undefined_user_variable_outside_variables_is_empty_with_warning(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [dict(Q, vm_name="x{{user `typo`}}y")]}))
    assert t.render(t.builders[0].config, build_name="qemu", build_type="qemu")["vm_name"] == "xy"
    assert any("'typo'" in w for w in t.warnings)


def test_select_builders(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [dict(Q, name="a"), dict(Q, name="b"), dict(Q, name="c")],
                                         "post-processors": [{"type": "manifest", "name": "m"}]}))
    assert [b.name for b in t.select_builders([], [])] == ["a", "b", "c"]
    assert [b.name for b in t.select_builders(["c", "a"], [])] == ["a", "c"]
    assert [b.name for b in t.select_builders([], ["b", "m"])] == ["a", "c"]
    with pytest.raises(TemplateError, match="-only: no builder named 'x'"):
        t.select_builders(["x"], [])
    with pytest.raises(TemplateError, match="-except: no builder or post-processor named 'y'"):
        t.select_builders([], ["y"])
    assert t.post_processor_chains_for("a", except_=["m"]) == []
    assert [[p.name for p in c] for c in t.post_processor_chains_for("a")] == [["m"]]


def test_timestamp_and_uuid_are_per_run(tmp_path: Path) -> None:
    t = parse_template(_write(tmp_path, {"builders": [dict(Q, a="{{timestamp}}", u="{{uuid}}")]}))
    r1 = t.render(t.builders[0].config, build_name="qemu", build_type="qemu")
    r2 = t.render(t.builders[0].config, build_name="qemu", build_type="qemu")
    assert r1["a"] == r2["a"] == str(t.run_timestamp)
    assert r1["u"] != r2["u"] and len(r1["u"]) == 36
    assert len(t.run_uuid) == 36
