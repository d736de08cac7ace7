"""stemforge_base.cpi_client: requests as the director builds them, one bounded process per request, strict
envelopes. (CpiClient's calls, errors, retries and group kill: tests/builders/test_cpi_test_pp.py.)"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from stemforge_base.cpi_client import (
    DIRECTOR_ENV,
    CpiProcessError,
    build_request,
    cpi_command,
    exchange,
    parse_response,
)


def _script(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "cpi.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return [str(script)]


def test_build_request() -> None:
    request = build_request("create_vm", ("a", {"b": 1}), director_uuid="d-1", api_version=2,
                            context={"libvirt": {"uri": "x"}, "request_id": "ignored"})
    assert request["method"] == "create_vm" and request["arguments"] == ["a", {"b": 1}]
    assert request["api_version"] == 2
    context = request["context"]
    assert context["director_uuid"] == "d-1" and context["libvirt"] == {"uri": "x"}
    assert context["request_id"].startswith(f"stemforge-{os.getpid()}-")
    assert "api_version" not in build_request("info", [], director_uuid="d", request_id="r-1")
    assert build_request("info", [], director_uuid="d", request_id="r-1")["context"]["request_id"] == "r-1"
    first, second = (build_request("info", [], director_uuid="d")["context"]["request_id"] for _ in range(2))
    assert first != second


def test_exchange_runs_one_process_with_the_director_environment(tmp_path: Path) -> None:
    command = _script(tmp_path, f"cat > {tmp_path}/req; env > {tmp_path}/env; pwd > {tmp_path}/cwd\n"
                                "echo warn >&2; echo '{\"result\":1,\"error\":null,\"log\":\"\"}'; exit 0\n")
    run = exchange(command, {"method": "info", "arguments": []}, timeout=30)
    assert run.returncode == 0 and run.stderr_text == "warn\n" and run.seconds > 0
    assert json.loads((tmp_path / "req").read_text()) == {"method": "info", "arguments": []}
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert env["PATH"] == DIRECTOR_ENV["PATH"] and "HOME" not in env
    assert (tmp_path / "cwd").read_text().strip() == "/"
    assert parse_response("info", run.stdout) == {"result": 1, "error": None, "log": ""}
    raw = exchange(command, b"not json at all", timeout=30, env=None, cwd=str(tmp_path))
    assert (tmp_path / "req").read_bytes() == b"not json at all"
    assert "HOME" in (tmp_path / "env").read_text(), "env=None inherits this process's environment"
    assert (tmp_path / "cwd").read_text().strip() == str(tmp_path) and raw.returncode == 0


def test_exchange_is_bounded_and_names_the_method(tmp_path: Path) -> None:
    command = _script(tmp_path, "echo started >&2; sleep 60 & sleep 60\n")
    started = time.monotonic()
    with pytest.raises(CpiProcessError, match=r"^delete_vm: stemforge::CpiProcessError: no response within 0.5s"
                                              r" \(the CPI process was killed\) \(stderr: started\)$"):
        exchange(command, {"method": "delete_vm"}, timeout=0.5)
    assert time.monotonic() - started < 10
    with pytest.raises(CpiProcessError, match="info: .*cannot run /nonexistent/cpi"):
        exchange(["/nonexistent/cpi"], b"{}", method="info", timeout=5)


@pytest.mark.parametrize(("stdout", "problem"), [
    (b"nope", "the CPI's stdout is not JSON"),
    (b"[1]", "expected exactly result, error and log, got list"),
    (b'{"result": 1, "error": null}', "expected exactly result, error and log, got ['error', 'result']"),
    (b'{"result": 1, "error": null, "log": 5}', "'log' is not a string"),
    (b'{"result": null, "error": {"type": "X"}, "log": ""}', "malformed error"),
    (b'{"result": 1, "error": {"type": "X", "message": "m", "ok_to_retry": false}, "log": ""}',
     "both result and error are set"),
])
def test_parse_response_is_strict(stdout: bytes, problem: str) -> None:
    with pytest.raises(CpiProcessError) as info:
        parse_response("has_vm", stdout, "the stderr")
    assert problem in str(info.value) and str(info.value).startswith("has_vm: ") and "the stderr" in str(info.value)


def test_cpi_command_uses_this_installation(tmp_path: Path) -> None:
    command = cpi_command(tmp_path / "cpi.json")
    assert command[-2:] == ["--config", str(tmp_path / "cpi.json")]
    assert command[0] == str(Path(sys.executable).parent / "stemforge-cpi") or command[:3] == [
        sys.executable, "-m", "cpi.main"]
    assert cpi_command() == command[:-2]
