"""Legacy JSON fidelity: rules Packer applies to JSON templates that real public templates rely on.

One table per rule; every case names the upstream source of the rule it checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from builders.builder_types import _sdk_options as sdk
from builders.builder_types.amazon_ebs import config as ebs_config
from builders.builder_types.qemu import config as qemu_config
from builders.core import ConfigError, Plugin
from builders.registry import (
    DEPRECATED_MESSAGE,
    coerce,
    go_parse_int,
    load_builder,
    load_post_processor,
    load_provisioner,
    validate_options,
)
from builders.template import TemplateError, parse_template
from builders.template.variables import load_var_file
from tests.harness.builds import stemforge

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "packer-options.md"

FLAG_JSON = "packer command/flag-kv/flag_json.go (json.Decode into map[string]string)"
CORE_GO = "packer packer/core.go (validate checks required variables only; init copies every given value)"
DECODE_GO = ("packer-plugin-sdk template/config/decode.go (WeaklyTypedInput, StringToSliceHookFunc(\",\")) + "
             "mapstructure decode.go")
DEPRECATED_GO = "packer-plugin-sdk template/config/deprecated_options.go + decode.go"



def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


# ----------------------------------------------------------------------------------- 1. null in a -var-file

VAR_FILE_CASES = [
    # (source, file name, content, expected variables or error substring)
    (FLAG_JSON, "v.json", '{"a": null, "b": "x"}', {"a": "", "b": "x"}),
    (FLAG_JSON, "v.json", '{"only_null": null}', {"only_null": ""}),
    (FLAG_JSON + " (YAML twin of a var file)", "v.yaml", "a: null\nb: x\n", {"a": "", "b": "x"}),
    (FLAG_JSON + ": numbers still do not decode into a string", "v.json", '{"a": 5}', "cannot unmarshal number"),
    (FLAG_JSON + ": nor lists", "v.json", '{"a": ["x"]}', "cannot unmarshal array"),
]


@pytest.mark.parametrize(("source", "name", "content", "expected"), VAR_FILE_CASES,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(VAR_FILE_CASES)])
def test_var_file_null_is_empty_string(tmp_path: Path, source: str, name: str, content: str,
                                       expected: dict[str, str] | str) -> None:
    path = tmp_path / name
    path.write_text(content)
    if isinstance(expected, str):
        with pytest.raises(TemplateError, match=expected):
            load_var_file(path)
        return
    assert load_var_file(path) == expected, source


def test_var_file_null_overrides_default_and_satisfies_required(tmp_path: Path) -> None:
    """A ``null`` in the var file sets the variable (to ""): a required variable is then set and a default is
    replaced (``FLAG_JSON`` + ``CORE_GO``)."""
    template = write_json(tmp_path / "t.json", {
        "variables": {"required": None, "with_default": "d"},
        "builders": [{"type": "file", "target": "out.txt", "content": "[{{user `required`}}|{{user `with_default`}}]"}],
    })
    var_file = tmp_path / "vars.json"
    var_file.write_text('{"required": null, "with_default": null}')
    parsed = parse_template(template, var_files=[var_file])
    assert parsed.variables["required"] == "" and parsed.variables["with_default"] == ""


# --------------------------------------------------------------------------- 2. undeclared variables ignored

UNDECLARED_CASES = [
    (CORE_GO, {"var_files": ["extra.json"]}, {"declared": "from-file", "undeclared": "u"}),
    (CORE_GO + " (-var values too)", {"var_overrides": {"undeclared": "cli"}}, {"declared": "d", "undeclared": "cli"}),
]


@pytest.mark.parametrize(("source", "kwargs", "expected"), UNDECLARED_CASES, ids=["var-file", "var"])
def test_undeclared_variables_are_ignored(tmp_path: Path, source: str, kwargs: dict[str, Any],
                                          expected: dict[str, str]) -> None:
    write_json(tmp_path / "extra.json", {"declared": "from-file", "undeclared": "u", "ami_regions": "a,b"})
    template = write_json(tmp_path / "t.json", {
        "variables": {"declared": "d"},
        "builders": [{"type": "file", "target": "out.txt", "content": "{{user `declared`}}"}],
    })
    if "var_files" in kwargs:
        kwargs = {"var_files": [tmp_path / f for f in kwargs["var_files"]]}
    parsed = parse_template(template, **kwargs)
    for key, value in expected.items():
        assert parsed.variables[key] == value, source


def test_undeclared_var_file_values_through_the_cli(tmp_path: Path) -> None:
    write_json(tmp_path / "extra.json", {"nobody_declared_me": "x", "x": None})
    template = write_json(tmp_path / "t.json", {
        "variables": {"x": "default"},
        "builders": [{"type": "file", "target": str(tmp_path / "out.txt"), "content": "{{user `x`}}"}],
    })
    result = stemforge(["validate", "-var-file", str(tmp_path / "extra.json"), str(template)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown user variables" not in result.stdout + result.stderr


# ------------------------------------------------------------------------------------- 3. weak decoding

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "list": {"type": "array", "items": {"type": "string"}},
        "ints": {"type": "array", "items": {"type": "integer"}},
        "flag": {"type": "boolean"},
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "text": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class _Weak(Plugin):
    type_name: ClassVar[str] = "weak-test"
    options_schema: ClassVar[dict[str, Any]] = _SCHEMA


WEAK_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # StringToSliceHookFunc(","): a string fills a list option, split at commas; "" is an empty list
    (DECODE_GO + " StringToSliceHookFunc", {"list": "us-east-1,eu-west-1"}, {"list": ["us-east-1", "eu-west-1"]}),
    (DECODE_GO + " StringToSliceHookFunc (no trimming)", {"list": "a, b"}, {"list": ["a", " b"]}),
    (DECODE_GO + " StringToSliceHookFunc empty", {"list": ""}, {"list": []}),
    (DECODE_GO + " single value to slice", {"list": "one"}, {"list": ["one"]}),
    (DECODE_GO + " single value to slice, weakly typed element", {"list": 5}, {"list": ["5"]}),
    (DECODE_GO + " split then each element weakly decoded", {"ints": "1,0x10,017"}, {"ints": [1, 16, 15]}),
    # decodeBool: strconv.ParseBool for strings, numbers are non-zero; "" is the zero value (unset)
    (DECODE_GO + " decodeBool ParseBool", {"flag": "true"}, {"flag": True}),
    (DECODE_GO + " decodeBool ParseBool", {"flag": "1"}, {"flag": True}),
    (DECODE_GO + " decodeBool ParseBool", {"flag": "F"}, {"flag": False}),
    (DECODE_GO + " decodeBool from number", {"flag": 2}, {"flag": True}),
    (DECODE_GO + " decodeBool from number", {"flag": 0}, {"flag": False}),
    (DECODE_GO + " decodeBool empty string = zero value (unset)", {"flag": ""}, {}),
    # decodeInt: strconv.ParseInt(s, 0, ...); "" is the zero value; floats truncate; bools are 1/0
    (DECODE_GO + " decodeInt ParseInt base 0", {"count": "2048"}, {"count": 2048}),
    (DECODE_GO + " decodeInt ParseInt base 0 hex", {"count": "0x10"}, {"count": 16}),
    (DECODE_GO + " decodeInt ParseInt base 0 octal", {"count": "017"}, {"count": 15}),
    (DECODE_GO + " decodeInt ParseInt base 0 binary", {"count": "0b101"}, {"count": 5}),
    (DECODE_GO + " decodeInt empty string = zero value (unset)", {"count": ""}, {}),
    (DECODE_GO + " decodeInt from float64 (JSON numbers)", {"count": 2.0}, {"count": 2}),
    (DECODE_GO + " decodeInt from bool", {"count": True}, {"count": 1}),
    (DECODE_GO + " decodeFloat ParseFloat", {"ratio": "1.5"}, {"ratio": 1.5}),
    (DECODE_GO + " decodeFloat empty string = unset", {"ratio": ""}, {}),
    # decodeString: numbers and bools become text
    (DECODE_GO + " decodeString from number", {"text": 1024}, {"text": "1024"}),
    (DECODE_GO + " decodeString from float FormatFloat('f', -1)", {"text": 1.5}, {"text": "1.5"}),
    (DECODE_GO + " decodeString from float FormatFloat('f', -1)", {"text": 1e21}, {"text": "1000000000000000000000"}),
    (DECODE_GO + " decodeString from bool", {"text": True}, {"text": "1"}),
    # nil input leaves the field alone; empty slice is an empty map; a slice of maps merges
    (DECODE_GO + " nil leaves the field unset", {"text": None, "count": None, "list": None}, {}),
    (DECODE_GO + " decodeMap from empty slice", {"labels": []}, {"labels": {}}),
    (DECODE_GO + " decodeMap from slice of maps", {"labels": [{"a": "1"}, {"b": 2}]}, {"labels": {"a": "1", "b": "2"}}),
]


@pytest.mark.parametrize(("source", "given", "expected"), WEAK_CASES, ids=[str(i) for i in range(len(WEAK_CASES))])
def test_weak_decoding(source: str, given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert validate_options(_Weak, given, "weak-test") == expected, source


WEAK_ERRORS = [
    (DECODE_GO + " ParseInt fails", {"count": "lots"},
     "'count' expected type 'integer', got unconvertible type 'string'"),
    (DECODE_GO + " ParseBool fails", {"flag": "yes"},
     "'flag' expected type 'boolean', got unconvertible type 'string'"),
    (DECODE_GO + " a map is not a string", {"text": {"a": 1}}, "'text' expected type 'string'"),
]


@pytest.mark.parametrize(("source", "given", "message"), WEAK_ERRORS, ids=["int", "bool", "map"])
def test_weak_decoding_errors(source: str, given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_options(_Weak, given, "weak-test")
    assert message in str(info.value), source


GO_PARSE_INT = [("0", 0), ("-12", -12), ("+7", 7), ("0x_1f", 31), ("0o17", 15), ("010", 8), ("08", None),
                ("1_000", None), ("0b102", None), ("", None), ("9223372036854775808", None)]


@pytest.mark.parametrize(("text", "expected"), GO_PARSE_INT, ids=[t or "empty" for t, _ in GO_PARSE_INT])
def test_go_parse_int(text: str, expected: int | None) -> None:
    """Go's strconv.ParseInt(s, 0, 64) (mapstructure's decodeInt for weakly typed strings)."""
    assert go_parse_int(text) == expected


def _ebs_raw(**extra: Any) -> dict[str, Any]:
    raw = {"access_key": "AKIDEXAMPLE", "secret_key": "secret", "region": "us-east-1", "source_ami": "ami-12345678",
           "instance_type": "t3.micro", "ami_name": "weak-decoding", "ssh_username": "ubuntu"}
    raw.update(extra)
    return raw


def test_weak_decoding_reaches_amazon_ebs_from_a_user_variable(tmp_path: Path) -> None:
    """``"ami_regions": "{{user `regions`}}"`` (a real template's way of passing a list through a string
    variable): rendered, then split by the SDK's StringToSliceHookFunc; ``""`` for bool/number options is unset."""
    template = write_json(tmp_path / "t.json", {
        "variables": {"regions": "eu-west-1,us-west-2", "optimized": "", "retries": "", "none": ""},
        "builders": [_ebs_raw(type="amazon-ebs", ami_regions="{{user `regions`}}", ebs_optimized="{{user `optimized`}}",
                              max_retries="{{user `retries`}}", snapshot_users="{{user `none`}}")],
    })
    parsed = parse_template(template)
    spec = parsed.builders[0]
    rendered = parsed.render(spec.config, build_name=spec.name, build_type=spec.type, where="builder")
    options = validate_options(load_builder("amazon-ebs"), rendered, "amazon-ebs")
    assert options["ami_regions"] == ["eu-west-1", "us-west-2"]
    assert options["snapshot_users"] == []
    assert "ebs_optimized" not in options and "max_retries" not in options
    cfg, _ = ebs_config.prepare_config(options, "amazon-ebs", tmp_path, False, "amazon-ebs")
    assert cfg.ami_regions == ["eu-west-1", "us-west-2"] and cfg.ebs_optimized is False


