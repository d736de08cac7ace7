"""``stemforge pipeline run`` semantics on small pipelines of shell tasks: artifacts, params, hooks, try, attempts,
timeout, in_parallel (limit, fail_fast), across, load_var, vars, recorded versions with ``passed:``, abort, and
fly execute's exit statuses. Every task is a real process in its sandbox (ci.sandbox): it reports through its
output, its outputs and caches, never through files of the host."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from ci.build import RunOptions
from ci.runner import run_pipeline_job

ROOT = Path(__file__).resolve().parents[2]

HEAD = """
resources:
- name: src
  type: git
  source: {uri: "https://example.invalid/x.git"}
- name: store
  type: s3
  source: {bucket: b, regexp: "x-(.*).txt"}
- name: version
  type: semver
  source: {initial_version: 1.2.3}
jobs:
"""


def sh(script: str, inputs: tuple[str, ...] = (), outputs: tuple[str, ...] = (), **params: Any) -> dict[str, Any]:
    """An inline task config running ``script`` with /bin/sh."""
    return {
        "platform": "linux",
        "inputs": [{"name": n} for n in inputs],
        "outputs": [{"name": n} for n in outputs],
        "params": params,
        "run": {"path": "/bin/sh", "args": ["-ec", script]},
    }


class Pipeline:
    def __init__(self, tmp_path: Path, jobs: str) -> None:
        self.dir = tmp_path
        self.path = tmp_path / "pipeline.yml"
        # every resource must be used by some job, or the pipeline is invalid
        uses_all = "- name: uses-all\n  plan: [{get: store}, {get: version}]\n"
        self.path.write_text(HEAD + textwrap.dedent(jobs).strip() + "\n" + uses_all)
        self.work = tmp_path / "work"
        self.repo = tmp_path / "repo"
        self.repo.mkdir(exist_ok=True)

    def run(self, job: str, **variables: Any) -> tuple[int, str]:
        out = io.StringIO()
        options = RunOptions(
            pipeline=self.path, job=job, variables=variables, work_dir=self.work, git_dir=self.repo, out=out
        )
        status = run_pipeline_job(options)
        return status, out.getvalue()


def yaml_jobs(*job_docs: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump([j for doc in job_docs for j in doc], sort_keys=False)


def J(name: str, *steps: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": name, "plan": [{"get": "src"}, *steps], **extra}]


def T(
    name: str,
    script: str,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {"task": name, "config": sh(script, inputs, outputs, **(params or {})), **extra}


def test_artifacts_params_and_mappings(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "hello.txt").write_text("hello\n")
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                T(
                    "make",
                    'cp src/hello.txt made/; echo "$S|$N|$B|$M" > made/params',
                    ("src",),
                    ("made",),
                    {"S": "text", "N": 3, "B": True, "M": {"k": [1]}},
                    output_mapping={"made": "artifact"},
                ),
                T(
                    "use",
                    "cat in/hello.txt in/params > result/all; cat result/all",
                    ("in",),
                    ("result",),
                    input_mapping={"in": "artifact"},
                    params={"EXTRA": "step"},
                ),
            )
        ),
    )
    status, out = p.run("a")
    assert status == 0, out
    assert 'hello\ntext|3|true|{"k":[1]}\n' in out
    assert "task make: succeeded" in out and "task use: succeeded" in out
    assert out.rstrip().endswith("succeeded")


def marks(out: str) -> list[str]:
    """The ``mark-NAME`` lines tasks printed, in order."""
    return [line[len("mark-") :] for line in out.splitlines() if line.startswith("mark-")]


def procs_with(arg: str) -> list[int]:
    """Host pids of the processes whose command line has ``arg``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    words = handle.read().split(b"\0")
            except OSError:
                continue
            if arg.encode() in words and b"-ec" not in words:
                found.append(int(entry))
    return found


def test_failure_runs_on_failure_and_ensure_not_on_success(tmp_path: Path) -> None:
    hook = lambda name: T(name, f"echo mark-{name}")  # noqa: E731
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                {**T("boom", "exit 7"), "on_failure": hook("on-failure"), "on_success": hook("on-success")},
                T("never", "echo mark-never"),
                ensure=hook("job-ensure"),
            )
        ),
    )
    status, out = p.run("a")
    assert status == 1, out
    assert "task boom: failed with exit status 7" in out
    assert marks(out) == ["on-failure", "job-ensure"]
    assert out.rstrip().endswith("failed")


