"""terraform/env.py and terraform/cli.py without applying anything: missing terraform or provider, bad input naming
the field, idempotent down, metadata flattening and redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from terraform.env import (
    Environment,
    EnvironmentError,
    EnvironmentSpec,
    TerraformNotFound,
    default_root,
    flatten_outputs,
    locate_terraform,
)
from terraform.mirror import ProviderNotFound


def stemforge_env(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemforge.cli", "env", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_missing_terraform_names_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(TerraformNotFound) as info:
        locate_terraform(env={"PATH": str(empty), "HOME": str(tmp_path)}, candidates=(str(tmp_path / "opt/*/bin"),))
    message = str(info.value)
    assert f"no terraform binary on PATH ({empty})" in message and str(tmp_path / "opt/*/bin") in message
    assert "Fix: install Terraform" in message


def test_terraform_found_in_a_candidate_directory(tmp_path: Path) -> None:
    exe = tmp_path / "opt" / "hashicorp" / "bin" / "terraform"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    found = locate_terraform(
        env={"PATH": str(tmp_path / "nothing"), "HOME": str(tmp_path)}, candidates=(str(tmp_path / "opt/*/bin"),)
    )
    assert found == str(exe)


def test_explicit_terraform_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(TerraformNotFound, match="is not an executable file"):
        locate_terraform(str(tmp_path / "terraform"))
    result = stemforge_env(
        "up",
        "sf-x",
        "--endpoint",
        "http://127.0.0.1:1",
        "--terraform",
        str(tmp_path / "tf"),
        env={"STEMFORGE_ENV_ROOT": str(tmp_path / "envs")},
    )
    assert result.returncode == 2 and f"{tmp_path / 'tf'} is not an executable file" in result.stderr
    assert not (tmp_path / "envs" / "sf-x").exists()


def test_missing_provider_names_what_was_searched_and_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "search-root"
    root.mkdir()
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", ""), "XDG_DATA_DIRS": str(tmp_path / "xdg")}
    environment = Environment(
        tmp_path / "envs" / "sf-noprov",
        env=env,
        sink=lambda line: None,
        provider_search={"home": home, "cwd": home, "roots": [root]},
    )
    with pytest.raises(ProviderNotFound) as info:
        environment.up(EnvironmentSpec(name="sf-noprov", endpoint="http://127.0.0.1:1"))
    message = str(info.value)
    assert "no registry.terraform.io/hashicorp/aws 5.x" in message
    assert str(home / ".terraform.d" / "plugins") in message and f"{root}/** (search" in message
    assert not (tmp_path / "envs").exists()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (EnvironmentSpec(name="Bad_Name"), "name:"),
        (EnvironmentSpec(name="-x-"), "name:"),
        (EnvironmentSpec(name="x" * 29), "name:"),
        (EnvironmentSpec(name="ok-name", region="mars"), "region:"),
        (EnvironmentSpec(name="ok-name", endpoint="ftp://127.0.0.1"), "endpoint:"),
        (EnvironmentSpec(name="ok-name", endpoint="http://127.0.0.1:99999"), "endpoint:"),
        (EnvironmentSpec(name="ok-name", availability_zone="eu-west-1a"), "availability_zone:"),
        (EnvironmentSpec(name="ok-name", access_key=" padded "), "access_key:"),
        (EnvironmentSpec(name="ok-name", secret_key=""), "secret_key:"),
    ],
)
def test_bad_specs_name_the_field(spec: EnvironmentSpec, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        spec.validate()


def test_up_refuses_a_name_that_is_not_the_directory_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name: 'sf-a' differs"):
        Environment(tmp_path / "sf-b", sink=lambda line: None).up(EnvironmentSpec(name="sf-a"))


def test_cli_bad_input_exit_2_and_names_the_field(tmp_path: Path) -> None:
    env = {"STEMFORGE_ENV_ROOT": str(tmp_path)}
    bad_name = stemforge_env("up", "Not_A_Name", env=env)
    assert bad_name.returncode == 2 and "name: 'Not_A_Name'" in bad_name.stderr
    bad_endpoint = stemforge_env("up", "sf-ok", "--endpoint", "127.0.0.1:5000", env=env)
    assert bad_endpoint.returncode == 2 and "endpoint: '127.0.0.1:5000' is not an http(s) URL" in bad_endpoint.stderr
    assert list(tmp_path.iterdir()) == []
    no_sub = stemforge_env(env=env)
    assert no_sub.returncode == 2 and "up" in no_sub.stdout and "metadata" in no_sub.stdout


def test_down_without_anything_is_success_and_cleans_a_stateless_directory(tmp_path: Path) -> None:
    lines: list[str] = []
    assert Environment(tmp_path / "sf-none", sink=lines.append).down() is False
    assert "nothing to destroy" in lines[-1]
    half = tmp_path / "sf-half"
    (half / "terraform").mkdir(parents=True)
    (half / "terraform" / "terraform.tfstate").write_text(
        json.dumps(
            {"version": 4, "resources": [{"mode": "data", "type": "aws_availability_zones", "name": "available"}]}
        )
    )
    assert Environment(half, sink=lines.append).down() is False
    assert not half.exists()
    result = stemforge_env("down", "sf-none", env={"STEMFORGE_ENV_ROOT": str(tmp_path)})
    assert result.returncode == 0 and "nothing to destroy" in result.stderr


def test_metadata_errors_name_the_file(tmp_path: Path) -> None:
    environment = Environment(tmp_path / "sf-meta", sink=lambda line: None)
    with pytest.raises(EnvironmentError, match="no metadata at .*sf-meta/environment/metadata"):
        environment.metadata()
    environment.metadata_path.parent.mkdir(parents=True)
    environment.metadata_path.write_text("{not json")
    with pytest.raises(EnvironmentError, match="is not JSON"):
        environment.metadata()
    environment.metadata_path.write_text('{"vpc_id": "vpc-1"}')
    result = stemforge_env("metadata", "sf-meta", env={"STEMFORGE_ENV_ROOT": str(tmp_path)})
    assert result.returncode == 0 and json.loads(result.stdout) == {"vpc_id": "vpc-1"}


def test_flatten_outputs_keeps_values_and_drops_sensitive_ones() -> None:
    raw = {
        "vpc_id": {"value": "vpc-1", "type": "string", "sensitive": False},
        "default_security_groups": {"value": ["sg-1"], "type": ["tuple", ["string"]], "sensitive": False},
        "password": {"value": "hunter2", "type": "string", "sensitive": True},
    }
    assert flatten_outputs(raw) == {"default_security_groups": ["sg-1"], "vpc_id": "vpc-1"}


def test_scrub_hides_credentials_signatures_and_tokens(tmp_path: Path) -> None:
    environment = Environment(
        tmp_path / "sf-r",
        env={"AWS_ACCESS_KEY_ID": "plainaccesskey", "AWS_SECRET_ACCESS_KEY": "plainsecret", "HOME": str(tmp_path)},
    )
    line = (
        'authorization="AWS4-HMAC-SHA256 Credential=plainaccesskey/20260101/us-east-1/ec2/aws4_request, '
        f'Signature={"ab" * 32}" X-Amz-Security-Token: FQoGZXIvYXdzEJr secret=plainsecret'
    )
    scrubbed = environment.scrub(line)
    for secret in ("plainaccesskey", "plainsecret", "ab" * 32, "FQoGZXIvYXdzEJr"):
        assert secret not in scrubbed
    assert "Credential=<redacted>/20260101" in scrubbed and "Signature=<redacted>" in scrubbed


def test_loopback_only_and_default_root(tmp_path: Path) -> None:
    for url, loop in (
        ("http://127.0.0.1:5000", True),
        ("http://127.3.2.1", True),
        ("http://localhost:1", True),
        ("http://[::1]:5000", True),
        ("http://10.0.0.1:5000", False),
        ("https://ec2.amazonaws.com", False),
    ):
        assert EnvironmentSpec(name="sf-l", endpoint=url).loopback_only is loop, url
    assert EnvironmentSpec(name="sf-l").loopback_only is False
    assert default_root({"STEMFORGE_ENV_ROOT": str(tmp_path)}) == tmp_path
    assert default_root({"HOME": "/h"}) == Path("/h/.local/state/stemforge/envs")
    assert default_root({"XDG_STATE_HOME": "/s", "HOME": "/h"}) == Path("/s/stemforge/envs")
