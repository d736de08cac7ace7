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

import difflib
import importlib
import pkgutil
import re
from collections.abc import Mapping
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


def validate_options(plugin_cls: type[Plugin], config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``config`` against ``plugin_cls.options_schema``; return the config with Go-style weak typing
    applied (numeric/boolean strings converted where the schema wants numbers/booleans, numbers where it wants
    strings). Raise ConfigError listing every problem, one per line, each prefixed with ``where``."""
    schema = plugin_cls.options_schema
    value = coerce(dict(config), schema)
    validator = Draft202012Validator(schema)
    problems: list[str] = []
    for error in sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        problems.extend(_describe(error, schema))
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError("\n".join(f"{where}: {p}" for p in unique))
    return value


def coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """Go's weakly-typed decoding (mapstructure ``WeaklyTypedInput``) guided by a JSON schema."""
    if not isinstance(schema, Mapping):
        return value
    wanted = schema.get("type")
    types = set(wanted) if isinstance(wanted, list) else {wanted} if isinstance(wanted, str) else set()
    if isinstance(value, str) and not _matches(value, types):
        text = value.strip()
        if "integer" in types:
            try:
                return int(text, 0) if text.lower().startswith(("0x", "0o", "0b")) else int(text)
            except ValueError:
                pass
        if "number" in types:
            try:
                return float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:
                pass
        if "boolean" in types:
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
    if isinstance(value, bool) and types and not _matches(value, types):
        if "integer" in types or "number" in types:
            return int(value)
        if "string" in types:
            return "1" if value else "0"
    if isinstance(value, int | float) and not isinstance(value, bool) and types and not _matches(value, types):
        if "string" in types:
            return str(value)
        if "integer" in types and isinstance(value, float) and value.is_integer():
            return int(value)
    if isinstance(value, str) and "array" in types and not _matches(value, types):
        items = schema.get("items")
        return [coerce(value, items) if isinstance(items, Mapping) else value]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = props.get(key) if isinstance(props, Mapping) else None
            if sub is None and isinstance(additional, Mapping):
                sub = additional
            out[key] = coerce(item, sub) if isinstance(sub, Mapping) else item
        return out
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            return [coerce(item, items) for item in value]
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            for option in options:
                if isinstance(option, Mapping) and _matches(value, _types(option)):
                    return coerce(value, option)
            for option in options:
                converted = coerce(value, option) if isinstance(option, Mapping) else value
                if converted is not value:
                    return converted
    return value


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


def _describe(error: ValidationError, root_schema: Mapping[str, Any]) -> list[str]:
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
        return _describe(best, root_schema)
    return [f"'{path}': {error.message}" if path else error.message]
