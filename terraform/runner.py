"""python-terraform, made fit for Terraform >= 0.15 and for running with credentials.

python-terraform 0.10.1 (the last release on PyPI, 2019) builds good command lines but predates Terraform 0.15.
:class:`Terraform` keeps its command-line building (``generate_cmd_string``, the ``init``/``plan`` option defaults)
and state reading, and handles its known problems:

* ``destroy()`` passes ``-force``, removed in Terraform 0.15 ("flag provided but not defined: -force"): here it
  passes ``-auto-approve`` instead (beelit94/python-terraform#108, #113, #128).
* ``apply()`` only auto-approves with ``skip_plan=True`` and otherwise waits on a prompt: here it always
  auto-approves, and stdin is ``/dev/null`` so nothing can ever wait on a prompt (#31, #80).
* The positional configuration directory (``terraform apply DIR``) was removed in 0.15: a directory argument is
  refused with a clear error; commands run in ``working_dir`` (a plan file argument is still accepted).
* ``-var``: a dict of variables goes to a temporary ``*.tfvars.json`` in the system temp directory, logged at debug
  level with its values and left behind when the call is interrupted; other values are formatted with Python's
  ``str()`` (a list becomes ``['a', 'b']``, which is not HCL). Here ``var=`` is refused: variables are written with
  :meth:`Terraform.write_variables` as JSON into ``terraform.tfvars.json`` in the working directory (mode 0600),
  which Terraform loads by itself; nothing is quoted on a command line or visible in ``ps``.
* ``cmd()`` gives either captured output at the end or uncaptured output and ``None``; ``synchronous=False`` is
  turned into a ``-synchronous=false`` flag (#58, #81); it takes no environment; it decodes output as strict UTF-8
  and logs stderr unredacted at warning level. Here every command runs with an explicit environment, a timeout
  (SIGINT first so Terraform can stop cleanly, then SIGKILL), stdout and stderr both captured *and* streamed line by
  line, redacted, to a callback; undecodable bytes are replaced. Terraform runs in its own session: on the first
  Ctrl-C the running command is left to finish (stopping it cancels the provider's requests in flight, and what AWS
  made for them would be in no state), then KeyboardInterrupt is raised; a second Ctrl-C stops it.
* ``output(NAME)`` expects the pre-0.14 ``{"value": ...}`` shape: here :meth:`Terraform.output` reads
  ``output -json`` and answers plain values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import python_terraform
from python_terraform import IsFlagged, IsNotFlagged

from stemforge_base.processes import spawn, stop_group
from stemforge_base.redaction import Redactor

#: Variables file Terraform loads by itself from the working directory.
VARIABLES_FILE = "terraform.tfvars.json"
#: How long Terraform gets to stop after SIGINT before it is killed.
INTERRUPT_GRACE = 30.0
#: Lines of stderr kept for error messages.
ERROR_TAIL_LINES = 40


class TerraformCommandFailed(RuntimeError):
    """A terraform command exited non-zero or timed out; the message holds its redacted stderr tail."""

    def __init__(self, command: str, returncode: int | None, detail: str) -> None:
        self.command = command
        self.returncode = returncode
        self.detail = detail
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"terraform {command} {status}" + (f":\n{detail}" if detail else ""))


class Terraform(python_terraform.Terraform):
    """One Terraform working directory (see the module docstring for what differs from python-terraform).

    ``env`` is the complete environment of every command; ``redactor`` scrubs every line before it reaches
    ``on_line`` or an exception; ``timeout`` bounds each command (seconds)."""

    def __init__(
        self,
        working_dir: Path,
        *,
        binary: str,
        env: Mapping[str, str],
        redactor: Redactor | None = None,
        on_line: Callable[[str, str], None] | None = None,
        timeout: float = 1800.0,
    ) -> None:
        super().__init__(working_dir=str(working_dir), terraform_bin_path=binary, is_env_vars_included=False)
        self.env = dict(env)
        self.redactor = redactor or Redactor()
        self.on_line = on_line
        self.timeout = timeout
        #: On the first Ctrl-C let the running command finish (then raise KeyboardInterrupt); stop it on the second.
        self.finish_on_interrupt = True

    # -- variables ---------------------------------------------------------------------------------------------------

    def write_variables(self, values: Mapping[str, Any]) -> Path:
        """Write ``values`` as JSON to ``terraform.tfvars.json`` in the working directory (mode 0600, atomically);
        values under secret-looking keys are registered with the redactor."""
        self.redactor.collect(dict(values))
        path = Path(self.working_dir) / VARIABLES_FILE
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(values), f, indent=2, sort_keys=True)
        tmp.replace(path)
        return path

    # -- python-terraform's option building, corrected ---------------------------------------------------------------

    def _generate_default_args(self, dir_or_plan: str | None) -> list[str]:
        if not dir_or_plan:
            return []
        if (Path(self.working_dir) / dir_or_plan).is_dir():
            raise ValueError(
                f"dir_or_plan={dir_or_plan!r}: Terraform >= 0.15 takes no configuration directory "
                "argument; make it the working_dir"
            )
        return [dir_or_plan]

    def _generate_default_options(self, input_options: dict[str, Any]) -> dict[str, Any]:
        if input_options.get("var") or self.variables:
            raise ValueError(
                "var=: pass variables with write_variables() (a JSON file in the working directory), "
                "not on the command line"
            )
        options: dict[str, Any] = super()._generate_default_options(input_options)
        options["var"] = None
        return options

    def generate_cmd_string(self, cmd: str, *args: Any, **kwargs: Any) -> list[str]:
        """python-terraform's command line; ``var=`` is refused here too (it would go to a temp file)."""
        if kwargs.get("var"):
            raise ValueError("var=: pass variables with write_variables(), not on the command line")
        result: list[str] = super().generate_cmd_string(cmd, *args, **kwargs)
        return result

    def apply(self, dir_or_plan: str | None = None, **kwargs: Any) -> tuple[int, str, str]:
        """``terraform apply -auto-approve -input=false -no-color``."""
        kwargs.setdefault("skip_plan", True)
        result: tuple[int, str, str] = super().apply(dir_or_plan, **kwargs)
        return result

    def destroy(self, dir_or_plan: str | None = None, **kwargs: Any) -> tuple[int, str, str]:
        """``terraform destroy -auto-approve -input=false -no-color`` (never ``-force``)."""
        kwargs["force"] = IsNotFlagged
        kwargs.setdefault("auto_approve", IsFlagged)
        result: tuple[int, str, str] = super().destroy(dir_or_plan, **kwargs)
        return result

    def init(self, dir_or_plan: str | None = None, **kwargs: Any) -> tuple[int, str, str]:
        """``terraform init -input=false -no-color -reconfigure -backend=true``."""
        result: tuple[int, str, str] = super().init(dir_or_plan, **kwargs)
        return result

    def output(self, *names: str, full_value: bool = False, **kwargs: Any) -> Any:
        """``terraform output -json``: ``{name: value}`` for all outputs (``full_value``: Terraform's own
        ``{name: {value, type, sensitive}}``), or the plain value of one ``name``.
        Raises :class:`TerraformCommandFailed` when terraform fails."""
        kwargs["json"] = IsFlagged
        kwargs.setdefault("raise_on_error", True)
        _, out, _ = self.cmd("output", *names, **kwargs)
        doc = json.loads(out) if out.strip() else {}
        if names or full_value:
            return doc
        return {name: entry["value"] for name, entry in doc.items()}

    # -- running ----------------------------------------------------------------------------------------------------

    def cmd(self, cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
        """Run ``terraform <cmd>`` in the working directory with ``self.env``; returns (returncode, stdout, stderr),
        raising :class:`TerraformCommandFailed` when ``raise_on_error`` is true (the default) and it fails."""
        kwargs.pop("capture_output", None)
        kwargs.pop("synchronous", None)
        raise_on_error = kwargs.pop("raise_on_error", True)
        timeout = kwargs.pop("timeout", self.timeout)
        argv = self.generate_cmd_string(cmd, *args, **kwargs)
        returncode, out, err = self._run(cmd, argv, timeout)
        if returncode == 0:
            self.read_state_file()
        elif raise_on_error:
            tail = "\n".join(line for line in err.splitlines()[-ERROR_TAIL_LINES:])
            raise TerraformCommandFailed(cmd, returncode, self.redactor.scrub(tail).strip())
        return (-1 if returncode is None else returncode), out, err

    def _run(self, name: str, argv: list[str], timeout: float) -> tuple[int | None, str, str]:
        proc = spawn(
            argv,
            cwd=self.working_dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def pump(stream_name: str, stream: Any) -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                chunks[stream_name].append(line)
                if self.on_line is not None:
                    self.on_line(stream_name, self.redactor.scrub(line.rstrip("\n")))
            stream.close()

        readers = [
            threading.Thread(target=pump, args=(n, s), daemon=True)
            for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for reader in readers:
            reader.start()
        timed_out = interrupted = False
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    timed_out = True
                    self._stop(proc)
                    break
                except KeyboardInterrupt:
                    # The child runs in its own session: Ctrl-C reached only us. Stopping Terraform now cancels the
                    # provider's requests in flight, and what AWS made for them is then in no state (leaked): the
                    # first Ctrl-C lets the command finish, the second stops it.
                    if interrupted or not self.finish_on_interrupt:
                        self._stop(proc)
                        raise
                    interrupted = True
                    if self.on_line is not None:
                        self.on_line(
                            "stderr",
                            f"interrupted: letting terraform {name} finish what it has started "
                            "(Ctrl-C again stops it now, which can leave resources outside the state)",
                        )
        except BaseException:
            self._stop(proc)
            raise
        finally:
            for reader in readers:
                reader.join(timeout=10)
        out, err = "".join(chunks["stdout"]), "".join(chunks["stderr"])
        if timed_out:
            raise TerraformCommandFailed(
                name,
                None,
                f"no result after {timeout:.0f}s; " + self.redactor.scrub("".join(err.splitlines(True)[-10:])).strip(),
            )
        if interrupted:
            raise KeyboardInterrupt(f"terraform {name} finished after an interrupt")
        return proc.returncode, out, err

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGINT to Terraform's process group (Terraform finishes the operations in flight and saves state), then
        SIGKILL after the grace."""
        stop_group(proc, first=signal.SIGINT, grace=INTERRUPT_GRACE)
