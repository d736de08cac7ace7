"""JSON schemas for the request envelope and for every method's arguments, and the errors they produce.

The schemas are plain data (draft 2020-12, with Python ``re`` patterns: ``\\A``/``\\Z`` anchors) and importing this
module is cheap; :mod:`jsonschema` is imported on the first :func:`validate_envelope` / :func:`validate_arguments`
call only. ``info`` never needs it: :func:`envelope_ok` is a hand-written check that accepts exactly what
:data:`ENVELOPE_SCHEMA` accepts (the tests compare the two on a corpus of envelopes), and ``info`` takes no arguments.

Every rejection is a :class:`cpi.errors.CpiError` whose message names what was wrong and where, without echoing
string values (they may be secrets or megabytes long)::

    request: 'context.director_uuid' is required
    create_vm: argument 3 (cloud_properties): expected an object or null, got string
    create_vm: argument 4 (networks): 'private.dns[0]': expected a string, got integer

A schema may carry ``x-messages`` (ignored by jsonschema): keyword -> the text that replaces the generic one for a
violation of that keyword.
"""

from __future__ import annotations

from cpi.errors import CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    import jsonschema

MAX_CID_LEN = 1024
MAX_PATH_LEN = 4096
MAX_CONTEXT_ID_LEN = 256
MAX_METADATA_KEY_LEN = 256
#: Largest size accepted, in MiB (1 EiB): beyond any real disk, small enough for every IaaS API's integer types.
MAX_SIZE_MIB = 1 << 40
SUPPORTED_API_VERSIONS = (1, 2, 3)
#: The API version ``info`` advertises.
CPI_API_VERSION = 3

_CONTROL = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
#: Non-empty, no control characters or lone surrogates, no leading or trailing whitespace.
CID_PATTERN = rf"\A[^\s{_CONTROL}](?:[^{_CONTROL}]*[^\s{_CONTROL}])?\Z"

CID: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_CID_LEN,
    "pattern": CID_PATTERN,
    "x-messages": {"pattern": "must not be blank, start or end with whitespace, or contain control characters"},
}
CID_OR_NULL: dict[str, Any] = {**CID, "type": ["string", "null"]}
LOCAL_PATH: dict[str, Any] = {**CID, "maxLength": MAX_PATH_LEN}
SIZE_MIB: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_SIZE_MIB,
    "x-messages": dict.fromkeys(
        ("minimum", "maximum"), f"must be a positive whole number of MiB (at most {MAX_SIZE_MIB})"
    ),
}
COUNT: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": 1 << 20,
    "x-messages": dict.fromkeys(("minimum", "maximum"), "must be a positive integer"),
}
OBJECT_OR_NULL: dict[str, Any] = {"type": ["object", "null"]}
_METADATA_KEYS: dict[str, Any] = {
    "minLength": 1,
    "maxLength": MAX_METADATA_KEY_LEN,
    "x-messages": dict.fromkeys(
        ("minLength", "maxLength"), f"has a key that is empty or longer than {MAX_METADATA_KEY_LEN} characters"
    ),
}
#: Director metadata: string keys to scalars (BOSH sends some values, e.g. ``index``, as numbers or booleans).
METADATA: dict[str, Any] = {
    "type": "object",
    "propertyNames": _METADATA_KEYS,
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
METADATA_OR_NULL: dict[str, Any] = {**METADATA, "type": ["object", "null"]}
SNAPSHOT_METADATA: dict[str, Any] = {"type": "object", "propertyNames": _METADATA_KEYS}
_STRINGS_OR_NULL: dict[str, Any] = {"type": ["array", "null"], "items": {"type": "string"}}
NETWORK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "minLength": 1},
        "ip": {"type": ["string", "null"]},
        "netmask": {"type": ["string", "null"]},
        "gateway": {"type": ["string", "null"]},
        "mac": {"type": ["string", "null"]},
        "prefix": {"type": ["string", "integer", "null"]},
        "dns": _STRINGS_OR_NULL,
        "default": _STRINGS_OR_NULL,
        "cloud_properties": OBJECT_OR_NULL,
    },
}
NETWORKS: dict[str, Any] = {
    "type": "object",
    "propertyNames": {
        "minLength": 1,
        "maxLength": MAX_CID_LEN,
        "x-messages": dict.fromkeys(("minLength", "maxLength"), "has an empty or overlong network name"),
    },
    "additionalProperties": NETWORK,
}
DISK_CIDS: dict[str, Any] = {"type": ["array", "null"], "items": CID}
VM_RESOURCES: dict[str, Any] = {
    "type": "object",
    "required": ["ram", "cpu", "ephemeral_disk_size"],
    "properties": {"ram": SIZE_MIB, "cpu": COUNT, "ephemeral_disk_size": SIZE_MIB},
}
#: API v3 create_stemcell ``env``: ``{"tags": {...}}``.
STEMCELL_ENV: dict[str, Any] = {"type": ["object", "null"], "properties": {"tags": METADATA_OR_NULL}}

