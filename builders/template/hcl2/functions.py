"""Packer's HCL2 function library (developer.hashicorp.com/packer/docs/templates/hcl_templates/functions), over the
HCL values of :mod:`builders.template.hcl2.values`: the registry of the function families in
:mod:`builders.template.hcl2.stdlib`. Semantics follow the go-cty stdlib / Terraform implementations Packer uses;
errors are :class:`FunctionArgumentError` (``Invalid function argument``) with cty's wording.

``make_functions(base_dir, env_allowed, now)`` returns the name -> callable table for one evaluation context:
``file``/``templatefile`` read relative to the working directory as Packer does, ``env`` is only allowed in
variable defaults, and ``timestamp`` is one value per run."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from builders.template.hcl2.stdlib import (
    collection,
    contextual,
    conversion,
    crypto,
    dates,
    encoding,
    filesystem,
    network,
    numeric,
    strings,
)
from builders.template.hcl2.stdlib.args import Function

#: The context-free families' tables, in the order of Packer's function documentation.
FAMILIES: tuple[Mapping[str, Function], ...] = (
    numeric.FUNCTIONS, strings.FUNCTIONS, collection.FUNCTIONS, conversion.FUNCTIONS, encoding.FUNCTIONS,
    filesystem.FUNCTIONS, dates.FUNCTIONS, crypto.FUNCTIONS, network.FUNCTIONS, contextual.FUNCTIONS,
)


def make_functions(*, base_dir: Path, now: _dt.datetime, env_allowed: bool = False,
                   aws: Callable[..., Any] | None = None) -> dict[str, Function]:
    """The function table for one evaluation context (see the module docstring)."""
    table: dict[str, Function] = {}
    for family in FAMILIES:
        table.update(family)
    table.update(dates.run_clock(now))
    table["env"] = contextual.env(allowed=env_allowed)
    table["templatefile"] = filesystem.templatefile(table)
    return table
