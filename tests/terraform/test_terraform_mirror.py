"""Provider mirror discovery (terraform/mirror.py) on temporary trees, and the private CLI config it writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from terraform.mirror import (
    ProviderNotFound,
    accepted,
    cli_config_text,
    find_aws_provider,
    search_mirrors,
    write_cli_config,
)

PLAT = "linux_amd64"


def make_mirror(root: Path, version: str = "5.100.0", plat: str = PLAT, packed: bool = False) -> Path:
    """A filesystem mirror at ``root`` holding a (fake, non-runnable) hashicorp/aws ``version`` for ``plat``."""
    base = root / "registry.terraform.io" / "hashicorp" / "aws"
    if packed:
        base.mkdir(parents=True, exist_ok=True)
        (base / f"terraform-provider-aws_{version}_{plat}.zip").write_bytes(b"PK")
    else:
        d = base / version / plat
        d.mkdir(parents=True, exist_ok=True)
        exe = d / f"terraform-provider-aws_v{version}_x5"
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(0o755)
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment naming only ``home`` (no TF_* of the machine), XDG dirs inside the temp tree."""
    return {"HOME": str(home), "XDG_DATA_DIRS": str(home / "xdg-data-dirs"), **extra}


def find(home: Path, env: dict[str, str], roots: list[Path], **kw: object) -> object:
    return find_aws_provider(env=env, home=home, cwd=home, roots=roots, platform=PLAT, **kw)  # type: ignore[arg-type]


def test_configured_filesystem_mirror_comes_first(tmp_path: Path, home: Path) -> None:
    configured = make_mirror(tmp_path / "configured", "5.90.0")
    make_mirror(home / ".terraform.d" / "plugins", "5.100.0")  # implied: comes later even with a newer version
    rc = tmp_path / "rc.tfrc"
    rc.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{configured}"\n  }}\n}}\n')
    found = find(home, clean_env(home, TF_CLI_CONFIG_FILE=str(rc)), [])
    assert found.path == configured and found.version == "5.90.0"  # type: ignore[attr-defined]
    assert str(rc) in found.source  # type: ignore[attr-defined]


def test_plugin_cache_dir_is_used_as_a_mirror(tmp_path: Path, home: Path) -> None:
    cache = make_mirror(tmp_path / "cache")
    found = find(home, clean_env(home, TF_PLUGIN_CACHE_DIR=str(cache)), [])
    assert found.path == cache and found.source == "TF_PLUGIN_CACHE_DIR"  # type: ignore[attr-defined]


def test_plugin_cache_dir_from_terraformrc(tmp_path: Path, home: Path) -> None:
    cache = make_mirror(tmp_path / "cache2")
    (home / ".terraformrc").write_text(f'plugin_cache_dir = "{cache}"\n')
    found = find(home, clean_env(home), [])
    assert found.path == cache and "plugin_cache_dir" in found.source  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", [".terraform.d/plugins", "xdg/terraform/plugins", "xdg-data-dirs/terraform/plugins"])
def test_implied_mirror_directories(home: Path, where: str) -> None:
    mirror = make_mirror(home / where)
    found = find(home, clean_env(home, XDG_DATA_HOME=str(home / "xdg")), [])
    assert found.path == mirror and found.source == "implied mirror directory"  # type: ignore[attr-defined]


def test_bounded_search_finds_an_unconfigured_mirror(tmp_path: Path, home: Path) -> None:
    root = tmp_path / "opt"
    mirror = make_mirror(root / "vendor" / "tf-plugins")
    found = find(home, clean_env(home), [root])
    assert found.path == mirror and "search of" in found.source  # type: ignore[attr-defined]


