"""Packer's answers for the shapes public templates have, where stemforge answered differently (found by trying
real public templates; the templates here are minimal ones written for these tests, showing one behaviour each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.cli import main

VALID = "The configuration is valid."


def _validate(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    status = main(["validate", *flags, str(path)])
    out = capsys.readouterr()
    return status, out.out + out.err


def _qemu_hcl(body: str) -> str:
    return ('source "qemu" "vm" {\n  iso_url = "disk.qcow2"\n  iso_checksum = "none"\n  disk_image = true\n'
            '  communicator = "none"\n  shutdown_timeout = "1s"\n' + body
            + '}\nbuild { sources = ["source.qemu.vm"] }\n')


# ---------------------------------------------------------------- qemu vnc_use_password


def test_vnc_use_password_is_accepted_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hcl = tmp_path / "vnc.pkr.hcl"
    hcl.write_text(_qemu_hcl("  vnc_use_password = true\n"))
    status, text = _validate(hcl, capsys)
    assert status == 0 and VALID in text, text
    assert "vnc_use_password" in text and "no VNC server is started" in text, text
    legacy = tmp_path / "vnc.json"
    legacy.write_text(json.dumps({"builders": [{"type": "qemu", "iso_url": "disk.qcow2", "iso_checksum": "none",
                                                "disk_image": True, "communicator": "none",
                                                "vnc_use_password": True}]}))
    status, text = _validate(legacy, capsys)
    assert status == 0 and VALID in text, text
