"""The boot-command config part (packer-plugin-sdk ``bootcommand/config.go`` ``BootConfig``): what is typed
into the machine after ``boot_wait``, and how fast."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from builders.builder_types._sdk.options import Options


@dataclass(kw_only=True)
class BootConfig:
    boot_command: list[str] = field(default_factory=list)
    boot_wait: float = 10.0
    boot_key_interval: float = 0.1

    def prepare_boot(self, opts: Options, check: Callable[[str], None] | None = None) -> None:
        """Packer's ``BootConfig.Prepare`` (``boot_command`` as a string or list, or ``boot_steps`` whose first
        elements are typed); ``check`` is the driver's test that the joined command can be typed (it raises
        ValueError naming what cannot)."""
        bc = opts.raw.get("boot_command")
        self.boot_command = [bc] if isinstance(bc, str) else [str(s) for s in bc or []]
        steps = opts.raw.get("boot_steps") or []
        if steps and self.boot_command:
            opts.errors.append("boot_command and boot_steps are mutually exclusive: give one of them")
        elif steps:
            # Packer's qemu builder types each step's command (the optional second element only describes it)
            self.boot_command = [str(step[0]) for step in steps if isinstance(step, list) and step]
        self.boot_wait = opts.duration("boot_wait", 10.0, zero_is_default=False)
        self.boot_key_interval = opts.duration("boot_key_interval", 0.1)
        if self.boot_command and check is not None:
            try:
                check("".join(self.boot_command))
            except ValueError as exc:
                opts.errors.append(f"boot_command: {exc}")
