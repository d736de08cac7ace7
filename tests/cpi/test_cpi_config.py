"""``cpi.config``: loading JSON/YAML configs, errors naming file and field, the context merge, and the hand checks
that let ``info`` skip jsonschema (they must accept exactly what the schema accepts)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cpi import config as cpi_config
from cpi.errors import CpiError
from cpi.schemas import validator_for

PLUGINS = ("libvirt",)

GOOD: dict[str, Any] = {
    "cloud": {
        "plugin": "libvirt",
        "properties": {
            "state_dir": "/var/lib/stemforge/cpi",
            "stemcell_formats": ["openstack-qcow2"],
            "log_level": "debug",
            "agent": {
                "mbus": "nats://nats:pw@10.0.0.6:4222",
                "ntp": ["0.pool.ntp.org"],
                "blobstore": {"provider": "dav", "options": {"endpoint": "http://10.0.0.6:25250"}},
            },
            "libvirt": {"uri": "qemu:///system"},
        },
    }
}


def write(tmp_path: Path, text: str, name: str = "cpi.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_json(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(GOOD))
    loaded = cpi_config.load(str(path), PLUGINS)
    assert loaded.plugin == "libvirt"
    assert loaded.properties == GOOD["cloud"]["properties"]
    assert loaded.path == str(path)


def test_load_yaml(tmp_path: Path) -> None:
    import yaml

    path = write(tmp_path, yaml.safe_dump(GOOD), "cpi.yml")
    assert cpi_config.load(str(path), PLUGINS).properties == GOOD["cloud"]["properties"]


def test_properties_default_to_empty(tmp_path: Path) -> None:
    for text in ('{"cloud": {"plugin": "libvirt"}}', "cloud:\n  plugin: libvirt\n  properties:\n"):
        assert cpi_config.load(str(write(tmp_path, text)), PLUGINS).properties == {}


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cpi.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert cpi_config.load(str(path), PLUGINS).plugin == "libvirt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("  \n", "the file is empty"),
        ('{"cloud": ', "not valid JSON: Expecting value at line 1 column 11"),
        ('{"cloud": {"plugin": "libvirt", "plugin": "x"}}', 'not valid JSON: duplicate key "plugin"'),
        ('{"cloud": {"plugin": "libvirt"}, "x": NaN}', "not valid JSON: NaN is not valid JSON"),
        ("- a\n- b\n", "expected a mapping at the top level, got array"),
        ("just text", "expected a mapping at the top level, got string"),
        ("cloud: [unclosed\n", "neither valid JSON nor valid YAML"),
        ('{"cloud": {"plugin": "libvirt", "properties": {"log_level": "LOUD"}}}', "'cloud.properties.log_level'"),
        ('{"cloud": {"plugin": "aws"}}', "'cloud.plugin': is not a known provider plugin (known: libvirt)"),
        ('{"cloud": {"plugin": "libvirt", "properties": {"agent": []}}}', "'cloud.properties.agent': expected an"),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"agent": {"ntp": ["", "x"]}}}}',
            "'cloud.properties.agent.ntp[0]': must not be empty",
        ),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"agent": {"blobstore": {"provider": "s", "options": 1}}}}}',
            "'cloud.properties.agent.blobstore.options': expected an object, got integer",
        ),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CpiError) as raised:
        cpi_config.load(str(path), PLUGINS)
    assert raised.value.message.startswith(f"config {path}: ")
    assert message in raised.value.message
    assert type(raised.value) is CpiError


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(CpiError, match="file not found"):
        cpi_config.load(str(tmp_path / "missing.json"), PLUGINS)
    with pytest.raises(CpiError, match="is a directory"):
        cpi_config.load(str(tmp_path), PLUGINS)
    invalid = tmp_path / "latin1.json"
    invalid.write_bytes(b'{"cloud": "\xe9"}')
    with pytest.raises(CpiError, match=r"not valid UTF-8 \(byte 11\)"):
        cpi_config.load(str(invalid), PLUGINS)


def test_yaml_error_reports_position_only(tmp_path: Path) -> None:
    path = write(tmp_path, "cloud:\n  plugin: libvirt\n  properties:\n    password: hunter22: x\n", "cpi.yml")
    with pytest.raises(CpiError) as raised:
        cpi_config.load(str(path), PLUGINS)
    assert "line 4 column" in raised.value.message and "hunter22" not in raised.value.message


def test_merge_context() -> None:
    properties = {"agent": {"mbus": "nats://a", "ntp": ["x"]}, "libvirt": {"uri": "qemu:///system"}, "keep": 1}
    context = {
        "director_uuid": "d",
        "request_id": "cpi-1",
        "vm": {"stemcell": {"api_version": 3}},
        "agent": {"mbus": "nats://b"},
        "libvirt": "replaced entirely",
        "new": {"a": 1},
    }
    original = copy.deepcopy(properties)
    merged = cpi_config.merge_context(properties, context)
    assert merged == {
        "agent": {"mbus": "nats://b", "ntp": ["x"]},
        "libvirt": "replaced entirely",
        "keep": 1,
        "new": {"a": 1},
    }
    assert properties == original, "inputs are not modified"


def test_validate_properties_after_merge(tmp_path: Path) -> None:
    loaded = cpi_config.load(str(write(tmp_path, json.dumps(GOOD))), PLUGINS)
    merged = cpi_config.merge_context(loaded.properties, {"agent": {"mbus": ""}})
    with pytest.raises(CpiError, match=r"merged with the request context: 'cloud.properties.agent.mbus': must not be"):
        cpi_config.validate_properties(merged, loaded)


# -- hand checks == schema -------------------------------------------------------------------------------------------


def _mutations(document: Any) -> list[Any]:
    """``document`` with each nested value replaced by values of every JSON type, and each key removed."""
    replacements: list[Any] = [
        None,
        True,
        0,
        7,
        1.5,
        "",
        "x",
        "debug",
        "libvirt",
        [],
        [""],
        ["x"],
        {},
        {"provider": "s"},
    ]
    out: list[Any] = []

    def walk(node: Any, rebuild: Any) -> None:
        if isinstance(node, dict):
            for key in list(node):
                out.append(rebuild({k: v for k, v in node.items() if k != key}))
                for value in replacements:
                    out.append(rebuild({**node, key: value}))
                walk(node[key], lambda child, key=key, node=node: rebuild({**node, key: child}))
            out.append(rebuild({**node, "unexpected": 1}))
        elif isinstance(node, list):
            for index in range(len(node)):
                walk(node[index], lambda child, i=index, node=node: rebuild([*node[:i], child, *node[i + 1 :]]))
            out.append(rebuild([]))

    walk(document, lambda doc: doc)
    return out


def test_config_hand_check_matches_schema() -> None:
    validator = validator_for(cpi_config.config_schema(PLUGINS))
    corpus = [GOOD, {}, [], None, "x", *_mutations(GOOD)]
    assert len(corpus) > 200
    disagreements = [doc for doc in corpus if cpi_config.config_ok(doc, PLUGINS) != validator.is_valid(doc)]
    assert disagreements == []
    verdicts = {cpi_config.config_ok(doc, PLUGINS) for doc in corpus}
    assert verdicts == {True, False}


def test_properties_hand_check_matches_schema() -> None:
    validator = validator_for(cpi_config.PROPERTIES_SCHEMA)
    corpus = [None, {}, [], *_mutations(GOOD["cloud"]["properties"])]
    disagreements = [doc for doc in corpus if cpi_config.properties_ok(doc) != validator.is_valid(doc)]
    assert disagreements == []


def test_json_config_does_not_import_yaml_or_jsonschema(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(GOOD))
    code = (
        "import json, sys\n"
        "from cpi import config\n"
        f"config.load({str(path)!r}, ('libvirt',))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    modules = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout))
    assert "yaml" not in modules and "jsonschema" not in modules


# -- `stemforge cpi wrapper`: the YAML validated once and written as the job's JSON config ---------------------------

YAML_CONFIG = """\
# the README's kind of config: comments, an anchor, block style
cloud:
  plugin: libvirt
  properties:
    state_dir: &state /var/lib/stemforge/cpi
    log_level: debug
    agent:
      mbus: nats://nats:mbus-SECRET@127.0.0.1:4222
      ntp: [127.0.0.1]
    libvirt:
      uri: qemu:///system
      console_dir: *state
