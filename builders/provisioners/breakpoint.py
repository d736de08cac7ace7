"""Packer's ``breakpoint`` provisioner (packer ``provisioner/breakpoint/provisioner.go``): pause the build until
the user presses enter, to inspect the machine half-way through provisioning.

Options: ``note`` (shown with the pause) and ``disable`` (skip it, with a message). Packer asks through its UI;
here the pause happens only when a human can answer (a terminal on both ends, not ``-machine-readable``):
otherwise the breakpoint says so and the build continues, so CI runs of a template that keeps its breakpoints do
not hang. Ctrl-C while waiting cancels the build as usual.
"""

from __future__ import annotations

from typing import Any, ClassVar

from builders.core import Communicator, Provisioner


class BreakpointProvisioner(Provisioner):
    type_name: ClassVar[str] = "breakpoint"
    #: Packer hands it the communicator but never uses it: it also pauses builds that have no machine.
    needs_communicator: ClassVar[bool] = False
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"note": {"type": "string"}, "disable": {"type": "boolean"}},
    }

    def prepare(self) -> list[str]:
        self.note: str = str(self.config.get("note") or "")
        self.disable: bool = bool(self.config.get("disable", False))
        return []

    def provision(self, communicator: Communicator | None) -> None:
        ui = self.ctx.ui
        if self.disable:
            if self.note:
                ui.say(f'Breakpoint provisioner with note "{self.note}" disabled; continuing...')
            else:
                ui.say("Breakpoint provisioner disabled; continuing...")
            return
        if self.note:
            ui.say(f'Pausing at breakpoint provisioner with note "{self.note}".')
        else:
            ui.say("Pausing at breakpoint provisioner.")
        can_ask = getattr(ui, "can_ask", None)
        ask = getattr(ui, "ask", None)
        if not (callable(can_ask) and callable(ask) and can_ask()):
            ui.say("Not on a terminal (or -machine-readable): continuing without waiting.")
            return
        ask("Press enter to continue.", self.ctx.cancel)
        self.ctx.check_cancelled()


PLUGIN = BreakpointProvisioner
