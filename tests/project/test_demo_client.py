"""``stemforge demo`` calls the CPI through the one director-style client: a result is printed with its time, an
error response or a broken CPI stops the demo naming the method and the error type. (The demo's VM flow itself is
what tests/cpi/test_libvirt_lifecycle.py covers through the same CPI.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from stemforge.demo import Demo, DemoFailed
from stemforge_base.cpi_client import CpiClient

FAKE_CPI = """#!/bin/sh
request=$(cat)
case "$request" in
  *'"method": "has_vm"'*) echo '{"result": true, "error": null, "log": ""}' ;;
  *'"method": "delete_vm"'*) echo '{"result": null, "error": {"type": "Bosh::Clouds::VMNotFound",
    "message": "no vm-9", "ok_to_retry": false}, "log": ""}' ;;
  *) echo 'Traceback: boom' >&2; exit 3 ;;
esac
"""


@pytest.fixture
def demo(tmp_path: Path) -> Demo:
    script = tmp_path / "cpi"
    script.write_text(FAKE_CPI)
    script.chmod(0o755)
    demo = Demo(tmp_path, agent_timeout=1)
    demo.client = CpiClient([str(script)], director_uuid=demo.director_uuid, timeout=30)
    return demo


def test_a_result_is_returned_and_shown(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.call("has_vm", "vm-1") is True
    assert "has_vm -> true  (" in capsys.readouterr().out


def test_an_error_response_stops_the_demo(demo: Demo) -> None:
    with pytest.raises(DemoFailed, match="^delete_vm: Bosh::Clouds::VMNotFound: no vm-9$"):
        demo.call("delete_vm", "vm-9")


def test_a_broken_cpi_stops_the_demo_with_its_stderr(demo: Demo) -> None:
    with pytest.raises(DemoFailed, match=r"^info: stemforge::CpiProcessError: the CPI exited with status 3 "
                                         r"\(stderr: Traceback: boom\)$"):
        demo.call("info", quiet=True)