def test_weak_decoding_reaches_qemu(tmp_path: Path) -> None:
    """The same one place decodes qemu's options: ``""`` memory/cpus fall back to Packer's defaults."""
    raw = {"iso_url": "x.iso", "iso_checksum": "none", "ssh_username": "u", "memory": "", "cpus": "2",
           "headless": "true", "disk_additional_size": "", "output_directory": str(tmp_path / "o")}
    options = validate_options(load_builder("qemu"), raw, "qemu")
    cfg, _ = qemu_config.prepare_config(options, "q", tmp_path, False, "qemu")
    assert (cfg.memory, cfg.cpus, cfg.headless, cfg.disk_additional_size) == (512, 2, True, [])


def test_coerce_is_idempotent() -> None:
    once = coerce({"list": "a,b", "count": "3", "flag": ""}, _SCHEMA)
    assert coerce(once, _SCHEMA) == once == {"list": ["a", "b"], "count": 3}


# ---------------------------------------------------------------------- 4. deprecated keys: packer fix wording

DEPRECATED_CASES = [
    ("qemu", "iso_checksum_type", "sha256"),
    ("qemu", "iso_checksum_url", "http://x/SUMS"),
    ("qemu", "iso_md5", "abc"),
    ("qemu", "ssh_key_path", "k"),
    ("qemu", "ssh_disable_agent", True),
    ("qemu", "ssh_skip_nat_mapping", True),
    ("amazon-ebs", "iso_checksum_type", "sha256"),
    ("amazon-ebs", "ssh_private_ip", True),
    ("amazon-ebs", "clean_ami_name", True),
    ("amazon-ebs", "shutdown_behaviour", "stop"),
    ("amazon-ebs", "enhanced_networking", True),
    ("amazon-ebs", "temporary_security_group_source_cidr", "10.0.0.0/8"),
    ("amazon-ebs", "spot_price_auto_product", "Linux/UNIX"),
    ("manifest", "filename", "m.json"),
]