def test_missing_input_errors_and_runs_on_error(tmp_path: Path) -> None:
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                {**T("needs", "true", ("absent",)), "on_error": T("hook", "echo mark-on-error")},
            )
        ),
    )
    status, out = p.run("a")
    assert status == 2, out
    assert "task needs: missing inputs: absent" in out
    assert marks(out) == ["on-error"]


def test_try_ignores_failure_and_error(tmp_path: Path) -> None:
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                {"try": T("fails", "exit 3")},
                {"try": T("errors", "true", ("absent",))},
                T("after", "echo after-ran"),
            )
        ),
    )
    status, out = p.run("a")
    assert status == 0, out
    assert "try: failed, ignored" in out and "try: errored, ignored" in out and "after-ran" in out


def test_attempts_retry_until_success(tmp_path: Path) -> None:
    # the count lives in the step's cache, which outlives each attempt (and build), as in Concourse
    script = 'n=$(cat c/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > c/count; [ "$n" -ge 3 ]'
    flaky = {"task": "flaky", "config": {**sh(script), "caches": [{"path": "c"}]}}
    p = Pipeline(tmp_path, yaml_jobs(J("a", {**flaky, "attempts": 5})))
    status, out = p.run("a")
    assert status == 0, out
    counter = p.work / "caches" / "a" / "flaky" / "c" / "count"
    assert counter.read_text().strip() == "3"
    assert "attempt 1/5 failed; retrying" in out and "attempt 2/5 failed; retrying" in out
    counter.unlink()
    p = Pipeline(tmp_path, yaml_jobs(J("a", {**flaky, "attempts": 2})))
    assert p.run("a")[0] == 1


def test_timeout_ends_the_process(tmp_path: Path) -> None:
    seconds = f"{60 + os.getpid() % 1000 / 1000:.3f}"  # a sleep this test can find among the host's processes
    p = Pipeline(tmp_path, yaml_jobs(J("a", {**T("slow", f"sleep {seconds}"), "timeout": "1s"})))
    started = time.monotonic()
    status, out = p.run("a")
    assert status == 2, out
    assert "timeout exceeded (1s)" in out
    assert time.monotonic() - started < 20
    assert procs_with(seconds) == []


def test_in_parallel_runs_together_and_limit_serialises(tmp_path: Path) -> None:
    both = [T(n, f"echo mark-start-{n}; sleep 2; echo mark-end-{n}") for n in ("a", "b")]
    p = Pipeline(tmp_path, yaml_jobs(J("par", {"in_parallel": both})))
    status, out = p.run("par")
    assert status == 0, out
    assert sorted(marks(out)[:2]) == ["start-a", "start-b"]  # each started before the other ended
    serial = [T(n, f"echo mark-start-{n}; sleep 0.3; echo mark-end-{n}") for n in ("x", "y", "z")]
    p = Pipeline(tmp_path, yaml_jobs(J("lim", {"in_parallel": {"limit": 1, "steps": serial}})))
    status, out = p.run("lim")
    assert status == 0, out
    assert [mark.split("-")[0] for mark in marks(out)] == ["start", "end"] * 3


def test_in_parallel_fail_fast_stops_the_others(tmp_path: Path) -> None:
    steps = [T("quick-fail", "sleep 0.5; exit 1"), T("slow", "sleep 60")]
    p = Pipeline(tmp_path, yaml_jobs(J("a", {"in_parallel": {"fail_fast": True, "steps": steps}})))
    started = time.monotonic()
    status, out = p.run("a")
    assert status == 1, out
    assert "fail_fast" in out
    assert time.monotonic() - started < 25


def test_across_runs_every_combination(tmp_path: Path) -> None:
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                {
                    "across": [
                        {"var": "os", "values": ["debian", "ubuntu"]},
                        {"var": "plan", "values": ["s", "l"], "max_in_flight": "all"},
                    ],
                    **T("t", 'echo "mark-$OS-$PLAN"', params={"OS": "((.:os))", "PLAN": "((.:plan))"}),
                },
            )
        ),
    )
    status, out = p.run("a")
    assert status == 0, out
    assert sorted(marks(out)) == ["debian-l", "debian-s", "ubuntu-l", "ubuntu-s"]
    assert "4 combination(s)" in out


def test_load_var_feeds_later_steps(tmp_path: Path) -> None:
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                T("write", 'echo \'{"region": "eu-west-1"}\' > out/meta.json', outputs=("out",)),
                {"load_var": "meta", "file": "out/meta.json"},
                T("read", 'echo "region=$R"', params={"R": "((.:meta.region))"}),
            )
        ),
    )
    status, out = p.run("a")
    assert status == 0, out
    assert "region=eu-west-1" in out
    assert "load_var meta: (redacted)" in out


