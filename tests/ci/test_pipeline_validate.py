"""``stemforge pipeline validate``: one broken pipeline per fly validate-pipeline rule, with fly's message; the
project's pipelines pass with ``--strict``; the CLI prints what fly prints."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ci.validate import validate_text

ROOT = Path(__file__).resolve().parents[2]

BASE = """
resources:
- name: src
  type: git
  source: {uri: "https://example.invalid/x.git"}
"""


def pipeline(jobs: str, extra: str = "", resources: str = BASE) -> str:
    return textwrap.dedent(resources) + textwrap.dedent(extra) + "jobs:\n" + textwrap.indent(textwrap.dedent(jobs), "")


JOB_A = """
- name: a
  plan:
  - get: src
"""

# (id, document, strict, fragment that must appear in the output, is it a warning rather than an error)
CASES: list[tuple[str, str, bool, str]] = [
    (
        "duplicate-key-strict",
        BASE + "jobs:\n- name: a\n  plan: [{get: src}]\njobs: []\n",
        True,
        'line 9: key "jobs" already set in map',
    ),
    ("unknown-top-level-key-strict", pipeline(JOB_A, "shared: {x: 1}\n"), True, 'json: unknown field "shared"'),
    (
        "unknown-job-key-strict",
        pipeline("- name: a\n  plann: []\n  plan: [{get: src}]\n"),
        True,
        'json: unknown field "plann"',
    ),
    (
        "unknown-resource-key-strict",
        BASE.replace("type: git", "type: git\n  sorce: {}") + "jobs:" + JOB_A,
        True,
        'json: unknown field "sorce"',
    ),
    (
        "unknown-task-config-key-strict",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - task: t\n    config: {platform: linux, run: {path: x}, ouputs: []}\n"
        ),
        True,
        'json: unknown field "ouputs"',
    ),
    ("no-jobs", BASE + "jobs: []\n", False, "jobs: pipeline must contain at least one job"),
    ("duplicate-job-name", pipeline(JOB_A + JOB_A), False, "jobs[0] and jobs[1] have the same name ('a')"),
    (
        "duplicate-resource-name",
        pipeline(JOB_A, resources=BASE + BASE.replace("resources:\n", "")),
        False,
        "resources[0] and resources[1] have the same name ('src')",
    ),
    (
        "duplicate-resource-type-name",
        pipeline(JOB_A, "resource_types:\n- {name: t, type: registry-image}\n- {name: t, type: registry-image}\n"),
        False,
        "resource_types[0] and resource_types[1] have the same name ('t')",
    ),
    ("resource-without-name", pipeline(JOB_A, resources=BASE + "- type: git\n"), False, "resources[1] has no name"),
    (
        "resource-without-type",
        pipeline("- name: a\n  plan: [{get: src}, {get: x}]\n", resources=BASE + "- name: x\n"),
        False,
        "resources.x has no type",
    ),
    (
        "resource-type-without-type",
        pipeline(JOB_A, "resource_types:\n- {name: t}\n"),
        False,
        "resource_types.t has no type",
    ),
    (
        "unused-resource",
        pipeline(JOB_A, resources=BASE + "- {name: lonely, type: s3}\n"),
        False,
        "resource 'lonely' is not used",
    ),
    (
        "get-unknown-resource",
        pipeline("- name: a\n  plan: [{get: src}, {get: nope}]\n"),
        False,
        "jobs.a.plan.do[1].get(nope): unknown resource 'nope'",
    ),
    (
        "put-unknown-resource",
        pipeline("- name: a\n  plan: [{get: src}, {put: out, resource: nope}]\n"),
        False,
        "jobs.a.plan.do[1].put(out): unknown resource 'nope'",
    ),
    (
        "repeated-get-name",
        pipeline("- name: a\n  plan: [{get: src}, {get: src}]\n"),
        False,
        "jobs.a.plan.do[1].get(src): repeated name",
    ),
    (
        "passed-unknown-job",
        pipeline("- name: a\n  plan: [{get: src, passed: [nope]}]\n"),
        False,
        "jobs.a.plan.do[0].get(src).passed: unknown job 'nope'",
    ),
    (
        "passed-job-not-using-resource",
        pipeline(
            "- name: a\n  plan: [{get: src, passed: [b]}]\n- name: b\n  plan: [{get: other}]\n",
            resources=BASE + "- {name: other, type: s3}\n",
        ),
        False,
        "jobs.a.plan.do[0].get(src).passed: job 'b' does not interact with resource 'src'",
    ),
    (
        "passed-cycle",
        pipeline("- name: a\n  plan: [{get: src, passed: [b]}]\n- name: b\n  plan: [{get: src, passed: [a]}]\n"),
        False,
        "pipeline contains a cycle that starts at Job 'a'",
    ),
    (
        "task-file-and-config",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - task: t\n    file: src/t.yml\n"
            "    config: {platform: linux, run: {path: x}}\n"
        ),
        False,
        "jobs.a.plan.do[1].task(t): must specify one of `file:` or `config:`, not both",
    ),
    (
        "task-neither-file-nor-config",
        pipeline("- name: a\n  plan: [{get: src}, {task: t}]\n"),
        False,
        "jobs.a.plan.do[1].task(t): must specify either `file:` or `config:`",
    ),
    (
        "task-config-without-platform",
        pipeline("- name: a\n  plan:\n  - get: src\n  - task: t\n    config: {run: {path: x}}\n"),
        False,
        "jobs.a.plan.do[1].task(t).config: missing 'platform'",
    ),
    (
        "task-input-without-name",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - task: t\n"
            "    config: {platform: linux, run: {path: x}, inputs: [{path: p}]}\n"
        ),
        False,
        "jobs.a.plan.do[1].task(t).config:   input in position 0 is missing a name",
    ),
    (
        "task-output-without-name",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - task: t\n"
            "    config: {platform: linux, run: {path: x}, outputs: [{}]}\n"
        ),
        False,
        "jobs.a.plan.do[1].task(t).config:   output in position 0 is missing a name",
    ),
    (
        "task-run-without-path",
        pipeline("- name: a\n  plan:\n  - get: src\n  - task: t\n    config: {platform: linux, run: {args: [x]}}\n"),
        False,
        "jobs.a.plan.do[1].task(t).config: missing path to executable to run",
    ),
    (
        "attempts-not-positive",
        pipeline("- name: a\n  plan:\n  - get: src\n    attempts: 0\n"),
        False,
        "jobs.a.plan.do[0].attempts: must be greater than 0",
    ),
    (
        "attempts-not-a-number",
        pipeline("- name: a\n  plan:\n  - get: src\n    attempts: many\n"),
        False,
        "malformed attempts step: json: cannot unmarshal string",
    ),
    (
        "timeout-unparseable",
        pipeline("- name: a\n  plan:\n  - get: src\n    timeout: 5 minutes\n"),
        False,
        "jobs.a.plan.do[0].timeout: invalid duration '5 minutes'",
    ),
    (
        "across-without-vars",
        pipeline("- name: a\n  plan:\n  - get: src\n  - across: []\n    task: t\n    file: src/t.yml\n"),
        False,
        "jobs.a.plan.do[1].across: no vars specified",
    ),
    (
        "across-max-in-flight-zero",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - across: [{var: v, values: [1], "
            "max_in_flight: 0}]\n    task: t\n    file: src/t.yml\n"
        ),
        False,
        "jobs.a.plan.do[1].across[0].max_in_flight: must be greater than 0",
    ),
    (
        "across-repeated-var",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - across: [{var: v, values: [1]}, "
            "{var: v, values: [2]}]\n    task: t\n    file: src/t.yml\n"
        ),
        False,
        "jobs.a.plan.do[1].across[1]: repeated var name",
    ),
    (
        "across-unknown-var-field",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - across: [{var: v, vals: [1]}]\n    task: t\n    file: src/t.yml\n"
        ),
        False,
        'malformed across step: json: unknown field "vals"',
    ),
    (
        "group-glob-matches-no-job",
        pipeline(JOB_A, "groups:\n- {name: g, jobs: [a, zzz*]}\n"),
        False,
        "no jobs match 'zzz*' for group 'g'",
    ),
    (
        "job-in-no-group",
        pipeline(JOB_A + "- name: b\n  plan: [{get: src}]\n", "groups:\n- {name: g, jobs: [a]}\n"),
        False,
        "job 'b' belongs to no group",
    ),
    (
        "group-unknown-resource",
        pipeline(JOB_A, "groups:\n- {name: g, jobs: [a], resources: [nope]}\n"),
        False,
        "group 'g' has unknown resource 'nope'",
    ),
    (
        "duplicate-group",
        pipeline(JOB_A, "groups:\n- {name: g, jobs: [a]}\n- {name: g, jobs: [a]}\n"),
        False,
        "group 'g' appears 2 times. Duplicate names are not allowed.",
    ),
    (
        "empty-job-name",
        pipeline("- name: ''\n  plan: [{get: src}]\n"),
        False,
        "jobs[0]: identifier cannot be an empty string",
    ),
    (
        "unknown-step-fields",
        pipeline("- name: a\n  plan:\n  - get: src\n    bogus: 1\n    other: 2\n"),
        False,
        'jobs.a.plan.do[0]: unknown fields ["bogus" "other"]',
    ),
    (
        "step-without-type",
        pipeline("- name: a\n  plan:\n  - {get: src}\n  - {bogus: 1}\n"),
        False,
        "no step configured",
    ),
    (
        "modifiers-without-core-step",
        pipeline("- name: a\n  plan:\n  - {get: src}\n  - {timeout: 1m}\n"),
        False,
        "no core step type declared (e.g. get, put, task, etc.)",
    ),
    (
        "in-parallel-unknown-field",
        pipeline("- name: a\n  plan:\n  - in_parallel: {steps: [{get: src}], limt: 1}\n"),
        False,
        'failed to unmarshal parallel config: json: unknown field "limt"',
    ),
    (
        "load-var-without-file",
        pipeline("- name: a\n  plan:\n  - get: src\n  - load_var: v\n"),
        False,
        "jobs.a.plan.do[1].load_var(v): no file specified",
    ),
    (
        "set-pipeline-without-file",
        pipeline("- name: a\n  plan:\n  - get: src\n  - set_pipeline: p\n"),
        False,
        "jobs.a.plan.do[1].set_pipeline(p): no file specified",
    ),
    (
        "negative-build-log-retention",
        pipeline("- name: a\n  build_log_retention: {days: -1}\n  plan: [{get: src}]\n"),
        False,
        "jobs.a has negative build_log_retention.days: -1",
    ),
    (
        "both-build-log-settings",
        pipeline("- name: a\n  build_log_retention: {days: 1}\n  build_logs_to_retain: 3\n  plan: [{get: src}]\n"),
        False,
        "jobs.a can't use both build_log_retention and build_logs_to_retain",
    ),
    (
        "unknown-credential-manager",
        pipeline(JOB_A, "var_sources:\n- {name: v, type: bogus, config: {}}\n"),
        False,
        "unknown credential manager type: bogus",
    ),
    (
        "hook-errors-are-located",
        pipeline("- name: a\n  plan: [{get: src}]\n  ensure: {put: nope}\n"),
        False,
        "jobs.a.plan.ensure.put(nope): unknown resource 'nope'",
    ),
    (
        "serial-groups-not-a-list",
        pipeline("- name: a\n  serial_groups: shared\n  plan: [{get: src}]\n"),
        False,
        "cannot unmarshal string into Go struct field JobConfig.serial_groups of type []string",
    ),
    (
        "serial-group-not-a-string",
        pipeline("- name: a\n  serial_groups: [env, 3]\n  plan: [{get: src}]\n"),
        False,
        "cannot unmarshal number into Go struct field JobConfig.serial_groups of type string",
    ),
    (
        "serial-not-a-bool",
        pipeline("- name: a\n  serial: sometimes\n  plan: [{get: src}]\n"),
        False,
        "cannot unmarshal string into Go struct field JobConfig.serial of type bool",
    ),
    # warnings: fine without --strict, an error with it
    (
        "identifier-uppercase-strict",
        pipeline("- name: Build\n  plan: [{get: src}]\n"),
        True,
        "jobs.Build: 'Build' is not a valid identifier: must start with a lowercase letter or a number",
    ),
    (
        "identifier-illegal-character-strict",
        pipeline("- name: my job\n  plan: [{get: src}]\n"),
        True,
        "jobs.my job: 'my job' is not a valid identifier: illegal character ' '",
    ),
    (
        "identifier-just-numbers-strict",
        pipeline("- name: '123'\n  plan: [{get: src}]\n"),
        True,
        "jobs.123: '123' is not a valid identifier: cannot be just numbers",
    ),
    (
        "across-shadowed-var-strict",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - load_var: v\n    file: src/v\n"
            "  - across: [{var: v, values: [1]}]\n    task: t\n    file: src/t.yml\n"
        ),
        True,
        "jobs.a.plan.do[2].across[0]: shadows local var 'v'",
    ),
    (
        "task-image-twice-strict",
        pipeline(
            "- name: a\n  plan:\n  - get: src\n  - task: t\n    image: src\n"
            "    config: {platform: linux, run: {path: x}, image_resource: {type: registry-image, source: {}}}\n"
        ),
        True,
        "specifies image: on the step but also specifies an image under config",
    ),
]


def test_every_rule_has_a_case() -> None:
    assert len(CASES) >= 45
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("document", "strict", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(document: str, strict: bool, fragment: str) -> None:
    result = validate_text(document, strict=strict)
    text, status = result.render(strict)
    assert status == 1, text
    assert "looks good" not in text
    assert fragment in text, text


@pytest.mark.parametrize(
    "case_id", ["identifier-uppercase-strict", "identifier-just-numbers-strict", "across-shadowed-var-strict"]
)
def test_warnings_pass_without_strict(case_id: str) -> None:
    document = next(c[1] for c in CASES if c[0] == case_id)
    text, status = validate_text(document, strict=False).render(False)
    assert status == 0, text
    assert "DEPRECATION WARNING:" in text and text.endswith("looks good\n")


@pytest.mark.parametrize("timeout", ["1h30m", "500ms", "0", "-0", "1.s", ".5s", "10µs", "10μs"])
def test_timeouts_are_read_as_go_reads_them(timeout: str) -> None:
    document = pipeline(f"- name: a\n  plan:\n  - get: src\n    timeout: {timeout!r}\n")
    assert validate_text(document, strict=True).render(True) == ("looks good\n", 0)


def test_duplicate_keys_pass_without_strict() -> None:
    document = BASE + "jobs:\n- name: a\n  plan: [{get: src}]\n  serial: true\n  serial: false\n"
    assert validate_text(document, strict=False).render(False)[1] == 0
    assert 'key "serial" already set in map' in validate_text(document, strict=True).render(True)[0]


def test_merge_keys_may_override_without_being_duplicates() -> None:
    document = (
        BASE + "- name: other\n  type: s3\n  source: &s {bucket: b, regexp: a}\n"
        "- name: third\n  type: s3\n  source: {<<: *s, regexp: b}\n"
        "jobs:\n- name: a\n  plan: [{get: src}, {get: other}, {get: third}]\n"
    )
    assert validate_text(document, strict=True).render(True) == ("looks good\n", 0)


def test_vars_are_substituted_or_kept() -> None:
    document = pipeline("- name: deploy-((env))\n  plan: [{get: ((resource))}]\n")
    kept = validate_text(document, strict=True)
    assert "unknown resource '((resource))'" in kept.render(True)[0]
    assert not kept.warnings  # a placeholder in a name is not an invalid identifier
    assert validate_text(document, strict=True, variables={"resource": "src", "env": "x"}).render(True) == (
        "looks good\n",
        0,
    )
    wrong = validate_text(document, strict=True, variables={"resource": "nope"}).render(True)[0]
    assert "jobs.deploy-((env)).plan.do[0].get(nope): unknown resource 'nope'" in wrong


def test_error_output_is_flys(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text(pipeline("- name: a\n  plan: [{get: src}, {get: nope}]\n"))
    proc = subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "pipeline", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        "\nWARNING:\nError loading existing config:\n  - invalid jobs:\n"
        "\tjobs.a.plan.do[1].get(nope): unknown resource 'nope'\n\n\nconfiguration invalid\n"
    )


def test_unreadable_file_and_bad_var_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "pipeline", "validate", str(tmp_path / "none.yml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("error: could not read file:")
    (tmp_path / "vars.yml").write_text("[1, 2]\n")
    (tmp_path / "p.yml").write_text(pipeline(JOB_A))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemforge.cli",
            "pipeline",
            "validate",
            str(tmp_path / "p.yml"),
            "--vars-file",
            str(tmp_path / "vars.yml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1 and "could not unmarshal template variables" in proc.stderr


@pytest.mark.parametrize("name", ["pipeline.yml", "images.yml"])
def test_project_pipelines_pass_strict(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "pipeline", "validate", "--strict", str(ROOT / "ci" / name)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "looks good\n", "")


def test_project_pipelines_secrets_are_vars() -> None:
    """Every credential-looking value in the pipelines is a ((var)), never a literal."""
    from ci.model import load_yaml

    secret_words = ("key", "secret", "password", "token", "access")

    def walk(node: object, path: str) -> list[str]:
        found = []
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}"
                if (
                    isinstance(value, str)
                    and any(w in str(key).lower() for w in secret_words)
                    and str(key) not in ("key", "regexp")
                    and not value.startswith("((")
                ):
                    found.append(where)
                found += walk(value, where)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                found += walk(item, f"{path}[{index}]")
        return found

    for name in ("pipeline.yml", "images.yml"):
        document = load_yaml((ROOT / "ci" / name).read_text(), strict=True)
        assert walk(document, name) == []


@pytest.mark.parametrize("name", ["pipeline.yml", "images.yml"])
def test_project_task_files_load_and_their_scripts_exist(name: str) -> None:
    """Every task file a pipeline names loads as fly would load it (strict keys, valid config), its run.path is an
    executable script of the tree, and every template a task is given exists."""
    import os

    from ci.validate import decode, load_task_config

    pipeline = decode((ROOT / "ci" / name).read_text(), strict=True)
    seen = 0
    for plan in pipeline.plans:
        for step in plan.walk():
            if step.kind != "task":
                continue
            path = str(step.config["file"])
            assert path.startswith("stemforge-src/"), path
            relative = path.removeprefix("stemforge-src/")
            config = load_task_config((ROOT / relative).read_text(), where=relative)
            script = ROOT / str(config["run"]["path"]).removeprefix("stemforge-src/")
            assert script.is_file() and os.access(script, os.X_OK), script
            inputs = {item["name"] for item in config.get("inputs") or []}
            assert "stemforge-src" in inputs
            for key, value in (step.config.get("params") or {}).items():
                assert key in (config.get("params") or {}), f"{name}: task {step.name} sets {key}, {relative} lacks it"
                if key == "TEMPLATE":
                    template = str(value).replace("((.:plan))", "small")
                    assert (ROOT / template).is_file(), template
            seen += 1
    assert seen >= 4