@pytest.mark.parametrize(("type_name", "key", "value"), DEPRECATED_CASES,
                         ids=[f"{t}-{k}" for t, k, _ in DEPRECATED_CASES])
def test_deprecated_keys_get_packer_fix_wording(type_name: str, key: str, value: Any) -> None:
    """``DEPRECATED_GO``: an unknown key the plugin's ``packer fix`` list names gets this error, verbatim."""
    cls = load_post_processor(type_name) if type_name == "manifest" else load_builder(type_name)
    base = {} if type_name == "manifest" else (_ebs_raw() if type_name == "amazon-ebs" else {"iso_url": "x"})
    with pytest.raises(ConfigError) as info:
        validate_options(cls, {**base, key: value}, type_name)
    expected = (f"Deprecated configuration key: '{key}'. Please call `packer fix` against your template to update "
                "your template to be compatible with the current version of Packer. Visit "
                "https://www.packer.io/docs/commands/fix/ for more detail.")
    assert expected == DEPRECATED_MESSAGE.format(key=key)
    assert f"{type_name}: {expected}" in str(info.value).splitlines()


def test_deprecated_list_is_per_plugin() -> None:
    """``ssh_private_ip`` is only in the ``*amazon*`` list: for qemu it is a plain unknown key."""
    with pytest.raises(ConfigError) as info:
        validate_options(load_builder("qemu"), {"ssh_private_ip": True}, "qemu")
    assert "unknown configuration key: 'ssh_private_ip'" in str(info.value)


