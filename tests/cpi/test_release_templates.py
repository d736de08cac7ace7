"""The BOSH release of the CPI (release/): the stemforge_cpi job's templates rendered by real Ruby ERB through the
bosh-template subset in ci/erb_render.rb, for each provider with sample properties; the rendered config loads in the
real provider config classes; the rendered bin/cpi answers under the director's stripped environment; the release
tarball has BOSH's layout."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from ci.bosh_release import (
    RELEASE_DIR,
    ReleaseError,
    create_release,
    extract_job,
    job_properties,
    load_spec,
    read_release,
    render_job,
)
from cpi.providers import PROVIDERS
from cpi.wrapper import DIRECTOR_PATH

JOB = RELEASE_DIR / "jobs" / "stemforge_cpi"
SECRET = "aws-SECRET-key-do-not-print"

SAMPLES: dict[str, dict[str, Any]] = {
    "libvirt": {
        "libvirt": {
            "uri": "qemu:///system",
            "storage_pool": "stemforge-release-test",
            "pool_path": "/var/lib/stemforge/release-test-pool",
            "accelerator": "tcg",
            "default_network": {"type": "user", "restrict": True},
            "spare_pcie_ports": 4,
        }
    },
    "baremetal": {
        "baremetal": {
            "provisioning_url": "http://127.0.0.1:8080",
            "timeouts": {"power": 60, "deploy": 600},
            "bmc": {"attempts": 3},
            "phone_home": False,
        }
    },
    "aws": {
        "aws": {
            "region": "us-east-1",
            "endpoint": "http://127.0.0.1:9",
            "credentials_source": "static",
            "access_key_id": "AKIDEXAMPLE",
            "secret_access_key": SECRET,
            "default_key_name": "bosh",
            "default_security_groups": ["sg-1"],
            "max_retries": 1,
        }
    },
}


def properties(tmp_path: Path, plugin: str, job_dir: Path, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "stemforge_cpi": {
            "plugin": plugin,
            "python": sys.executable,
            "job_dir": str(job_dir),
            "log_dir": str(job_dir / "log"),
            "state_dir": str(tmp_path / "state"),
            "log_level": "debug",
        },
        "agent": {
            "mbus": "nats://127.0.0.1:4222",
            "ntp": ["127.0.0.1"],
            "blobstore": {"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}},
        },
    }
    props.update(SAMPLES[plugin])
    props.update(extra)
    return props


def info(cpi: Path, method: str = "info") -> tuple[dict[str, Any], str]:
    request = json.dumps({"method": method, "arguments": [], "context": {"director_uuid": "release-test"}})
    proc = subprocess.run(
        ["/usr/bin/env", "-i", f"PATH={DIRECTOR_PATH}", str(cpi)],
        input=request,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("plugin", sorted(SAMPLES))
def test_render_and_run_info_per_provider(tmp_path: Path, plugin: str) -> None:
    job_dir = tmp_path / "jobs dir's" / "stemforge_cpi"  # a space and a quote: everything must be shell-quoted
    written = render_job(JOB, properties(tmp_path, plugin, job_dir), job_dir)
    assert sorted(p.relative_to(job_dir).as_posix() for p in written) == ["bin/cpi", "config/cpi.json"]
    cpi = job_dir / "bin" / "cpi"
    assert cpi.stat().st_mode & 0o111
    script = cpi.read_text()
    assert script.startswith("#!/bin/sh\n")
    assert f"exec '{sys.executable}' -I -c " in script

    config = json.loads((job_dir / "config" / "cpi.json").read_text())
    assert config["cloud"]["plugin"] == plugin
    assert config["cloud"]["properties"][plugin] == SAMPLES[plugin][plugin]
    assert config["cloud"]["properties"]["agent"]["blobstore"]["provider"] == "local"

    # the real config loaders accept what the template wrote
    from cpi import config as cpi_config

    loaded = cpi_config.load(str(job_dir / "config" / "cpi.json"), PROVIDERS)
    section = loaded.properties[plugin]
    if plugin == "libvirt":
        from cpi.providers.libvirt.config import LibvirtConfig

        assert LibvirtConfig.from_properties(section).spare_pcie_ports == 4
    elif plugin == "baremetal":
        from cpi.providers.baremetal.config import MetalConfig

        assert MetalConfig.from_properties(section).timeouts.power == 60
    else:
        from cpi.providers.aws.config import AwsConfig

        assert AwsConfig.from_properties(section).region == "us-east-1"

    response, stderr = info(cpi)
    assert response["error"] is None
    assert response["result"]["stemcell_formats"] == list(PROVIDERS[plugin].stemcell_formats)
    # each log line is written once, into the response's log (cpi/cpilog.py), not to stderr
    response, stderr = info(cpi, "no_such_method")
    assert response["error"]["type"] == "Bosh::Clouds::NotImplemented"
    assert "unknown method 'no_such_method'" in response["log"] and "no_such_method" not in stderr
    assert SECRET not in stderr + json.dumps(response) + script


def test_bin_cpi_stderr_goes_to_the_log_dir_when_it_exists(tmp_path: Path) -> None:
    """bin/cpi appends the interpreter's stderr (tracebacks, raw library output) to LOG_DIR/cpi.stderr.log when that
    directory exists, else leaves it to the caller. The interpreter here is a stand-in script that writes one line
    to stderr and one response to stdout, so that the shell redirection itself is what is tested."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "stderr line: $*" >&2\necho \'{"result":null,"error":null,"log":""}\'\n')
    fake.chmod(0o755)
    job_dir = tmp_path / "job"
    render_job(JOB, properties(tmp_path, "libvirt", job_dir, stemforge_cpi={
        "plugin": "libvirt", "python": str(fake), "job_dir": str(job_dir), "log_dir": str(job_dir / "log")}), job_dir)
    response, stderr = info(job_dir / "bin" / "cpi")
    assert response["error"] is None and "stderr line: -I -c" in stderr
    (job_dir / "log").mkdir()
    response, stderr = info(job_dir / "bin" / "cpi")
    assert response["error"] is None and stderr == ""
    assert f"--config {job_dir}/config/cpi.json" in (job_dir / "log" / "cpi.stderr.log").read_text()


