"""Finding plugins by convention and validating their options.

A plugin of kind K and type ``T`` lives in module ``<package of K>.<T with '-' as '_'>`` and exposes
``PLUGIN = <class>``:

==================  ==============================  =================================
kind                package                         example
==================  ==============================  =================================
builder             ``builders.builder_types``      ``qemu`` -> ``builders.builder_types.qemu``
provisioner         ``builders.provisioners``       ``shell-local`` -> ``...provisioners.shell_local``
post-processor      ``builders.postprocessors``     ``manifest`` -> ``...postprocessors.manifest``
communicator        ``builders.communicators``      ``ssh`` -> ``builders.communicators.ssh``
==================  ==============================  =================================

Modules are imported only when a template names their type (``load_*``), so a plugin with heavy dependencies
costs nothing to templates that do not use it. An unknown type is a ``ConfigError`` in Packer's words, listing the
types that do exist.

``validate_options`` checks a rendered config against the plugin's JSON ``options_schema`` the way Packer's
decoder does: Go's weak typing first (``"2048"`` is a fine ``memory``: user variables are always strings), then
every violation is collected and reported with the key it concerns (``unknown configuration key: 'iso_ur'``,
``'memory' expected type 'integer', got unconvertible type 'string'``).
"""

from __future__ import annotations

import decimal
import difflib
import fnmatch
import importlib
import pkgutil
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from builders.core import BuilderType, Communicator, ConfigError, Plugin, PostProcessor, Provisioner

#: plugin kind -> the package holding its modules
PACKAGES: dict[str, str] = {
    "builder": "builders.builder_types",
    "provisioner": "builders.provisioners",
    "post-processor": "builders.postprocessors",
    "communicator": "builders.communicators",
}
#: Keys the template layer owns; they are never passed to (or validated by) a plugin.
META_KEYS: dict[str, frozenset[str]] = {
    "builder": frozenset({"type", "name"}),
    "provisioner": frozenset({"type", "only", "except", "override", "pause_before", "max_retries", "timeout"}),
    "post-processor": frozenset({"type", "name", "only", "except", "keep_input_artifact"}),
    "communicator": frozenset(),
}

class UnknownPluginError(ConfigError):
    """The template names a plugin type stemforge does not have."""


def module_name(type_name: str) -> str:
    """``shell-local`` -> ``shell_local``."""
    return type_name.replace("-", "_")


def known_types(kind: str) -> list[str]:
    """The plugin types of ``kind`` present in this installation (module names with ``_`` shown as ``-``)."""
    try:
        package = importlib.import_module(PACKAGES[kind])
    except ImportError:
        return []
    names = {
        info.name.replace("_", "-")
        for info in pkgutil.iter_modules(getattr(package, "__path__", []))
        if not info.name.startswith("_")
    }
    return sorted(names)


