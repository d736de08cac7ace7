"""stemcell.MF parsing, validation, version preservation and round-tripping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stemcells.errors import StemcellError
from stemcells.manifest import EMPTY_SHA1, StemcellManifest, stemcell_filename, validate_manifest_data

SHA1 = "4f1833dc8ecd92bae281aaebc5be13ff09aff0f1"


def manifest_yaml(**overrides: Any) -> str:
    """A valid heavy OpenStack manifest as YAML text; ``overrides`` replace or (with None) drop fields."""
    data: dict[str, Any] = {
        "name": "bosh-openstack-kvm-ubuntu-jammy-go_agent",
        "version": "1.50",
        "bosh_protocol": "1",
        "api_version": 3,
        "sha1": SHA1,
        "operating_system": "ubuntu-jammy",
        "stemcell_formats": ["openstack-qcow2"],
        "cloud_properties": {
            "infrastructure": "openstack",
            "architecture": "x86_64",
            "root_device_name": "/dev/sda1",
            "disk": 5120,
            "disk_format": "qcow2",
        },
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


# -- version preservation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["1.50", "621.125", "1.0", "3", "0.0.0-dev.1", "1.10", "007"])
def test_plain_yaml_version_is_kept_exactly_as_written(written: str) -> None:
    text = manifest_yaml().replace("version: '1.50'", f"version: {written}")
    assert f"version: {written}\n" in text
    manifest = StemcellManifest.from_yaml(text)
    assert manifest.version == written


def test_quoted_version_is_kept() -> None:
    text = manifest_yaml().replace("version: '1.50'", 'version: "1.50"')
    assert StemcellManifest.from_yaml(text).version == "1.50"


def test_to_yaml_quotes_a_numeric_looking_version_so_it_round_trips() -> None:
    manifest = StemcellManifest.from_yaml(manifest_yaml().replace("version: '1.50'", "version: 1.50"))
    text = manifest.to_yaml()
    assert "version: '1.50'" in text
    assert yaml.safe_load(text)["version"] == "1.50"
    assert StemcellManifest.from_yaml(text) == manifest


def test_version_preservation_applies_only_to_version() -> None:
    manifest = StemcellManifest.from_yaml(manifest_yaml(bosh_protocol=1))
    assert manifest.bosh_protocol == 1
    assert manifest.cloud_properties["disk"] == 5120


def test_python_caller_passing_a_float_version_is_rejected() -> None:
    with pytest.raises(StemcellError, match=r"field 'version' must be a version string"):
        StemcellManifest(name="bosh-x", version=1.5, sha1=SHA1, operating_system="ubuntu-jammy")  # type: ignore[arg-type]


# -- round trip and defaults ---------------------------------------------------------------------------------


def test_round_trip_keeps_every_field_and_unknown_extras() -> None:
    text = manifest_yaml(future_field={"a": 1})
    manifest = StemcellManifest.from_yaml(text)
    assert manifest.extra == {"future_field": {"a": 1}}
    again = StemcellManifest.from_yaml(manifest.to_yaml())
    assert again == manifest
    assert list(yaml.safe_load(manifest.to_yaml())) == [
        "name",
        "version",
        "bosh_protocol",
        "api_version",
        "sha1",
        "operating_system",
        "stemcell_formats",
        "cloud_properties",
        "future_field",
    ]


def test_defaults_for_optional_fields() -> None:
    manifest = StemcellManifest.from_yaml(manifest_yaml(api_version=None, bosh_protocol=None, stemcell_formats=None))
    assert manifest.api_version == 3
    assert manifest.bosh_protocol == "1"
    assert manifest.stemcell_formats == []


def test_sha1_is_lower_cased() -> None:
    assert StemcellManifest.from_yaml(manifest_yaml(sha1=SHA1.upper())).sha1 == SHA1


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "stemcell.MF"
    path.write_text(manifest_yaml())
    assert StemcellManifest.load(path).name == "bosh-openstack-kvm-ubuntu-jammy-go_agent"
    path.write_text(manifest_yaml(sha1="nope"))
    with pytest.raises(StemcellError) as info:
        StemcellManifest.load(path)
    assert info.value.message == f"{path}: field 'sha1' must be a 40-character hex string"


# -- validation messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sha1", "abc", "stemcell.MF: field 'sha1' must be a 40-character hex string"),
        ("sha1", 12, "stemcell.MF: field 'sha1' must be a 40-character hex string"),
        ("name", "bad name", "stemcell.MF: field 'name' must be a name of letters"),
        ("version", [1, 2], "stemcell.MF: field 'version' must be a version string"),
        ("version", "1 50", "stemcell.MF: field 'version' must be a version string"),
        ("version", "../1", "stemcell.MF: field 'version' must be a version string"),
        ("api_version", "3", "stemcell.MF: field 'api_version' must be a positive integer"),
        ("api_version", 0, "stemcell.MF: field 'api_version' must be a positive integer"),
        ("bosh_protocol", "one", "stemcell.MF: field 'bosh_protocol' must be an integer or a numeric string"),
        ("operating_system", "", "stemcell.MF: field 'operating_system' must be an operating system name"),
        ("stemcell_formats", "openstack-qcow2", "stemcell.MF: field 'stemcell_formats' must be a list"),
        ("stemcell_formats", ["a", "a"], "stemcell.MF: field 'stemcell_formats' must be a list of distinct"),
        ("stemcell_formats", ["ok", "not ok"], "stemcell.MF: field 'stemcell_formats[1]' must be a format name"),
        ("cloud_properties", ["x"], "stemcell.MF: field 'cloud_properties' must be a mapping"),
        ("cloud_properties", {"disk": "big"}, "stemcell.MF: field 'cloud_properties.disk' must be a positive"),
        ("cloud_properties", {"root_device_name": "sda"}, "field 'cloud_properties.root_device_name' must be"),
        ("cloud_properties", {"ami": {}}, "field 'cloud_properties.ami' must be a non-empty mapping"),
        ("cloud_properties", {"ami": {"us-east-1": 5}}, "field 'cloud_properties.ami.us-east-1'"),
    ],
)
def test_invalid_field_is_named_in_the_error(field: str, value: Any, expected: str) -> None:
    with pytest.raises(StemcellError) as info:
        StemcellManifest.from_yaml(manifest_yaml(**{field: value}))
    assert expected in info.value.message
    assert info.value.message.startswith("stemcell.MF: ")


@pytest.mark.parametrize("field", ["name", "version", "sha1", "operating_system", "cloud_properties"])
def test_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(StemcellError) as info:
        StemcellManifest.from_yaml(manifest_yaml(**{field: None}))
    assert info.value.message == f"stemcell.MF: missing required field {field!r}"


def test_several_bad_fields_are_all_listed() -> None:
    with pytest.raises(StemcellError) as info:
        StemcellManifest.from_yaml(manifest_yaml(sha1="x", api_version="x"))
    assert "field 'api_version'" in info.value.message
    assert "field 'sha1'" in info.value.message


def test_error_names_the_given_source() -> None:
    with pytest.raises(StemcellError, match=r"^stemcell.MF in x.tgz: field 'sha1'"):
        StemcellManifest.from_yaml(manifest_yaml(sha1="x"), source="stemcell.MF in x.tgz")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "stemcell.MF: is empty"),
        ("- a\n- b\n", "stemcell.MF: must be a mapping of fields, not a list"),
        ("just a string\n", "stemcell.MF: must be a mapping of fields, not a single value"),
        ("name: [unclosed\n", "stemcell.MF: not valid YAML"),
        ("name: a\nname: b\n", "stemcell.MF: field 'name' appears more than once"),
        ("name: &n a\nversion: *n\n", "stemcell.MF: field 'version' uses a YAML alias"),
        ("name: !!python/object/apply:os.system ['true']\n", "stemcell.MF: not valid YAML"),
    ],
)
def test_malformed_yaml_is_rejected_with_a_clear_message(text: str, expected: str) -> None:
    with pytest.raises(StemcellError) as info:
        StemcellManifest.from_yaml(text)
    assert info.value.message.startswith(expected)


def test_oversized_manifest_is_refused() -> None:
    with pytest.raises(StemcellError, match="the limit is"):
        StemcellManifest.from_yaml("a: " + "x" * (1024 * 1024) + "\n")


def test_validate_manifest_data_accepts_a_valid_mapping() -> None:
    validate_manifest_data(yaml.safe_load(manifest_yaml()))


def test_manifest_owns_its_data() -> None:
    props: dict[str, Any] = {"ami": {"us-east-1": "ami-1"}}
    formats = ("aws-light",)
    manifest = StemcellManifest(
        name="bosh-aws-xen-hvm-ubuntu-jammy-go_agent",
        version="1",
        sha1=EMPTY_SHA1,
        operating_system="ubuntu-jammy",
        stemcell_formats=formats,  # type: ignore[arg-type]
        cloud_properties=props,
    )
    props["ami"]["us-east-1"] = "changed"
    assert manifest.cloud_properties == {"ami": {"us-east-1": "ami-1"}}
    assert manifest.stemcell_formats == ["aws-light"]


def test_a_string_is_not_a_list_of_formats() -> None:
    with pytest.raises(StemcellError, match="field 'stemcell_formats' must be a list"):
        StemcellManifest(
            name="bosh-x",
            version="1",
            sha1=EMPTY_SHA1,
            operating_system="ubuntu-jammy",
            stemcell_formats="aws-light",  # type: ignore[arg-type]
        )


def test_replace_revalidates() -> None:
    manifest = StemcellManifest.from_yaml(manifest_yaml())
    assert manifest.replace(version="2.0").version == "2.0"
    with pytest.raises(StemcellError, match="field 'sha1'"):
        manifest.replace(sha1="zz")


# -- light stemcells and file names --------------------------------------------------------------------------


def test_is_light_by_empty_sha1_or_light_format() -> None:
    heavy = StemcellManifest.from_yaml(manifest_yaml())
    assert not heavy.is_light
    assert heavy.replace(sha1=EMPTY_SHA1).is_light
    assert heavy.replace(stemcell_formats=["aws-light"]).is_light


def test_filenames() -> None:
    heavy = StemcellManifest.from_yaml(manifest_yaml())
    assert heavy.filename == "bosh-stemcell-1.50-openstack-kvm-ubuntu-jammy-go_agent.tgz"
    light = heavy.replace(
        name="bosh-aws-xen-hvm-ubuntu-jammy-go_agent", sha1=EMPTY_SHA1, stemcell_formats=["aws-light"]
    )
    assert light.filename == "light-bosh-stemcell-1.50-aws-xen-hvm-ubuntu-jammy-go_agent.tgz"
    assert stemcell_filename("custom", "2", light=False) == "bosh-stemcell-2-custom.tgz"


def test_region_image_ids_and_missing_region() -> None:
    manifest = StemcellManifest.from_yaml(
        manifest_yaml(
            sha1=EMPTY_SHA1,
            stemcell_formats=["aws-light"],
            cloud_properties={"ami": {"us-east-1": "ami-1", "eu-west-1": "ami-2"}},
        )
    )
    assert manifest.region_image_ids() == {"us-east-1": "ami-1", "eu-west-1": "ami-2"}
    assert manifest.image_id_for_region("eu-west-1") == "ami-2"
    with pytest.raises(StemcellError, match="Stemcell does not contain an image in region ap-south-1"):
        manifest.image_id_for_region("ap-south-1")
    assert StemcellManifest.from_yaml(manifest_yaml()).region_image_ids() == {}
