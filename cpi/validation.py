"""Validating a provider's config section or a method's ``cloud_properties`` against its JSON schema (draft
2020-12), for every provider: the first (best) error becomes a :class:`cpi.errors.CpiError` naming what was
validated and where (``create_vm: cloud_properties: 'cpu' -1 is less than the minimum of 1``); unknown keys are
listed by name. :mod:`jsonschema` is imported on the first call only (importing this module stays cheap)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpi.errors import CpiError


def validate(what: str, schema: Mapping[str, Any], value: Any) -> None:
    """Validate ``value``; raise CpiError ``<what>: '<path>' <reason>`` for the first (best) error."""
    import jsonschema  # lazy: a provider's config module must stay cheap to import (the dispatcher reads its schemas)

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        raise CpiError(f"{what}: unknown key(s) {', '.join(map(repr, extra))} at '{where}'")
    raise CpiError(f"{what}: '{where}' {error.message}")
