"""The ``release`` post-processor on real destinations (local directories, an image repository on 127.0.0.1, a moto
S3 server on 127.0.0.1) after a real ``fanout``: it refuses untested, failed or different images, marks every copy
released, is idempotent, and a release that fails or is cancelled midway removes every marker it wrote.

The whole "build, test on every hardware plan, then release" flow through ``stemforge build`` with real VMs is in
``tests/builders/test_release_pp_flow.py``."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders.core import Artifact, BuildContext, ConfigError
from builders.image_repo import serve_in_thread
from builders.postprocessors.fanout import FanoutPostProcessor
from builders.postprocessors.release import (
    MARKER_SUFFIX,
    RELEASE_TAG_KEY,
    ReleaseError,
    ReleasePostProcessor,
)
from builders.registry import validate_options
from stemforge_base.steps import FAILPOINTS_ENV, Cancelled, FailpointError
from tests.harness.builds import make_ctx

PASSED = {"small": {"passed": True, "seconds": 20.5, "detail": "agent ready after 14.1s"},
          "large": {"passed": True, "seconds": 22.0, "detail": "agent ready after 15.0s"}}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_image(tmp_path: Path) -> Path:
    image = tmp_path / "build" / "disk.qcow2"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"QFI\xfb" + os.urandom(3 * 1024 * 1024))
    return image


def publish(ctx: BuildContext, image: Path | list[Path], destinations: list[dict[str, Any]],
            name: str = "disk-1.0.qcow2", state: dict[str, Any] | None = None, **options: Any) -> Artifact:
    """A real fan-out of ``image``; its output artifact (carrying ``state``, the input artifact's state)."""
    pp = FanoutPostProcessor({"destinations": destinations, "image_name": name, "retry_initial_delay": 0.05,
                              **options}, ctx)
    pp.prepare()
    files = image if isinstance(image, list) else [image]
    out, _keep = pp.post_process(Artifact("packer.file", "img", "file", files, "File", dict(state or {})))
    return out


def local_sites(tmp_path: Path, count: int = 2) -> list[dict[str, Any]]:
    return [{"type": "local", "name": f"site-{chr(97 + i)}", "path": str(tmp_path / f"site-{chr(97 + i)}")}
            for i in range(count)]


def release(ctx: BuildContext, artifact: Artifact, **options: Any) -> Artifact:
    config = validate_options(ReleasePostProcessor, options, "release")
    pp = ReleasePostProcessor(config, ctx)
    pp.prepare()
    out, keep = pp.post_process(artifact)
    assert keep is False
    return out


def with_tests(artifact: Artifact, tests: dict[str, Any] | None = None, sha: str | None = None) -> Artifact:
    """``artifact`` as it looks when the test results travel in its state (cpi-test's own output shape)."""
    state = {**artifact.state, "tests": tests or PASSED, "tested_sha256": sha or artifact.state["sha256"]}
    return Artifact(artifact.builder_id, artifact.build_name, artifact.builder_type, list(artifact.files),
                    artifact.artifact_id, state)


def markers(paths: list[Path]) -> list[Path]:
    return sorted(p for root in paths if root.exists() for p in root.iterdir() if p.name.endswith(MARKER_SUFFIX))


# -- refusals -----------------------------------------------------------------------------------------------------


def test_refuses_an_untested_image(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    with pytest.raises(ReleaseError, match="refusing to release an untested image"):
        release(ctx, published)
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


def test_refuses_failed_targets_naming_each(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    tests = {**PASSED, "large": {"passed": False, "seconds": 9.0, "detail": "no console match for 'login:' "
                                                                           "within 180s"},
             "gpu": {"passed": False, "seconds": 1.0, "detail": "create_vm: Bosh::Clouds::CloudError: no GPU"}}
    with pytest.raises(ReleaseError) as info:
        release(ctx, with_tests(published, tests))
    text = str(info.value)
    assert "target 'large' failed: no console match for 'login:' within 180s" in text
    assert "target 'gpu' failed: create_vm: Bosh::Clouds::CloudError: no GPU" in text
    assert "'small'" not in text
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


def test_refuses_an_image_other_than_the_tested_one_or_missing_plans(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    with pytest.raises(ReleaseError, match="is not the image that was tested"):
        release(ctx, with_tests(published, sha="f" * 64))
    with pytest.raises(ReleaseError, match="not tested on huge"):
        release(ctx, with_tests(published), require_targets=["small", "huge"])
    bare = Artifact("packer.file", "img", "file", [make_image(tmp_path)], "File",
                    {"tests": PASSED, "tested_sha256": "a" * 64})
    with pytest.raises(ReleaseError, match="no published copies"):
        release(ctx, bare)
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


def test_unknown_options_are_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown configuration key: 'release_manifset'"):
        validate_options(ReleasePostProcessor, {"release_manifset": "x.json"}, "release")
    pp = ReleasePostProcessor({"destinations": [{"type": "local", "name": "a", "pth": "/x"}]}, make_ctx(tmp_path))
    with pytest.raises(ConfigError, match="unknown configuration key: 'pth'"):
        pp.prepare()


# -- releasing ----------------------------------------------------------------------------------------------------


def test_release_marks_every_copy_and_is_idempotent(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    image = make_image(tmp_path)
    published = publish(ctx, image, local_sites(tmp_path, 3))
    manifest = tmp_path / "out" / "release.json"
    out = release(ctx, with_tests(published), release_manifest=str(manifest), require_targets=["small", "large"])
    assert out.state["released"] is True and out.files == []
    assert out.artifact_id == published.artifact_id
    sha = sha256_of(image)
    for site in ("site-a", "site-b", "site-c"):
        copy = tmp_path / site / "disk-1.0.qcow2"
        marker = json.loads((tmp_path / site / f"disk-1.0.qcow2{MARKER_SUFFIX}").read_text())
        assert sha256_of(copy) == sha == marker["sha256"]
        assert marker["released"] is True and marker["id"] == str(copy) and marker["destination"] == site
        assert marker["build_name"] == "img" and marker["run_uuid"] == ctx.run_uuid
        assert marker["size"] == image.stat().st_size
        assert set(marker["tested_targets"]) == {"small", "large"}
        assert marker["released_at"].endswith("Z")
    document = json.loads(manifest.read_text())
    assert [d["name"] for d in document["destinations"]] == ["site-a", "site-b", "site-c"]
    assert document["sha256"] == sha and document["artifact_id"] == published.artifact_id
    # again: nothing rewritten, same markers, still released
    before = {p: p.read_bytes() for p in markers([tmp_path / f"site-{c}" for c in "abc"])}
    second = make_ctx(tmp_path)
    again = release(second, with_tests(published), release_manifest=str(manifest))
    assert again.state["released"] is True
    assert {p: p.read_bytes() for p in before} == before
    assert second.ui.text().count("already released") == 3


def test_test_results_travel_through_fanout_in_the_artifact_state(tmp_path: Path) -> None:
    """cpi-test's results reach release only in the artifact's state, which fanout carries forward: the same bytes
    published by a chain without them (same run, same build) are refused."""
    ctx = make_ctx(tmp_path)
    image = make_image(tmp_path)
    tested = {"tests": PASSED, "tested_sha256": sha256_of(image), "tested_file": str(image), "format": "qcow2"}
    published = publish(ctx, image, local_sites(tmp_path), state=tested)
    assert published.state["tests"] == PASSED and published.state["tested_sha256"] == sha256_of(image)
    assert published.state["format"] == "qcow2" and published.state["sha256"] == sha256_of(image)
    out = release(ctx, published)
    assert out.state["released"] is True and out.state["tests"] == PASSED
    assert out.state["regions"] == published.state["regions"]
    untested = publish(ctx, image, local_sites(tmp_path / "other"))
    assert "tests" not in untested.state
    with pytest.raises(ReleaseError, match="refusing to release an untested image"):
        release(ctx, untested)
    assert markers([tmp_path / "other" / "site-a", tmp_path / "other" / "site-b"]) == []


def test_a_fanout_of_another_file_than_the_tested_one_is_refused(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    image = make_image(tmp_path)
    other = image.with_name("other.qcow2")
    other.write_bytes(b"QFI\xfb" + os.urandom(1024 * 1024))
    tested = {"tests": PASSED, "tested_sha256": sha256_of(image), "tested_file": str(image)}
    published = publish(ctx, [image, other], local_sites(tmp_path), state=tested, source="other.qcow2")
    with pytest.raises(ReleaseError, match=f"sha256 {sha256_of(other)}.*is not the image that was tested"):
        release(ctx, published)
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


@pytest.mark.parametrize("failpoint", ["after:mark_released:site-a", "after:mark_released:site-b",
                                       "after:write_release_manifest"])
def test_the_release_steps_are_undone_by_the_step_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         failpoint: str) -> None:
    """Every step's cleanup runs in reverse when a failpoint fires after it: markers removed, the marker and the
    manifest a release replaced restored."""
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    old_marker = tmp_path / "site-b" / f"disk-1.0.qcow2{MARKER_SUFFIX}"
    old_marker.write_text('{"released": true, "sha256": "old"}\n')
    manifest = tmp_path / "release.json"
    manifest.write_text("{}\n")
    monkeypatch.setenv(FAILPOINTS_ENV, failpoint)
    with pytest.raises(FailpointError):
        release(ctx, with_tests(published), release_manifest=str(manifest))
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == [old_marker]
    assert old_marker.read_text() == '{"released": true, "sha256": "old"}\n'
    assert manifest.read_text() == "{}\n"
    monkeypatch.delenv(FAILPOINTS_ENV)
    release(ctx, with_tests(published), release_manifest=str(manifest))
    assert json.loads(manifest.read_text())["destinations"][1]["name"] == "site-b"
    assert json.loads(old_marker.read_text())["released"] is True


def test_a_failure_midway_removes_the_markers_already_written(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path, 3))
    (tmp_path / "site-c" / "disk-1.0.qcow2").unlink()  # the last destination (in name order) lost its copy
    manifest = tmp_path / "release.json"
    with pytest.raises(ReleaseError) as info:
        release(ctx, with_tests(published), release_manifest=str(manifest))
    assert "destination 'site-c'" in str(info.value) and "does not exist" in str(info.value)
    assert "removed the release markers already written" in str(info.value)
    assert markers([tmp_path / f"site-{c}" for c in "abc"]) == []
    assert not manifest.exists()
    assert sorted(p.name for p in (tmp_path / "site-a").iterdir()) == ["disk-1.0.qcow2"]


def test_a_failed_manifest_write_removes_the_markers(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ReleaseError, match="cannot write the release manifest"):
        release(ctx, with_tests(published), release_manifest=str(blocker / "release.json"))
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


def test_an_existing_marker_of_another_image_is_restored_on_failure(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path, 2))
    old = tmp_path / "site-a" / f"disk-1.0.qcow2{MARKER_SUFFIX}"
    old.write_text('{"released": true, "sha256": "old"}\n')
    (tmp_path / "site-b" / "disk-1.0.qcow2").unlink()
    with pytest.raises(ReleaseError, match="site-b"):
        release(ctx, with_tests(published))
    assert old.read_text() == '{"released": true, "sha256": "old"}\n'


def test_cancelled_before_release_writes_nothing(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), local_sites(tmp_path))
    ctx.cancel.set()
    with pytest.raises(Cancelled):
        release(ctx, with_tests(published))
    assert markers([tmp_path / "site-a", tmp_path / "site-b"]) == []


# -- HTTP image repository and S3 ---------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "repo"
    with serve_in_thread(root) as server:
        yield server.url, root


def test_http_repository_gets_a_marker_object(tmp_path: Path, repo: tuple[str, Path]) -> None:
    import urllib.request

    url, root = repo
    ctx = make_ctx(tmp_path)
    image = make_image(tmp_path)
    published = publish(ctx, image, [{"type": "http", "name": "dc-1", "url": url}, *local_sites(tmp_path, 1)])
    out = release(ctx, with_tests(published))
    marker_url = f"{url}images/disk-1.0.qcow2{MARKER_SUFFIX}"
    assert out.state["release"]["markers"]["dc-1"] == marker_url
    with urllib.request.urlopen(marker_url, timeout=10) as response:  # noqa: S310 - loopback test server
        document = json.loads(response.read())
    assert document["sha256"] == sha256_of(image) and document["destination"] == "dc-1"
    assert (root / f"disk-1.0.qcow2{MARKER_SUFFIX}").is_file()


def test_http_marker_is_removed_when_a_later_destination_fails(tmp_path: Path, repo: tuple[str, Path]) -> None:
    url, root = repo
    ctx = make_ctx(tmp_path)
    published = publish(ctx, make_image(tmp_path), [{"type": "http", "name": "a-dc", "url": url},
                                                    {"type": "local", "name": "b-site", "path": str(tmp_path / "b")}])
    (tmp_path / "b" / "disk-1.0.qcow2").unlink()
    with pytest.raises(ReleaseError, match="destination 'b-site'"):
        release(ctx, with_tests(published))
    assert not (root / f"disk-1.0.qcow2{MARKER_SUFFIX}").exists()
    assert (root / "disk-1.0.qcow2").is_file()


def test_s3_copy_gets_a_tag_and_a_marker_object_all_or_nothing(tmp_path: Path, moto_endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"img-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    s3 = {"type": "s3", "name": "us-east-1", "bucket": bucket, "endpoint_url": moto_endpoint,
          "region": "us-east-1", "prefix": "stemcells/"}
    ctx = make_ctx(tmp_path)
    image = make_image(tmp_path)
    published = publish(ctx, image, [s3, {"type": "local", "name": "z-site", "path": str(tmp_path / "z")}])
    key = "stemcells/disk-1.0.qcow2"
    client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": "team", "Value": "os"}]})

    # the local copy (released after S3 in name order) is gone: the S3 tag and marker are undone again
    lost = tmp_path / "z" / "disk-1.0.qcow2"
    kept = lost.read_bytes()
    lost.unlink()
    with pytest.raises(ReleaseError, match="destination 'z-site'"):
        release(ctx, with_tests(published), destinations=[s3])
    tags = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert tags == [{"Key": "team", "Value": "os"}]
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert names == [key]

    lost.write_bytes(kept)
    out = release(ctx, with_tests(published), destinations=[s3])
    assert out.state["released"] is True
    tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags == {"team": "os", RELEASE_TAG_KEY: "released"}
    document = json.loads(client.get_object(Bucket=bucket, Key=key + MARKER_SUFFIX)["Body"].read())
    assert document["sha256"] == sha256_of(image) and document["id"] == f"s3://{bucket}/{key}"
    # idempotent, and a configured destination that does not match what was published is refused
    release(ctx, with_tests(published), destinations=[s3])
    moved = {**s3, "prefix": "elsewhere/"}
    with pytest.raises(ReleaseError, match="configured as"):
        release(ctx, with_tests(published), destinations=[moved])
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
