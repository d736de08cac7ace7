"""HCL2 templates (``*.pkr.hcl`` files and directories): python-hcl2 parses, this package evaluates and decodes
into the same build model the JSON loader produces (:class:`builders.template.model.Template`).

The names below load the front end (python-hcl2, Lark) on first use, so importing the package is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from builders.template.hcl2.paths import is_hcl2

if TYPE_CHECKING:
    from builders.template.hcl2.config import load_hcl2, load_or_template_error
    from builders.template.hcl2.diagnostics import Diagnostic, HCLError
    from builders.template.hcl2.template import HCL2Template

__all__ = ["Diagnostic", "HCL2Template", "HCLError", "is_hcl2", "load_hcl2", "load_or_template_error"]


def __getattr__(name: str) -> Any:
    # lazy: importing the package must not load python-hcl2 and Lark (see the module docstring)
    if name in ("load_hcl2", "load_or_template_error"):
        from builders.template.hcl2 import config

        return getattr(config, name)
    if name == "HCL2Template":
        from builders.template.hcl2 import template

        return template.HCL2Template
    if name in ("Diagnostic", "HCLError"):
        from builders.template.hcl2 import diagnostics

        return getattr(diagnostics, name)
    raise AttributeError(name)