def test_vars_missing_named_and_interpolated(tmp_path: Path) -> None:
    p = Pipeline(tmp_path, yaml_jobs(J("a", T("t", 'echo "got $V"', params={"V": "((secret))-((other.field))"}))))
    status, out = p.run("a")
    assert status == 2
    assert "undefined vars: other.field, secret" in out
    status, out = p.run("a", secret="s3", other={"field": "f"})
    assert status == 0 and "got s3-f" in out


def test_put_records_a_version_and_passed_gates_the_get(tmp_path: Path) -> None:
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "make",
                T("t", "echo payload > out/x-1.txt", outputs=("out",)),
                {"put": "store", "params": {"file": "out/x-*.txt"}},
                {"put": "version", "params": {"bump": "minor"}},
            ),
            J(
                "use",
                {"get": "store", "passed": ["make"]},
                {"get": "version", "passed": ["make"]},
                T("t", "cat store/x-1.txt version/version", ("store", "version")),
            ),
            J("other", {"get": "store"}),
            J("gated", {"get": "store", "passed": ["other"]}),
        ),
    )
    status, out = p.run("use")
    assert status == 2 and "no version of resource 'store' yet" in out
    assert p.run("make")[0] == 0
    status, out = p.run("use")
    assert status == 0, out
    assert "payload\n1.3.0\n" in out
    status, out = p.run("gated")
    assert status == 2 and "has not passed other" in out
    assert p.run("other")[0] == 0
    assert p.run("gated")[0] == 0


def test_task_file_from_an_artifact_is_checked(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "good.yml").write_text(
        "platform: linux\nparams: {WHO: file}\nrun: {path: /bin/sh, args: [-ec, 'echo from-$WHO-$X']}\n"
    )
    (tmp_path / "repo" / "bad.yml").write_text("platform: linux\nrun: {path: /bin/true}\nouputs: []\n")
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J("good", {"task": "t", "file": "src/good.yml", "params": {"X": "step"}}),
            J("bad", {"task": "t", "file": "src/bad.yml"}),
        ),
    )
    status, out = p.run("good")
    assert status == 0 and "from-file-step" in out
    status, out = p.run("bad")
    assert (
        status == 2 and 'src/bad.yml: error unmarshaling JSON: while decoding JSON: json: unknown field "ouputs"' in out
    )


def test_invalid_pipeline_and_unknown_job_are_errors(tmp_path: Path) -> None:
    p = Pipeline(tmp_path, yaml_jobs(J("a", {"get": "nope"})))
    status, out = p.run("a")
    assert status == 2 and "unknown resource 'nope'" in out
    p = Pipeline(tmp_path, yaml_jobs(J("a")))
    status, out = p.run("zzz")
    assert status == 2 and "job 'zzz' not found" in out and "(jobs: a, uses-all)" in out


def test_sigint_aborts_runs_hooks_and_ends_the_task(tmp_path: Path) -> None:
    seconds = f"{120 + os.getpid() % 1000 / 1000:.3f}"
    p = Pipeline(
        tmp_path,
        yaml_jobs(
            J(
                "a",
                {**T("long", f"sleep {seconds}"), "on_abort": T("h", "echo mark-on-abort")},
                ensure=T("e", "echo mark-ensure"),
            )
        ),
    )
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stemforge.cli",
            "pipeline",
            "run",
            str(p.path),
            "a",
            "--work-dir",
            str(p.work),
            "--git-dir",
            str(p.repo),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not procs_with(seconds) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs_with(seconds)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 3, out
    assert marks(out) == ["on-abort", "ensure"]
    assert out.rstrip().endswith("aborted")
    assert procs_with(seconds) == []


def test_yaml_var_for_a_typed_field(tmp_path: Path) -> None:
    """``attempts: ((n))`` decodes only once n is known: the run names n, and a YAML var (``-y``) fills it."""
    p = Pipeline(
        tmp_path,
        "- name: a\n  plan:\n  - get: src\n  - task: t\n    attempts: ((n))\n"
        "    config: {platform: linux, run: {path: /bin/echo, args: [ran]}}\n",
    )
    status, out = p.run("a")
    assert status == 2 and "undefined vars: n" in out
    argv = [
        sys.executable,
        "-m",
        "stemforge.cli",
        "pipeline",
        "run",
        str(p.path),
        "a",
        "--work-dir",
        str(p.work),
        "--git-dir",
        str(p.repo),
        "-y",
        "n=2",
    ]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ran\n" in proc.stdout, proc.stdout + proc.stderr
