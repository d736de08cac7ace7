"""HCL2 templates (``*.pkr.hcl`` files and directories): python-hcl2 parses, this package evaluates and decodes
into the same build model the JSON loader produces (:class:`builders.template.model.Template`)."""

from builders.template.hcl2.config import HCL2Template, is_hcl2, load_hcl2, load_or_template_error
from builders.template.hcl2.diagnostics import Diagnostic, HCLError

__all__ = ["Diagnostic", "HCL2Template", "HCLError", "is_hcl2", "load_hcl2", "load_or_template_error"]
