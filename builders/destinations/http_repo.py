"""An HTTP image repository per bare-metal site (``{"type": "http", "name": "site-b", "url":
"http://10.0.0.5:8090/"}``), as served by ``stemforge image-repo serve`` (``builders.image_repo``).

Staging PUTs the image as ``.stemforge-staging-<id>-<name>`` with ``X-Checksum-Sha256`` (the repository refuses a
body whose hash differs and keeps nothing of a broken upload), then proves the copy twice: the repository's own
``X-Checksum-Sha256`` from HEAD must equal the source's, and a streamed GET is re-hashed on this side. Commit is a
WebDAV ``MOVE`` with ``Overwrite: F`` (an atomic rename on the server). The copy's id is its URL.

Authentication: a repository served with ``--token-file`` wants ``Authorization: Bearer <token>`` on every write.
The token comes from, first match wins: ``"token"`` in the config (put a sensitive user variable there, e.g.
``"{{user `repo_token`}}"`` with ``repo_token`` in ``sensitive-variables``, so build output masks it),
``"token_file"`` (a file whose first non-comment line is the token), or the environment variable named by
``"token_env"`` (default ``STEMFORGE_IMAGE_REPO_TOKEN``). It is sent on every request (reads ignore it) and never
appears in ``describe``, errors or logs. Without one, requests go out unauthenticated.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Final
from urllib.parse import quote, urlsplit

from builders.destinations import (
    BACKUP_MARK,
    CHUNK,
    STAGING_MARK,
    Committed,
    CopyCheck,
    Destination,
    DestinationError,
    SourceImage,
    Staged,
    TransferIO,
)
from builders.registry import closed_object

CHECKSUM_HEADER: Final = "X-Checksum-Sha256"
#: The environment variable a token is read from when the config names none.
TOKEN_ENV: Final = "STEMFORGE_IMAGE_REPO_TOKEN"
_NETWORK_ERRORS: Final = (OSError, http.client.HTTPException)


class HttpRepoDestination(Destination):
    """Publish to an image repository over HTTP(S)."""

    type_name: ClassVar[str] = "http"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "url": {"type": "string", "pattern": "^https?://[^/?#]+(/[^?#]*)?$"},
            #: Seconds a connect or a single read/write may take before the attempt fails (transient).
            "timeout": {"type": "number", "exclusiveMinimum": 0},
            #: Bearer token for writes (use a sensitive variable); or ``token_file``; or env ``token_env``.
            "token": {"type": "string"},
            "token_file": {"type": "string", "minLength": 1},
            "token_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        }, required=["url"])

    def __init__(self, name: str, config: Any) -> None:
        super().__init__(name, config)
        url = str(self.config.get("url", ""))
        self._base = url if url.endswith("/") else url + "/"
        parts = urlsplit(self._base)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path or "/"
        self._timeout = float(self.config.get("timeout", 60))
        self._auth = _auth_headers(name, self.config)

    def describe(self) -> str:
        return f"http {self._base}"

    def image_id(self, image_name: str) -> str:
        return f"{self._base}images/{image_name}"

    # -- transport --------------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _target(self, image_name: str) -> str:
        return f"{self._path}images/{quote(image_name)}"

    def _call(self, method: str, image_name: str | None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """A small request (no body); returns status, headers and the (small) response body."""
        path = self._target(image_name) if image_name is not None else self._path
        conn = self._connection()
        try:
            conn.request(method, path, headers={**(headers or {}), **self._auth})
            response = conn.getresponse()
            body = response.read(1 << 20)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        except _NETWORK_ERRORS as exc:
            raise DestinationError(f"{method} {self._base}: {_reason(exc)}", transient=True) from exc
        finally:
            conn.close()

    def _fail(self, what: str, status: int, body: bytes) -> DestinationError:
        detail = _error_text(body)
        return DestinationError(f"{what}: HTTP {status}{': ' + detail if detail else ''}",
                                transient=status >= 500 or status in (408, 429))

    # -- phase 0 ------------------------------------------------------------------------------------------
    def preflight(self, source: SourceImage, image_name: str, replace: bool) -> None:
        status, _headers, body = self._call("GET", None)
        if status != 200:
            raise self._fail(f"repository {self._base} is not usable", status, body)
        status, _headers, body = self._call("HEAD", image_name)
        if status == 200 and not replace:
            raise DestinationError(f"{self.image_id(image_name)} already exists (use -force to replace it)")
        if status not in (200, 404):
            raise self._fail(f"cannot look up {self.image_id(image_name)}", status, body)

    # -- phase 1 ------------------------------------------------------------------------------------------
    def stage(self, source: SourceImage, image_name: str, io: TransferIO) -> Staged:
        staging = f"{STAGING_MARK}{uuid.uuid4().hex[:12]}-{image_name}"
        staged = Staged(image_name, {"staging": staging})
        try:
            io.phase("upload")
            staged.bytes_written = self._upload(source, staging, io)
            io.phase("verify")
            check = self._check_name(staging, source.sha256, io)
            if not check.ok:
                raise DestinationError(f"staged copy {self.image_id(staging)}: {check.detail}", transient=True)
            staged.verified = True
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def _upload(self, source: SourceImage, staging: str, io: TransferIO) -> int:
        conn = self._connection()
        sent = 0
        try:
            conn.putrequest("PUT", self._target(staging), skip_accept_encoding=True)
            conn.putheader("Content-Length", str(source.size))
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader(CHECKSUM_HEADER, source.sha256)
            conn.putheader("If-None-Match", "*")
            for key, value in self._auth.items():
                conn.putheader(key, value)
            conn.endheaders()
            with open(source.path, "rb", buffering=0) as fh:
                while sent < source.size:
                    io.check()
                    data = fh.read(min(CHUNK, source.size - sent))
                    if not data:
                        raise DestinationError(f"{source.path} shrank while it was being uploaded")
                    conn.send(data)
                    sent += len(data)
                    io.progress(sent)
            response = conn.getresponse()
            body = response.read(1 << 20)
        except _NETWORK_ERRORS as exc:
            raise DestinationError(f"upload to {self.image_id(staging)} failed after {sent} of {source.size} "
                                   f"bytes: {_reason(exc)}", transient=True) from exc
        finally:
            conn.close()
        if response.status == 422:
            raise DestinationError(f"the repository received different bytes: {_error_text(body)}", transient=True)
        if response.status not in (200, 201):
            raise self._fail(f"upload to {self.image_id(staging)} failed", response.status, body)
        return sent

    def discard(self, staged: Staged) -> None:
        staging = staged.handle.get("staging")
        if staging:
            self._delete_quietly(staging)
            self._wait_incoming_gone(staging)

    def _wait_incoming_gone(self, name: str, timeout: float = 15.0) -> None:
        """After an upload was broken off, wait until the repository has dropped its partial file (it notices the
        closed connection asynchronously), so that "nothing half-uploaded remains" holds when we return."""
        deadline = time.monotonic() + timeout
        while True:
            status, _headers, body = self._call("GET", None)
            if status == 200:
                incoming = json.loads(body).get("incoming") or []
                if not any(isinstance(entry, dict) and entry.get("name") == name for entry in incoming):
                    return
            if time.monotonic() > deadline:
                raise DestinationError(f"the repository {self._base} still holds a partial upload of {name} "
                                       f"after {timeout:.0f}s")
            time.sleep(0.05)

    def _delete_quietly(self, name: str) -> None:
        status, _headers, body = self._call("DELETE", name)
        if status not in (204, 200, 404):
            raise self._fail(f"cannot delete {self.image_id(name)}", status, body)

    # -- phase 2 ------------------------------------------------------------------------------------------
    def _move(self, source: str, target: str) -> None:
        status, _headers, body = self._call(
            "MOVE", source, {"Destination": self._target(target), "Overwrite": "F"})
        if status not in (200, 201):
            raise self._fail(f"cannot rename {self.image_id(source)} to {target}", status, body)

    def commit(self, staged: Staged, replace: bool) -> Committed:
        backup: str | None = None
        if replace:
            status, _headers, body = self._call("HEAD", staged.image_name)
            if status == 200:
                backup = f"{BACKUP_MARK}{uuid.uuid4().hex[:12]}-{staged.image_name}"
                self._move(staged.image_name, backup)
            elif status != 404:
                raise self._fail(f"cannot look up {self.image_id(staged.image_name)}", status, body)
        try:
            self._move(staged.handle["staging"], staged.image_name)
        except BaseException:
            if backup is not None:
                with contextlib.suppress(DestinationError):
                    self._move(backup, staged.image_name)
            raise
        return Committed(staged.image_name, self.image_id(staged.image_name), backup, staged.bytes_written)

    def rollback(self, committed: Committed) -> None:
        self._delete_quietly(committed.image_name)
        if committed.backup:
            self._move(committed.backup, committed.image_name)

    def finalize(self, committed: Committed) -> None:
        if committed.backup:
            self._delete_quietly(committed.backup)

    # -- proof --------------------------------------------------------------------------------------------
    def check(self, image_name: str, expected_sha256: str | None, io: TransferIO) -> CopyCheck:
        return self._check_name(image_name, expected_sha256, io)

    def _check_name(self, name: str, expected: str | None, io: TransferIO) -> CopyCheck:
        url = self.image_id(name)
        try:
            status, headers, _body = self._call("HEAD", name)
        except DestinationError as exc:
            return CopyCheck(self.name, url, False, None, None, False, str(exc))
        if status == 404:
            return CopyCheck(self.name, url, False, None, None, False, "missing")
        if status != 200:
            return CopyCheck(self.name, url, False, None, None, False, f"HEAD answered HTTP {status}")
        reported = headers.get(CHECKSUM_HEADER.lower())
        try:
            digest, size = self._download_hash(name, io)
        except DestinationError as exc:
            return CopyCheck(self.name, url, True, None, reported, False, str(exc))
        problems = []
        if reported != digest:
            problems.append(f"the repository reports sha256 {reported}, the bytes it served hash to {digest}")
        if expected is not None and digest != expected:
            problems.append(f"sha256 {digest} differs from the source's {expected}")
        ok = not problems
        return CopyCheck(self.name, url, True, size, digest, ok,
                         "sha256 matches (reported and re-hashed)" if ok else "; ".join(problems))

    def _download_hash(self, name: str, io: TransferIO) -> tuple[str, int]:
        conn = self._connection()
        digest = hashlib.sha256()
        done = 0
        try:
            conn.request("GET", self._target(name), headers=self._auth)
            response = conn.getresponse()
            if response.status != 200:
                raise self._fail(f"GET {self.image_id(name)}", response.status, response.read(1 << 20))
            length = response.getheader("Content-Length")
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            while True:
                io.check()
                count = response.readinto(view)
                if not count:
                    break
                digest.update(view[:count])
                done += count
                io.progress(done)
            if length is not None and int(length) != done:
                raise DestinationError(f"GET {self.image_id(name)} ended after {done} of {length} bytes",
                                       transient=True)
        except _NETWORK_ERRORS as exc:
            raise DestinationError(f"GET {self.image_id(name)} failed after {done} bytes: {_reason(exc)}",
                                   transient=True) from exc
        finally:
            conn.close()
        return digest.hexdigest(), done

    def list_images(self) -> list[str]:
        status, _headers, body = self._call("GET", None)
        if status != 200:
            raise self._fail(f"cannot list {self._base}", status, body)
        listing = json.loads(body)
        names = sorted(str(image["name"]) for image in listing.get("images", []))
        names += [f"(upload in progress: {entry.get('name')})" for entry in listing.get("incoming") or []]
        return names


def _auth_headers(name: str, config: Any) -> dict[str, str]:
    """The ``Authorization`` header for the configured token (see the module docstring), or none. A token file that
    cannot be read is a configuration error (ValueError, which ``load_destinations`` reports) naming the file, never
    the token."""
    token = str(config.get("token") or "").strip()
    if not token and config.get("token_file"):
        path = Path(str(config["token_file"])).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"destination {name}: token_file {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        token = next((line.strip() for line in lines if line.strip() and not line.strip().startswith("#")), "")
        if not token:
            raise ValueError(f"destination {name}: token_file {path} holds no token")
    if not token:
        token = os.environ.get(str(config.get("token_env") or TOKEN_ENV), "").strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in token):
        raise ValueError(f"destination {name}: the image repository token contains whitespace or control characters")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip()
    return str(data.get("error", "")) if isinstance(data, dict) else ""


PLUGIN = HttpRepoDestination