def test_spec_declares_every_provider_and_cpi_property() -> None:
    spec = load_spec(JOB / "spec")
    declared = set(spec["properties"])
    from cpi.config import PROPERTIES_SCHEMA

    for key in PROPERTIES_SCHEMA["properties"]:
        if key == "agent":
            assert {"agent.mbus", "agent.ntp", "agent.blobstore.provider", "agent.blobstore.options"} <= declared
        else:
            assert f"stemforge_cpi.{key}" in declared, key
    import importlib

    for plugin in PROVIDERS:
        schema = importlib.import_module(f"cpi.providers.{plugin}.config").CONFIG_SCHEMA
        wanted = {f"{plugin}.{key}" for key in schema["properties"]}
        have = {name for name in declared if name.startswith(f"{plugin}.")}
        assert have == wanted, f"{plugin}: spec differs from CONFIG_SCHEMA by {sorted(have ^ wanted)}"
    assert spec["templates"] == {"cpi.erb": "bin/cpi", "cpi.json.erb": "config/cpi.json"}
    assert spec["packages"] == ["stemforge"]


@pytest.mark.parametrize("plugin", sorted(PROVIDERS))
def test_template_passes_every_declared_provider_key(tmp_path: Path, plugin: str) -> None:
    """Each key the spec declares for a provider reaches cpi.json (the template's key lists match the spec)."""
    spec = load_spec(JOB / "spec")
    keys = [name.split(".", 1)[1] for name in spec["properties"] if name.startswith(f"{plugin}.")]
    section = {key: f"value-of-{key}" for key in keys}
    job_dir = tmp_path / "job"
    render_job(JOB, properties(tmp_path, plugin, job_dir, **{plugin: section}), job_dir)
    config = json.loads((job_dir / "config" / "cpi.json").read_text())
    assert config["cloud"]["properties"][plugin] == section


