"""``stemforge build|validate|inspect`` as users run them: Packer's flag spellings, variable precedence,
messages and layouts, with real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.harness.builds import stemforge

PYTHON = sys.executable



def write(tmp_path: Path, data: Mapping[str, Any], name: str = "template.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return write(tmp_path, {
        "description": "A test template",
        "variables": {"x": "default-x", "region": "eu", "token": "tok-123456", "needed": None},
        "sensitive-variables": ["token"],
        "builders": [
            {"type": "file", "name": "first", "target": str(tmp_path / "out" / "first.txt"),
             "content": "x={{user `x`}} needed={{user `needed`}}"},
            {"type": "file", "target": str(tmp_path / "out" / "plain.txt"), "content": "plain"},
        ],
        "provisioners": [{"type": "shell-local", "inline": ["true"]}, {"type": "shell", "inline": ["true"]}],
        "post-processors": [[{"type": "manifest", "output": str(tmp_path / "manifest.json")},
                             {"type": "checksum", "name": "sums"}]],
    })


def test_validate_ok_syntax_only_and_parse_errors(tmp_path: Path, template: Path) -> None:
    result = stemforge(["validate", "-var", "needed=1", str(template)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "The configuration is valid."
    missing = stemforge(["validate", str(template)], tmp_path)
    assert missing.returncode == 1
    assert "required variable not set: needed" in missing.stdout
    bad = write(tmp_path, {"builders": [{"type": "nosuch"}], "bogus": 1}, "bad.json")
    result = stemforge(["validate", "-syntax-only", str(write(tmp_path, {"builders": [{"type": "nosuch"}]},
                                                                 "s.json"))], tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "Syntax-only check passed. Everything looks okay."
    result = stemforge(["validate", str(bad)], tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith("Failed to parse template: ")
    assert "Unknown root level key in template: 'bogus'" in result.stdout
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "builders": [{"type": "file"}],\n}\n')
    result = stemforge(["validate", str(broken)], tmp_path)
    assert result.returncode == 1
    assert "Failed to parse template: Error parsing JSON: invalid character '}'" in result.stdout
    assert "At line 3, column" in result.stdout


def test_var_and_var_file_apply_in_command_line_order(tmp_path: Path, template: Path) -> None:
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps({"x": "from-file", "needed": "n"}))
    target = tmp_path / "out" / "first.txt"
    result = stemforge(["build", "-only=first", f"-var-file={varfile}", "-var", "x=from-cli", str(template)],
                       tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_text() == "x=from-cli needed=n"
    result = stemforge(["build", "--only", "first", "--var=x=from-cli", "--var-file", str(varfile), str(template)],
                       tmp_path)
    assert result.returncode == 0, result.stdout
    assert target.read_text() == "x=from-file needed=n"
    result = stemforge(["build", "-only=first", "-var", "broken", str(template)], tmp_path)
    assert result.returncode == 1
    assert "No '=' value in arg: broken" in result.stdout


def test_build_with_real_post_processors_lists_every_artifact(tmp_path: Path, template: Path) -> None:
    result = stemforge(["build", "-var", "needed=yes", str(template)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "==> first: Running post-processor: manifest" in out
    assert "==> first: Running post-processor: sums (type checksum)" in out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(b["name"] for b in manifest["builds"]) == ["file", "first"]
    assert "==> Builds finished. The artifacts of successful builds are:" in out
    assert re.search(r"^--> first: Stored file: .*first\.txt$", out, re.M), "the builder's artifact is kept"
    assert (tmp_path / "out" / "first.txt").exists()
    # -except naming a post-processor stops its chain there
    (tmp_path / "manifest.json").unlink()
    result = stemforge(["build", "-var", "needed=yes", "-except=sums", str(template)], tmp_path)
    assert result.returncode == 0, result.stdout
    assert "Running post-processor: sums" not in result.stdout
    assert "Running post-processor: manifest" in result.stdout


def test_inspect_layout(tmp_path: Path, template: Path) -> None:
    result = stemforge(["inspect", str(template)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = [
        "Packer Inspect: JSON mode",
        "Description:",
        "",
        "A test template",
        "",
        "Required variables:",
        "",
        "  needed",
        "",
        "Optional variables and their defaults:",
        "",
        "  region = eu",
        "  token  = <sensitive>",
        "  x      = default-x",
        "",
        "Builders:",
        "",
        "  file",
        "  first (file)",
        "",
        "Provisioners:",
        "",
        "  shell-local",
        "  shell",
        "",
        "Post-processors:",
        "",
        "  manifest -> sums (checksum)",
        "",
        "Note: If your build names contain user variables or template",
    ]
    assert result.stdout.splitlines()[:len(expected)] == expected
    assert "tok-123456" not in result.stdout
    machine = stemforge(["inspect", "-machine-readable", str(template)], tmp_path)
    rows = [line.split(",", 3)[1:] for line in machine.stdout.splitlines()]
    assert ["", "template-variable", "token,<sensitive>,0"] in rows
    assert ["", "template-variable", "needed,,1"] in rows
    assert ["", "template-builder", "first,file"] in rows
    assert ["", "template-provisioner", "shell-local"] in rows


def test_flags_help_warnings_and_timestamps(tmp_path: Path) -> None:
    result = stemforge(["build", "--help"], tmp_path)
    assert result.returncode == 0
    for flag in ("-only", "-except", "-parallel-builds", "-on-error", "-var", "-var-file", "-force",
                 "-machine-readable", "-timestamp-ui"):
        assert flag in result.stdout
    result = stemforge(["build", "-on-error=explode", "x.json"], tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'explode'" in result.stderr
    empty = write(tmp_path, {"builders": [{"type": "file", "target": str(tmp_path / "empty.txt")}]})
    result = stemforge(["build", "-timestamp-ui", str(empty)], tmp_path)
    assert result.returncode == 0, result.stdout
    assert 'Warning: Warning when preparing build: "file"' in result.stdout
    assert "Both source file and contents are blank; target will have no content" in result.stdout
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d: Build 'file' finished after", result.stdout,
                     re.M), result.stdout
    assert (tmp_path / "empty.txt").read_text() == ""


def test_weak_typing_of_user_variables(tmp_path: Path) -> None:
    """User variables are strings; numeric/boolean options accept them as Packer's decoder does."""
    path = write(tmp_path, {
        "variables": {"codes": "3"},
        "builders": [{"type": "file", "target": str(tmp_path / "t.txt"), "content": "c"}],
        "provisioners": [{"type": "shell-local", "inline": ["exit 3"], "valid_exit_codes": ["{{user `codes`}}"]}],
    })
    result = stemforge(["build", str(path)], tmp_path)
    assert result.returncode == 0, result.stdout
    bad = write(tmp_path, {
        "builders": [{"type": "file", "target": str(tmp_path / "t.txt"), "content": "c"}],
        "provisioners": [{"type": "shell-local", "inline": ["true"], "valid_exit_codes": ["three"]}],
    }, "bad.json")
    result = stemforge(["validate", str(bad)], tmp_path)
    assert result.returncode == 1
    assert ("provisioner 1 (shell-local): 'valid_exit_codes[0]' expected type 'integer', got unconvertible type "
            "'string'") in result.stdout


def test_debug_log_path_is_written_and_masked(tmp_path: Path) -> None:
    secret = "pa55-word-in-log"
    path = write(tmp_path, {
        "variables": {"pw": secret},
        "sensitive-variables": ["pw"],
        "builders": [{"type": "file", "target": str(tmp_path / "t.txt"), "content": "c"}],
        "provisioners": [{"type": "shell-local", "inline": ["echo {{user `pw`}}"]}],
    })
    log = tmp_path / "debug.log"
    env = dict(os.environ, STEMFORGE_LOG_PATH=str(log), STEMFORGE_FAILPOINTS="after:provision")
    result = subprocess.run([PYTHON, "-m", "stemforge.cli", "build", str(path)], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 1
    text = log.read_text()
    assert "stemforge.build.file INFO: cleanup create_file (failure): done" in text
    assert secret not in text + result.stdout + result.stderr