# ------------------------------------------------------------------------ 5. documented options accepted

SDK_TABLES = {
    "packer-plugin-sdk communicator/config.go Config": sdk.COMMUNICATOR,
    "packer-plugin-sdk communicator/config.go SSH + SSHTemporaryKeyPair": sdk.SSH,
    "packer-plugin-sdk communicator/config.go WinRM": sdk.WINRM,
    "packer-plugin-sdk bootcommand/config.go BootConfig + VNCConfig": sdk.BOOT,
    "packer-plugin-sdk multistep/commonsteps/http_config.go": sdk.HTTP,
    "packer-plugin-sdk multistep/commonsteps/iso_config.go": sdk.ISO,
    "packer-plugin-sdk multistep/commonsteps/floppy_config.go": sdk.FLOPPY,
    "packer-plugin-sdk multistep/commonsteps/extra_iso_config.go": sdk.CD,
    "packer-plugin-sdk shutdowncommand/config.go": sdk.SHUTDOWN,
}
QEMU_SDK = ("communicator/config.go Config", "SSH + SSHTemporaryKeyPair", "WinRM", "bootcommand", "http_config",
            "iso_config", "floppy_config", "extra_iso_config", "shutdowncommand")
EBS_SDK = ("communicator/config.go Config", "SSH + SSHTemporaryKeyPair", "WinRM")

