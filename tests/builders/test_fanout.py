"""Region fan-out end to end: real files, real image repositories on 127.0.0.1, a real moto S3 server on 127.0.0.1.

Every test lists every destination afterwards (directory listings, the repository's own listing and directory, S3
objects and multipart uploads) so that "nothing left anywhere" is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from builders.core import Artifact, BuildContext, BuildError, ConfigError
from builders.destinations import load_destination
from builders.image_repo import ImageRepoHandler, ImageRepoServer, serve_in_thread
from builders.image_store import INCOMING, RepoError
from builders.postprocessors.fanout import (
    FanoutError,
    FanoutPostProcessor,
    load_destinations,
    multi_region_id,
    verify_destinations,
)
from builders.postprocessors.manifest import ManifestPostProcessor
from stemforge_base.steps import Cancelled
from tests.harness.builds import make_ctx

MIB = 1024 * 1024


# -- fixtures -------------------------------------------------------------------------------------------------


def make_image(path: Path, size: int, *, seed: int = 1) -> Path:
    """A 'random-ish' image: incompressible blocks with a zero run in the middle (a hole locally)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            n = min(MIB, size - written)
            if size // 3 <= written < size // 3 + 2 * MIB:
                fh.seek(n, os.SEEK_CUR)
            else:
                fh.write(bytes((b + written // MIB) % 256 for b in block[:64]) * (n // 64) + block[: n % 64])
            written += n
        fh.truncate(size)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(moto_endpoint: str) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=name)
    yield name
    for obj in client.list_objects_v2(Bucket=name).get("Contents", []):
        client.delete_object(Bucket=name, Key=obj["Key"])
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []) or []:
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


class FailingPut(ImageRepoHandler):
    """A repository whose disk 'fails' after ``server.fail_after`` bytes of a PUT body, ``server.failures``
    times (then it behaves)."""

    def on_body_progress(self, received: int) -> None:
        server: Any = self.server
        if received >= server.fail_after and server.failures > 0:
            server.failures -= 1
            raise OSError(5, "Input/output error (injected)")


class FailingMove(ImageRepoHandler):
    """A repository whose commit (MOVE) fails with 500."""

    def do_MOVE(self) -> None:  # noqa: N802
        def refuse() -> None:
            raise RepoError(500, "injected: metadata store unavailable")  # type: ignore[arg-type]

        self._dispatch(refuse)


def repo_contents(server: ImageRepoServer) -> list[str]:
    """Everything in the repository's directory, including half-done uploads."""
    root = server.store.root
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    names += sorted(f"{INCOMING}/{p.name}" for p in (root / INCOMING).iterdir())
    return names


def s3_contents(endpoint: str, bucket_name: str) -> list[str]:
    client = s3_client(endpoint)
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket_name).get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket_name).get("Uploads", []) or []
    return sorted(keys) + [f"multipart:{u['Key']}" for u in uploads]