@pytest.mark.parametrize("plugin", sorted(PROVIDERS))
def test_bin_cpi_runs_the_plugins_venv_by_default(tmp_path: Path, plugin: str) -> None:
    """Without stemforge_cpi.python, bin/cpi names the plugin's venv of the stemforge package (packaging makes one
    per provider: the core install plus that provider's extra) and the JSON config the job renders."""
    props = properties(tmp_path, plugin, tmp_path / "job")
    del props["stemforge_cpi"]["python"]
    render_job(JOB, props, tmp_path / "job")
    script = (tmp_path / "job" / "bin" / "cpi").read_text()
    assert f"exec '/var/vcap/packages/stemforge/{plugin}/bin/python' -I -c " in script
    assert script.rstrip().endswith(f"--config '{tmp_path / 'job'}/config/cpi.json'")


def test_missing_and_bad_properties_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"Can't find property 'stemforge_cpi.plugin'"):
        render_job(JOB, {}, tmp_path / "a")
    with pytest.raises(ReleaseError, match=r"stemforge_cpi.plugin must be one of libvirt, baremetal, aws, got \"x\""):
        render_job(JOB, {"stemforge_cpi": {"plugin": "x"}}, tmp_path / "b")
    with pytest.raises(ReleaseError, match="stemforge_cpi.python must be an absolute path"):
        render_job(JOB, {"stemforge_cpi": {"plugin": "libvirt", "python": "python3"}}, tmp_path / "c")
    assert not (tmp_path / "a" / "bin").exists()  # nothing half-written


def test_defaults_and_undeclared_properties() -> None:
    spec = load_spec(JOB / "spec")
    props = job_properties(spec, {"stemforge_cpi": {"plugin": "aws"}, "undeclared": {"x": 1}, "aws.region": "r"})
    assert "python" not in props["stemforge_cpi"]  # the template picks the plugin's venv
    assert props["stemforge_cpi"]["job_dir"] == "/var/vcap/jobs/stemforge_cpi"
    assert props["aws"] == {"region": "r"}
    assert "undeclared" not in props


def test_erb_helpers_if_p_else_and_spec(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "templates").mkdir(parents=True)
    (job / "spec").write_text(
        yaml.safe_dump(
            {
                "name": "probe",
                "templates": {"t.erb": "out.txt"},
                "properties": {"a.b": {"default": 1}, "c": {}, "d": {}},
            }
        )
    )
    (job / "templates" / "t.erb").write_text(
        "<% if_p('a.b', 'c') do |b, c| %>both <%= b %> <%= c %><% end.else do %>not both<% end %>\n"
        "<% if_p('a.b') do |b| %>ab=<%= b %><% end %>\n"
        "<%= p(['d', 'a.b']) %> <%= p('d', 'dflt') %> <%= spec.job.name %> <%= spec.index %>\n"
    )
    render_job(job, {}, tmp_path / "out")
    assert (tmp_path / "out" / "out.txt").read_text() == "not both\nab=1\n1 dflt probe 0\n"
    render_job(job, {"c": "C", "d": "D"}, tmp_path / "out2")
    assert (tmp_path / "out2" / "out.txt").read_text() == "both 1 C\nab=1\nD D probe 0\n"


def _blobs(tmp_path: Path) -> dict[str, Path]:
    wheel = tmp_path / "stemforge-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel, but bytes to package")
    dep = tmp_path / "PyYAML-6.0-py3-none-any.whl"
    dep.write_bytes(b"dependency")
    return {f"stemforge/{wheel.name}": wheel, f"stemforge/wheels/{dep.name}": dep}


