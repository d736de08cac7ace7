"""The build runner end to end with real processes and files: the ``file`` builder, ``shell-local``
provisioners, real ``stemforge build`` subprocesses (parallelism, selection, failures, summary words, exit
status, -on-error, machine-readable output, masking) and in-process runs with small test plugins registered by
the plugin convention (step cleanup order, post-processor chain semantics)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from builders.core import Artifact, BuildError, BuilderType, PostProcessor, ProvisionHook
from builders.runner import BuildRunner, PrepareError, RunOptions
from builders.template import parse_template
from builders.ui import Output, machine_unescape

PYTHON = sys.executable
SECRET = "hunter2-very-secret"


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    """Environment for stemforge subprocesses: a private TMPDIR (to prove no temporary file is left)."""
    tmpdir = tmp_path / "hosttmp"
    tmpdir.mkdir()
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)
    env.pop("STEMFORGE_FAILPOINTS", None)
    return env


def write_template(tmp_path: Path, template: Mapping[str, Any], name: str = "template.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(template, indent=2))
    return path


def stemforge(args: Sequence[str], env: Mapping[str, str], cwd: Path,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "stemforge.cli", *args], env=dict(env), cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, check=False)


def file_builder(tmp_path: Path, name: str, content: str = "", own_dir: bool = False) -> dict[str, Any]:
    """A ``file`` build writing ``out/<name>.txt`` (or ``out-<name>/<name>.txt``: a directory of its own, which
    its cleanup removes)."""
    target = tmp_path / f"out-{name}" / f"{name}.txt" if own_dir else tmp_path / "out" / f"{name}.txt"
    return {"type": "file", "name": name, "target": str(target), "content": content or f"content of {name}"}


# ------------------------------------------------------------------------------------------ subprocess runs


def test_parallel_builds_overlap_and_parallel_1_serialises(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    log = tmp_path / "spans"
    template = {
        "builders": [file_builder(tmp_path, n) for n in ("a", "b", "c")],
        "provisioners": [{"type": "shell-local", "inline": [
            f"echo \"start $PACKER_BUILD_NAME $(date +%s.%N)\" >> {log}", "sleep 0.6",
            f"echo \"end $PACKER_BUILD_NAME $(date +%s.%N)\" >> {log}"]}],
    }
    path = write_template(tmp_path, template)

    def spans() -> dict[str, tuple[float, float]]:
        found: dict[str, list[float]] = {}
        for line in log.read_text().splitlines():
            kind, name, stamp = line.split()
            found.setdefault(name, [0.0, 0.0])[0 if kind == "start" else 1] = float(stamp)
        log.unlink()
        return {k: (v[0], v[1]) for k, v in found.items()}

    result = stemforge(["build", str(path)], tmpdir_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    parallel = spans()
    assert max(s for s, _ in parallel.values()) < min(e for _, e in parallel.values()), "all three overlap"

    result = stemforge(["build", "-parallel-builds=1", str(path)], tmpdir_env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    serial = sorted(spans().values())
    for (_, end), (start, _) in zip(serial, serial[1:], strict=False):
        assert start >= end, "with -parallel-builds=1 a build starts after the previous one ended"
    assert "==> Builds finished. The artifacts of successful builds are:" in result.stdout
    for name in ("a", "b", "c"):
        assert f"--> {name}: Stored file: {tmp_path / 'out' / name}.txt" in result.stdout
    assert re.search(r"^==> Wait completed after \d+ (second|millisecond)", result.stdout, re.M)


def test_only_and_except_select_builds(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    path = write_template(tmp_path, {"builders": [file_builder(tmp_path, n) for n in ("a", "b", "c")]})
    result = stemforge(["build", "-only=a,c", str(path)], tmpdir_env, tmp_path)
    assert result.returncode == 0, result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "c.txt"]
    shutil.rmtree(tmp_path / "out")
    result = stemforge(["build", "--except", "a", str(path)], tmpdir_env, tmp_path)
    assert result.returncode == 0, result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.txt", "c.txt"]
    result = stemforge(["build", "-only=nope", str(path)], tmpdir_env, tmp_path)
    assert result.returncode == 1
    assert "-only: no builder named 'nope' in this template" in result.stdout


def test_failing_build_summary_exit_1_and_its_target_cleaned(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {
        "builders": [file_builder(tmp_path, "good"), file_builder(tmp_path, "bad")],
        "provisioners": [{"type": "shell-local", "only": ["bad"], "inline": ["echo about to fail", "exit 3"]}],
    }
    result = stemforge(["build", str(write_template(tmp_path, template))], tmpdir_env, tmp_path)
    out = result.stdout
    assert result.returncode == 1, out
    assert re.search(r"^Build 'bad' errored after \d+ \w+.*: Script exited with non-zero exit status: 3\. "
                     r"Allowed exit codes are: \[0\]$", out, re.M), out
    assert re.search(r"^Build 'good' finished after ", out, re.M)
    assert "==> Some builds didn't complete successfully and had errors:" in out
    assert "--> bad: Script exited with non-zero exit status: 3. Allowed exit codes are: [0]" in out
    assert "==> Builds finished. The artifacts of successful builds are:" in out
    assert f"--> good: Stored file: {tmp_path / 'out' / 'good.txt'}" in out
    assert "==> bad: Provisioning step had errors: Running the cleanup provisioner, if present..." in out
    assert (tmp_path / "out" / "good.txt").exists()
    assert not (tmp_path / "out" / "bad.txt").exists(), "the failed build's cleanup removed its target"
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_error_cleanup_provisioner_runs_before_step_cleanups(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    marker = tmp_path / "cleanup-ran"
    target = tmp_path / "out" / "x.txt"
    template = {
        "builders": [file_builder(tmp_path, "x")],
        "provisioners": [{"type": "shell-local", "inline": ["exit 1"]}],
        "error-cleanup-provisioner": {"type": "shell-local", "inline": [
            f"test -f {target} && echo target-still-there > {marker}"]},
    }
    result = stemforge(["build", str(write_template(tmp_path, template))], tmpdir_env, tmp_path)
    assert result.returncode == 1
    assert marker.read_text() == "target-still-there\n"
    out = result.stdout
    assert out.index("Running the cleanup provisioner") < out.index(f"==> x: Deleting {target}...")
    assert not target.exists()


def test_on_error_abort_leaves_resources(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {"builders": [file_builder(tmp_path, "x")],
                "provisioners": [{"type": "shell-local", "inline": ["exit 2"]}]}
    result = stemforge(["build", "-on-error=abort", str(write_template(tmp_path, template))], tmpdir_env, tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "out" / "x.txt").exists(), "abort leaves the build's resources for debugging"
    assert 'Step "StepProvision" failed, aborting...' in result.stdout
    assert "leaving the resources of 2 step(s) in place (-on-error=abort)" in result.stdout


def test_failpoint_after_step_unwinds_and_abort_keeps(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    path = write_template(tmp_path, {"builders": [file_builder(tmp_path, "x")]})
    env = dict(tmpdir_env, STEMFORGE_FAILPOINTS="after:provision")
    result = stemforge(["build", str(path)], env, tmp_path)
    assert result.returncode == 1
    assert "--> x: FailpointError: failpoint after:provision fired" in result.stdout
    assert not (tmp_path / "out" / "x.txt").exists()
    assert not (tmp_path / "out").exists(), "the directory the build created is removed too"
    result = stemforge(["build", "-on-error=abort", str(path)], env, tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "out" / "x.txt").exists()


def test_on_error_ask_without_terminal_cleans_up_and_says_so(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {"builders": [file_builder(tmp_path, "x")],
                "provisioners": [{"type": "shell-local", "inline": ["exit 2"]}]}
    result = stemforge(["build", "-on-error=ask", str(write_template(tmp_path, template))], tmpdir_env, tmp_path)
    assert result.returncode == 1
    assert "-on-error=ask needs a terminal to ask on; failed builds will be cleaned up" in result.stdout
    assert not (tmp_path / "out" / "x.txt").exists()


def test_on_error_ask_on_a_terminal_retry_then_abort(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    """Packer's prompt on a real pseudo-terminal: 'r' retries the failed step, 'a' aborts without cleanup."""
    import pty

    counter = tmp_path / "attempts"
    template = {"builders": [file_builder(tmp_path, "x")],
                "provisioners": [{"type": "shell-local", "inline": [f"echo try >> {counter}", "exit 2"]}]}
    path = write_template(tmp_path, template)
    master, slave = pty.openpty()
    proc = subprocess.Popen([PYTHON, "-m", "stemforge.cli", "build", "-on-error=ask", "-color=false", str(path)],
                            stdin=slave, stdout=slave, stderr=slave, env=tmpdir_env, cwd=tmp_path,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    answers = [b"r\n", b"a\n"]
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            import select

            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if seen.count(b"[c] Clean up and exit") > 2 - len(answers) and answers:
                    os.write(master, answers.pop(0))
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 1, text
    assert 'Step "StepProvision" failed' in text
    assert counter.read_text() == "try\ntry\n", "the step was retried once"
    assert 'aborted: skipping cleanup of step "StepCreateFile"' in text
    assert (tmp_path / "out" / "x.txt").exists(), "abort left the target"


def test_machine_readable_output_parses(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {
        "builders": [file_builder(tmp_path, "a"), file_builder(tmp_path, "b")],
        "provisioners": [{"type": "shell-local", "inline": ["echo 'one, two'"]},
                         {"type": "shell-local", "only": ["b"], "inline": ["exit 1"]}],
    }
    result = stemforge(["build", "-machine-readable", str(write_template(tmp_path, template))], tmpdir_env,
                       tmp_path)
    assert result.returncode == 1
    rows = []
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\d+),([^,]*),([^,]+)((?:,[^,]*)*)", line)
        assert match, f"not a machine-readable line: {line!r}"
        rows.append((match.group(2), match.group(3), [machine_unescape(f) for f in match.group(4)[1:].split(",")]))
    assert ("", "ui", ["message", "    a: one, two"]) in rows
    assert "one%!(PACKER_COMMA) two" in result.stdout
    assert ("", "error-count", ["1"]) in rows
    assert ("b", "error", ["Script exited with non-zero exit status: 1. Allowed exit codes are: [0]"]) in rows
    assert ("a", "artifact-count", ["1"]) in rows
    assert ("a", "artifact", ["0", "builder-id", "packer.file"]) in rows
    assert ("a", "artifact", ["0", "file", "0", str(tmp_path / "out" / "a.txt")]) in rows
    assert ("a", "artifact", ["0", "end"]) in rows
    says = [r[2][1] for r in rows if r[1] == "ui" and r[2][0] == "say"]
    assert "\n==> Wait completed after" in "".join(says)


def test_sensitive_values_never_printed(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {
        "variables": {"password": SECRET, "plain": "visible-value"},
        "sensitive-variables": ["password"],
        "builders": [file_builder(tmp_path, "a", content="{{user `password`}}")],
        "provisioners": [
            {"type": "shell-local", "environment_vars": ["PW={{user `password`}}"],
             "inline": ["echo \"pw is $PW and {{user `plain`}}\"", "echo \"$PW\" >&2"]},
        ],
    }
    path = write_template(tmp_path, template)
    for extra in ([], ["-machine-readable"]):
        result = stemforge(["build", *extra, str(path)], tmpdir_env, tmp_path)
        assert result.returncode == 0, result.stdout
        assert SECRET not in result.stdout + result.stderr
        assert "pw is <sensitive> and visible-value" in result.stdout
    assert (tmp_path / "out" / "a.txt").read_text() == SECRET, "the value itself is used, only printing is masked"
    inspect = stemforge(["inspect", str(path)], tmpdir_env, tmp_path)
    assert SECRET not in inspect.stdout and "password = <sensitive>" in inspect.stdout
    # a failure message that contains the secret is masked too
    bad = dict(template, builders=[dict(file_builder(tmp_path, "a"), target=f"/proc/{SECRET}/x")])
    result = stemforge(["build", str(write_template(tmp_path, bad, "bad.json"))], tmpdir_env, tmp_path)
    assert result.returncode == 1
    assert SECRET not in result.stdout + result.stderr
    assert "<sensitive>" in result.stdout


def test_unknown_options_and_types_are_named_and_all_reported(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    template = {
        "builders": [
            {"type": "file", "name": "one", "target": "/tmp/x", "contnet": "typo"},
            {"type": "file", "name": "two", "target": "/tmp/y", "content": {"not": "a string"}},
            {"type": "qemuu", "name": "three"},
        ],
        "provisioners": [{"type": "shell-local", "inlin": ["true"]}],
        "post-processors": [{"type": "manifestt"}],
    }
    path = write_template(tmp_path, template)
    for command in ("build", "validate"):
        result = stemforge([command, str(path)], tmpdir_env, tmp_path)
        out = result.stdout
        assert result.returncode == 1
        assert 'Error: Failed to prepare build: "one"' in out
        assert "file.one: unknown configuration key: 'contnet' (did you mean 'content'?)" in out
        assert "provisioner 1 (shell-local): unknown configuration key: 'inlin' (did you mean 'inline'?)" in out
        assert "file.two: 'content' expected type 'string', got unconvertible type 'map[string]interface {}'" in out
        assert 'Error: Failed to initialize build "three"' in out
        assert ("The builder qemuu is unknown by Packer, and is likely part of a plugin that is not installed."
                in out)
        assert "Did you mean 'qemu'?" in out
        assert "The post-processor manifestt is unknown by Packer" in out
    assert not Path("/tmp/x").is_file() or Path("/tmp/x").read_text() != "typo"


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _interrupt_when(proc: subprocess.Popen[str], ready: Path, signals: Sequence[tuple[int, float]],
                    timeout: float = 30) -> str:
    """Wait for ``ready`` to exist, then deliver each (signal, delay) to the process group, return output."""
    deadline = time.monotonic() + timeout
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), "the build never reached the point to interrupt"
    for sig, delay in signals:
        time.sleep(delay)
        os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def _start_build(path: Path, env: Mapping[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "stemforge.cli", "build", *args, str(path)], env=dict(env), cwd=cwd,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_during_slow_shell_local_unwinds_everything(tmp_path: Path, tmpdir_env: dict[str, str],
                                                              sig: str) -> None:
    import signal

    token = f"41.{os.getpid()}{len(sig)}"
    ready = tmp_path / "ready"
    template = {"builders": [file_builder(tmp_path, "a", own_dir=True), file_builder(tmp_path, "b", own_dir=True)],
                "provisioners": [{"type": "shell-local", "inline": [f"touch {ready}", f"sleep {token}"]}]}
    proc = _start_build(write_template(tmp_path, template), tmpdir_env, tmp_path)
    started = time.monotonic()
    out = _interrupt_when(proc, ready, [(getattr(signal, sig), 0.3)])
    assert proc.returncode == 1, out
    assert time.monotonic() - started < 20
    assert f"Cancelling build after receiving {'interrupt' if sig == 'SIGINT' else 'terminated'}" in out
    assert out.rstrip().endswith("Cleanly cancelled builds after being interrupted."), out
    assert "==> Wait completed after" in out
    assert list(tmp_path.glob("out*")) == [], "both targets and their directories were cleaned up"
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == [], "no temporary script left"
    assert _processes_with(f"sleep {token}") == [], "no child process left"


def test_interrupt_during_pause_before_and_second_interrupt_ignored(tmp_path: Path,
                                                                     tmpdir_env: dict[str, str]) -> None:
    import signal

    ready = tmp_path / "ready"
    token = f"42.{os.getpid()}"
    template = {
        "builders": [file_builder(tmp_path, "a", own_dir=True), file_builder(tmp_path, "slow", own_dir=True)],
        "provisioners": [
            {"type": "shell-local", "only": ["a"], "inline": [f"touch {ready}"]},
            {"type": "shell-local", "only": ["a"], "pause_before": "30s", "inline": ["echo never-runs"]},
            # 'slow' ignores SIGTERM, so stopping it waits for the kill grace period: time for a second Ctrl-C
            {"type": "shell-local", "only": ["slow"], "inline": [f"sleep {token}"],
             "execute_command": ["/bin/sh", "-c", "trap '' TERM; {{.Vars}} {{.Script}}"]},
        ],
    }
    proc = _start_build(write_template(tmp_path, template), tmpdir_env, tmp_path)
    out = _interrupt_when(proc, ready, [(signal.SIGINT, 0.5), (signal.SIGINT, 0.5)])
    assert proc.returncode == 1, out
    assert "==> a: Pausing 30s before the next provisioner..." in out
    assert "never-runs" not in out
    assert "Received interrupt again: ignored while the builds clean up" in out
    assert out.rstrip().endswith("Cleanly cancelled builds after being interrupted."), out
    assert list(tmp_path.glob("out*")) == []
    assert _processes_with(f"sleep {token}") == []
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_interrupt_during_file_copy_step(tmp_path: Path, tmpdir_env: dict[str, str]) -> None:
    """The copy step checks for cancellation between chunks; its partial file and created directory go."""
    import signal

    source = tmp_path / "big.img"
    with open(source, "wb") as fh:
        fh.truncate(3 * 1024 * 1024 * 1024)  # sparse: cheap to create, slow enough to copy
    target_dir = tmp_path / "out" / "nested"
    template = {"builders": [{"type": "file", "source": str(source), "target": str(target_dir / "big.img")}]}
    proc = _start_build(write_template(tmp_path, template), tmpdir_env, tmp_path)
    partial = target_dir / ".big.img.part"
    out = _interrupt_when(proc, partial, [(signal.SIGINT, 0.2)])
    assert proc.returncode == 1, out
    assert "Cleanly cancelled builds after being interrupted." in out
    assert not (tmp_path / "out").exists(), "partial copy and created directories removed"


# -------------------------------------------------------------------------------------- in-process plugins


@pytest.fixture
def plugins() -> Iterator[dict[str, list[str]]]:
    """Register test plugins by the convention (modules in sys.modules); a shared event log."""
    events: dict[str, list[str]] = {"log": []}
    registered = {
        "builders.builder_types.t_steps": StepsBuilder,
        "builders.postprocessors.t_copy": CopyPostProcessor,
    }
    for name, cls in registered.items():
        module = types.ModuleType(name)
        module.PLUGIN = cls  # type: ignore[attr-defined]
        sys.modules[name] = module
    StepsBuilder.events = events["log"]
    yield events
    for name in registered:
        sys.modules.pop(name, None)


class _RecordingStep:
    temporary = False

    def __init__(self, name: str, workdir: Path, events: list[str], fail: bool) -> None:
        self.name = name
        self.workdir = workdir
        self.events = events
        self.fail = fail

    def run(self, state: dict[str, Any]) -> None:
        (self.workdir / self.name).write_text("made")
        state.setdefault("made", []).append(self.name)
        self.events.append(f"run {self.name}")
        if self.fail:
            raise BuildError(f"{self.name} failed on purpose")

    def cleanup(self, state: dict[str, Any]) -> None:
        (self.workdir / self.name).unlink(missing_ok=True)
        self.events.append(f"cleanup {self.name}")


class _HookStep:
    name = "provision"
    temporary = False

    def __init__(self, hook: ProvisionHook) -> None:
        self.hook = hook

    def run(self, state: dict[str, Any]) -> None:
        from builders.communicators import NullCommunicator

        self.hook.run(NullCommunicator("t-steps"))

    def cleanup(self, state: dict[str, Any]) -> None:
        pass


class StepsBuilder(BuilderType):
    """Three recording steps (one may fail), then provisioning; the artifact is a real file."""

    type_name: ClassVar[str] = "t-steps"
    events: ClassVar[list[str]] = []
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False,
        "properties": {"workdir": {"type": "string"}, "fail_at": {"type": "string"},
                       "explode": {"type": "boolean"}},
        "required": ["workdir"],
    }

    def prepare(self) -> list[str]:
        if self.config.get("explode"):
            raise RuntimeError("plugin bug in prepare")
        return []

    def steps(self, hook: ProvisionHook) -> Sequence[Any]:
        workdir = Path(self.config["workdir"])
        fail_at = self.config.get("fail_at", "")
        return [_RecordingStep(n, workdir, self.events, n == fail_at) for n in ("one", "two", "three")] + [
            _HookStep(hook)]

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        workdir = Path(self.config["workdir"])
        image = workdir / f"{self.ctx.build_name}.img"
        image.write_text("image")
        return Artifact("test.steps", self.ctx.build_name, "t-steps", [image], str(image))


class CopyPostProcessor(PostProcessor):
    """Copies the artifact's file with a suffix; ``keep`` is its forced-keep result; ``fail`` raises."""

    type_name: ClassVar[str] = "t-copy"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False,
        "properties": {"suffix": {"type": "string"}, "keep": {"type": "boolean"}, "fail": {"type": "boolean"}},
    }

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if self.config.get("fail"):
            raise BuildError("t-copy failed on purpose")
        src = artifact.files[0]
        dst = src.with_name(src.name + self.config.get("suffix", ".copy"))
        shutil.copyfile(src, dst)
        return Artifact("test.copy", artifact.build_name, artifact.builder_type, [dst], str(dst)), bool(
            self.config.get("keep", False))


def run_in_process(tmp_path: Path, template: Mapping[str, Any], **options: Any) -> tuple[int, str, BuildRunner]:
    parsed = parse_template(write_template(tmp_path, template))
    buffer = io.StringIO()
    runner = BuildRunner(parsed, Output(buffer, tty=False, mask=parsed.mask), RunOptions(**options))
    status = runner.run()
    return status, buffer.getvalue(), runner


def test_cleanups_run_in_reverse_order_after_a_failed_step(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    template = {"builders": [{"type": "t-steps", "workdir": str(work), "fail_at": "three"}]}
    status, out, _ = run_in_process(tmp_path, template)
    assert status == 1
    assert plugins["log"] == ["run one", "run two", "run three", "cleanup three", "cleanup two", "cleanup one"]
    assert list(work.iterdir()) == []
    assert "--> t-steps: three failed on purpose" in out


def test_cleanups_in_reverse_after_a_provisioner_fails(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    template = {"builders": [{"type": "t-steps", "workdir": str(work)}],
                "provisioners": [{"type": "shell-local", "inline": ["exit 5"]}]}
    status, out, _ = run_in_process(tmp_path, template)
    assert status == 1
    assert plugins["log"][-3:] == ["cleanup three", "cleanup two", "cleanup one"]
    assert "step provision: stopped after" in out


def test_provisioner_timeout_retries_and_pause(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    counter = tmp_path / "count"
    token = f"43.{os.getpid()}"
    template = {
        "builders": [{"type": "t-steps", "workdir": str(work)}],
        "provisioners": [
            {"type": "shell-local", "pause_before": "200ms", "max_retries": 2,
             "inline": [f"echo x >> {counter}", f"test $(wc -l < {counter}) -ge 2"]},
            {"type": "shell-local", "timeout": "1s", "inline": [f"sleep {token}"]},
        ],
    }
    started = time.monotonic()
    status, out, runner = run_in_process(tmp_path, template)
    assert status == 1
    assert time.monotonic() - started < 15
    assert "==> t-steps: Pausing 200ms before the next provisioner..." in out
    assert ('==> t-steps: Provisioner failed with "Script exited with non-zero exit status: 1. Allowed exit codes '
            'are: [0]", retrying with 2 trie(s) left') in out
    assert counter.read_text() == "x\nx\n", "succeeded on the second attempt"
    assert "==> t-steps: Setting a 1s timeout for the next provisioner..." in out
    assert "==> t-steps: Cancelling provisioner after a timeout..." in out
    assert runner.results["t-steps"].error == "provisioner 2 (shell-local): timed out after 1s"
    assert _processes_with(f"sleep {token}") == []


def test_post_processor_chains_packer_semantics(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    template = {
        "builders": [{"type": "t-steps", "name": "b", "workdir": str(work)}],
        "post-processors": [
            # chain 1: .x (not kept, so the original goes unless another chain keeps it) -> .y (keep_input: .x stays)
            [{"type": "t-copy", "suffix": ".x"}, {"type": "t-copy", "suffix": ".y", "keep_input_artifact": True}],
            # chain 2: .z, then .w which does not keep its input: .z is destroyed
            [{"type": "t-copy", "suffix": ".z"}, {"type": "t-copy", "suffix": ".w"}],
        ],
    }
    status, out, runner = run_in_process(tmp_path, template)
    assert status == 0, out
    names = sorted(p.name for p in work.iterdir() if p.suffix not in ("",) or p.name.endswith(".img"))
    assert names == ["b.img.x", "b.img.x.y", "b.img.z.w"], "original and .z destroyed, .x kept"
    assert [a.files[0].name for a in runner.results["b"].artifacts] == ["b.img.x", "b.img.x.y", "b.img.z.w"]
    assert "==> b: Running post-processor: t-copy" in out
    assert "--> b: " in out and "b.img.x.y" in out

    # a post-processor that forces keep, or keep_input_artifact on the first, keeps the original
    for work_file in work.iterdir():
        work_file.unlink()
    kept = dict(template, **{"post-processors": [{"type": "t-copy", "suffix": ".k", "keep": True}]})
    status, out, runner = run_in_process(tmp_path, kept)
    assert status == 0
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("b.img")) == ["b.img", "b.img.k"]
    assert [a.files[0].name for a in runner.results["b"].artifacts] == ["b.img", "b.img.k"]


def test_post_processor_failure_and_except_by_name(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    template = {
        "builders": [{"type": "t-steps", "name": "b", "workdir": str(work)}],
        "post-processors": [
            [{"type": "t-copy", "suffix": ".ok", "keep": True}],
            [{"type": "t-copy", "name": "broken", "fail": True}],
        ],
    }
    status, out, _ = run_in_process(tmp_path, template)
    assert status == 1
    assert "==> b: Running post-processor: broken (type t-copy)" in out
    assert "--> b: 1 error(s) occurred:\n\n* Post-processor failed: t-copy failed on purpose" in out
    status, out, _ = run_in_process(tmp_path, template, except_=["broken"])
    assert status == 0, out
    assert "broken" not in out.split("==> Wait completed")[0].replace("Running post-processor: broken", "X")


def test_prepare_collects_every_problem_before_running(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    template = {"builders": [{"type": "t-steps", "name": "ok", "workdir": str(work)},
                             {"type": "t-steps", "name": "bad"}],
                "provisioners": [{"type": "shell", "inline": ["true"], "execute_command": ["a", "list"]}]}
    parsed = parse_template(write_template(tmp_path, template))
    runner = BuildRunner(parsed, Output(io.StringIO(), tty=False))
    with pytest.raises(PrepareError) as err:
        runner.prepare()
    text = str(err.value)
    assert "t-steps.bad: missing required configuration key: 'workdir'" in text
    assert ("provisioner 1 (shell): 'execute_command' expected type 'string', got unconvertible type "
            "'[]interface {}'") in text
    assert 'Error: Failed to prepare build: "ok"' in text
    assert plugins["log"] == [], "nothing ran"
    buggy = write_template(tmp_path, {"builders": [{"type": "t-steps", "workdir": str(work), "explode": True}]},
                           "buggy.json")
    with pytest.raises(PrepareError, match="t-steps: RuntimeError: plugin bug in prepare"):
        BuildRunner(parse_template(buggy), Output(io.StringIO(), tty=False)).prepare()


def test_interrupt_from_another_thread_in_process(tmp_path: Path, plugins: dict[str, list[str]]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ready = tmp_path / "ready"
    template = {"builders": [{"type": "t-steps", "workdir": str(work)}],
                "provisioners": [{"type": "shell-local", "inline": [f"touch {ready}", "sleep 44.5"]}]}
    parsed = parse_template(write_template(tmp_path, template))
    buffer = io.StringIO()
    runner = BuildRunner(parsed, Output(buffer, tty=False))

    def interrupt() -> None:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        runner.interrupt()

    thread = threading.Thread(target=interrupt)
    thread.start()
    status = runner.run()
    thread.join()
    assert status == 1
    assert plugins["log"][-3:] == ["cleanup three", "cleanup two", "cleanup one"]
    assert buffer.getvalue().rstrip().endswith("Cleanly cancelled builds after being interrupted.")
    assert runner.results["t-steps"].cancelled
    assert list(work.iterdir()) == []
