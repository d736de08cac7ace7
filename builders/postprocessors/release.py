"""``release``: promote an image that was tested on every hardware plan (``cpi-test``) and published (``fanout``).

Template usage -- the end of the chain ``[cpi-test, fanout, release]``::

    {"type": "release", "release_manifest": "releases/{{.BuildName}}.json", "require_targets": ["small", "large"]}

The post-processor refuses (BuildError, nothing written) unless:

* the image was tested: ``state["tests"]`` of its input artifact, which ``cpi-test`` earlier in the same chain put
  there and ``fanout`` carried forward (a chain without ``cpi-test`` has none, whatever another chain tested):
  ``refusing to release an untested image``;
* every tested target passed (the failing ones are named), and every ``require_targets`` entry was tested;
* the published bytes are the tested bytes (the fan-out's ``sha256`` equals the tested file's);
* it was published: ``state["regions"]`` maps each destination to the copy's id.

Then, for every destination, it checks the copy is there (size, and the sha256 the destination reports) and marks
it released:

* local directory: ``<image>.release.json`` beside the image, written atomically;
* HTTP image repository (``stemforge image-repo serve``): the repository has no metadata or tag endpoint, so the
  marker is a second object ``<image>.release.json`` stored with PUT (its sha256 checked by the repository);
* S3: the object tag ``stemforge-release=released`` on the image (other tags kept) plus the same JSON object
  ``<key>.release.json``.

The marker JSON holds the image name, id, sha256 and size, the build name and type, the run uuid, the tested
targets and the release time. A release is all or nothing: it runs as steps (``mark_released:<destination>`` per
copy, then ``write_release_manifest``) on ``stemforge_base.steps.StepRunner``, and when a destination fails, the run is
cancelled or a failpoint fires midway, the runner calls every step's cleanup in reverse: every marker already written
is removed again (a marker or manifest it replaced is restored). It is idempotent: a
copy already carrying a release marker for the same sha256 is left as it is (its first release time stays).
``release_manifest`` (optional) writes one JSON file listing every destination, id and marker.

How destinations are reached: through ``destinations`` (the same list the fan-out used, needed for S3 endpoints
and profiles) when it names the region, otherwise from the copy's id (a local path, an ``http(s)://`` URL, or
``s3://bucket/key`` with the default AWS configuration).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from builders.core import Artifact, BuildError, ConfigError, PostProcessor
from builders.destinations import Destination
from builders.postprocessors import render_output, validated_options
from builders.registry import closed_object
from stemforge_base.steps import Step, StepRunner

LOG: Final = logging.getLogger("stemforge.build.release")
BUILDER_ID: Final = "stemforge.post-processor.release"
MARKER_SUFFIX: Final = ".release.json"
RELEASE_TAG_KEY: Final = "stemforge-release"
RELEASE_TAG_VALUE: Final = "released"
MARKER_FORMAT: Final = 1
_HTTP_TIMEOUT: Final = 60.0


class ReleaseError(BuildError):
    """A release could not be completed (every marker written so far was removed again)."""


class ReleasedArtifact(Artifact):
    """The released image: no local files; the id is the fan-out's multi-region id."""

    def describe(self) -> str:
        regions = self.state.get("regions") or {}
        listing = "\n".join(f"  {name}: {ident}" for name, ident in sorted(regions.items()))
        return f"{self.build_name}: released {self.state.get('image_name', '')} at {len(regions)} destination(s)\n" \
               + listing


# -- markers ------------------------------------------------------------------------------------------------------