class Sites:
    """A mixed set of destinations: local directories, image repositories (optionally faulty), one S3 bucket."""

    def __init__(self, stack: ExitStack, tmp_path: Path, endpoint: str | None, bucket_name: str | None, *,
                 local: int = 3, http: int = 2, faulty: dict[str, type[ImageRepoHandler]] | None = None) -> None:
        self.tmp_path = tmp_path
        self.endpoint = endpoint
        self.bucket = bucket_name
        self.local_dirs = [tmp_path / f"site-{i}" / "images" for i in range(local)]
        self.repos: dict[str, ImageRepoServer] = {}
        faulty = faulty or {}
        for i in range(http):
            name = f"repo-{i}"
            handler = faulty.get(name, ImageRepoHandler)
            self.repos[name] = stack.enter_context(serve_in_thread(tmp_path / f"repo-{i}", handler=handler))

    def configs(self) -> list[dict[str, Any]]:
        configs: list[dict[str, Any]] = [{"type": "local", "name": f"site-{i}", "path": str(d)}
                                         for i, d in enumerate(self.local_dirs)]
        configs += [{"type": "http", "name": name, "url": server.url, "timeout": 20}
                    for name, server in self.repos.items()]
        if self.endpoint and self.bucket:
            configs.append({"type": "s3", "name": "us-east-1", "bucket": self.bucket, "region": "us-east-1",
                            "endpoint_url": self.endpoint, "prefix": "stemcells/", "part_size_mb": 5})
        return configs

    def leftovers(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for i, directory in enumerate(self.local_dirs):
            found[f"site-{i}"] = sorted(os.listdir(directory)) if directory.exists() else []
        for name, server in self.repos.items():
            found[name] = repo_contents(server)
        if self.endpoint and self.bucket:
            found["us-east-1"] = s3_contents(self.endpoint, self.bucket)
        return found

    def assert_empty(self) -> None:
        leftovers = self.leftovers()
        assert all(not names for names in leftovers.values()), leftovers
        # a directory the fan-out created for a site is removed again
        assert not any(d.exists() for d in self.local_dirs), [d for d in self.local_dirs if d.exists()]


def fanout(ctx: BuildContext, configs: list[dict[str, Any]], **options: Any) -> FanoutPostProcessor:
    pp = FanoutPostProcessor({"destinations": configs, "retry_initial_delay": 0.05, "retry_max_delay": 0.2,
                              **options}, ctx)
    pp.prepare()
    return pp


def artifact_for(image: Path) -> Artifact:
    return Artifact("stemforge.file", "img", "file", [image], str(image), {"format": "qcow2"})


# -- success --------------------------------------------------------------------------------------------------


def test_fanout_to_six_destinations_identical_everywhere_and_manifest_lists_all(
        tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    image = make_image(tmp_path / "build.qcow2", 24 * MIB + 12345)
    expected = sha256_of(image)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, moto_endpoint, bucket)
        ctx = make_ctx(tmp_path)
        out, keep = fanout(ctx, sites.configs(), image_name="{{.BuildName}}-1.0.qcow2").post_process(
            artifact_for(image))
        assert keep is False
        assert out.files == []
        assert out.state["sha256"] == expected
        regions = out.state["regions"]
        assert sorted(regions) == ["repo-0", "repo-1", "site-0", "site-1", "site-2", "us-east-1"]
        assert regions["site-0"] == str(sites.local_dirs[0] / "img-1.0.qcow2")
        assert regions["repo-0"] == f"{sites.repos['repo-0'].url}images/img-1.0.qcow2"
        assert regions["us-east-1"] == f"s3://{bucket}/stemcells/img-1.0.qcow2"
        assert out.artifact_id == ",".join(sorted(f"{k}:{v}" for k, v in regions.items()))

        # every copy, read back independently of the fan-out code, has the source's sha256
        for directory in sites.local_dirs:
            assert os.listdir(directory) == ["img-1.0.qcow2"]
            assert sha256_of(directory / "img-1.0.qcow2") == expected
        for server in sites.repos.values():
            assert repo_contents(server) == ["img-1.0.qcow2"]
            assert sha256_of(server.store.root / "img-1.0.qcow2") == expected
        body = s3_client(moto_endpoint).get_object(Bucket=bucket, Key="stemcells/img-1.0.qcow2")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == expected
        assert s3_contents(moto_endpoint, bucket) == ["stemcells/img-1.0.qcow2"]
        # the hole in the middle of the image stayed a hole in the local copies
        assert out.state["bytes_copied"] < 6 * image.stat().st_size

        # proof of consistency, re-run later
        report = verify_destinations(load_destinations(sites.configs()), "img-1.0.qcow2", expected)
        assert report.consistent, report.to_dict()
        assert {c.sha256 for c in report.checks} == {expected}

        # the manifest records the multi-region id
        manifest = tmp_path / "packer-manifest.json"
        ManifestPostProcessor({"output": str(manifest)}, ctx).post_process(out)
        data = json.loads(manifest.read_text())
        assert data["builds"][0]["artifact_id"] == multi_region_id(regions)
        for name, ident in regions.items():
            assert f"{name}:{ident}" in data["builds"][0]["artifact_id"]
        assert data["builds"][0]["files"] is None
        assert "DESTINATION" in ctx.ui.text() and "published" in ctx.ui.text()


# -- faults ---------------------------------------------------------------------------------------------------


def test_upload_fault_at_one_site_rolls_back_every_copy_everywhere(
        tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    image = make_image(tmp_path / "build.qcow2", 16 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, moto_endpoint, bucket, faulty={"repo-1": FailingPut})
        bad: Any = sites.repos["repo-1"]
        bad.fail_after, bad.failures = 6 * MIB, 100
        ctx = make_ctx(tmp_path)
        with pytest.raises(FanoutError) as caught:
            fanout(ctx, sites.configs(), max_attempts=2).post_process(artifact_for(image))
        message = str(caught.value)
        assert "destination 'repo-1'" in message
        assert sites.repos["repo-1"].url in message
        assert "upload" in message
        sites.assert_empty()
        statuses = {r.name: r.status for r in caught.value.reports}
        assert statuses["repo-1"] == "failed"
        assert "LEAKED" not in statuses.values()
        assert next(r for r in caught.value.reports if r.name == "repo-1").attempts == 2


def test_commit_fault_rolls_back_copies_already_published(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    image = make_image(tmp_path / "build.qcow2", 8 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, moto_endpoint, bucket, faulty={"repo-0": FailingMove})
        ctx = make_ctx(tmp_path)
        with pytest.raises(FanoutError) as caught:
            fanout(ctx, sites.configs()).post_process(artifact_for(image))
        assert "destination 'repo-0'" in str(caught.value)
        assert "metadata store unavailable" in str(caught.value)
        sites.assert_empty()
        statuses = {r.name: r.status for r in caught.value.reports}
        # the others had been staged or already committed; every one was undone
        assert set(statuses.values()) <= {"failed", "discarded", "rolled back"}, statuses


def test_unusable_local_path_fails_before_anything_is_copied(tmp_path: Path) -> None:
    image = make_image(tmp_path / "build.qcow2", 4 * MIB)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=4, http=1)
        configs = sites.configs()
        configs.append({"type": "local", "name": "site-broken", "path": str(blocker / "images")})
        ctx = make_ctx(tmp_path)
        with pytest.raises(FanoutError, match=r"destination 'site-broken' .*not a directory"):
            fanout(ctx, configs).post_process(artifact_for(image))
        sites.assert_empty()


def test_transient_fault_is_retried_and_succeeds(tmp_path: Path) -> None:
    image = make_image(tmp_path / "build.qcow2", 8 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=2, http=2, faulty={"repo-0": FailingPut})
        flaky: Any = sites.repos["repo-0"]
        flaky.fail_after, flaky.failures = 2 * MIB, 1
        ctx = make_ctx(tmp_path)
        out, _keep = fanout(ctx, sites.configs(), max_attempts=3).post_process(artifact_for(image))
        reports = {r["name"]: r for r in out.state["destinations"]}
        assert reports["repo-0"]["attempts"] == 2
        assert reports["repo-1"]["attempts"] == 1
        assert "repo-0: upload attempt 1 of 3 failed" in ctx.ui.text()
        assert repo_contents(sites.repos["repo-0"]) == ["build.qcow2"]
        assert sha256_of(sites.repos["repo-0"].store.root / "build.qcow2") == sha256_of(image)


def test_cancel_mid_copy_of_a_large_sparse_image_leaves_nothing(
        tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    image = tmp_path / "big.raw"
    with open(image, "wb") as fh:
        fh.write(os.urandom(MIB))
        fh.truncate(3 * 1024 * MIB)
        fh.seek(-MIB, os.SEEK_END)
        fh.write(os.urandom(MIB))
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, moto_endpoint, bucket, local=2, http=2)
        ctx = make_ctx(tmp_path)
        ui: Any = ctx.ui
        seen: dict[str, int] = {}

        def on_progress(label: str, done: int, _total: int | None) -> None:
            seen[label] = done
            if label.startswith("repo-0 upload") and done >= 64 * MIB and not ctx.cancel.is_set():
                # cancel from another thread, as the runner's signal handler would
                threading.Thread(target=ctx.cancel.set).start()

        ui.on_progress = on_progress
        started = time.monotonic()
        with pytest.raises(Cancelled, match="fanout cancelled"):
            fanout(ctx, sites.configs()).post_process(artifact_for(image))
        assert time.monotonic() - started < 60
        assert any(label.startswith("repo-0 upload") for label in seen)
        sites.assert_empty()


def test_keyboard_interrupt_mid_copy_leaves_nothing(tmp_path: Path) -> None:
    image = tmp_path / "big.raw"
    with open(image, "wb") as fh:
        fh.write(os.urandom(MIB))
        fh.truncate(2 * 1024 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=2, http=2)
        ctx = make_ctx(tmp_path)
        ui: Any = ctx.ui
        main = threading.get_ident()
        fired = threading.Event()

        def on_progress(label: str, done: int, _total: int | None) -> None:
            if label.startswith("repo-1 upload") and done >= 32 * MIB and not fired.is_set():
                fired.set()
                signal.pthread_kill(main, signal.SIGINT)

        ui.on_progress = on_progress
        with pytest.raises(KeyboardInterrupt):
            fanout(ctx, sites.configs()).post_process(artifact_for(image))
        assert fired.is_set()
        sites.assert_empty()


def test_on_error_abort_leaves_copies_in_place_and_says_where(tmp_path: Path) -> None:
    image = make_image(tmp_path / "build.qcow2", 4 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=2, http=1, faulty={"repo-0": FailingMove})
        ctx = make_ctx(tmp_path, on_error="abort")
        with pytest.raises(FanoutError, match="in place") as caught:
            fanout(ctx, sites.configs()).post_process(artifact_for(image))
        assert "-on-error=abort" in str(caught.value)
        leftovers = sites.leftovers()
        assert any(leftovers[f"site-{i}"] for i in range(2)), leftovers


def test_force_replaces_and_a_failed_replacement_restores_the_old_image(tmp_path: Path) -> None:
    first = make_image(tmp_path / "v1.qcow2", 3 * MIB, seed=1)
    second = make_image(tmp_path / "v2.qcow2", 3 * MIB, seed=2)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=2, http=1)
        configs = sites.configs()
        fanout(make_ctx(tmp_path), configs, image_name="stable.qcow2").post_process(artifact_for(first))
        # without -force the name is taken: refused before copying
        with pytest.raises(FanoutError, match="already exists"):
            fanout(make_ctx(tmp_path), configs, image_name="stable.qcow2").post_process(artifact_for(second))
        # -force, but one extra site fails: every site keeps v1
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        broken = [*configs, {"type": "http", "name": "dead", "url": "http://127.0.0.1:9/", "timeout": 2}]
        with pytest.raises(FanoutError, match="destination 'dead'"):
            fanout(make_ctx(tmp_path, force=True), broken, image_name="stable.qcow2",
                   max_attempts=1).post_process(artifact_for(second))
        report = verify_destinations(load_destinations(configs), "stable.qcow2", sha256_of(first))
        assert report.consistent, report.to_dict()
        # -force and all healthy: every site now has v2 and no backup is left
        fanout(make_ctx(tmp_path, force=True), configs, image_name="stable.qcow2").post_process(
            artifact_for(second))
        report = verify_destinations(load_destinations(configs), "stable.qcow2", sha256_of(second))
        assert report.consistent, report.to_dict()
        assert all(names == ["stable.qcow2"] for names in sites.leftovers().values()), sites.leftovers()


def test_verify_only_detects_a_tampered_copy_and_names_it(tmp_path: Path) -> None:
    image = make_image(tmp_path / "build.qcow2", 4 * MIB)
    with ExitStack() as stack:
        sites = Sites(stack, tmp_path, None, None, local=3, http=1)
        out, _ = fanout(make_ctx(tmp_path), sites.configs()).post_process(artifact_for(image))
        ok, keep = fanout(make_ctx(tmp_path), sites.configs(), verify_only=True,
                          image_name="build.qcow2").post_process(out)
        assert keep is True and ok.artifact_id == out.artifact_id
        with open(sites.local_dirs[1] / "build.qcow2", "r+b") as fh:
            fh.seek(MIB)
            fh.write(b"\x00tampered")
        report_path = tmp_path / "proof.json"
        with pytest.raises(BuildError, match=r"not consistent: site-1 \(sha256 differs\)"):
            fanout(make_ctx(tmp_path), sites.configs(), verify_only=True, image_name="build.qcow2",
                   report=str(report_path)).post_process(out)
        proof = json.loads(report_path.read_text())
        assert proof["consistent"] is False
        assert [c["destination"] for c in proof["copies"] if not c["ok"]] == ["site-1"]


# -- configuration --------------------------------------------------------------------------------------------


def test_config_errors_name_the_destination_and_key(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    bad = FanoutPostProcessor({"destinations": [
        {"type": "local", "name": "a", "pth": "/x"},
        {"type": "local", "name": "a", "path": "/y"},
        {"type": "ftp", "name": "b"},
        {"type": "s3", "name": "c"},
    ]}, ctx)
    with pytest.raises(ConfigError) as caught:
        bad.prepare()
    text = str(caught.value)
    assert "destinations[0] (a): unknown configuration key: 'pth'" in text
    assert "destinations[1]: name 'a' is used twice" in text
    assert "destinations[2]: unknown destination type 'ftp'" in text
    assert "destinations[3] (c): 'bucket' is required" in text
    with pytest.raises(ConfigError, match="unknown configuration key: 'destination'"):
        FanoutPostProcessor({"destinations": [{"type": "local", "name": "a", "path": "/x"}], "destination": 1},
                            ctx).prepare()
    with pytest.raises(ConfigError, match="image_name"):
        fanout(ctx, [{"type": "local", "name": "a", "path": str(tmp_path / "a")}],
               image_name="../escape").post_process(artifact_for(make_image(tmp_path / "i.raw", MIB)))


def test_s3_credentials_never_reach_the_ui(tmp_path: Path, moto_endpoint: str, bucket: str) -> None:
    image = make_image(tmp_path / "build.qcow2", 2 * MIB)
    ctx = make_ctx(tmp_path)
    destination = {"type": "s3", "name": "eu", "bucket": bucket, "endpoint_url": moto_endpoint, "region": "us-east-1"}
    fanout(ctx, [destination]).post_process(artifact_for(image))
    ui: Any = ctx.ui
    assert "testing-secret" not in ui.text()
    assert load_destination(destination, 0).describe().count("testing") == 0
