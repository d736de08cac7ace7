"""Pipeline tasks run in a bubblewrap sandbox (ci.sandbox): the attacks of issue 12 item 2 against ``stemforge
pipeline run``, each a real task process. A task cannot read the host's secrets, write outside its outputs and
caches, reach libvirt's socket, run as root, see the host's /tmp or use the network unless its step is privileged
(or, for the network, tagged ``network``); and a task path that leaves the working directory (absolute, ``..``) is
refused by ``pipeline validate`` and by ``pipeline run`` before anything is touched."""

from __future__ import annotations

import io
import os
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ci.build import RunOptions
from ci.runner import run_pipeline_job
from ci.sandbox import TASK_UID
from ci.validate import validate_file

HEAD = """
resources:
- name: src
  type: git
  source: {uri: "https://example.invalid/x.git"}
jobs:
"""
PYTHON = "/usr/bin/python3"  # the image's interpreter (the runner's venv is not an input of these tasks)


def task(name: str, script: str, *, inputs: tuple[str, ...] = ("src",), **config: Any) -> dict[str, Any]:
    """A task step running ``script`` with /bin/sh; ``config`` keys go to the task config, ``step_*`` to the step."""
    step = {k[len("step_") :]: v for k, v in config.items() if k.startswith("step_")}
    extra = {k: v for k, v in config.items() if not k.startswith("step_")}
    body = {"platform": "linux", "inputs": [{"name": n} for n in inputs], "run": {"path": "/bin/sh"}, **extra}
    body["run"] = {**body["run"], "args": ["-c", script]}
    return {"task": name, "config": body, **step}


def run(tmp_path: Path, *steps: dict[str, Any], variables: dict[str, Any] | None = None) -> tuple[int, str]:
    """Run job ``a`` (``get: src`` then ``steps``) with ``tmp_path/repo`` as the git resource."""
    path = tmp_path / "pipeline.yml"
    path.write_text(HEAD + yaml.safe_dump([{"name": "a", "plan": [{"get": "src"}, *steps]}], sort_keys=False))
    (tmp_path / "repo").mkdir(exist_ok=True)
    out = io.StringIO()
    options = RunOptions(
        pipeline=path,
        job="a",
        variables=variables or {},
        work_dir=tmp_path / "work",
        git_dir=tmp_path / "repo",
        out=out,
    )
    return run_pipeline_job(options), out.getvalue()