"""


def info_modules(wrapper: Path, tmp_path: Path) -> tuple[dict[str, Any], set[str]]:
    """``info`` through the interpreter and config ``wrapper`` names (its exec line, run as is under the director's
    environment), and the modules loaded by then."""
    from cpi.wrapper import command

    argv = command(wrapper)
    listing = tmp_path / "modules.json"
    index = argv.index("-c") + 1
    argv[index] = (f"import sys, json\ntry:\n    exec(compile({argv[index]!r}, 'cpi', 'exec'))\nfinally:\n"
                   f"    open({str(listing)!r}, 'w').write(json.dumps(sorted(sys.modules)))\n")
    request = json.dumps({"method": "info", "arguments": [], "context": {"director_uuid": "x"}})
    proc = subprocess.run(argv, input=request, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/")
    return json.loads(proc.stdout), set(json.loads(listing.read_text()))


def test_wrapper_writes_a_yaml_config_as_json(tmp_path: Path) -> None:
    import argparse

    import yaml

    from cpi.cli import register
    from cpi.wrapper import command

    source = write(tmp_path, YAML_CONFIG, "cpi.yml")
    source.chmod(0o640)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["cpi", "wrapper", "--config", str(source), "--out", str(tmp_path / "job")])
    assert args.handler(args) == 0
    converted = tmp_path / "job" / "config" / "cpi.json"
    wrapper = tmp_path / "job" / "bin" / "cpi"
    assert wrapper.read_text().startswith("#!") and command(wrapper)[-2:] == ["--config", str(converted)]
    assert json.loads(converted.read_text()) == yaml.safe_load(YAML_CONFIG)
    assert converted.stat().st_mode & 0o777 == 0o640  # the source's bits: it holds the same secrets
    assert sorted(p.name for p in converted.parent.iterdir()) == ["cpi.json"]  # no temporary left
    response, modules = info_modules(wrapper, tmp_path)
    assert response["error"] is None and response["result"]["api_version"] >= 1
    assert "yaml" not in modules and "jsonschema" not in modules
    # -S with the sys.path site made baked into bin/cpi: site (its .pth files, directory scans) is skipped
    # (the #!-started script passes "-IS" as one word; the shell form, used when the interpreter's path is too long
    # for a #! line, passes "-I" "-S")
    argv = command(wrapper)
    assert (argv[1] == "-IS" or argv[1:3] == ["-I", "-S"]) and "site" not in modules

    # before: the same YAML named as it is (as --skip-config-check still does) imports PyYAML on every call
    from cpi.wrapper import write_wrapper

    raw = write_wrapper(source, tmp_path / "raw", check_config=False)
    assert command(raw)[-1] == str(source) and not (tmp_path / "raw" / "config").exists()
    assert "yaml" in info_modules(raw, tmp_path)[1]


def test_wrapper_names_a_json_config_as_it_is(tmp_path: Path) -> None:
    from cpi.wrapper import command, write_wrapper

    source = write(tmp_path, json.dumps(GOOD))
    wrapper = write_wrapper(source, tmp_path / "job")
    assert command(wrapper)[-1] == str(source)
    assert not (tmp_path / "job" / "config").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cloud: {plugin: libvirt, properties: {libvirt: {since: 2024-01-02}}}",
         "cloud.properties.libvirt.since: a YAML date has no JSON form"),
        ("cloud: {plugin: libvirt, properties: {libvirt: {ports: {22: 2222}}}}",
         "cloud.properties.libvirt.ports: key 22 is not a string (int)"),
        ("cloud: {plugin: libvirt, properties: {libvirt: {ratio: .nan}}}",
         "cloud.properties.libvirt.ratio: nan is not a JSON number"),
        ("cloud: {plugin: libvirt, properties: {log_level: loud}}",
         "cloud.properties.log_level"),
    ],
)
def test_wrapper_refuses_what_json_cannot_carry(tmp_path: Path, text: str, message: str) -> None:
    from cpi.wrapper import WrapperError, write_wrapper

    source = write(tmp_path, text, "cpi.yml")
    with pytest.raises(WrapperError, match=re.escape(message)):
        write_wrapper(source, tmp_path / "job")
    assert not (tmp_path / "job").exists()  # nothing half-written


def test_wrapper_is_a_python_script_unless_the_shebang_cannot_carry_the_path() -> None:
    from cpi.wrapper import ENV, MAX_SHEBANG, render_direct

    text = render_direct("/opt/venv/bin/python", "/etc/cpi 'x'.json", ["-I"], block_signals=True)
    assert text is not None and text.startswith(f"#!{ENV} -S --block-signal=TERM,INT,HUP /opt/venv/bin/python -I\n")
    assert "CONFIG = \"/etc/cpi 'x'.json\"\n" in text  # any config path, as a Python literal
    assert render_direct("/opt/venv/bin/python", "/c.json", [], block_signals=False).startswith(  # type: ignore[union-attr]
        "#!/opt/venv/bin/python\n")
    # -S with the sys.path site made, baked in; the flags as one #! argument
    text = render_direct("/opt/venv/bin/python", "/c.json", ["-I", "-S"], block_signals=False,
                         sys_path=["/opt/venv/lib/python3.11/site-packages", "/src"])
    assert text is not None and text.startswith("#!/opt/venv/bin/python -IS\n")
    assert "SYS_PATH = ['/opt/venv/lib/python3.11/site-packages', '/src']\nimport sys; sys.path[:] = SYS_PATH\n" in text
    # a blank, an '=' (env -S would take it for an assignment), quotes, or a line the kernel may cut: the shell form
    for python in ("/opt/my venv/bin/python", "/opt/a=b/bin/python", "/opt/it's/python", "/" + "v" * MAX_SHEBANG):
        assert render_direct(python, "/c.json", ["-I"], block_signals=True) is None
