"""``stemforge cpi call`` through the one director-style client: bounded by ``--timeout``, and an answer that is
not a CPI response is shown and refused (exit 2). (Success and error responses: test_cpi_protocol.test_cli_call.)"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from cpi import cli


def _args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stemforge")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["cpi", "call", "has_vm", '["vm-1"]', "--config", str(tmp_path / "cpi.json"), *extra])


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "cpi.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setattr(cli, "cpi_command", lambda config: [str(script), "--config", str(config)])


def test_call_is_bounded_by_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _fake(tmp_path, monkeypatch, "sleep 60 & sleep 60\n")
    started = time.monotonic()
    args = _args(tmp_path, "--timeout", "0.5")
    assert args.handler(args) == 2
    assert time.monotonic() - started < 10
    assert "no response within 0.5s (the CPI process was killed)" in capsys.readouterr().err


def test_call_refuses_what_is_not_a_cpi_response(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _fake(tmp_path, monkeypatch, """cat > /dev/null; echo '{"result": true}'\n""")
    args = _args(tmp_path)
    assert args.handler(args) == 2
    out = capsys.readouterr()
    assert out.out == '{"result": true}\n', "the answer is shown as it came"
    assert "no valid response (exit status 0): not a CPI response: expected exactly result, error and log" in out.err