OPTION_TABLES = [
    ("packer-plugin-qemu builder/qemu/config.go + comm_config.go", "qemu", qemu_config.QEMU_DOCUMENTED),
    ("packer-plugin-amazon builder/ebs/builder.go + builder/common/*", "amazon-ebs", ebs_config.EBS_DOCUMENTED),
    *[(src, "qemu", keys) for src, keys in SDK_TABLES.items() if any(s in src for s in QEMU_SDK)],
    *[(src, "amazon-ebs", keys) for src, keys in SDK_TABLES.items() if any(s in src for s in EBS_SDK)],
]


@pytest.mark.parametrize(("source", "builder", "keys"), OPTION_TABLES,
                         ids=[f"{b}-{i}" for i, (_, b, _) in enumerate(OPTION_TABLES)])
def test_every_documented_builder_option_is_known(source: str, builder: str, keys: Sequence[str]) -> None:
    props = load_builder(builder).options_schema["properties"]
    missing = [k for k in keys if k not in props]
    assert not missing, f"{builder} lacks options of {source}: {missing}"


@pytest.mark.parametrize("module", [qemu_config, ebs_config], ids=["qemu", "amazon-ebs"])
def test_each_option_is_sorted_once_and_documented(module: Any) -> None:
    supported, ignored, refused = set(module.SUPPORTED), set(module.IGNORED), set(module.REFUSED)
    assert not (ignored & refused) and not (supported & refused)
    docs = DOCS.read_text()
    for key, reason in {**module.IGNORED, **module.REFUSED}.items():
        assert f"| `{key}` | {reason} |" in docs, f"docs/packer-options.md does not list {key}"


_ZEROS: Mapping[str, Any] = {"string": "", "boolean": False, "array": [], "object": {}}


@pytest.mark.parametrize("builder", ["qemu", "amazon-ebs"])
def test_ignored_options_warn_and_refused_options_accept_zero_values(tmp_path: Path, builder: str) -> None:
    module = qemu_config if builder == "qemu" else ebs_config
    cls = load_builder(builder)
    if builder == "qemu":
        base: dict[str, Any] = {"iso_url": "x.iso", "iso_checksum": "none", "ssh_username": "u",
                                "output_directory": str(tmp_path / "o")}
    else:
        base = _ebs_raw()
    ignored = {key: "on" for key in module.IGNORED}
    options = validate_options(cls, {**base, **ignored, **{k: False for k in module.REFUSED}}, builder)
    _, warnings = module.prepare_config(options, "b", tmp_path, False, builder)
    for key in module.IGNORED:
        assert any(w.startswith(f"{key} is ignored: ") for w in warnings), key
    for key in module.REFUSED:
        with pytest.raises(ConfigError, match=re.escape(f"{key}: not supported by stemforge")):
            module.prepare_config(validate_options(cls, {**base, key: "on"}, builder), "b", tmp_path, False, builder)


