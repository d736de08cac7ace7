"""``stemforge inspect`` of an HCL2 template, in Packer's HCL2-mode layout (``packer/command/inspect.go`` ->
``PackerConfig.InspectConfig``): input variables, local variables, then each build block's sources,
provisioners and post-processor chains. Sensitive values print as ``<sensitive>``."""

from __future__ import annotations

import json
from typing import Any

from builders.template.hcl2.template import HCL2Template
from builders.template.hcl2.values import UNKNOWN_PLACEHOLDER, shim_unknown
from builders.ui import Output


def _show(value: Any) -> str:
    shown = shim_unknown(value)
    if shown == UNKNOWN_PLACEHOLDER:
        return "<unknown>"
    text = json.dumps(shown, separators=(", ", ": "))
    return text.replace(json.dumps(UNKNOWN_PLACEHOLDER), "<unknown>")


def inspect_hcl2(t: HCL2Template, out: Output) -> None:
    """Print ``t`` as Packer's ``inspect`` does for HCL2 configurations."""
    out.say("Packer Inspect: HCL2 mode\n")
    out.say("> input-variables:\n")
    for name in sorted(t.hcl_variables):
        info = t.hcl_variables[name]
        value = "<sensitive>" if info.sensitive else _show(info.value)
        out.machine("template-variable", name, value, "0" if info.has_default else "1")
        out.say(f"var.{name}: {value}")
    out.say("\n> local-variables:\n")
    for name in sorted(t.hcl_locals):
        value = _show(t.hcl_locals[name])
        out.say(t.mask(f"local.{name}: {value}"))
    out.say("\n> builds:\n")
    for i, b in enumerate(t.build_blocks):
        title = b["name"] or f"<unnamed build {i}>"
        out.say(f"  > {title}:\n")
        if b["description"]:
            out.say(f"    description: {b['description']}\n")
        out.say("    sources:\n")
        for s in b["sources"]:
            out.machine("template-builder", s, s.split(".", 1)[0])
            out.say(f"      {s}\n")
        out.say("    provisioners:\n")
        for p in b["provisioners"]:
            out.machine("template-provisioner", p)
            out.say(f"      {p}\n")
        out.say("    post-processors:\n")
        for j, chain in enumerate(b["post_processors"]):
            out.say(f"      {j}:")
            for pp in chain:
                out.machine("template-post-processor", pp, pp)
                out.say(f"        {pp}")
            out.say("")
