"""``stemforge validate`` over tests/corpus/ (templates in the shapes real public ones have; see its README):
each gives Packer's answer, valid or the components stemforge lacks, in Packer's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders.cli import main

CORPUS = Path(__file__).parents[1] / "corpus"
VALID = "The configuration is valid."

EXPECTED: dict[str, list[str]] = {
    "cloudimg-cidata-qemu.pkr.hcl": [VALID],
    "aws-ubuntu-ebs.pkr.hcl": [VALID],
    "debian-dir": [VALID],
    "legacy-qemu.json": [VALID],
    "multi-hypervisor.pkr.hcl": [
        'Error: Unknown source type "virtualbox-iso"',
        'The source "virtualbox-iso" is unknown by Packer, and is likely part of a plugin that is not installed.'],
    "ansible-provisioned.pkr.hcl": [
        "Error: Missing plugins", "The following plugins are required, but not installed:",
        "github.com/hashicorp/ansible ~> 1"],
    # validate configures data sources without executing them (outputs unknown), as Packer does
    "hcp-golden-image.pkr.hcl": [VALID],
    "legacy-vagrant.json": [
        "The post-processor vagrant is unknown by Packer, and is likely part of a plugin that is not installed."],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_validates_as_packer_does(name: str, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    status = main(["validate", name])
    out = capsys.readouterr()
    text = out.out + out.err
    for line in EXPECTED[name]:
        assert line in text, text
    assert status == (0 if EXPECTED[name] == [VALID] else 1), text
    if status:
        assert text.count("Error: ") <= 2, text  # each missing component reported once


def test_ubuntu_autoinstall_with_a_common_word_as_password(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    status = main(["validate", "ubuntu-autoinstall-qemu.pkr.hcl"])
    assert status == 0, capsys.readouterr().out


def test_ubuntu_autoinstall_is_valid_with_another_password(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CORPUS)
    status = main(["validate", "-var", "ssh_password=install-pw-42", "ubuntu-autoinstall-qemu.pkr.hcl"])
    text = capsys.readouterr().out
    assert status == 0 and VALID in text, text
    assert "install-pw-42" not in text
