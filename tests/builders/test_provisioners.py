"""The core provisioners (``shell``, ``file``, ``shell-local``) and the local communicator, with real processes
and real files: the local communicator is a real ``Communicator`` whose "machine" is this host (remote paths
point into the test's temporary directory)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from builders.communicators.local import LocalCommunicator
from builders.core import BuildContext, BuildError, ConfigError, Provisioner
from builders.provisioners.file import FileProvisioner
from builders.provisioners.shell import ShellProvisioner
from builders.provisioners.shell_local import ShellLocalProvisioner
from builders.registry import load_provisioner, validate_options
from builders.ui import Output
from stemforge_base.steps import Cancelled

# temporary scripts go to a directory of the test's own (builders/conftest.py), so 'nothing left behind' is checkable
pytestmark = pytest.mark.usefixtures("private_tmp")


class Harness:
    def __init__(self, tmp_path: Path, name: str = "vm", build_type: str = "qemu") -> None:
        self.buffer = io.StringIO()
        self.output = Output(self.buffer, tty=False, color=False)
        self.ctx = BuildContext(build_name=name, build_type=build_type, ui=self.output.build_ui(name),
                                cancel=threading.Event(), template_dir=tmp_path, run_uuid="run-uuid")
        self.remote = tmp_path / "machine"
        self.remote.mkdir()
        self.comm = LocalCommunicator(self.ctx, root=self.remote, kill_grace=1.0)

    def provisioner(self, type_name: str, config: dict[str, Any]) -> Provisioner:
        cls = load_provisioner(type_name)
        plugin = cls(validate_options(cls, config, type_name), self.ctx)
        plugin.prepare()
        return plugin

    def run(self, type_name: str, config: dict[str, Any]) -> str:
        self.provisioner(type_name, config).provision(self.comm)
        return self.buffer.getvalue()


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# ------------------------------------------------------------------------------------------------------ shell


def test_shell_inline_runs_uploaded_script_with_env_vars_and_cleans_it(h: Harness, private_tmp: Path) -> None:
    out = h.run("shell", {
        "inline": ["echo \"hello $FOO\" > " + str(h.remote / "result"), "echo \"q=$QUOTE\"",
                   "echo name=$PACKER_BUILD_NAME type=$PACKER_BUILDER_TYPE"],
        "environment_vars": ["FOO=bar baz", "QUOTE=it's"],
        "remote_folder": str(h.remote),
        "remote_file": "script.sh",
    })
    assert (h.remote / "result").read_text() == "hello bar baz\n"
    assert "    vm: q=it's" in out
    assert "    vm: name=vm type=qemu" in out
    assert "==> vm: Provisioning with shell script: " in out
    assert not (h.remote / "script.sh").exists(), "the uploaded script is removed (skip_clean false)"
    assert list(private_tmp.iterdir()) == [], "the local temporary inline script is removed"


def test_shell_skip_clean_keeps_script_and_inline_shebang(h: Harness) -> None:
    h.run("shell", {"inline": ["[[ 1 == 1 ]] && echo bashism-ok"], "inline_shebang": "/bin/bash -e",
                    "remote_path": str(h.remote / "kept.sh"), "skip_clean": True})
    assert "bashism-ok" in h.buffer.getvalue()
    assert (h.remote / "kept.sh").read_text().startswith("#!/bin/bash -e\n")


def test_shell_scripts_in_order_and_crlf_converted(h: Harness, tmp_path: Path) -> None:
    first = tmp_path / "first.sh"
    second = tmp_path / "second.sh"
    log = h.remote / "order"
    first.write_bytes(f"#!/bin/sh\r\necho first >> {log}\r\n".encode())
    second.write_text(f"#!/bin/sh\necho second >> {log}\n")
    h.run("shell", {"scripts": [str(first), str(second)], "remote_folder": str(h.remote)})
    assert log.read_text() == "first\nsecond\n"
    out = h.buffer.getvalue()
    assert out.index(f"Provisioning with shell script: {first}") < out.index(
        f"Provisioning with shell script: {second}")


def test_shell_execute_command_renders_vars_and_path(h: Harness, tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("echo \"arg=$1 var=$MYVAR\"\n")
    h.run("shell", {"script": str(script), "environment_vars": ["MYVAR=x y"], "remote_folder": str(h.remote),
                    "execute_command": "{{.Vars}} /bin/sh {{.Path}} extra-arg"})
    assert "    vm: arg=extra-arg var=x y" in h.buffer.getvalue()


def test_shell_env_var_file(h: Harness) -> None:
    h.run("shell", {"inline": ["echo \"from-file=$SECRETISH\""], "environment_vars": ["SECRETISH=v1"],
                    "use_env_var_file": True, "remote_folder": str(h.remote)})
    assert "from-file=v1" in h.buffer.getvalue()
    assert list(h.remote.iterdir()) == [], "script and var file removed"


def test_shell_exit_codes(h: Harness) -> None:
    h.run("shell", {"inline": ["exit 3"], "valid_exit_codes": [0, 3], "remote_folder": str(h.remote)})
    with pytest.raises(BuildError, match=r"Script exited with non-zero exit status: 4\. Allowed exit codes are: "
                                         r"\[0 3\]"):
        h.run("shell", {"inline": ["exit 4"], "valid_exit_codes": [0, 3], "remote_folder": str(h.remote)})


def test_shell_prepare_errors_are_packer_words(h: Harness, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        h.provisioner("shell", {"script": str(tmp_path / "missing.sh"), "inline": ["true"],
                                "environment_vars": ["=nokey", "novalue"]})
    text = str(err.value)
    assert f"Bad script '{tmp_path / 'missing.sh'}'" in text
    assert "Only a script file or an inline script can be specified, not both." in text
    assert "Environment variable not in format 'key=value': =nokey" in text
    assert "Environment variable not in format 'key=value': novalue" in text
    with pytest.raises(ConfigError, match="Either a script file or inline script must be specified."):
        h.provisioner("shell", {})


def test_shell_unknown_key_is_named(h: Harness) -> None:
    with pytest.raises(ConfigError, match=r"shell: unknown configuration key: 'inlin' \(did you mean 'inline'\?\)"):
        h.provisioner("shell", {"inlin": ["true"]})


def test_shell_uses_template_functions_in_execute_command(h: Harness) -> None:
    h.ctx.render = lambda value: value.replace("{{build_name}}", h.ctx.build_name)
    h.run("shell", {"inline": ["true"], "remote_folder": str(h.remote),
                    "execute_command": "echo build={{build_name}} path={{ .Path }}"})
    assert f"build=vm path={h.remote}/" in h.buffer.getvalue()


# ------------------------------------------------------------------------------------------------------- file


def test_file_upload_file_and_trailing_slash(h: Harness, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_text("payload")
    os.chmod(src, 0o640)
    (h.remote / "etc").mkdir()
    h.run("file", {"source": str(src), "destination": str(h.remote / "etc" / "renamed.txt")})
    h.run("file", {"source": str(src), "destination": str(h.remote / "etc") + "/"})
    assert (h.remote / "etc" / "renamed.txt").read_text() == "payload"
    assert (h.remote / "etc" / "payload.txt").read_text() == "payload"
    assert (h.remote / "etc" / "payload.txt").stat().st_mode & 0o777 == 0o640
    assert f"==> vm: Uploading {src} => {h.remote / 'etc'}/" in h.buffer.getvalue()


def test_file_upload_directory_rules(h: Harness, tmp_path: Path) -> None:
    tree = tmp_path / "conf"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    h.run("file", {"source": str(tree), "destination": str(h.remote / "itself")})
    h.run("file", {"source": str(tree) + "/", "destination": str(h.remote / "contents")})
    assert (h.remote / "itself" / "conf" / "sub" / "b.txt").read_text() == "b"
    assert (h.remote / "contents" / "a.txt").read_text() == "a"
    assert (h.remote / "contents" / "sub" / "b.txt").read_text() == "b"


def test_file_content_and_sources(h: Harness, tmp_path: Path, private_tmp: Path) -> None:
    h.run("file", {"content": "generated text", "destination": str(h.remote / "c.txt")})
    assert (h.remote / "c.txt").read_text() == "generated text"
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text("1")
    two.write_text("2")
    (h.remote / "many").mkdir()
    h.run("file", {"sources": [str(one), str(two)], "destination": str(h.remote / "many") + "/"})
    assert sorted(p.name for p in (h.remote / "many").iterdir()) == ["one", "two"]
    assert list(private_tmp.iterdir()) == []


def test_file_download_file_dir_and_glob(h: Harness, tmp_path: Path) -> None:
    (h.remote / "var" / "log").mkdir(parents=True)
    (h.remote / "var" / "log" / "one.log").write_text("one")
    (h.remote / "var" / "log" / "two.log").write_text("two")
    (h.remote / "var" / "log" / "skip.txt").write_text("x")
    local = tmp_path / "local"
    h.run("file", {"direction": "download", "source": str(h.remote / "var" / "log" / "one.log"),
                   "destination": str(local / "deep" / "copy.log")})
    assert (local / "deep" / "copy.log").read_text() == "one"
    h.run("file", {"direction": "download", "source": str(h.remote / "var" / "log" / "one.log"),
                   "destination": str(local / "dir") + "/"})
    assert (local / "dir" / "one.log").read_text() == "one"
    h.run("file", {"direction": "download", "source": str(h.remote / "var" / "log"),
                   "destination": str(local / "itself") + "/"})
    assert sorted(p.name for p in (local / "itself" / "log").iterdir()) == ["one.log", "skip.txt", "two.log"]
    h.run("file", {"direction": "download", "source": str(h.remote / "var" / "log") + "/",
                   "destination": str(local / "whole")})
    assert sorted(p.name for p in (local / "whole").iterdir()) == ["one.log", "skip.txt", "two.log"]
    h.run("file", {"direction": "download", "source": str(h.remote / "var" / "log" / "*.log"),
                   "destination": str(local / "globbed") + "/"})
    assert sorted(p.name for p in (local / "globbed").iterdir()) == ["one.log", "two.log"]
    assert "==> vm: Downloading" in h.buffer.getvalue()


def test_file_prepare_errors(h: Harness, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        h.provisioner("file", {"source": str(tmp_path / "nope"), "direction": "sideways"})
    text = str(err.value)
    assert "Direction must be one of: download, upload." in text
    assert "Destination must be specified." in text
    with pytest.raises(ConfigError, match="Bad source"):
        h.provisioner("file", {"source": str(tmp_path / "nope"), "destination": "/x"})
    # generated: the source only has to exist when the provisioner runs
    h.provisioner("file", {"source": str(tmp_path / "nope"), "destination": "/x", "generated": True})


def test_file_upload_into_missing_directory_fails_clearly(h: Harness, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(BuildError, match="does not exist"):
        h.run("file", {"source": str(src), "destination": str(h.remote / "no" / "such" / "f")})
    assert "==> vm: Upload failed:" in h.buffer.getvalue()


# ------------------------------------------------------------------------------------------------ shell-local


def test_shell_local_inline_env_and_default_execute_command(h: Harness, tmp_path: Path,
                                                            private_tmp: Path) -> None:
    out_file = tmp_path / "local-out"
    h.run("shell-local", {"inline": [f"echo \"$GREETING from $PACKER_BUILD_NAME\" > {out_file}"],
                          "environment_vars": ["GREETING=hi there"], "env": {"EXTRA": "e"}})
    assert out_file.read_text() == "hi there from vm\n"
    assert "==> vm: Running local shell script: " in h.buffer.getvalue()
    assert list(private_tmp.iterdir()) == []


def test_shell_local_command_script_and_execute_command(h: Harness, tmp_path: Path) -> None:
    h.run("shell-local", {"command": "echo via-command"})
    script = tmp_path / "local.sh"
    script.write_text("echo \"script got $1\"\n")
    h.run("shell-local", {"script": str(script), "execute_command": ["/bin/sh", "{{.Script}}", "arg one"]})
    out = h.buffer.getvalue()
    assert "    vm: via-command" in out
    assert "    vm: script got arg one" in out


def test_shell_local_exit_codes_and_only_on(h: Harness) -> None:
    h.run("shell-local", {"inline": ["exit 7"], "valid_exit_codes": [7]})
    with pytest.raises(BuildError, match=r"non-zero exit status: 1\. Allowed exit codes are: \[0\]"):
        h.run("shell-local", {"inline": ["false"]})
    h.run("shell-local", {"inline": ["exit 9"], "only_on": ["darwin"]})
    assert "Skipping shell-local due to runtime OS" in h.buffer.getvalue()


def test_shell_local_prepare_errors(h: Harness) -> None:
    with pytest.raises(ConfigError, match="Command, Inline, Script and Scripts options cannot all be empty."):
        h.provisioner("shell-local", {})
    with pytest.raises(ConfigError, match="You may only specify one of the following options"):
        h.provisioner("shell-local", {"command": "a", "inline": ["b"]})
    with pytest.raises(ConfigError, match="Invalid OS specified in only_on: 'plan9'"):
        h.provisioner("shell-local", {"command": "a", "only_on": ["plan9"]})
    # mapstructure (Packer's weak decoding) wraps a single map into a one-element list, then fails on the element
    with pytest.raises(ConfigError, match=r"'execute_command\[0\]' expected type 'string', got unconvertible type "
                                          r"'map\[string\]interface \{\}'"):
        h.provisioner("shell-local", {"command": "a", "execute_command": {"not": "a list"}})


# --------------------------------------------------------------------------------------- local communicator


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if token in cmdline:
            found.append(int(entry.name))
    return found


def test_local_communicator_timeout_kills_the_whole_group(h: Harness) -> None:
    token = "37.4242"
    started = time.monotonic()
    with pytest.raises(BuildError, match="command timed out after 1s"):
        h.comm.run(f"sleep {token} & sleep {token}; echo never", timeout=1)
    assert time.monotonic() - started < 8
    deadline = time.monotonic() + 5
    while _processes_with(f"sleep {token}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"sleep {token}") == []


def test_local_communicator_cancel_stops_command(h: Harness) -> None:
    token = "38.4242"
    timer = threading.Timer(0.5, h.ctx.cancel.set)
    timer.start()
    try:
        with pytest.raises(Cancelled):
            h.comm.run(f"trap '' TERM; sleep {token}")
    finally:
        timer.cancel()
    assert _processes_with(f"sleep {token}") == []


def test_local_communicator_capture_env_and_exit_status(h: Harness) -> None:
    result = h.comm.run("echo out; echo err >&2; pwd; exit 5", env={"X": "1"}, capture=True)
    assert result.exit_status == 5
    assert result.stdout.splitlines() == ["out", str(h.remote)]
    assert result.stderr == "err\n"
    assert "out" not in h.buffer.getvalue(), "captured output is not streamed"
    streamed = h.comm.run("echo $X; echo oops >&2", env={"X": "streamed"})
    assert streamed.exit_status == 0
    assert "    vm: streamed" in h.buffer.getvalue()
    assert "==> vm: oops" in h.buffer.getvalue()


def test_local_communicator_background_children_do_not_outlive_command(h: Harness) -> None:
    token = "39.4242"
    result = h.comm.run(f"(sleep {token} &) ; echo started")
    assert result.exit_status == 0
    deadline = time.monotonic() + 5
    while _processes_with(f"sleep {token}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(f"sleep {token}") == []


def test_local_communicator_relative_paths_resolve_under_root(h: Harness, tmp_path: Path) -> None:
    src = tmp_path / "rel.txt"
    src.write_text("rel")
    h.comm.upload(src, "rel-copy.txt")
    assert (h.remote / "rel-copy.txt").read_text() == "rel"
    h.comm.download("rel-copy.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "rel"
    with pytest.raises(BuildError, match="download source missing.txt not found"):
        h.comm.download("missing.txt", tmp_path / "x")


def test_provisioner_classes_declare_conventions() -> None:
    assert ShellLocalProvisioner.needs_communicator is False
    assert getattr(ShellProvisioner, "needs_communicator", True) is True
    assert getattr(FileProvisioner, "needs_communicator", True) is True
    assert "execute_command" in ShellProvisioner.render_at_runtime
