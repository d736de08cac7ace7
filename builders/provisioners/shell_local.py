"""Packer's ``shell-local`` provisioner: run commands or scripts on the build host (not on the machine).

Exactly one of ``command`` (a single command, kept for old templates), ``inline`` (commands written to a temporary
script headed by ``#!<inline_shebang>``, default ``/bin/sh -e``), ``script`` or ``scripts``. Each script is run
with ``execute_command`` (an argv list, default ``["/bin/sh", "-c", "{{.Vars}} {{.Script}}"]``) where
``{{.Script}}`` is the script's absolute path and ``{{.Vars}}`` the environment assignments (``PACKER_BUILD_NAME``,
``PACKER_BUILDER_TYPE``, ``environment_vars``, ``env``). Commands run through the local communicator: output is
streamed, the provisioner's ``timeout`` and Ctrl-C stop the whole process group, and an exit status outside
``valid_exit_codes`` fails it with Packer's words. ``only_on`` skips it on other operating systems.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from builders.communicators.local import LocalCommunicator
from builders.core import BuildError, Communicator, ConfigError, Provisioner
from builders.provisioners import (
    SHELL_COMMON_PROPERTIES,
    check_exit_code,
    command_timeout,
    env_var_errors,
    flatten_env_vars,
    render_runtime,
)

DEFAULT_EXECUTE_COMMAND = ["/bin/sh", "-c", "{{.Vars}} {{.Script}}"]
SUPPORTED_OS = ["darwin", "freebsd", "linux", "openbsd", "solaris", "windows"]
_TOO_MANY = ("You may only specify one of the following options: Command, Inline, Script or Scripts. Please "
             "consolidate these options in your config.")


class ShellLocalProvisioner(Provisioner):
    type_name: ClassVar[str] = "shell-local"
    needs_communicator: ClassVar[bool] = False
    render_at_runtime: ClassVar[frozenset[str]] = frozenset({"execute_command"})
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **SHELL_COMMON_PROPERTIES,
            "command": {"type": "string"},
            "execute_command": {"type": "array", "items": {"type": "string"}},
            "only_on": {"type": "array", "items": {"type": "string"}},
            "tempfile_extension": {"type": "string"},
            "use_linux_pathing": {"type": "boolean"},
        },
    }

    def prepare(self) -> list[str]:
        c = self.config
        errors: list[str] = []
        self.inline_shebang: str = c.get("inline_shebang") or "/bin/sh -e"
        self.execute_command: list[str] = list(c.get("execute_command") or DEFAULT_EXECUTE_COMMAND)
        command = c.get("command") or ""
        inline = list(c.get("inline") or [])
        script = c.get("script") or ""
        scripts = list(c.get("scripts") or [])
        if not command and not inline and not script and not scripts:
            errors.append("Command, Inline, Script and Scripts options cannot all be empty.")
        if command:
            if inline or scripts or script:
                errors.append(_TOO_MANY)
            else:
                inline = [command]
        if script:
            if scripts or inline:
                errors.append(_TOO_MANY)
            else:
                scripts = [script]
        if scripts and inline and _TOO_MANY not in errors:
            errors.append(_TOO_MANY)
        for path in scripts:
            try:
                os.stat(path)
            except OSError as exc:
                errors.append(f"Bad script '{path}': {exc.strerror or exc}")
        self.only_on: list[str] = list(c.get("only_on") or [])
        for name in self.only_on:
            if name not in SUPPORTED_OS:
                errors.append(f"Invalid OS specified in only_on: '{name}'\nSupported OS names: "
                              f"{', '.join(SUPPORTED_OS)}")
        if c.get("use_linux_pathing"):
            errors.append("use_linux_pathing is for the Windows Subsystem for Linux; stemforge runs on Linux only")
        self.inline: list[str] = inline
        self.scripts: list[str] = scripts
        self.environment_vars: list[str] = [str(v) for v in c.get("environment_vars") or []]
        errors.extend(env_var_errors(self.environment_vars))
        self.env: dict[str, Any] = dict(c.get("env") or {})
        self.env_var_format: str = c.get("env_var_format") or "%s='%s' "
        self.tempfile_extension: str = str(c.get("tempfile_extension") or "").lstrip(".")
        self.valid_exit_codes: list[int] = list(c.get("valid_exit_codes") or [0])
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    def provision(self, communicator: Communicator) -> None:
        """Runs on the host; ``communicator`` (the machine's) is not used."""
        ui = self.ctx.ui
        if self.only_on and _runtime_os() not in self.only_on:
            ui.say("Skipping shell-local due to runtime OS")
            return
        local = LocalCommunicator(self.ctx)
        temporary: Path | None = None
        try:
            scripts = list(self.scripts)
            if not scripts and self.inline:
                temporary = self._inline_script()
                scripts = [str(temporary)]
            flattened = flatten_env_vars(self.ctx, self.environment_vars, self.env, self.env_var_format)
            for script in scripts:
                absolute = os.path.abspath(script)
                data = {"Vars": flattened, "Script": absolute, "Command": absolute}
                argv = [render_runtime(part, data, self.ctx) for part in self.execute_command]
                ui.say(f"Running local shell script: {script}")
                try:
                    result = local.run(" ".join(shlex.quote(a) for a in argv), timeout=command_timeout(self.ctx))
                except BuildError as exc:
                    raise BuildError(f"Error executing script: {absolute}\n\n{exc}\n\n"
                                     "Please see output above for more information.") from None
                check_exit_code(result.exit_status, self.valid_exit_codes)
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)

    def _inline_script(self) -> Path:
        suffix = f".{self.tempfile_extension}" if self.tempfile_extension else ""
        fd, name = tempfile.mkstemp(prefix="packer-shell", suffix=suffix)
        with os.fdopen(fd, "w") as fh:
            if self.inline_shebang:
                fh.write(f"#!{self.inline_shebang}\n")
            for line in self.inline:
                fh.write(f"{line}\n")
        os.chmod(name, 0o700)
        return Path(name)


def _runtime_os() -> str:
    return "darwin" if sys.platform == "darwin" else "windows" if sys.platform.startswith("win") else (
        "freebsd" if sys.platform.startswith("freebsd") else "linux")


PLUGIN = ShellLocalProvisioner