PROVISIONER_OPTIONS = [
    ("packer provisioner/shell/provisioner.go Config + packer-plugin-sdk shell/shell.go", "shell",
     ("inline", "script", "scripts", "environment_vars", "env", "env_var_format", "valid_exit_codes", "binary",
      "inline_shebang", "remote_folder", "remote_file", "remote_path", "execute_command", "use_env_var_file",
      "expect_disconnect", "skip_clean", "start_retry_timeout", "pause_after")),
    ("packer provisioner/file/provisioner.go Config", "file",
     ("source", "sources", "content", "destination", "direction", "generated")),
    ("packer-plugin-sdk shell-local/config.go Config (provisioner)", "shell-local",
     ("command", "inline", "inline_shebang", "only_on", "script", "scripts", "environment_vars", "env",
      "env_var_format", "execute_command", "tempfile_extension", "use_linux_pathing", "valid_exit_codes")),
    ("packer provisioner/breakpoint/provisioner.go Config", "breakpoint", ("note", "disable")),
]


@pytest.mark.parametrize(("source", "type_name", "keys"), PROVISIONER_OPTIONS,
                         ids=[t for _, t, _ in PROVISIONER_OPTIONS])
def test_every_documented_provisioner_option_is_known(source: str, type_name: str, keys: Sequence[str]) -> None:
    props = load_provisioner(type_name).options_schema["properties"]
    assert not [k for k in keys if k not in props], source


POST_PROCESSOR_OPTIONS = [
    ("packer post-processor/shell-local/post-processor.go (sl.Config)", "shell-local",
     ("command", "inline", "inline_shebang", "only_on", "script", "scripts", "environment_vars", "env",
      "env_var_format", "execute_command", "tempfile_extension", "use_linux_pathing", "valid_exit_codes")),
    ("packer post-processor/artifice/post-processor.go Config", "artifice", ("files",)),
]


@pytest.mark.parametrize(("source", "type_name", "keys"), POST_PROCESSOR_OPTIONS,
                         ids=[t for _, t, _ in POST_PROCESSOR_OPTIONS])
def test_every_documented_post_processor_option_is_known(source: str, type_name: str,
                                                         keys: Sequence[str]) -> None:
    props = load_post_processor(type_name).options_schema["properties"]
    assert not [k for k in keys if k not in props], source


def test_qemu_boot_steps_type_their_commands(tmp_path: Path) -> None:
    """packer-plugin-qemu config.go ``boot_steps``: ``[command, description]`` tuples; the commands are typed."""
    raw = {"iso_url": "x.iso", "iso_checksum": "none", "ssh_username": "u", "output_directory": str(tmp_path / "o"),
           "boot_steps": [["<enter><wait>", "accept"], ["text<enter>"]]}
    cfg, _ = qemu_config.prepare_config(validate_options(load_builder("qemu"), raw, "qemu"), "q", tmp_path, False,
                                        "qemu")
    assert cfg.boot_command == ["<enter><wait>", "text<enter>"]
    with pytest.raises(ConfigError, match="mutually exclusive"):
        qemu_config.prepare_config({**raw, "boot_command": ["x"]}, "q", tmp_path, False, "qemu")


# ---------------------------------------------- 6. core components: shell-local pp, artifice, breakpoint

