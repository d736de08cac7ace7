"""terraform/runner.py: python-terraform's Terraform >= 0.15 problems, handled, against the real terraform binary.

The configurations here use only Terraform's built-in provider (``terraform_data``, ``local-exec``), so nothing is
installed and nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from python_terraform import IsFlagged

from stemforge_base.redaction import REDACTED
from terraform.runner import Terraform, TerraformCommandFailed

pytestmark = pytest.mark.terraform

TERRAFORM = shutil.which("terraform") or "/usr/local/bin/terraform"

ECHO_CONFIG = """
variable "text" { type = string }
variable "items" { type = list(string) }
variable "table" { type = map(string) }
resource "terraform_data" "echo" {
  input = { text = var.text, items = var.items, table = var.table }
}
output "text" { value = terraform_data.echo.output.text }
output "items" { value = terraform_data.echo.output.items }
output "table" { value = terraform_data.echo.output.table }
"""


def make(
    tmp_path: Path, config: str, lines: list[tuple[str, str]] | None = None, timeout: float = 120.0, **env: str
) -> Terraform:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "main.tf").write_text(config)
    base = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    base.update(CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=str(tmp_path / "none.tfrc"), **env)
    (tmp_path / "none.tfrc").write_text("disable_checkpoint = true\n")
    sink = (lambda stream, line: lines.append((stream, line))) if lines is not None else None
    return Terraform(work, binary=TERRAFORM, env=base, on_line=sink, timeout=timeout)


def test_destroy_passes_auto_approve_never_force(tmp_path: Path) -> None:
    tf = make(tmp_path, 'resource "terraform_data" "x" { input = "a" }\n')
    argv = tf.generate_cmd_string("destroy", **tf._generate_default_options({"force": None, "auto_approve": IsFlagged}))
    assert "-auto-approve" in argv and "-force" not in argv
    tf.init()
    tf.apply()
    assert tf.tfstate.resources  # python-terraform's state reading still works
    rc, _, _ = tf.destroy()  # the library's own destroy() fails on Terraform >= 0.15 ("-force")
    assert rc == 0
    assert json.loads((tmp_path / "work" / "terraform.tfstate").read_text())["resources"] == []


def test_apply_auto_approves_and_never_waits_on_a_prompt(tmp_path: Path) -> None:
    # A variable without a value would make a plain `terraform apply` prompt; stdin is /dev/null and -input=false.
    tf = make(tmp_path, 'variable "v" { type = string }\nresource "terraform_data" "x" { input = var.v }\n', timeout=60)
    tf.init()
    started = time.monotonic()
    with pytest.raises(TerraformCommandFailed) as info:
        tf.apply()
    assert time.monotonic() - started < 50
    assert "No value for required variable" in str(info.value)


def test_a_directory_argument_is_refused(tmp_path: Path) -> None:
    tf = make(tmp_path, "")
    (tmp_path / "work" / "sub").mkdir()
    with pytest.raises(ValueError, match="dir_or_plan='sub'.*no configuration directory"):
        tf.apply("sub")


def test_variables_round_trip_exactly_through_the_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes, '=', newlines, unicode, lists and maps arrive as given; no temp file, no -var on the command line."""
    own_tmp = tmp_path / "tmpdir"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))
    tf = make(tmp_path, ECHO_CONFIG)
    values = {
        "text": 'a "quoted" = value\nwith ünïcode and ${not.interpolated} %{x}',
        "items": ["a b", "c=d", "'e'"],
        "table": {"k=1": "v 1", 'k"2': "v\\2"},
    }
    path = tf.write_variables(values)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="var="):
        tf.apply(var={"text": "x"})
    tf.init()
    tf.apply()
    assert tf.output() == values
    assert tf.output("text") == values["text"]  # python-terraform's output(NAME) expects the pre-0.14 shape
    assert list(own_tmp.iterdir()) == []  # python-terraform would leave *.tfvars.json files here


def test_failure_stderr_is_captured_streamed_and_redacted(tmp_path: Path) -> None:
    secret = "s3cr3t-value-from-the-vars-file"
    config = """
variable "secret_key" {
  type = string
  validation {
    condition     = length(var.secret_key) < 5
    error_message = "secret_key too long: ${var.secret_key}"
  }
}
"""
    lines: list[tuple[str, str]] = []
    tf = make(tmp_path, config, lines)
    tf.write_variables({"secret_key": secret})
    tf.init()
    with pytest.raises(TerraformCommandFailed) as info:
        tf.apply()
    message = str(info.value)
    assert "secret_key too long" in message and REDACTED in message and secret not in message
    stderr_lines = [line for stream, line in lines if stream == "stderr"]
    assert any("secret_key too long" in line for line in stderr_lines)  # streamed while running, not only at exit
    assert not any(secret in line for _, line in lines)
    assert info.value.returncode == 1


def test_synchronous_and_capture_output_are_not_turned_into_flags(tmp_path: Path) -> None:
    tf = make(tmp_path, "")
    rc, out, err = tf.cmd("version", synchronous=False, capture_output=False)
    assert rc == 0 and out.startswith("Terraform v") and err == ""


def test_timeout_interrupts_terraform_and_says_so(tmp_path: Path) -> None:
    config = """
resource "terraform_data" "slow" {
  provisioner "local-exec" { command = "sleep 60" }
}
"""
    tf = make(tmp_path, config, timeout=4)
    tf.init()
    started = time.monotonic()
    with pytest.raises(TerraformCommandFailed, match=r"(?s)apply timed out.*no result after 4s"):
        tf.apply()
    assert time.monotonic() - started < 40  # SIGINT stopped it well before the sleep ended


SLOW_CONFIG = """
variable "seconds" { type = number }
resource "terraform_data" "slow" {
  provisioner "local-exec" { command = "sleep ${var.seconds}" }
}
"""


def interrupt_main_thread_after(*delays: float) -> threading.Thread:
    """SIGINT to this process's main thread (a Ctrl-C) after each of ``delays`` seconds."""

    def fire() -> None:
        for delay in delays:
            time.sleep(delay)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def state_resources(tmp_path: Path) -> list[object]:
    return json.loads((tmp_path / "work" / "terraform.tfstate").read_text()).get("resources", [])


def test_first_ctrl_c_lets_the_command_finish_then_raises(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    tf = make(tmp_path, SLOW_CONFIG, lines)
    tf.write_variables({"seconds": 4})
    tf.init()
    interrupt_main_thread_after(1.5)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="finished after an interrupt"):
        tf.apply()
    assert time.monotonic() - started >= 3.5  # the provisioner ran to its end
    assert state_resources(tmp_path)  # and the resource is in the state: nothing made outside it
    assert any("interrupted: letting terraform apply finish" in line for _, line in lines)


def test_second_ctrl_c_stops_terraform(tmp_path: Path) -> None:
    tf = make(tmp_path, SLOW_CONFIG)
    tf.write_variables({"seconds": 60})
    tf.init()
    interrupt_main_thread_after(1.5, 1.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        tf.apply()
    assert time.monotonic() - started < 40
