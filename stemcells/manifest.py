"""``stemcell.MF``: the stemcell manifest the BOSH director reads.

A ``StemcellManifest`` is always valid: construction runs the JSON schema below, so code holding one never
re-checks fields. ``from_yaml`` parses with PyYAML's safe loader but keeps ``version`` exactly as written (a
plain YAML ``1.50`` is the string ``"1.50"``, not the float ``1.5``), because a stemcell version is an opaque
string the director compares and shows verbatim. ``to_yaml`` writes the same fields back, quoting versions
that need it.

Top-level fields the schema does not know are kept in ``extra`` and written back, so a manifest from a newer
builder round-trips unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jsonschema
import yaml

from stemcells.errors import StemcellError

MANIFEST_NAME: Final = "stemcell.MF"
#: sha1 of empty input: the ``sha1`` of a light stemcell's 0-byte ``image``.
EMPTY_SHA1: Final = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
DEFAULT_API_VERSION: Final = 3
DEFAULT_BOSH_PROTOCOL: Final = "1"
LIGHT_FORMAT_SUFFIX: Final = "-light"
#: ``cloud_properties`` keys that may hold a light stemcell's ``{region: image id}`` map (AWS uses ``ami``).
REGION_IMAGE_KEYS: Final = ("ami", "image_id", "image_ids")
#: A manifest is a few hundred bytes; refuse to parse anything absurdly large.
MAX_MANIFEST_BYTES: Final = 1024 * 1024
#: Deepest nesting of mappings/lists accepted (real manifests stay below 5; PyYAML recurses per level).
MAX_NESTING: Final = 32

_FIELD_ORDER: Final = (
    "name",
    "version",
    "bosh_protocol",
    "api_version",
    "sha1",
    "operating_system",
    "stemcell_formats",
    "cloud_properties",
)
#: Fields whose plain YAML scalars are kept as the text written (never turned into int/float).
_VERBATIM_FIELDS: Final = frozenset({"version"})

_IDENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_REGION_MAP: Final[dict[str, Any]] = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": "string", "minLength": 1},
    "x-message": "must be a non-empty mapping of region name to image id",
}

#: JSON schema of ``stemcell.MF``. ``x-message`` (ignored by jsonschema) is the text shown after
#: ``field '<name>'`` when that subschema fails.
MANIFEST_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "BOSH stemcell.MF",
    "type": "object",
    "required": ["name", "version", "sha1", "operating_system", "cloud_properties"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": _IDENT,
            "x-message": "must be a name of letters, digits, '.', '_' and '-', "
            "e.g. 'bosh-openstack-kvm-ubuntu-jammy-go_agent'",
        },
        "version": {
            "type": "string",
            "pattern": r"^[0-9A-Za-z][0-9A-Za-z.+_~-]*$",
            "x-message": "must be a version string without spaces or slashes, e.g. '1.50' "
            "(quote it in YAML if in doubt)",
        },
        "api_version": {
            "type": "integer",
            "minimum": 1,
            "x-message": "must be a positive integer (3 for current stemcells)",
        },
        "bosh_protocol": {
            "anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": "^[0-9]+$"}],
            "x-message": "must be an integer or a numeric string such as '1'",
        },
        "sha1": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{40}$",
            "x-message": "must be a 40-character hex string",
        },
        "operating_system": {
            "type": "string",
            "pattern": _IDENT,
            "x-message": "must be an operating system name such as 'ubuntu-jammy'",
        },
        "stemcell_formats": {
            "type": "array",
            "uniqueItems": True,
            "items": {
                "type": "string",
                "pattern": _IDENT,
                "x-message": "must be a format name such as 'openstack-qcow2' or 'aws-light'",
            },
            "x-message": "must be a list of distinct format names such as 'openstack-qcow2' or 'aws-light'",
        },
        "cloud_properties": {
            "type": "object",
            "x-message": "must be a mapping",
            "properties": {
                "infrastructure": {
                    "type": "string",
                    "pattern": _IDENT,
                    "x-message": "must be an infrastructure name such as 'openstack' or 'aws'",
                },
                "architecture": {
                    "type": "string",
                    "pattern": _IDENT,
                    "x-message": "must be an architecture name such as 'x86_64'",
                },
                "root_device_name": {
                    "type": "string",
                    "pattern": "^/dev/[^\\s]+$",
                    "x-message": "must be a device path such as '/dev/sda1'",
                },
                "disk": {
                    "type": "integer",
                    "minimum": 1,
                    "x-message": "must be a positive integer (the root disk size in MiB)",
                },
                "ami": _REGION_MAP,
                "image_ids": _REGION_MAP,
            },
        },
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
jsonschema.Draft202012Validator.check_schema(MANIFEST_SCHEMA)


@dataclass(frozen=True)
class StemcellManifest:
    """The fields of ``stemcell.MF``; construction validates them and raises ``StemcellError``.

    ``sha1`` is the sha1 of the tarball's ``image`` member (lower-cased on construction). ``extra`` holds
    unknown top-level fields, kept for round-tripping. Use ``replace(...)`` to derive a changed copy.
    """

    name: str
    version: str
    sha1: str
    operating_system: str
    stemcell_formats: list[str] = field(default_factory=list)
    cloud_properties: dict[str, Any] = field(default_factory=dict)
    api_version: int = DEFAULT_API_VERSION
    bosh_protocol: int | str = DEFAULT_BOSH_PROTOCOL
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & set(_FIELD_ORDER))
        if clash:
            known = ", ".join(clash)
            raise StemcellError(f"{MANIFEST_NAME}: 'extra' must not repeat the known field(s) {known}")
        if isinstance(self.stemcell_formats, tuple):
            object.__setattr__(self, "stemcell_formats", list(self.stemcell_formats))
        validate_manifest_data(self.to_dict(), MANIFEST_NAME)
        # Own copies: a manifest never changes because the caller's data did.
        object.__setattr__(self, "sha1", self.sha1.lower())
        object.__setattr__(self, "stemcell_formats", list(self.stemcell_formats))
        object.__setattr__(self, "cloud_properties", copy.deepcopy(self.cloud_properties))
        object.__setattr__(self, "extra", copy.deepcopy(self.extra))

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_NAME) -> StemcellManifest:
        """Build from parsed YAML/JSON. Raises ``StemcellError`` naming ``source`` and the first bad field."""
        validate_manifest_data(data, source)
        known = {key: data[key] for key in _FIELD_ORDER if key in data}
        extra = {key: value for key, value in data.items() if key not in _FIELD_ORDER}
        return cls(**known, extra=extra)

    @classmethod
    def from_yaml(cls, text: str | bytes, source: str = MANIFEST_NAME) -> StemcellManifest:
        """Parse ``stemcell.MF`` text with the safe loader, keeping ``version`` as written, then validate.

        ``source`` names the file in error messages (e.g. ``"stemcell.MF in bosh-stemcell-1.50-....tgz"``).
        Raises ``StemcellError`` for invalid YAML, a non-mapping document, duplicate keys or invalid fields.
        """
        if len(text) > MAX_MANIFEST_BYTES:
            raise StemcellError(f"{source}: is {len(text)} bytes; the limit is {MAX_MANIFEST_BYTES}")
        return cls.from_dict(_load_yaml_mapping(text, source), source)

    @classmethod
    def load(cls, path: Path) -> StemcellManifest:
        """Read and parse the manifest file at ``path``; errors name the path."""
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise StemcellError(f"{path}: is {size} bytes; the limit is {MAX_MANIFEST_BYTES}")
            text = path.read_bytes()
        except OSError as exc:
            raise StemcellError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
        return cls.from_yaml(text, str(path))

    def replace(self, **changes: Any) -> StemcellManifest:
        """A copy with ``changes`` applied, validated like any new manifest."""
        return dataclasses.replace(self, **changes)

    # -- output ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain data in ``stemcell.MF`` field order, unknown fields last."""
        data: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "bosh_protocol": self.bosh_protocol,
            "api_version": self.api_version,
            "sha1": self.sha1,
            "operating_system": self.operating_system,
            "stemcell_formats": (
                list(self.stemcell_formats) if isinstance(self.stemcell_formats, list) else self.stemcell_formats
            ),
            "cloud_properties": self.cloud_properties,
        }
        data.update(self.extra)
        return data

    def to_yaml(self) -> str:
        """``stemcell.MF`` text; ``from_yaml(m.to_yaml()) == m`` for every manifest ``m``."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)

    # -- derived facts -----------------------------------------------------------------------------

    @property
    def is_light(self) -> bool:
        """True for a light stemcell: its ``image`` is empty (sha1 of empty input) or a format ends -light."""
        if self.sha1 == EMPTY_SHA1:
            return True
        return any(fmt.endswith(LIGHT_FORMAT_SUFFIX) for fmt in self.stemcell_formats)

    @property
    def filename(self) -> str:
        """The conventional tarball name: ``bosh-stemcell-1.50-openstack-kvm-ubuntu-jammy-go_agent.tgz``."""
        return stemcell_filename(self.name, self.version, light=self.is_light)

    def region_image_ids(self) -> dict[str, str]:
        """A light stemcell's ``{region: image id}`` map (``ami``, ``image_id`` or ``image_ids``), or {}."""
        for key in REGION_IMAGE_KEYS:
            value = self.cloud_properties.get(key)
            if isinstance(value, Mapping) and value and all(isinstance(v, str) for v in value.values()):
                return {str(region): image for region, image in value.items()}
        return {}

    def image_id_for_region(self, region: str) -> str:
        """The light stemcell's image id in ``region``; raises ``StemcellError`` when it has none there."""
        images = self.region_image_ids()
        if region not in images:
            known = ", ".join(sorted(images)) or "none"
            raise StemcellError(f"Stemcell does not contain an image in region {region} (it has: {known})")
        return images[region]