class ReleaseMarker(ABC):
    """Marks one published copy as released. ``verify`` checks the copy, ``existing`` reads the current marker,
    ``write`` writes ours (remembering what it replaced) and ``undo`` puts things back as they were."""

    kind: ClassVar[str] = ""

    def __init__(self, region: str, image_id: str) -> None:
        self.region = region
        self.image_id = image_id
        self.written = False

    @property
    @abstractmethod
    def marker_id(self) -> str:
        """Where the marker lives (a path, a URL, ``s3://bucket/key``)."""

    @abstractmethod
    def verify(self, size: int | None, sha256: str) -> None:
        """Raise ReleaseError when the published copy is missing or is not the image being released."""

    @abstractmethod
    def existing(self) -> dict[str, Any] | None:
        """The marker document currently stored (None when there is none or it is not JSON)."""

    @abstractmethod
    def write(self, document: Mapping[str, Any]) -> None:
        """Store ``document`` as the marker (and whatever else marks the copy released)."""

    @abstractmethod
    def undo(self) -> None:
        """Remove what ``write`` stored and restore what it replaced. Idempotent."""

    def ensure_extras(self) -> None:  # noqa: B027 - optional hook; only S3 has extras
        """For an already-released copy: re-apply anything besides the marker that must be there (S3 tag)."""