ENVELOPE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["method", "arguments", "context"],
    "properties": {
        "method": {"type": "string", "minLength": 1},
        "arguments": {"type": "array"},
        "context": {
            "type": "object",
            "required": ["director_uuid"],
            "properties": {
                "director_uuid": {"type": "string", "maxLength": MAX_CONTEXT_ID_LEN},
                "request_id": {"type": "string", "maxLength": MAX_CONTEXT_ID_LEN},
                "vm": OBJECT_OR_NULL,
            },
        },
        "api_version": {
            "type": "integer",
            "minimum": SUPPORTED_API_VERSIONS[0],
            "maximum": SUPPORTED_API_VERSIONS[-1],
            "x-messages": dict.fromkeys(("minimum", "maximum"), "must be a supported CPI API version (1, 2 or 3)"),
        },
    },
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def envelope_ok(request: object) -> bool:
    """True exactly when ``request`` is valid under :data:`ENVELOPE_SCHEMA` (a hand check: no jsonschema import)."""
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    if not isinstance(method, str) or not method:
        return False
    if not isinstance(request.get("arguments"), list):
        return False
    context = request.get("context")
    if not isinstance(context, dict):
        return False
    uuid = context.get("director_uuid")
    if not isinstance(uuid, str) or len(uuid) > MAX_CONTEXT_ID_LEN:
        return False
    if "request_id" in context:
        request_id = context["request_id"]
        if not isinstance(request_id, str) or len(request_id) > MAX_CONTEXT_ID_LEN:
            return False
    if "vm" in context and not (context["vm"] is None or isinstance(context["vm"], dict)):
        return False
    if "api_version" in request:
        version = request["api_version"]
        if not _is_int(version) or not SUPPORTED_API_VERSIONS[0] <= version <= SUPPORTED_API_VERSIONS[-1]:
            return False
    return True


# -- jsonschema plumbing (imported lazily) ---------------------------------------------------------------------------

_validator_class: Any = None