def stemcell_filename(name: str, version: str, *, light: bool) -> str:
    """``[light-]bosh-stemcell-<version>-<infra>-<hypervisor>-<os>-go_agent.tgz`` from a manifest name.

    ``name`` is normally ``bosh-<infra>-<hypervisor>-<os>-go_agent``; its ``bosh-`` prefix is dropped. A name
    without that prefix is used whole, so custom names still give a unique, recognisable file name.
    """
    rest = name[len("bosh-") :] if name.startswith("bosh-") and len(name) > len("bosh-") else name
    return f"{'light-' if light else ''}bosh-stemcell-{version}-{rest}.tgz"


def validate_manifest_data(data: Any, source: str = MANIFEST_NAME) -> None:
    """Check parsed manifest data against ``MANIFEST_SCHEMA``.

    Raises ``StemcellError`` whose message is ``<source>: field '<field>' <what is wrong>``; when several
    fields are wrong they are all listed, separated by ``; ``.
    """
    if not isinstance(data, Mapping):
        raise StemcellError(f"{source}: must be a mapping of fields, not {_yaml_kind(data)}")
    errors = sorted(_VALIDATOR.iter_errors(dict(data)), key=lambda e: _field_path(e.absolute_path))
    if errors:
        raise StemcellError(f"{source}: " + "; ".join(_describe(error) for error in errors))


