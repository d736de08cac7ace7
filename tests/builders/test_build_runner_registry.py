"""Plugin discovery by convention and option validation (Packer's weak typing and words)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from builders.builder_types.file import FileBuilder
from builders.core import ConfigError, Plugin
from builders.provisioners.shell_local import ShellLocalProvisioner
from builders.registry import (
    UnknownPluginError,
    coerce,
    known_types,
    load_builder,
    load_communicator,
    load_post_processor,
    load_provisioner,
    validate_options,
)


def test_loads_by_convention() -> None:
    assert load_builder("file") is FileBuilder
    assert load_provisioner("shell-local") is ShellLocalProvisioner
    assert load_post_processor("manifest").type_name == "manifest"
    assert load_communicator("local").__name__ == "LocalCommunicator"
    assert {"file", "qemu", "debian"} <= set(known_types("builder"))
    assert {"shell", "file", "shell-local"} <= set(known_types("provisioner"))


@pytest.mark.parametrize("bad", ["qemuu", "../qemu", "file.x", "os", "builder_types"])
def test_unknown_types_use_packer_words_and_list_known(bad: str) -> None:
    with pytest.raises(UnknownPluginError) as err:
        load_builder(bad)
    text = str(err.value)
    assert f"The builder {bad} is unknown by Packer, and is likely part of a plugin that is not installed." in text
    assert "stemforge has these builder types:" in text and "file" in text
    if bad == "qemuu":
        assert "Did you mean 'qemu'?" in text


def test_missing_type() -> None:
    with pytest.raises(ConfigError, match="missing 'type'"):
        load_provisioner("")


class Sample(Plugin):
    type_name: ClassVar[str] = "sample"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "memory": {"type": "integer"},
            "ratio": {"type": "number"},
            "headless": {"type": "boolean"},
            "format": {"type": "string", "enum": ["qcow2", "raw"]},
            "disk_size": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "codes": {"type": "array", "items": {"type": "integer"}},
            "nested": {"type": "object", "additionalProperties": False,
                       "properties": {"inner": {"type": "integer"}}},
        },
    }


def test_weak_typing_like_packer_decoder() -> None:
    value = validate_options(Sample, {"name": 5, "memory": "2048", "ratio": "1.5", "headless": "true",
                                      "disk_size": "40960M", "codes": ["0", "3"], "nested": {"inner": "7"}},
                             "sample")
    assert value == {"name": "5", "memory": 2048, "ratio": 1.5, "headless": True, "disk_size": "40960M",
                     "codes": [0, 3], "nested": {"inner": 7}}
    assert coerce("0x10", {"type": "integer"}) == 16
    assert coerce("F", {"type": "boolean"}) is False
    assert coerce(True, {"type": "integer"}) == 1
    assert coerce("x", {"type": "array", "items": {"type": "string"}}) == ["x"]


def test_every_problem_reported_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        validate_options(Sample, {"memroy": 1, "memory": "lots", "format": "vmdk", "headless": "maybe",
                                  "nested": {"iner": 1}, "disk_size": [1]}, "qemu.vm")
    lines = str(err.value).splitlines()
    assert "qemu.vm: unknown configuration key: 'memroy' (did you mean 'memory'?)" in lines
    assert "qemu.vm: 'memory' expected type 'integer', got unconvertible type 'string'" in lines
    assert "qemu.vm: 'format' must be one of: qcow2, raw (got 'vmdk')" in lines
    assert "qemu.vm: 'headless' expected type 'boolean', got unconvertible type 'string'" in lines
    assert "qemu.vm: unknown configuration key: 'nested.iner' (did you mean 'inner'?)" in lines
    assert "qemu.vm: 'disk_size' expected type 'integer or string', got unconvertible type '[]interface {}'" in lines
    assert "qemu.vm: missing required configuration key: 'name'" in lines
    assert len(lines) == 7