def validator_for(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A draft 2020-12 validator for ``schema`` whose ``integer`` excludes floats such as ``1.0`` (and booleans)."""
    global _validator_class
    if _validator_class is None:
        from jsonschema import Draft202012Validator, validators

        checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", lambda _checker, value: _is_int(value))
        _validator_class = validators.extend(Draft202012Validator, type_checker=checker)
    validator: jsonschema.protocols.Validator = _validator_class(schema)
    return validator


#: Among violations at the same depth, the one reported first.
_KEYWORD_PRIORITY = {
    keyword: rank
    for rank, keyword in enumerate(
        ("required", "type", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems", "enum", "pattern")
    )
}


def first_error(schema: dict[str, Any], instance: object) -> tuple[list[str | int], str] | None:
    """``(path, message)`` of the violation of ``schema`` by ``instance`` to report, or None when valid: the
    shallowest one, then by keyword (required, type, lengths, bounds, enum, pattern, others), then by path.
    ``message`` is "is required" for a missing key (``path`` then ends with that key)."""
    errors = list(validator_for(schema).iter_errors(instance))  # type: ignore[arg-type]
    if not errors:
        return None
    error = min(
        errors,
        key=lambda e: (len(e.absolute_path), _KEYWORD_PRIORITY.get(str(e.validator), 99), [str(p) for p in e.path]),
    )
    return explain(error)


def explain(error: jsonschema.ValidationError) -> tuple[list[str | int], str]:
    """Turn a jsonschema error into ``(path, message)``; the message never echoes a string value."""
    path: list[str | int] = list(error.absolute_path)
    keyword = error.validator
    expected: Any = error.validator_value
    instance: Any = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if keyword == "type":
        return path, f"expected {_expected(expected)}, got {json_type(instance)}"
    if keyword == "required":
        missing = next((key for key in expected if key not in instance), expected[0])
        return [*path, missing], "is required"
    custom = (schema.get("x-messages") or {}).get(keyword)
    if isinstance(custom, str):
        if _is_int(instance) or isinstance(instance, float):
            custom += f", got {_short(instance)}"
        return path, custom
    if keyword == "minLength":
        return path, "must not be empty" if expected == 1 else f"must be at least {expected} characters long"
    if keyword == "maxLength":
        return path, f"must be at most {expected} characters long, got {len(instance)}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return path, f"must be {'>=' if keyword == 'minimum' else '>'} {expected}, got {_short(instance)}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return path, f"must be {'<=' if keyword == 'maximum' else '<'} {expected}, got {_short(instance)}"
    if keyword == "minItems":
        return path, f"must have at least {expected} items, got {len(instance)}"
    if keyword == "maxItems":
        return path, f"must have at most {expected} items, got {len(instance)}"
    if keyword == "enum":
        choices = ", ".join(repr(choice) for choice in expected)
        got = repr(instance)[:40] if isinstance(instance, str) else json_type(instance)
        return path, f"must be one of {choices}, got {got}"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        extra = sorted(str(key) for key in instance if key not in known)
        allowed = ", ".join(sorted(known))
        return path, f"unexpected key {_short(extra[0] if extra else '?')} (allowed: {allowed})"
    if keyword == "pattern":
        return path, "has an invalid format"
    return path, f"is invalid ({keyword})"


def format_error(prefix: str, path: Sequence[str | int], message: str) -> str:
    """``prefix: 'path' is required`` / ``prefix: 'path': message`` / ``prefix: message``."""
    if not path:
        return f"{prefix}: {message}"
    where = format_path(path)
    if message == "is required":
        return f"{prefix}: '{where}' is required"
    return f"{prefix}: '{where}': {message}"


def format_path(path: Iterable[str | int]) -> str:
    """``['private', 'dns', 0]`` -> ``private.dns[0]``; odd keys are JSON-quoted in brackets and truncated."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = str(part)
        if key and key.replace("_", "a").replace("-", "a").isalnum() and key.isascii() and len(key) <= 64:
            out += f".{key}" if out else key
        else:
            import json

            out += f"[{json.dumps(key[:64])}{'...' if len(key) > 64 else ''}]"
    return out


def json_type(value: object) -> str:
    """The JSON type name of a Python value from ``json.loads`` (other types by their Python name)."""
    # lazy: only a wrong-typed argument needs it; `info` (the director's hot path) stays off it
    from stemforge_base.values import JSON_SCHEMA, type_name

    return type_name(value, JSON_SCHEMA)


_ARTICLES = {"object": "an object", "array": "an array", "integer": "an integer", "null": "null"}


def _expected(types: str | list[str]) -> str:
    names = [types] if isinstance(types, str) else list(types)
    return " or ".join(_ARTICLES.get(name, f"a {name}") for name in names)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- entry points ----------------------------------------------------------------------------------------------------


def validate_envelope(request: object) -> None:
    """Raise CpiError naming the first problem unless ``request`` is a valid envelope."""
    if envelope_ok(request):
        return
    if not isinstance(request, dict):
        raise CpiError(f"request: expected a JSON object, got {json_type(request)}")
    found = first_error(ENVELOPE_SCHEMA, request)
    if found is None:  # the hand check and the schema disagree: a bug, reported rather than ignored
        raise CpiError("request: invalid envelope")
    raise CpiError(format_error("request", *found))


if TYPE_CHECKING:
    #: A method's positional arguments as (name, schema), in wire order (the table is ``cpi.dispatcher.METHODS``).
    ArgumentSpecs = tuple[tuple[str, dict[str, Any]], ...]


def validate_arguments(method: str, arguments: list[Any], specs: ArgumentSpecs, least: int | None = None) -> None:
    """Raise CpiError unless ``arguments`` match ``specs`` (at least ``least`` of them, default all; the trailing
    ones may be omitted) and each argument its schema. Methods without arguments are checked without importing
    jsonschema."""
    most = len(specs)
    least = most if least is None else least
    count = len(arguments)
    if not least <= count <= most:
        names = [name for name, _ in specs]
        if most == 0:
            wanted = "no arguments"
        elif least == most:
            wanted = f"{most} argument{'s' if most != 1 else ''} ({', '.join(names)})"
        else:
            wanted = f"{least} to {most} arguments ({', '.join(names[:least])}[, {', '.join(names[least:])}])"
        raise CpiError(f"{method}: expected {wanted}, got {count}")
    for index, (argument, (name, schema)) in enumerate(zip(arguments, specs, strict=False), start=1):
        found = first_error(schema, argument)
        if found is not None:
            raise CpiError(format_error(f"{method}: argument {index} ({name})", *found))