def test_search_depth_and_directory_budget_are_bounds(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    deep = make_mirror(root / "a" / "b" / "c" / "d")  # registry.terraform.io at depth 5
    assert list(search_mirrors([root], max_depth=5)) == [deep]
    assert list(search_mirrors([root], max_depth=4)) == []
    assert list(search_mirrors([root], max_depth=5, max_dirs=3)) == []  # budget spent before depth 5


def test_search_skips_symlinks_and_hidden_directories(tmp_path: Path) -> None:
    real = make_mirror(tmp_path / "elsewhere" / "m")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(real, target_is_directory=True)
    make_mirror(root / ".hidden")
    assert list(search_mirrors([root])) == []


def test_highest_accepted_version_wins_and_other_majors_are_ignored(tmp_path: Path, home: Path) -> None:
    root = tmp_path / "m"
    for version in ("5.9.0", "5.100.0", "6.0.0", "5.101.0-beta1"):
        make_mirror(root, version)
    found = find(home, clean_env(home, TF_PLUGIN_CACHE_DIR=str(root)), [])
    assert found.version == "5.100.0"  # type: ignore[attr-defined]
    assert accepted("5.0.0") and not accepted("6.1.0") and not accepted("5.1.0-rc1") and not accepted("4.67.0")


def test_packed_zip_layout_is_recognised(tmp_path: Path, home: Path) -> None:
    root = make_mirror(tmp_path / "packed", "5.50.0", packed=True)
    found = find(home, clean_env(home, TF_PLUGIN_CACHE_DIR=str(root)), [])
    assert found.version == "5.50.0"  # type: ignore[attr-defined]


def test_not_found_names_every_place_searched_and_what_did_not_fit(tmp_path: Path, home: Path) -> None:
    wrong = make_mirror(tmp_path / "wrong", "5.100.0", plat="darwin_arm64")
    make_mirror(wrong, "4.67.0")
    rc = tmp_path / "rc"
    rc.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{wrong}"\n  }}\n}}\n')
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    with pytest.raises(ProviderNotFound) as info:
        find(home, clean_env(home, TF_CLI_CONFIG_FILE=str(rc), XDG_DATA_HOME=str(home / "xdg")), [empty_root])
    message = str(info.value)
    assert f"hashicorp/aws 5.x for {PLAT}" in message
    for place in (
        str(wrong),
        str(home / ".terraform.d" / "plugins"),
        str(home / "xdg" / "terraform" / "plugins"),
        f"{empty_root}/** (search",
    ):
        assert place in message
    assert "5.100.0 (darwin_arm64)" in message and "4.67.0" in message
    assert "Fix:" in message and "filesystem_mirror" in message


def test_cli_config_escapes_the_path_and_keeps_terraform_off_the_network(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\dir'
    text = cli_config_text(odd)
    assert 'path    = "' + str(odd).replace("\\", "\\\\").replace('"', '\\"') + '"' in text
    assert 'exclude = ["registry.terraform.io/*/*"]' in text and "disable_checkpoint = true" in text
    path = write_cli_config(tmp_path / "sub" / "terraformrc", odd)
    assert path.read_text() == text and not list(path.parent.glob("*.tmp"))


@pytest.mark.terraform
def test_terraform_accepts_the_written_config(tmp_path: Path) -> None:
    """The real terraform parses the config (no warnings about it) and, with an empty mirror, fails to install the
    provider without trying the registry (no network: the direct source excludes it)."""
    mirror = tmp_path / "empty-mirror"
    mirror.mkdir()
    rc = write_cli_config(tmp_path / "terraformrc", mirror)
    work = tmp_path / "work"
    work.mkdir()
    (work / "main.tf").write_text(
        'terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws" }\n  }\n}\n'
    )
    env = {
        **os.environ,
        "TF_CLI_CONFIG_FILE": str(rc),
        "CHECKPOINT_DISABLE": "1",
        "TF_LOG": "DEBUG",
        "TF_LOG_PATH": str(tmp_path / "tf.log"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    proc = subprocess.run(
        ["terraform", "init", "-input=false", "-no-color"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0
    assert "CLI configuration" not in proc.stderr  # the config parsed without complaint
    assert "Failed to query available provider packages" in proc.stderr
    log = (tmp_path / "tf.log").read_text()
    assert f"Loading CLI configuration from {rc}" in log
    assert "Explicit provider installation configuration is set" in log
    assert "https://" not in log  # no registry request, no checkpoint