def _encode(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


class LocalMarker(ReleaseMarker):
    kind = "local"

    def __init__(self, region: str, image_id: str) -> None:
        super().__init__(region, image_id)
        self.image = Path(image_id)
        self.path = self.image.with_name(self.image.name + MARKER_SUFFIX)
        self._previous: bytes | None = None

    @property
    def marker_id(self) -> str:
        return str(self.path)

    def verify(self, size: int | None, sha256: str) -> None:
        if not self.image.is_file():
            raise ReleaseError(f"{self.image} does not exist")
        actual = self.image.stat().st_size
        if size is not None and actual != size:
            raise ReleaseError(f"{self.image} has {actual} bytes, the published image has {size}")

    def existing(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, document: Mapping[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._previous = self.path.read_bytes()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(_encode(document))
                fh.flush()
                os.fsync(fh.fileno())
            self.written = True
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise ReleaseError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def undo(self) -> None:
        if not self.written:
            return
        if self._previous is None:
            self.path.unlink(missing_ok=True)
        else:
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(self._previous)
            os.replace(tmp, self.path)
        self.written = False


class HttpMarker(ReleaseMarker):
    """A second object ``<image>.release.json`` in the image repository (it has no metadata endpoint)."""

    kind = "http"

    def __init__(self, region: str, image_id: str, timeout: float = _HTTP_TIMEOUT) -> None:
        super().__init__(region, image_id)
        parts = urlsplit(image_id)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ReleaseError(f"{region}: {image_id!r} is not an image repository URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._image_path = parts.path
        self._marker_path = parts.path + MARKER_SUFFIX
        self.timeout = timeout
        self._previous: bytes | None = None

    @property
    def marker_id(self) -> str:
        return self.image_id + MARKER_SUFFIX

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            data = response.read(1 << 20)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except (OSError, http.client.HTTPException) as exc:
            raise ReleaseError(f"{method} {self._host}{path}: {exc}") from exc
        finally:
            conn.close()

    def verify(self, size: int | None, sha256: str) -> None:
        status, headers, _body = self._request("HEAD", self._image_path)
        if status == 404:
            raise ReleaseError(f"{self.image_id} does not exist")
        if status != 200:
            raise ReleaseError(f"HEAD {self.image_id}: HTTP {status}")
        reported = headers.get("x-checksum-sha256")
        if reported and reported != sha256:
            raise ReleaseError(f"{self.image_id}: the repository reports sha256 {reported}, the released image "
                               f"has {sha256}")
        length = headers.get("content-length")
        if size is not None and length is not None and int(length) != size:
            raise ReleaseError(f"{self.image_id} has {length} bytes, the published image has {size}")

    def existing(self) -> dict[str, Any] | None:
        status, _headers, body = self._request("GET", self._marker_path)
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _put(self, body: bytes) -> None:
        status, _headers, answer = self._request(
            "PUT", self._marker_path, body,
            {"Content-Type": "application/json", "Content-Length": str(len(body)),
             "X-Checksum-Sha256": hashlib.sha256(body).hexdigest()})
        if status not in (200, 201):
            raise ReleaseError(f"PUT {self.marker_id}: HTTP {status}: {answer[:200].decode(errors='replace')}")

    def write(self, document: Mapping[str, Any]) -> None:
        status, _headers, body = self._request("GET", self._marker_path)
        self._previous = body if status == 200 else None
        self.written = True
        self._put(_encode(document))

    def undo(self) -> None:
        if not self.written:
            return
        if self._previous is None:
            status, _headers, body = self._request("DELETE", self._marker_path)
            if status not in (200, 204, 404):
                raise ReleaseError(f"DELETE {self.marker_id}: HTTP {status}")
        else:
            self._put(self._previous)
        self.written = False


class S3Marker(ReleaseMarker):
    """The object tag ``stemforge-release=released`` on the image plus the JSON object ``<key>.release.json``."""

    kind = "s3"

    def __init__(self, region: str, image_id: str, destination: Destination | None = None) -> None:
        super().__init__(region, image_id)
        parts = urlsplit(image_id)
        if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
            raise ReleaseError(f"{region}: {image_id!r} is not an s3://bucket/key id")
        self.bucket = parts.netloc
        self.key = parts.path.lstrip("/")
        self.marker_key = self.key + MARKER_SUFFIX
        if destination is None:
            from builders.destinations.s3 import S3Destination

            destination = S3Destination(region, {"bucket": self.bucket})
        self.destination = destination
        self._previous_marker: bytes | None = None
        self._previous_tags: list[dict[str, str]] | None = None
        self._tagged = False
        self._marker_written = False

    @property
    def client(self) -> Any:
        return getattr(self.destination, "client")  # noqa: B009 - S3Destination.client, typed loosely

    @property
    def marker_id(self) -> str:
        return f"s3://{self.bucket}/{self.marker_key}"

    def _fail(self, what: str, exc: BaseException) -> ReleaseError:
        from builders.destinations.s3 import _describe

        return ReleaseError(f"{what}: {_describe(exc)}")

    def verify(self, size: int | None, sha256: str) -> None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001 - botocore errors, classified by _describe
            raise self._fail(f"cannot find {self.image_id}", exc) from exc
        length = head.get("ContentLength")
        if size is not None and length is not None and int(length) != size:
            raise ReleaseError(f"{self.image_id} has {length} bytes, the published image has {size}")
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if metadata.get("sha256") not in (None, sha256):
            raise ReleaseError(f"{self.image_id}: its sha256 metadata {metadata.get('sha256')} differs from the "
                               f"released image's {sha256}")

    def _get_marker(self) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.marker_key)["Body"]
        except Exception as exc:  # noqa: BLE001
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail(f"cannot read {self.marker_id}", exc) from exc
        try:
            data: bytes = body.read(1 << 20)
        finally:
            body.close()
        return data

    def existing(self) -> dict[str, Any] | None:
        raw = self._get_marker()
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _tags(self) -> list[dict[str, str]]:
        try:
            answer = self.client.get_object_tagging(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot read the tags of {self.image_id}", exc) from exc
        return [{"Key": str(t["Key"]), "Value": str(t["Value"])} for t in answer.get("TagSet", [])]

    def _put_tags(self, tags: list[dict[str, str]]) -> None:
        try:
            self.client.put_object_tagging(Bucket=self.bucket, Key=self.key, Tagging={"TagSet": tags})
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot tag {self.image_id}", exc) from exc

    def ensure_extras(self) -> None:
        tags = self._tags()
        if {"Key": RELEASE_TAG_KEY, "Value": RELEASE_TAG_VALUE} in tags:
            return
        self._previous_tags = tags
        self._tagged = True
        self.written = True
        self._put_tags([t for t in tags if t["Key"] != RELEASE_TAG_KEY]
                       + [{"Key": RELEASE_TAG_KEY, "Value": RELEASE_TAG_VALUE}])

    def write(self, document: Mapping[str, Any]) -> None:
        self._previous_marker = self._get_marker()
        body = _encode(document)
        self.written = True
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.marker_key, Body=body,
                                   ContentType="application/json")
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot write {self.marker_id}", exc) from exc
        self._marker_written = True
        self.ensure_extras()

    def undo(self) -> None:
        if not self.written:
            return
        try:
            if self._tagged and self._previous_tags is not None:
                self._put_tags(self._previous_tags)
            if self._marker_written:
                if self._previous_marker is None:
                    self.client.delete_object(Bucket=self.bucket, Key=self.marker_key)
                else:
                    self.client.put_object(Bucket=self.bucket, Key=self.marker_key, Body=self._previous_marker,
                                           ContentType="application/json")
        except ReleaseError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(f"cannot undo the release marker {self.marker_id}", exc) from exc
        self.written = False


def marker_for(region: str, image_id: str, destination: Destination | None) -> ReleaseMarker:
    """The marker kind for a published copy: from its destination's type when configured, else from the id."""
    kind = destination.type_name if destination is not None else (
        "s3" if image_id.startswith("s3://") else "http" if image_id.startswith(("http://", "https://"))
        else "local" if image_id.startswith("/") else "")
    if kind == "local":
        return LocalMarker(region, image_id)
    if kind == "http":
        timeout = float(destination.config.get("timeout", _HTTP_TIMEOUT)) if destination is not None \
            else _HTTP_TIMEOUT
        return HttpMarker(region, image_id, timeout)
    if kind == "s3":
        return S3Marker(region, image_id, destination)
    raise ReleaseError(f"{region}: cannot mark {image_id!r} as released: unknown destination type "
                       f"{kind or 'for this id'} (list the destination under 'destinations')")


# -- the post-processor -------------------------------------------------------------------------------------------


class ReleasePostProcessor(PostProcessor):
    """Mark every published copy of a fully tested image as released, all or nothing."""

    type_name: ClassVar[str] = "release"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "destinations": {"type": "array", "items": {"type": "object"}},
            "release_manifest": {"type": "string", "minLength": 1},
            "require_targets": {"type": "array", "items": {"type": "string", "minLength": 1}},
        })

    def prepare(self) -> list[str]:
        from builders.postprocessors.fanout import load_destinations

        self.options = validated_options(self)
        where = f"{self.ctx.build_name}: post-processor {self.type_name}"
        try:
            self.destinations = {d.name: d for d in load_destinations(self.options.get("destinations") or [])}
        except ConfigError as exc:
            raise ConfigError("\n".join(f"{where}: {line}" for line in str(exc).splitlines())) from None
        return []

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if not hasattr(self, "options"):
            self.prepare()
        tests = self._tests(artifact)
        state = artifact.state
        regions: dict[str, str] = dict(state.get("regions") or {})
        if not regions:
            raise ReleaseError("release: nothing to release: the artifact has no published copies (no 'regions'); "
                               "put 'release' after 'fanout' in the same chain")
        image_name = str(state.get("image_name") or "")
        markers = [self._marker(region, ident, image_name) for region, ident in sorted(regions.items())]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ui = self.ctx.ui
        ui.say(f"Releasing {image_name or artifact.artifact_id} (tested on {', '.join(sorted(tests))}) at "
               f"{len(markers)} destination(s)")
        steps: list[_ReleaseStep] = [_MarkReleased(self, artifact, marker, tests, now) for marker in markers]
        steps.append(_WriteManifest(self, artifact, markers, tests, now))
        run: dict[str, Any] = {"released": {}, "region": None, "touched": False, "manifest": None}
        try:
            StepRunner(log=LOG, cancel=self.ctx.cancel).run(steps, run)
        except (ReleaseError, ConfigError) as exc:
            region = run["region"]
            where = f"destination '{region}': " if region else ""
            undone = "; removed the release markers already written" if run["touched"] else ""
            raise ReleaseError(f"release: {where}{exc}{undone}") from exc
        manifest: Path | None = run["manifest"]
        out_state = artifact.carried_state(
            released=True, tests=tests,
            release={"released_at": now, "markers": {m.region: m.marker_id for m in markers},
                     "manifest": str(manifest) if manifest else None})
        ui.say(f"Released {image_name} at {', '.join(m.region for m in markers)}")
        return ReleasedArtifact(BUILDER_ID, artifact.build_name, artifact.builder_type, [], artifact.artifact_id,
                                out_state), False

    # -- checks -------------------------------------------------------------------------------------------------
    def _tests(self, artifact: Artifact) -> dict[str, Any]:
        state = artifact.state
        tests = state.get("tests")
        published = state.get("sha256")
        tested = state.get("tested_sha256")
        if not tests:
            raise ReleaseError("release: refusing to release an untested image: there are no cpi-test results for "
                               "it (put 'cpi-test' before 'fanout' in the same chain)")
        if not isinstance(tests, Mapping):
            raise ReleaseError("release: refusing to release: the artifact's test results are not a mapping")
        failed = {name: result for name, result in tests.items()
                  if not (isinstance(result, Mapping) and result.get("passed") is True)}
        if failed:
            reasons = "; ".join(f"target '{name}' failed: "
                                f"{result.get('detail', '') if isinstance(result, Mapping) else result}"
                                for name, result in sorted(failed.items()))
            raise ReleaseError(f"release: refusing to release an image that failed its tests: {reasons}")
        missing = [name for name in self.options.get("require_targets") or [] if name not in tests]
        if missing:
            raise ReleaseError(f"release: refusing to release: not tested on {', '.join(missing)} "
                               f"(tested on {', '.join(sorted(tests))})")
        if tested and published and tested != published:
            raise ReleaseError(f"release: refusing to release: the published image (sha256 {published}) is not the "
                               f"image that was tested (sha256 {tested})")
        return dict(tests)

    def _marker(self, region: str, image_id: str, image_name: str) -> ReleaseMarker:
        destination = self.destinations.get(region)
        if destination is not None and image_name and destination.image_id(image_name) != image_id:
            raise ReleaseError(f"release: destination '{region}' is configured as {destination.describe()}, "
                               f"but the fan-out published {image_id} there")
        try:
            return marker_for(region, image_id, destination)
        except ReleaseError as exc:
            raise ReleaseError(f"release: {exc}") from None

    def _document(self, artifact: Artifact, marker: ReleaseMarker, tests: Mapping[str, Any],
                  now: str) -> dict[str, Any]:
        state = artifact.state
        return {
            "stemforge_release": MARKER_FORMAT,
            "released": True,
            "released_at": now,
            "image_name": state.get("image_name"),
            "destination": marker.region,
            "id": marker.image_id,
            "sha256": state.get("sha256"),
            "size": state.get("size"),
            "build_name": self.ctx.build_name,
            "builder_type": self.ctx.build_type,
            "run_uuid": self.ctx.run_uuid,
            "tested_targets": {name: dict(result) for name, result in sorted(tests.items())},
        }

    def _write_manifest(self, path: Path, artifact: Artifact, markers: list[ReleaseMarker],
                        released: Mapping[str, Mapping[str, Any]], tests: Mapping[str, Any], now: str) -> Path:
        state = artifact.state
        document = {
            "stemforge_release": MARKER_FORMAT,
            "build_name": self.ctx.build_name,
            "builder_type": self.ctx.build_type,
            "run_uuid": self.ctx.run_uuid,
            "image_name": state.get("image_name"),
            "sha256": state.get("sha256"),
            "size": state.get("size"),
            "artifact_id": artifact.artifact_id,
            "released_at": now,
            "tested_targets": {name: dict(result) for name, result in sorted(tests.items())},
            "destinations": [{"name": m.region, "type": m.kind, "id": m.image_id, "marker": m.marker_id,
                              "released_at": released.get(m.region, {}).get("released_at", now)}
                             for m in markers],
        }
        try:
            _write_atomically(path, _encode(document))
        except OSError as exc:
            raise ReleaseError(f"cannot write the release manifest {path}: {exc.strerror or exc}") from exc
        self.ctx.ui.message(f"Wrote the release manifest {path}")
        return path


# -- the steps ----------------------------------------------------------------------------------------------------


class _ReleaseStep(Step):
    """A step of one release; the shared state holds ``region`` (the destination being worked on, for the error
    message), ``touched`` (a marker step has started), ``released`` (region -> marker document) and ``manifest``
    (the path written)."""

    def __init__(self, pp: ReleasePostProcessor) -> None:
        self.pp = pp


class _MarkReleased(_ReleaseStep):
    """Verify one published copy and mark it released (or confirm the marker already there for the same sha256);
    cleanup removes what ``run`` wrote and restores what it replaced."""

    def __init__(self, pp: ReleasePostProcessor, artifact: Artifact, marker: ReleaseMarker,
                 tests: Mapping[str, Any], now: str) -> None:
        super().__init__(pp)
        self.name = f"mark_released:{marker.region}"
        self.artifact = artifact
        self.marker = marker
        self.tests = tests
        self.now = now

    def run(self, state: dict[str, Any]) -> None:
        marker, artifact_state, ui = self.marker, self.artifact.state, self.pp.ctx.ui
        state["region"] = marker.region
        state["touched"] = True
        size = artifact_state.get("size")
        sha256 = str(artifact_state.get("sha256") or "")
        marker.verify(int(size) if size is not None else None, sha256)
        current = marker.existing()
        if current and current.get("released") is True and current.get("sha256") == sha256:
            marker.ensure_extras()
            state["released"][marker.region] = current
            ui.message(f"{marker.region}: already released ({marker.marker_id}, {current.get('released_at', '?')})")
            return
        document = self.pp._document(self.artifact, marker, self.tests, self.now)
        marker.write(document)
        state["released"][marker.region] = document
        ui.message(f"{marker.region}: released {marker.image_id} ({marker.marker_id})")

    def cleanup(self, state: dict[str, Any]) -> None:
        try:
            self.marker.undo()
        except Exception as exc:
            self.pp.ctx.ui.error(f"{self.marker.region}: could not remove the release marker "
                                 f"{self.marker.marker_id}: {exc} -- remove it by hand")
            raise


class _WriteManifest(_ReleaseStep):
    """Write ``release_manifest`` (when set); cleanup removes it again, or restores the one it replaced."""

    name = "write_release_manifest"

    def __init__(self, pp: ReleasePostProcessor, artifact: Artifact, markers: list[ReleaseMarker],
                 tests: Mapping[str, Any], now: str) -> None:
        super().__init__(pp)
        self.artifact = artifact
        self.markers = markers
        self.tests = tests
        self.now = now
        self.path: Path | None = None
        self.previous: bytes | None = None

    def run(self, state: dict[str, Any]) -> None:
        state["region"] = None
        target = self.pp.options.get("release_manifest")
        if not target:
            return
        path = Path(render_output(self.pp.ctx, str(target), {}, key="release_manifest"))
        with contextlib.suppress(OSError):
            self.previous = path.read_bytes()
        self.path = path
        state["manifest"] = self.pp._write_manifest(path, self.artifact, self.markers, state["released"],
                                                    self.tests, self.now)

    def cleanup(self, state: dict[str, Any]) -> None:
        if self.path is None or state.get("manifest") is None:
            return
        if self.previous is None:
            self.path.unlink(missing_ok=True)
        else:
            _write_atomically(self.path, self.previous)
        state["manifest"] = None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


PLUGIN = ReleasePostProcessor
