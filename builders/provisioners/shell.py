"""Packer's ``shell`` provisioner: run scripts on the machine being built, over its communicator.

Each script (``script``, ``scripts``, or ``inline`` commands written to a temporary script headed by
``#!<inline_shebang>``, default ``/bin/sh -e``) is uploaded to ``remote_path`` (default
``<remote_folder>/<remote_file>`` = ``/tmp/script_<n>.sh``), made executable, and run with ``execute_command``
(default ``chmod +x {{.Path}}; {{.Vars}} {{.Path}}``) where ``{{.Path}}`` is the remote path and ``{{.Vars}}`` the
environment assignments (``PACKER_BUILD_NAME``, ``PACKER_BUILDER_TYPE``, ``environment_vars``, ``env``). Output is
streamed; an exit status outside ``valid_exit_codes`` (default ``[0]``) fails the provisioner with Packer's words.
The uploaded script is removed afterwards unless ``skip_clean``. ``expect_disconnect`` accepts a dropped
connection (a reboot). ``use_env_var_file`` writes the variables to a file sourced by ``{{.EnvVarFile}}``
instead. Windows line endings are converted unless ``binary``.
"""

from __future__ import annotations

import os
import random
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from builders.core import BuildError, Communicator, ConfigError, Provisioner
from builders.provisioners import (
    CMD_DISCONNECT,
    SHELL_COMMON_PROPERTIES,
    check_exit_code,
    command_timeout,
    env_var_errors,
    flatten_env_vars,
    render_runtime,
    wait_or_cancel,
)
from builders.ui import go_duration
from stemforge_base.durations import parse_duration
from stemforge_base.steps import Cancelled

DEFAULT_EXECUTE_COMMAND = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}"
ENV_FILE_EXECUTE_COMMAND = "chmod +x {{.Path}}; . {{.EnvVarFile}} && {{.Path}}"
_UNEXPECTED_DISCONNECT = (
    "Script disconnected unexpectedly. If you expected your script to disconnect, i.e. from a restart, you can "
    "try adding `\"expect_disconnect\": true` or `\"valid_exit_codes\": [0, 2300218]` to the shell provisioner "
    "parameters."
)