def _load(kind: str, type_name: str, base: Any) -> Any:
    if not isinstance(type_name, str) or not type_name:
        raise ConfigError(f"{kind}: missing 'type'")
    package = PACKAGES[kind]
    name = f"{package}.{module_name(type_name)}"
    if not all(part.isidentifier() for part in module_name(type_name).split(".")) or "." in type_name:
        raise _unknown(kind, type_name)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == name or name.startswith(exc.name + ".")):
            raise _unknown(kind, type_name) from None
        from cpi.extras import missing_extra, missing_module

        if missing_module(exc) is not None:  # a third-party module of an extra that is not installed
            message = missing_extra(f"the {kind} '{type_name}'", exc, "build")
            raise ConfigError(f"error initializing {kind} '{type_name}': {message}") from exc
        raise ConfigError(f"error initializing {kind} '{type_name}': {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not crash the parser
        raise ConfigError(f"error initializing {kind} '{type_name}': {type(exc).__name__}: {exc}") from exc
    plugin = getattr(module, "PLUGIN", None)
    if not (isinstance(plugin, type) and issubclass(plugin, base)):
        raise ConfigError(
            f"error initializing {kind} '{type_name}': module {name} has no PLUGIN = <{base.__name__} subclass>"
        )
    return plugin


def _unknown(kind: str, type_name: str) -> UnknownPluginError:
    known = known_types(kind)
    hint = difflib.get_close_matches(type_name, known, n=1)
    lines = [
        f"The {kind} {type_name} is unknown by Packer, and is likely part of a plugin that is not installed.",
        f"stemforge has these {kind} types: {', '.join(known) if known else '(none)'}.",
    ]
    if hint:
        lines.append(f"Did you mean '{hint[0]}'?")
    return UnknownPluginError("\n".join(lines))


def load_builder(type_name: str) -> type[BuilderType]:
    """The builder class for a template's builder ``type``; UnknownPluginError if there is none."""
    cls: type[BuilderType] = _load("builder", type_name, BuilderType)
    return cls


def load_provisioner(type_name: str) -> type[Provisioner]:
    cls: type[Provisioner] = _load("provisioner", type_name, Provisioner)
    return cls


def load_post_processor(type_name: str) -> type[PostProcessor]:
    cls: type[PostProcessor] = _load("post-processor", type_name, PostProcessor)
    return cls


def load_communicator(name: str) -> type[Communicator]:
    cls: type[Communicator] = _load("communicator", name, Communicator)
    return cls


# ---------------------------------------------------------------------------------------------- option checks
#
# Weak decoding: packer-plugin-sdk ``template/config/decode.go`` decodes every plugin's options with mapstructure
# (``WeaklyTypedInput: true``) and the hooks ``StringToSliceHookFunc(",")`` and ``stringToTrilean``. The rules
# below are mapstructure's (``decode.go`` ``decodeBool``/``decodeInt``/``decodeFloat``/``decodeString``/
# ``decodeSlice``/``decodeMap``), applied here once for every plugin, guided by the plugin's JSON schema:
#
# - ``null`` for an option is "not set" (mapstructure leaves the field alone): the key is dropped;
# - a string for a list option is split at commas (``"a,b"`` -> ``["a", "b"]``; ``""`` -> ``[]``); any other single
#   value becomes a one-element list; each element is then decoded weakly;
# - ``""`` for a boolean or number option is the zero value, i.e. unset: the key is dropped (inside a list it is
#   the zero value); ``"true"``/``"1"``/``"t"`` ... are booleans (``strconv.ParseBool``), numeric strings are
#   numbers (``strconv.ParseInt`` with base 0: ``0x1f``, ``0o17``, ``017``, ``0b1``), numbers are booleans
#   (non-zero is true), booleans are numbers (1/0);
# - numbers and booleans for a string option are their text (``1024``, ``1.5``, ``"1"``/``"0"``);
# - an empty list for a map option is an empty map, a list of maps is their merge.

_GO_TYPE_NAMES = {
    bool: "bool",
    int: "int",
    float: "float64",
    str: "string",
    list: "[]interface {}",
    dict: "map[string]interface {}",
    type(None): "nil",
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_UNSET = object()

#: packer-plugin-sdk ``template/config/deprecated_options.go`` (generated from packer's ``fix`` package): options
#: ``packer fix`` rewrites, by Packer plugin id glob. An unknown key listed here for the plugin gets Packer's
#: ``Deprecated configuration key`` error instead of ``unknown configuration key``.
DEPRECATED_OPTIONS: dict[str, tuple[str, ...]] = {
    "*": ("iso_md5", "ssh_key_path", "ssh_disable_agent", "ssh_host_port_min", "ssh_host_port_max",
          "ssh_skip_nat_mapping", "ssh_wait_timeout", "iso_checksum_url", "iso_checksum_type"),
    "*amazon*": ("shutdown_behaviour", "enhanced_networking", "ssh_private_ip", "temporary_security_group_source_cidr",
                 "clean_ami_name", "spot_price_auto_product"),
    "packer.post-processor.manifest": ("filename",),
    "transcend.qemu": ("ssh_host_port_max", "ssh_host_port_min"),
}
#: stemforge plugin type -> the Packer plugin id its config decoder passes as ``PluginType`` (the builder id for
#: builders, ``packer.post-processor.<type>`` for core post-processors).
PACKER_PLUGIN_TYPES: dict[str, str] = {
    "qemu": "transcend.qemu",
    "amazon-ebs": "mitchellh.amazonebs",
    "manifest": "packer.post-processor.manifest",
}
DEPRECATED_MESSAGE = ("Deprecated configuration key: '{key}'. Please call `packer fix` against your template to update "
                      "your template to be compatible with the current version of Packer. Visit "
                      "https://www.packer.io/docs/commands/fix/ for more detail.")


def deprecated_keys(type_name: str) -> frozenset[str]:
    """The keys Packer reports as deprecated (``packer fix``) for the plugin of template type ``type_name``."""
    plugin_type = PACKER_PLUGIN_TYPES.get(type_name, "")
    if not plugin_type:
        return frozenset()
    keys: set[str] = set()
    for pattern, options in DEPRECATED_OPTIONS.items():
        if fnmatch.fnmatchcase(plugin_type, pattern):
            keys.update(options)
    return frozenset(keys)


def closed_object(properties: Mapping[str, Any], *, required: Sequence[str] = ()) -> dict[str, Any]:
    """A plugin's ``options_schema``: an object with exactly ``properties`` (any other key is reported as unknown
    by :func:`validate_options`), ``required`` of them mandatory."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    return schema


def validate_options(plugin_cls: type[Plugin], config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``config`` against ``plugin_cls.options_schema``; return the config with Packer's weak decoding
    applied (see above). Raise ConfigError listing every problem, one per line, each prefixed with ``where``."""
    schema = plugin_cls.options_schema
    value = coerce(dict(config), schema)
    validator = Draft202012Validator(schema)
    deprecated = deprecated_keys(getattr(plugin_cls, "type_name", ""))
    problems: list[str] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        problems.extend(_describe(error, schema, deprecated))
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError("\n".join(f"{where}: {p}" for p in unique))
    return value


def coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """Packer's weak decoding of ``value`` into the type ``schema`` describes (see the module notes)."""
    out = _coerce(value, schema, in_object=False)
    return None if out is _UNSET else out


def _coerce(value: Any, schema: Mapping[str, Any], *, in_object: bool) -> Any:
    if not isinstance(schema, Mapping):
        return value
    types = _types(schema)
    if _matches(value, types):
        if isinstance(value, dict) and (not types or "object" in types):
            return _coerce_object(value, schema)
        if isinstance(value, list) and (not types or "array" in types):
            items = schema.get("items")
            if isinstance(items, Mapping):
                return [_coerce(item, items, in_object=False) for item in value]
            return value
        return _coerce_combinator(value, schema, in_object) if not types else value
    if value is None:
        return _UNSET if in_object else value
    if "array" in types:
        items = schema.get("items")
        item_schema = items if isinstance(items, Mapping) else {}
        if isinstance(value, str):
            parts: list[Any] = [] if value == "" else value.split(",")
        elif isinstance(value, dict) and not value:
            parts = []
        else:
            parts = [value]
        return [_coerce(p, item_schema, in_object=False) for p in parts]
    if "object" in types and isinstance(value, list):
        if not value:
            return {}
        if all(isinstance(v, dict) for v in value):
            merged: dict[str, Any] = {}
            for v in value:
                merged.update(v)
            return _coerce_object(merged, schema)
        return value
    if isinstance(value, str):
        if value == "" and types & {"boolean", "integer", "number"}:
            if in_object:
                return _UNSET
            return False if "boolean" in types else 0
        for wanted in ("integer", "number", "boolean"):
            if wanted in types:
                converted = _from_string(value, wanted)
                if converted is not None:
                    return converted
        return value
    if isinstance(value, bool):
        if "integer" in types or "number" in types:
            return int(value)
        if "string" in types:
            return "1" if value else "0"
        return value
    if isinstance(value, int | float):
        if "integer" in types:
            return int(value)
        if "boolean" in types:
            return value != 0
        if "string" in types:
            return go_number_text(value)
        return value
    return _coerce_combinator(value, schema, in_object)


def _coerce_object(value: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    props = props if isinstance(props, Mapping) else {}
    additional = schema.get("additionalProperties")
    out: dict[str, Any] = {}
    for key, item in value.items():
        sub = props.get(key)
        if sub is None and isinstance(additional, Mapping):
            sub = additional
        if isinstance(sub, Mapping):
            converted = _coerce(item, sub, in_object=True)
            if converted is _UNSET:
                continue
            out[key] = converted
        else:
            out[key] = item
    return out


def _coerce_combinator(value: Any, schema: Mapping[str, Any], in_object: bool) -> Any:
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            for option in options:
                if isinstance(option, Mapping) and _matches(value, _types(option)):
                    return _coerce(value, option, in_object=in_object)
            for option in options:
                converted = _coerce(value, option, in_object=in_object) if isinstance(option, Mapping) else value
                if converted is not value:
                    return converted
    return value


def _from_string(text: str, wanted: str) -> Any:
    """``strconv.ParseBool`` / ``ParseInt(s, 0, 64)`` / ``ParseFloat``; None when ``text`` does not parse."""
    if wanted == "boolean":
        return True if text in _TRUE else False if text in _FALSE else None
    if wanted == "integer":
        return go_parse_int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and re.fullmatch(r"[+-]?[0-9]+", text) else number


def go_parse_int(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 0, 64)``: an optional sign, then ``0x``/``0o``/``0b`` prefixes, a leading
    ``0`` for octal, ``_`` separators only after a prefix; None when it does not parse."""
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9]*)", text)
    if not m:
        return None
    sign, digits = m.groups()
    body = digits.lower()
    if body.startswith(("0x", "0o", "0b")):
        base = {"x": 16, "o": 8, "b": 2}[body[1]]
        body = body[2:]
        if not body.strip("_") or body.startswith("__") or "__" in body or body.endswith("_"):
            return None
    elif body.startswith("0") and len(body) > 1:
        base, body = 8, body[1:]
        if "__" in body or body.endswith("_"):
            return None
    else:
        base = 10
        if "_" in body:
            return None
    result = int(body.replace("_", ""), base)
    if sign == "-":
        result = -result
    if not -(1 << 63) <= result < (1 << 63):
        return None
    return result


def go_number_text(value: int | float) -> str:
    """mapstructure's number-to-string: ``strconv.FormatInt`` / ``FormatFloat(f, 'f', -1, 64)``."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return format(decimal.Decimal(repr(value)), "f")


def _types(schema: Mapping[str, Any]) -> set[str]:
    wanted = schema.get("type")
    return set(wanted) if isinstance(wanted, list) else {wanted} if isinstance(wanted, str) else set()


def _matches(value: Any, types: set[str]) -> bool:
    if not types:
        return True
    checks = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "null": value is None,
    }
    return any(checks.get(t, False) for t in types)


def _key_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _describe(error: ValidationError, root_schema: Mapping[str, Any],
              deprecated: frozenset[str] = frozenset()) -> list[str]:
    path = _key_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        known = set(schema.get("properties", {}) or {})
        patterns = list((schema.get("patternProperties") or {}).keys())
        out = []
        for key in error.instance:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            full = f"{path}.{key}" if path else key
            if not path and key in deprecated:
                out.append(DEPRECATED_MESSAGE.format(key=key))
                continue
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            out.append(f"unknown configuration key: '{full}'{suggestion}")
        return out or [error.message]
    if error.validator == "type":
        value: Any = error.validator_value
        expected = " or ".join(value) if isinstance(value, list) else str(value)
        actual = _GO_TYPE_NAMES.get(type(error.instance), type(error.instance).__name__)
        return [f"'{path or '(config)'}' expected type '{expected}', got unconvertible type '{actual}'"]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        full = f"{path}.{missing}" if path else missing
        return [f"missing required configuration key: '{full}'"]
    if error.validator == "enum":
        options: Any = error.validator_value
        allowed = ", ".join(str(v) for v in options)
        return [f"'{path}' must be one of: {allowed} (got {error.instance!r})"]
    if error.validator in ("anyOf", "oneOf") and error.context:
        type_errors = [e for e in error.context if e.validator == "type"]
        if len(type_errors) == len(error.context):
            names: list[str] = []
            for e in type_errors:
                v: Any = e.validator_value
                names.extend(v if isinstance(v, list) else [str(v)])
            actual = _GO_TYPE_NAMES.get(type(error.instance), type(error.instance).__name__)
            expected = " or ".join(dict.fromkeys(names))
            return [f"'{path or '(config)'}' expected type '{expected}', got unconvertible type '{actual}'"]
        best = min(error.context, key=lambda e: len(list(e.absolute_path)) * -1)
        return _describe(best, root_schema, deprecated)
    return [f"'{path}': {error.message}" if path else error.message]