# -- helpers ---------------------------------------------------------------------------------------


def _describe(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    required = error.validator_value
    if error.validator == "required" and isinstance(error.instance, Mapping) and isinstance(required, list):
        missing = [name for name in required if name not in error.instance]
        fields = ", ".join(repr(_field_path([*path, name])) for name in missing)
        return f"missing required field {fields}"
    message = error.schema.get("x-message") if isinstance(error.schema, Mapping) else None
    if not message:
        message = error.message
    where = _field_path(path)
    return f"field {where!r} {message}" if where else str(message)


def _field_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _yaml_kind(value: Any) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__} value"


_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_STR_TAG: Final = "tag:yaml.org,2002:str"


def _load_yaml_mapping(text: str | bytes, source: str) -> Any:
    """Safe-load one YAML document, refusing duplicate keys and keeping ``_VERBATIM_FIELDS`` as written."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise StemcellError(f"{source}: not valid YAML: {_one_line(exc)}") from exc
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise StemcellError(f"{source}: nested more than {MAX_NESTING} levels deep") from None
    if node is None:
        raise StemcellError(f"{source}: is empty; expected a mapping of fields")
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else "a single value"
        raise StemcellError(f"{source}: must be a mapping of fields, not {kind}")
    _check_keys(node, "", set(), source)
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, yaml.ScalarNode)
            and key_node.value in _VERBATIM_FIELDS
            and isinstance(value_node, yaml.ScalarNode)
            and value_node.style is None
            and value_node.tag in (_INT_TAG, _FLOAT_TAG)
        ):
            value_node.tag = _STR_TAG  # the plain scalar's text, e.g. "1.50", becomes the value
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise StemcellError(f"{source}: not valid YAML: {_one_line(exc)}") from exc
    finally:
        loader.dispose()


def _check_keys(node: yaml.Node, prefix: str, seen_nodes: set[int], source: str, depth: int = 1) -> None:
    """Refuse duplicate mapping keys, YAML aliases (a manifest never needs them; aliases allow
    exponential "billion laughs" documents and cycles) and nesting deeper than ``MAX_NESTING``."""
    if depth > MAX_NESTING:
        raise StemcellError(f"{source}: field {prefix!r} is nested more than {MAX_NESTING} levels deep")
    if id(node) in seen_nodes:
        where = prefix or "(document)"
        raise StemcellError(f"{source}: field {where!r} uses a YAML alias; aliases are not allowed")
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = f"{prefix}.{key}" if prefix else key
            if key in keys:
                raise StemcellError(f"{source}: field {path!r} appears more than once")
            keys.add(key)
            _check_keys(value_node, path, seen_nodes, source, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(item, f"{prefix}[{index}]", seen_nodes, source, depth + 1)


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()