class ShellProvisioner(Provisioner):
    type_name: ClassVar[str] = "shell"
    render_at_runtime: ClassVar[frozenset[str]] = frozenset({"execute_command"})
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **SHELL_COMMON_PROPERTIES,
            "execute_command": {"type": "string"},
            "remote_folder": {"type": "string"},
            "remote_file": {"type": "string"},
            "remote_path": {"type": "string"},
            "expect_disconnect": {"type": "boolean"},
            "skip_clean": {"type": "boolean"},
            "binary": {"type": "boolean"},
            "use_env_var_file": {"type": "boolean"},
            "pause_after": {"type": ["string", "number"]},
            "start_retry_timeout": {"type": ["string", "number"]},
        },
    }

    def prepare(self) -> list[str]:
        c = self.config
        errors: list[str] = []
        use_env_file = bool(c.get("use_env_var_file", False))
        self.env_var_format: str = c.get("env_var_format") or ("export %s='%s'\n" if use_env_file else "%s='%s' ")
        self.execute_command: str = c.get("execute_command") or (
            ENV_FILE_EXECUTE_COMMAND if use_env_file else DEFAULT_EXECUTE_COMMAND)
        inline = c.get("inline")
        self.inline: list[str] | None = list(inline) if inline else None
        self.inline_shebang: str = c.get("inline_shebang") or "/bin/sh -e"
        self.remote_folder: str = c.get("remote_folder") or "/tmp"
        self.remote_file: str = c.get("remote_file") or f"script_{random.randrange(9999)}.sh"
        self.remote_path: str = c.get("remote_path") or f"{self.remote_folder}/{self.remote_file}"
        scripts = list(c.get("scripts") or [])
        if c.get("script") and scripts:
            errors.append("Only one of script or scripts can be specified.")
        if c.get("script"):
            scripts = [c["script"]]
        self.scripts: list[str] = scripts
        if not scripts and self.inline is None:
            errors.append("Either a script file or inline script must be specified.")
        elif scripts and self.inline is not None:
            errors.append("Only a script file or an inline script can be specified, not both.")
        for path in scripts:
            try:
                os.stat(path)
            except OSError as exc:
                errors.append(f"Bad script '{path}': {exc.strerror or exc}")
        self.environment_vars: list[str] = [str(v) for v in c.get("environment_vars") or []]
        errors.extend(env_var_errors(self.environment_vars))
        self.env: dict[str, Any] = dict(c.get("env") or {})
        self.valid_exit_codes: list[int] = list(c.get("valid_exit_codes") or [0])
        try:
            self.pause_after = parse_duration(c.get("pause_after"), mode="seconds", field_name="pause_after")
            self.start_retry_timeout = parse_duration(c.get("start_retry_timeout", "5m"), mode="seconds",
                                                      field_name="start_retry_timeout")
        except ValueError as exc:
            errors.append(str(exc))
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    # --------------------------------------------------------------------------------------------------------
    def provision(self, communicator: Communicator) -> None:
        ui = self.ctx.ui
        temporary: list[Path] = []
        try:
            scripts = list(self.scripts)
            if self.inline is not None:
                scripts.append(str(self._write_temp("packer-shell", self._inline_text(), temporary)))
            flattened = flatten_env_vars(self.ctx, self.environment_vars, self.env, self.env_var_format)
            env_file = ""
            if self.config.get("use_env_var_file"):
                local_vars = self._write_temp("packer-shell-vars", flattened, temporary)
                env_file = f"{self.remote_folder}/varfile_{random.randrange(9999)}.sh"
                communicator.upload(local_vars, env_file)
                communicator.run(f"chmod 0600 {shlex.quote(env_file)}", timeout=self._timeout(60))
            for path in scripts:
                ui.say(f"Provisioning with shell script: {path}")
                data = {"Vars": flattened, "EnvVarFile": env_file, "Path": self.remote_path}
                command = render_runtime(self.execute_command, data, self.ctx)
                upload = self._unix_copy(Path(path), temporary)
                disconnected = self._upload_and_run(communicator, upload, command)
                if not self.config.get("skip_clean"):
                    self._cleanup_remote(communicator, self.remote_path, tolerate=disconnected)
            if env_file and not self.config.get("skip_clean"):
                self._cleanup_remote(communicator, env_file, tolerate=False)
            if self.pause_after:
                ui.say(f"Pausing {go_duration(self.pause_after)} after this provisioner...")
                wait_or_cancel(self.ctx, self.pause_after)
        finally:
            for leftover in temporary:
                leftover.unlink(missing_ok=True)

    def _inline_text(self) -> str:
        return f"#!{self.inline_shebang}\n" + "".join(f"{line}\n" for line in self.inline or [])

    def _write_temp(self, prefix: str, text: str, temporary: list[Path]) -> Path:
        fd, name = tempfile.mkstemp(prefix=prefix)
        path = Path(name)
        temporary.append(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    def _unix_copy(self, path: Path, temporary: list[Path]) -> Path:
        """The script to upload: ``path`` itself, or a copy with CRLF line endings turned into LF."""
        if self.config.get("binary"):
            return path
        data = path.read_bytes()
        if b"\r\n" not in data:
            return path
        fd, name = tempfile.mkstemp(prefix="packer-shell-unix")
        temporary.append(Path(name))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.replace(b"\r\n", b"\n"))
        os.chmod(name, path.stat().st_mode & 0o777)
        return Path(name)

    def _timeout(self, default: float | None = None) -> float | None:
        left = command_timeout(self.ctx)
        if left is None:
            return default
        return left if default is None else min(left, default)

    def _upload_and_run(self, communicator: Communicator, script: Path, command: str) -> bool:
        """Upload, chmod and run; retried on connection loss until ``start_retry_timeout`` (a machine
        rebooting). Returns True when the connection dropped and ``expect_disconnect`` allowed it."""
        deadline = time.monotonic() + self.start_retry_timeout
        while True:
            running = False
            try:
                communicator.upload(script, self.remote_path)
                communicator.run(f"chmod 0755 {shlex.quote(self.remote_path)}", timeout=self._timeout(60))
                running = True
                result = communicator.run(command, timeout=self._timeout())
            except Cancelled:
                raise
            except BuildError as exc:
                text = str(exc)
                lost = "connection" in text.lower() and not text.startswith("command timed out")
                if running and lost:
                    if self.config.get("expect_disconnect"):
                        self.ctx.ui.message("Remote end disconnected while running the script (expected)")
                        return True
                    raise BuildError(_UNEXPECTED_DISCONNECT + f" ({text})") from None
                if lost and time.monotonic() < deadline:
                    self.ctx.ui.message(f"Retryable error: {text}")
                    wait_or_cancel(self.ctx, 2.0)
                    continue
                raise BuildError(f"Error uploading or running script {self.remote_path}: {text}") from None
            if result.exit_status == CMD_DISCONNECT:
                if self.config.get("expect_disconnect"):
                    return True
                raise BuildError(_UNEXPECTED_DISCONNECT)
            check_exit_code(result.exit_status, self.valid_exit_codes)
            return False

    def _cleanup_remote(self, communicator: Communicator, path: str, *, tolerate: bool) -> None:
        try:
            result = communicator.run(f"rm -f {shlex.quote(path)}", timeout=self._timeout(60), capture=True)
        except BuildError as exc:
            if tolerate:
                self.ctx.ui.message(f"Could not remove {path} after the expected disconnect: {exc}")
                return
            raise BuildError(f"Error removing temporary script at {path}: {exc}") from None
        if result.exit_status != 0 and not tolerate:
            raise BuildError(f"Error removing temporary script at {path}!")


PLUGIN = ShellProvisioner