def test_release_tarball_layout(tmp_path: Path) -> None:
    out = tmp_path / "stemforge-cpi-0.1.0.tgz"
    manifest = create_release(RELEASE_DIR, "0.1.0", _blobs(tmp_path), out, commit_hash="0123456789abcdef")
    assert manifest["name"] == "stemforge-cpi" and manifest["version"] == "0.1.0"
    assert manifest["commit_hash"] == "01234567" and manifest["uncommitted_changes"] is False
    read, contents = read_release(out)
    assert read == manifest
    assert sorted(contents) == ["jobs/stemforge_cpi.tgz", "packages/stemforge.tgz", "release.MF"]
    (job,) = manifest["jobs"]
    (package,) = manifest["packages"]
    assert job["name"] == "stemforge_cpi" and job["packages"] == ["stemforge"]
    assert job["version"] == job["fingerprint"] and len(job["fingerprint"]) == 40
    assert hashlib.sha1(contents["jobs/stemforge_cpi.tgz"]).hexdigest() == job["sha1"]
    assert hashlib.sha1(contents["packages/stemforge.tgz"]).hexdigest() == package["sha1"]
    assert package["dependencies"] == []

    def names(data: bytes) -> dict[str, bytes]:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}  # type: ignore[union-attr]

    job_files = names(contents["jobs/stemforge_cpi.tgz"])
    assert sorted(job_files) == ["./job.MF", "./monit", "./templates/cpi.erb", "./templates/cpi.json.erb"]
    assert yaml.safe_load(job_files["./job.MF"])["name"] == "stemforge_cpi"
    package_files = names(contents["packages/stemforge.tgz"])
    assert sorted(package_files) == [
        "./packaging",
        "./stemforge/stemforge-0.1.0-py3-none-any.whl",
        "./stemforge/wheels/PyYAML-6.0-py3-none-any.whl",
    ]

    # same content, same fingerprints; a changed template changes the job's
    again = create_release(RELEASE_DIR, "0.1.1", _blobs(tmp_path), tmp_path / "again.tgz")
    assert again["jobs"][0]["fingerprint"] == job["fingerprint"]
    copy = tmp_path / "release-copy"
    shutil.copytree(RELEASE_DIR, copy)
    with (copy / "jobs" / "stemforge_cpi" / "templates" / "cpi.erb").open("a") as handle:
        handle.write("# changed\n")
    changed = create_release(copy, "0.1.2", _blobs(tmp_path), tmp_path / "changed.tgz")
    assert changed["jobs"][0]["fingerprint"] != job["fingerprint"]
    assert changed["packages"][0]["fingerprint"] == package["fingerprint"]

    # the job renders from the tarball as the director would
    extracted = extract_job(out, "stemforge_cpi", tmp_path / "extracted")
    rendered = tmp_path / "rendered"
    render_job(extracted, properties(tmp_path, "libvirt", rendered), rendered)
    assert info(rendered / "bin" / "cpi")[0]["error"] is None


def test_release_needs_every_package_file(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path)
    blobs.pop(next(name for name in blobs if "/wheels/" in name))
    out = tmp_path / "r.tgz"
    with pytest.raises(ReleaseError, match=r"package stemforge: no file given for 'stemforge/wheels/\*\.whl'"):
        create_release(RELEASE_DIR, "1", blobs, out)
    assert not out.exists() and not list(tmp_path.glob(".r.tgz.*"))


def test_tampered_job_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r.tgz"
    create_release(RELEASE_DIR, "1", _blobs(tmp_path), out)
    manifest, contents = read_release(out)
    manifest["jobs"][0]["sha1"] = "0" * 40
    tampered = tmp_path / "t.tgz"
    with tarfile.open(tampered, "w:gz") as archive:
        for name, data in {**contents, "release.MF": yaml.safe_dump(manifest).encode()}.items():
            info_ = tarfile.TarInfo(f"./{name}")
            info_.size = len(data)
            archive.addfile(info_, io.BytesIO(data))
    with pytest.raises(ReleaseError, match="does not match its sha1"):
        extract_job(tampered, "stemforge_cpi", tmp_path / "x")