def lines(out: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def printed(out: str) -> str:
    """What the tasks printed (the runner's own lines, which repeat each task's command, left out)."""
    return "\n".join(line for line in out.splitlines() if not line.startswith("["))


def test_a_task_cannot_read_host_secrets(tmp_path: Path) -> None:
    shadow = Path("/etc/shadow").read_text()
    secret = next(line for line in shadow.splitlines() if line.startswith("root:"))
    script = "cat /etc/shadow /etc/gshadow 2>&1; echo shadow-bytes=$(cat /etc/shadow 2>/dev/null | wc -c); ls -A /root"
    status, out = run(tmp_path, task("plain", script), task("root", script, step_privileged=True))
    assert status == 0, out
    assert secret not in out
    assert printed(out).count("/etc/shadow: No such file or directory") == 2  # not there, even for root
    assert lines(out, "shadow-bytes=") == ["0", "0"]
    assert ".bash_history" not in out and ".ssh" not in out


def test_a_task_writes_only_its_outputs_and_caches(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "code").write_text("original\n")
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    script = textwrap.dedent(
        f"""
        for target in {victim} /etc/stemforge-x /usr/stemforge-x /var/lib/stemforge-x {tmp_path}/new; do
          if echo x > "$target"; then echo "wrote=$target"; else echo "denied=$target"; fi
        done
        rm {victim} 2>/dev/null && echo "removed-victim"
        echo changed > src/code.new && mv src/code.new src/code && mkdir src/more
        echo "input-changed=$(cat src/code)"
        echo made > out/file && echo cached >> c/file && echo "outputs-written"
        """
    )
    in_place = 'echo root > src/code && echo "in-place=$(cat src/code)"'
    status, out = run(
        tmp_path,
        task("t", script, outputs=[{"name": "out"}], caches=[{"path": "c"}]),
        task("root", in_place, step_privileged=True),
    )
    assert status == 0, out
    assert lines(out, "wrote=") == [] and len(lines(out, "denied=")) == 5, out
    assert lines(out, "removed-victim") == [] and victim.read_text() == "keep\n"
    assert not (tmp_path / "new").exists() and not Path("/etc/stemforge-x").exists()
    # the input is the task's copy-on-write overlay (Concourse's input volume): the artifact is untouched
    assert lines(out, "input-changed=") == ["changed"] and lines(out, "in-place=") == ["root"]
    assert (tmp_path / "repo" / "code").read_text() == "original\n" and sorted(os.listdir(tmp_path / "repo")) == [
        "code"
    ]
    assert lines(out, "outputs-written") == [""]
    (made,) = (tmp_path / "work" / "builds" / "a" / "1" / "artifacts").glob("*-out/file")
    assert made.read_text() == "made\n"
    assert (tmp_path / "work" / "caches" / "a" / "t" / "c" / "file").read_text() == "cached\n"
    assert list((tmp_path / "work" / "builds" / "a" / "1" / "tasks").iterdir()) == []  # the layers went with the task


def test_the_libvirt_socket_only_for_privileged_tasks(tmp_path: Path) -> None:
    sock = "/run/libvirt/libvirt-sock"
    probe = (
        f"{PYTHON} -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{sock}'); print('reached')\" "
        "2>&1 | tail -1"
    )
    status, out = run(tmp_path, task("plain", probe), task("root", probe, step_privileged=True))
    assert status == 0, out
    first, _, second = printed(out).partition("\n")
    assert "reached" not in first and "No such file or directory" in first
    if os.path.exists(sock):  # libvirtd runs here: a privileged task (which drives it) reaches it
        assert "reached" in second


def test_unprivileged_uid_unless_privileged(tmp_path: Path) -> None:
    script = 'echo "uid=$(id -u) $(grep CapEff /proc/self/status)"; su -c true root </dev/null 2>&- || echo no-su'
    status, out = run(tmp_path, task("plain", script), task("root", script, step_privileged=True))
    assert status == 0, out
    plain, root = lines(out, "uid=")
    assert plain == f"{TASK_UID} CapEff:\t0000000000000000"
    assert root.startswith("0 ") and not root.endswith("0000000000000000")
    assert "no-su" in out  # setuid binaries do not elevate (no new privileges)


def test_private_tmp(tmp_path: Path) -> None:
    host_file = Path("/tmp") / f"sf-sandbox-host-{uuid.uuid4().hex}"
    leak = f"sf-sandbox-leak-{uuid.uuid4().hex}"
    host_file.write_text("host\n")
    try:
        script = (
            f"ls -A /tmp /var/tmp; echo tmpdir=$TMPDIR; echo x > /tmp/{leak}; echo x > $TMPDIR/{leak}; "
            f"cat {host_file} 2>/dev/null || echo host-file-hidden"
        )
        status, out = run(tmp_path, task("t", script))
    finally:
        host_file.unlink()
    assert status == 0, out
    assert host_file.name not in printed(out) and "host-file-hidden" in out
    assert not (Path("/tmp") / leak).exists()
    (tmpdir,) = lines(out, "tmpdir=")
    assert not Path(tmpdir).exists()  # the private TMPDIR is removed with the task


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 answering ``pong``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"pong\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_no_network_unless_privileged_or_tagged(tmp_path: Path, loopback_server: int) -> None:
    probe = (
        "echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ,); "
        f"{PYTHON} -c \"import socket; print('net=' + socket.create_connection(('127.0.0.1', {loopback_server}), 5)"
        ".recv(5).decode().strip())\" 2>/dev/null || echo net=unreachable"
    )
    status, out = run(
        tmp_path,
        task("plain", probe),
        task("tagged", probe, step_tags=["network"]),
        task("root", probe, step_privileged=True),
    )
    assert status == 0, out
    assert lines(out, "net=") == ["unreachable", "pong", "pong"]
    plain, tagged, root = lines(out, "ifaces=")
    assert plain == "lo,"  # a new network namespace: loopback only
    host = ",".join(sorted(os.listdir("/sys/class/net"))) + ","
    assert tagged == root == host
    assert "(as uid 65533, no network)" in out and "(as uid 65533, host network)" in out
    assert "(privileged, host network)" in out


def test_a_task_ended_at_once_leaves_no_process(tmp_path: Path) -> None:
    """A timeout that ends the task while bwrap is still setting up ends every process of the sandbox too."""
    seconds = f"{90 + uuid.uuid4().int % 1000 / 1000:.3f}"
    for timeout in ("1ms", "100ms"):
        status, out = run(tmp_path, {**task("t", f"sleep {seconds}"), "timeout": timeout})
        assert status == 2 and "timeout exceeded" in out, out
    deadline = time.monotonic() + 10
    while sleeping(seconds) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sleeping(seconds) == []


def test_what_a_task_leaves_running_ends_with_it(tmp_path: Path) -> None:
    """A daemon (its own session, out of the task's process group) dies with an unprivileged task's PID namespace;
    a privileged task's background process in its group is ended when the task ends."""
    seconds = f"{80 + uuid.uuid4().int % 1000 / 1000:.3f}"
    status, out = run(
        tmp_path,
        task("plain", f"setsid sleep {seconds} >/dev/null 2>&1 < /dev/null & echo started"),
        task("root", f"sleep {seconds} >/dev/null 2>&1 & echo started", step_privileged=True),
    )
    assert status == 0 and lines(out, "started") == ["", ""], out
    deadline = time.monotonic() + 10
    while sleeping(seconds) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sleeping(seconds) == []


def sleeping(seconds: str) -> list[str]:
    """Host pids of ``sleep SECONDS`` processes."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            words = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if words[:2] == [b"sleep", seconds.encode()]:
            found.append(entry)
    return found


# -- paths that leave the working directory ---------------------------------------------------------------------------

BAD_PATHS = [
    ("output", {"outputs": [{"name": "out", "path": "../../../../victim"}]}, "output in position 0 has path"),
    ("input", {"inputs": [{"name": "src", "path": "../src"}]}, "input in position 0 has path '../src'"),
    ("absolute-output", {"outputs": [{"name": "out", "path": "/tmp/x"}]}, "output in position 0 has path '/tmp/x'"),
    ("run-dir", {"run": {"path": "/bin/true", "dir": "a/../../x"}}, "run.dir 'a/../../x'"),
    ("cache", {"caches": [{"path": "../c"}]}, "cache in position 0 has path '../c'"),
]
RULE = "must be relative to the task's working directory and must not contain '..'"


@pytest.mark.parametrize(("case", "config", "message"), BAD_PATHS, ids=[c[0] for c in BAD_PATHS])
def test_paths_leaving_the_working_directory_are_refused(
    tmp_path: Path, case: str, config: dict[str, Any], message: str
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_text("keep\n")
    body: dict[str, Any] = {"platform": "linux", "inputs": [{"name": "src"}], "run": {"path": "/bin/true"}}
    body.update(config)
    step = {"task": "t", "config": body}
    path = tmp_path / "pipeline.yml"
    path.write_text(HEAD + yaml.safe_dump([{"name": "a", "plan": [{"get": "src"}, step]}], sort_keys=False))

    text, code = validate_file(path, strict=False).render(False)
    assert code == 1 and "configuration invalid" in text and message in text and RULE in text, text

    (tmp_path / "repo").mkdir()
    out = io.StringIO()
    status = run_pipeline_job(
        RunOptions(pipeline=path, job="a", work_dir=tmp_path / "work", git_dir=tmp_path / "repo", out=out)
    )
    assert status == 2 and message in out.getvalue(), out.getvalue()
    assert (victim / "file").read_text() == "keep\n" and sorted(os.listdir(victim)) == ["file"]
    assert list((tmp_path / "work").glob("builds/a/*/tasks")) == []  # refused before the task's directory was made


def test_a_task_file_or_var_that_leaves_the_working_directory_is_refused_by_run(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "task.yml").write_text(
        "platform: linux\noutputs: [{name: out, path: ../escape}]\nrun: {path: /bin/true}\n"
    )
    victim = tmp_path / "escape"
    victim.mkdir()
    status, out = run(tmp_path, {"task": "file", "file": "src/task.yml"})
    assert status == 2 and "src/task.yml: invalid task configuration:" in out, out
    assert "output in position 0 has path '../escape'" in out
    # a ((var)) filled at run time is checked again
    step = task("var", "true", outputs=[{"name": "out", "path": "((where))"}])
    status, out = run(tmp_path, step, variables={"where": "../escape"})
    assert status == 2 and "output in position 0 has path '../escape'" in out, out
    assert victim.is_dir() and os.listdir(victim) == []


def test_a_symlink_in_an_input_does_not_carry_an_output_outside(tmp_path: Path) -> None:
    """An output (or cache, or input) inside an input would be mounted through the input's symlinks: refused."""
    (tmp_path / "repo").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "repo" / "link").symlink_to(outside, target_is_directory=True)
    for extra in ({"outputs": [{"name": "out", "path": "src/link/out"}]}, {"caches": [{"path": "src/link"}]}):
        status, out = run(tmp_path, task("t", "echo x > src/link/out/f", **extra))
        assert status == 2 and "is nested under input directory 'src'" in out, out
    # followed by the task itself, the link leads into the sandbox, where that host directory is not
    status, out = run(tmp_path, task("t", "echo x > src/link/f 2>/dev/null || echo no-way-out"))
    assert status == 0 and lines(out, "no-way-out") == [""] and os.listdir(outside) == []
