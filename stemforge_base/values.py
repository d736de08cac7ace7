"""The name of a decoded value's type, in the words of whoever reports it.

A value decoded from JSON, YAML or HCL is one of seven kinds: ``null``, ``bool``, ``int``, ``float``, ``str``,
``list`` (a tuple counts as a list) and ``dict``. Each reporter names those kinds in its own vocabulary: JSON Schema
says ``boolean``/``integer``/``array``, Go's ``encoding/json`` says ``bool``/``number``/``array``, mapstructure
prints the ``reflect.Kind`` (``float64``, ``slice``, ``map``), cty says ``tuple``/``object``. :func:`type_name`
is the one lookup; the vocabularies below are the tables.

Contract: imports nothing (the CPI's ``info`` path may load it), and a vocabulary without an ``"other"`` entry
names any other Python value by its Python type name.
"""

from __future__ import annotations

# JSON Schema's type names (the CPI's request and config errors).
JSON_SCHEMA = {"null": "null", "bool": "boolean", "int": "integer", "float": "number", "str": "string",
               "list": "array", "dict": "object"}
# Go encoding/json's value names in ``json: cannot unmarshal X into ...`` (Concourse's pipeline decoding).
GO_JSON = {"null": "null", "bool": "bool", "int": "number", "float": "number", "str": "string", "list": "array",
           "dict": "object", "other": "null"}
# cty's friendly type names (HCL2 ``Invalid function argument`` details).
HCL = {"null": "null", "bool": "bool", "int": "number", "float": "number", "str": "string", "list": "tuple",
       "dict": "object"}
# The ``reflect.Kind`` mapstructure prints for a JSON-decoded value (``expected a map, got 'slice'``).
GO_KIND = {"null": "invalid", "bool": "bool", "int": "float64", "float": "float64", "str": "string",
           "list": "slice", "dict": "map", "other": "invalid"}
# The Go type mapstructure prints for a JSON-decoded value (``got unconvertible type '[]interface {}'``).
GO_DECODED_TYPE = {**GO_KIND, "null": "<nil>", "list": "[]interface {}", "dict": "map[string]interface {}",
                   "other": "<nil>"}
# The Go type ``text/template`` prints for a template value (``%!d(string=x)``, ``len of type bool``).
GO_TEMPLATE = {"null": "<nil>", "bool": "bool", "int": "int", "float": "float64", "str": "string",
               "list": "[]interface {}", "dict": "map[string]interface {}"}


def value_kind(value: object) -> str:
    """One of ``null bool int float str list dict`` for a decoded value, ``other`` for anything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return "other"


def type_name(value: object, vocabulary: dict[str, str]) -> str:
    """``value``'s type in ``vocabulary`` (one of the tables above, or the caller's own with the same keys)."""
    kind = value_kind(value)
    return vocabulary[kind] if kind in vocabulary else type(value).__name__