def test_core_components_in_a_real_build(tmp_path: Path) -> None:
    """packer provisioner/breakpoint (disabled, and not on a terminal: no pause), post-processor/shell-local (runs
    on the host with PACKER_BUILD_NAME, passes the artifact through, one-string execute_command through sh -c) and
    post-processor/artifice (replaces the artifact with the build's own files; checksum then works on those)."""
    out = tmp_path / "out"
    template = write_json(tmp_path / "t.json", {
        "builders": [{"type": "file", "name": "img", "target": str(out / "image.raw"), "content": "image"}],
        "provisioners": [
            {"type": "breakpoint", "disable": True, "note": "look here"},
            {"type": "breakpoint", "note": "CI has no terminal"},
            {"type": "shell-local", "inline": [f"echo payload > {out / 'payload.bin'}"]},
        ],
        "post-processors": [[
            {"type": "shell-local", "inline": [f"echo $PACKER_BUILD_NAME:$PACKER_BUILDER_TYPE > {out / 'pp.txt'}"]},
            {"type": "shell-local", "execute_command": "echo old-style {{.Script}} > " + str(out / "old.txt"),
             "inline": ["true"]},
            {"type": "artifice", "files": [str(out / "payload.*"), str(out / "missing.bin")]},
            {"type": "checksum", "checksum_types": ["sha256"], "output": str(out / "{{.BuildName}}.sha256")},
        ]],
    })
    result = stemforge(["build", "-machine-readable", str(template)], tmp_path)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert 'Breakpoint provisioner with note "look here" disabled; continuing...' in text
    assert 'Pausing at breakpoint provisioner with note "CI has no terminal".' in text
    assert "continuing without waiting" in text
    assert (out / "pp.txt").read_text().strip() == "img:file"
    assert (out / "old.txt").read_text().startswith("old-style /")
    assert f"Discarding files from artifact: {out / 'image.raw'}" in text
    assert f"Using these artifact files: {out / 'payload.bin'}" in text
    sums = (out / "img.sha256").read_text()
    assert sums.endswith("\tpayload.bin\n") and "image.raw" not in sums
    assert (out / "image.raw").exists()  # artifice keeps its input (Packer's default)


def test_artifice_requires_files(tmp_path: Path) -> None:
    template = write_json(tmp_path / "t.json", {
        "builders": [{"type": "file", "target": str(tmp_path / "x"), "content": "x"}],
        "post-processors": [{"type": "artifice"}],
    })
    result = stemforge(["validate", str(template)], tmp_path)
    assert result.returncode == 1
    assert "No files specified in artifice configuration" in result.stdout + result.stderr


# ------------------------------------------------------------------------------- 7. validate -only filters

VALIDATE_ONLY_CASES = [
    ("packer core.go BuildNames: -only names nothing known", ["-only=nope"], 0, "The configuration is valid."),
    ("packer core.go BuildNames: unknown names are dropped", ["-only=nope,good"], 0, "The configuration is valid."),
    ("packer core.go BuildNames: -except of an unknown name", ["-except=nope"], 1, "bad"),
    ("the selected build is still checked", ["-only=bad"], 1, "bad"),
]


@pytest.mark.parametrize(("source", "flags", "code", "needle"), VALIDATE_ONLY_CASES,
                         ids=["only-unknown", "only-mixed", "except-unknown", "only-bad"])
def test_validate_only_unknown_is_not_an_error(tmp_path: Path, source: str, flags: list[str], code: int,
                                                needle: str) -> None:
    template = write_json(tmp_path / "t.json", {"builders": [
        {"type": "file", "name": "good", "target": str(tmp_path / "g"), "content": "g"},
        {"type": "file", "name": "bad", "target": str(tmp_path / "b"), "content": "b", "bogus_option": 1},
    ]})
    result = stemforge(["validate", *flags, str(template)], tmp_path)
    assert result.returncode == code, (source, result.stdout + result.stderr)
    assert needle in result.stdout + result.stderr, source


PROVISIONER_WEAK = [
    (DECODE_GO + " (provisioners share the decoder)", "shell",
     {"inline": "echo a,echo b", "expect_disconnect": "true", "valid_exit_codes": "0,2300218", "skip_clean": ""},
     {"inline": ["echo a", "echo b"], "expect_disconnect": True, "valid_exit_codes": [0, 2300218]}),
    (DECODE_GO + " (provisioners share the decoder)", "file",
     {"sources": "a.txt,b.txt", "destination": "/tmp/", "generated": "1"},
     {"sources": ["a.txt", "b.txt"], "destination": "/tmp/", "generated": True}),
]


@pytest.mark.parametrize(("source", "type_name", "given", "expected"), PROVISIONER_WEAK, ids=["shell", "file"])
def test_weak_decoding_reaches_provisioners(source: str, type_name: str, given: dict[str, Any],
                                            expected: dict[str, Any]) -> None:
    assert validate_options(load_provisioner(type_name), given, type_name) == expected, source
