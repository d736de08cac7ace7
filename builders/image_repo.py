"""A small HTTP image repository: what a bare-metal site runs so that a fan-out can publish images to it.

``stemforge image-repo serve --root DIR --listen 127.0.0.1:PORT [--token-file FILE]`` serves DIR:

* ``PUT /images/<name>``: the body (``Content-Length`` or chunked) streams to a temporary file under
  ``DIR/.repo~incoming``, hashed on the way; an ``X-Checksum-Sha256`` header must match or the upload is refused
  (422) and nothing is kept; then the file is fsynced and renamed into place atomically. ``If-None-Match: *`` refuses
  to replace an existing image (412). A broken connection leaves nothing behind. Answers 201 with
  ``{"name", "size", "sha256"}``.
* ``GET /images/<name>``: the bytes with ``Content-Length`` (sent with ``sendfile``), ``Accept-Ranges: bytes`` and,
  when known, ``X-Checksum-Sha256``/``ETag``. A single ``Range: bytes=A-B`` / ``A-`` / ``-N`` answers 206 with
  ``Content-Range`` (resumable downloads); a range past the end answers 416 with ``Content-Range: bytes */SIZE``;
  several ranges, other units, a malformed header or an ``If-Range`` that does not match the ETag get the whole
  image (200), as RFC 9110 section 14.2 allows. ``HEAD`` answers the same headers and always includes
  ``X-Checksum-Sha256`` (hashing the file once if its recorded hash is stale).
* ``DELETE /images/<name>``: 204, or 404.
* ``MOVE /images/<name>`` with ``Destination: /images/<new>`` (WebDAV): an atomic rename; ``Overwrite: F`` refuses
  to replace (412). This is how a fan-out commits a staged upload.
* ``GET /`` or ``GET /images/``: JSON ``{"images": [{"name", "size", "sha256", "mtime"}], "incoming": [{"name",
  "bytes"}]}`` (``incoming``: uploads in progress, by image name).

Bodies are streamed in 1 MiB chunks and never held in memory. Hashes are kept in ``DIR/.repo~meta/<name>.json``
together with the file's size, inode and mtime, so a file replaced behind the repository's back is re-hashed rather
than trusted. Image names are single path segments (``[A-Za-z0-9._+-]``, a leading ``.`` allowed for staging names),
and images are opened with ``O_NOFOLLOW`` (only regular files are served, listed or moved), so no request reaches
outside DIR, not even through a symlink planted inside it.

Security contract (the repository is a trust boundary, see README "Security"):

* Writes (PUT, MOVE, DELETE) need ``Authorization: Bearer <token>`` when the server has tokens (``--token-file``:
  one token per line, at least 16 characters, ``#`` comments; the file must not be readable by group or others).
  Tokens are compared with ``hmac.compare_digest`` against every configured token; a refusal is 401 with
  ``WWW-Authenticate: Bearer`` and never echoes what was sent. Reads (GET, HEAD, the listing) stay open. Without
  tokens the server only listens on a loopback address (``serve`` refuses anything else).
* Malformed requests get a status, never a traceback: a ``Content-Length`` that is not one decimal number and a
  chunk size that is not hex answer 400, both ``Content-Length`` and ``Transfer-Encoding`` 400, a transfer coding
  other than ``chunked`` 501, no length 411, a declared or received size above ``--max-size`` 413 (before the body
  is read when the size is declared).
* Bounded work: at most ``max_clients`` connections are served at once (each a thread); one more is answered 503
  with ``Retry-After`` and closed. A client must send its request line and headers within ``client_timeout``
  seconds, every socket read/write finishes within ``client_timeout``, and each 1 MiB of a body must arrive (or be
  taken by the reader of a GET) within ``client_timeout`` plus 1 MiB at ``min_rate`` bytes/s; a connection past its
  deadline is shut down (one watchdog thread per server) and its half-done upload removed.

The server is ``http.server`` rather than a WSGI server on purpose: uploads are hashed and written while they
stream (the ``incoming`` listing and the fan-out's fault-injection hook ``on_body_progress`` rely on it), whereas
waitress, the well-kept pure-Python choice, reads a whole request body into its own buffer before the application
sees it. What ``http.server`` lacks (limits, deadlines, strict framing) is the small part written here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from builders.image_store import CHUNK, HEX64, ImageStore, RepoError
from stemforge_base.net import is_loopback, serving

log = logging.getLogger("stemforge.image_repo")

CHECKSUM_HEADER: Final = "X-Checksum-Sha256"
#: Connections served at once (one thread each) unless ``--max-clients`` says otherwise.
MAX_CLIENTS: Final = 32
#: Seconds a client gets for its request head and for every socket read/write (``--client-timeout``).
CLIENT_TIMEOUT: Final = 30.0
#: Slowest body transfer tolerated, bytes/s per 1 MiB step (on top of ``client_timeout``).
MIN_RATE: Final = 64 * 1024
MIN_TOKEN_LENGTH: Final = 16
_DECIMAL: Final = re.compile(r"^[0-9]{1,19}$")
_CHUNK_SIZE: Final = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_RANGE: Final = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
_MAX_TRAILERS: Final = 64


class Deadlines:
    """One watchdog thread per server: a connection whose deadline passed is shut down (``SHUT_RDWR``), which makes
    the worker's blocked ``recv``/``send``/``sendfile`` return so that it cleans up and ends. ``set(sock, None)``
    suspends the deadline while the server itself works (hashing, fsync)."""

    def __init__(self, interval: float = 0.1) -> None:
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.expired = 0
        self._thread = threading.Thread(target=self._run, args=(interval,), name="image-repo-deadlines", daemon=True)
        self._thread.start()

    def set(self, sock: socket.socket, seconds: float | None) -> None:
        with self._lock:
            if seconds is None:
                self._deadlines.pop(sock, None)
            else:
                self._deadlines[sock] = time.monotonic() + seconds

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
            for sock in late:
                self.expired += 1
                log.warning("closing a connection that missed its deadline")
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ImageRepoHandler(BaseHTTPRequestHandler):
    """HTTP front of ``ImageStore``. Subclass it in tests to inject faults (e.g. fail after N bytes)."""

    server: ImageRepoServer
    protocol_version = "HTTP/1.1"
    server_version = "stemforge-image-repo/1"

    # -- plumbing ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.client_timeout)  # every socket operation

    def handle_one_request(self) -> None:
        self._deadline(self.server.client_timeout)  # request line and headers, or idle keep-alive
        try:
            super().handle_one_request()
        finally:
            self._deadline(None)

    def _deadline(self, seconds: float | None) -> None:
        self.server.deadlines.set(self.connection, seconds)

    def _transfer_deadline(self, nbytes: int) -> None:
        """Allow ``client_timeout`` plus ``nbytes`` at the minimum rate for the next step of a body transfer."""
        self._deadline(self.server.client_timeout + nbytes / self.server.min_rate)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _image_name(self) -> str | None:
        """The image name of ``/images/<name>``; None for the listing paths; RepoError otherwise."""
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/images", "/images/"):
            return None
        if path.startswith("/images/"):
            name = path[len("/images/"):]
            self.server.store.path(name)  # validates
            return name
        raise RepoError(HTTPStatus.NOT_FOUND, f"no such path {path}")

    def _send_json(self, status: HTTPStatus, data: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(data, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": message}, headers)

    def _dispatch(self, method: Any) -> None:
        try:
            method()
        except RepoError as exc:
            if self.command == "PUT":
                self.close_connection = True  # the rest of the body (if any) was not read
            with contextlib.suppress(OSError):
                self._send_error(exc.status, str(exc), exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except TimeoutError:
            self.close_connection = True
            log.warning("%s %s: the client was too slow", self.command, self.path)
            with contextlib.suppress(OSError):
                self._send_error(HTTPStatus.REQUEST_TIMEOUT, "the client was too slow")
        except OSError as exc:
            log.error("%s %s: %s", self.command, self.path, exc)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, exc.strerror or str(exc))

    def _authorize(self) -> None:
        """Refuse a write (401) unless it carries one of the server's bearer tokens (constant-time comparison)."""
        tokens = self.server.tokens
        if not tokens:
            return
        scheme, _, credential = self.headers.get("Authorization", "").strip().partition(" ")
        given = credential.strip().encode("utf-8", "surrogateescape")
        accepted = False
        for token in tokens:  # compare with every token: the time taken does not tell which one came close
            accepted |= hmac.compare_digest(given, token)
        if scheme.lower() != "bearer" or not accepted:
            self.close_connection = True
            log.warning("%s %s from %s: refused, no valid bearer token", self.command, self.path,
                        self.address_string())
            raise RepoError(HTTPStatus.UNAUTHORIZED, f"{self.command} needs a valid 'Authorization: Bearer' token",
                            {"WWW-Authenticate": 'Bearer realm="stemforge-image-repo"'})

    # -- methods ----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch(self._put)

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch(self._delete)

    def do_MOVE(self) -> None:  # noqa: N802
        self._dispatch(self._move)

    def _get(self) -> None:
        store = self.server.store
        name = self._image_name()
        if name is None:
            self._send_json(HTTPStatus.OK, store.listing())
            return
        with store.open(name) as fh:
            size = os.fstat(fh.fileno()).st_size
            self._deadline(None)  # hashing is the server's work, not the client's slowness
            sha = store.sha256(name) if self.command == "HEAD" else store.recorded_sha256(name)
            self._deadline(self.server.client_timeout)
            etag = f'"{sha}"' if sha else None
            span = self._range(size, etag)
            start, end = span if span else (0, size - 1)
            count = end - start + 1
            self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.send_header("Accept-Ranges", "bytes")
            if span:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if sha and etag:
                self.send_header(CHECKSUM_HEADER, sha)
                self.send_header("ETag", etag)
            self.end_headers()
            if self.command == "HEAD" or count <= 0:
                return
            self.wfile.flush()
            sent = 0
            while sent < count:
                step = min(count - sent, 16 * CHUNK)
                self._transfer_deadline(step)
                done = self.connection.sendfile(fh, start + sent, step)
                if not done:
                    break
                sent += done
            if sent != count:
                self.close_connection = True

    def _range(self, size: int, etag: str | None) -> tuple[int, int] | None:
        """The single byte range a GET asks for, or None for the whole image; RepoError 416 when unsatisfiable."""
        header = self.headers.get("Range")
        if header is None:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and (etag is None or if_range.strip() != etag):
            return None
        span = parse_range(header, size)
        if span == "unsatisfiable":
            raise RepoError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                            f"range {header[:64]!r} is outside the image ({size} bytes)",
                            {"Content-Range": f"bytes */{size}"})
        return span if isinstance(span, tuple) else None

    def _put(self) -> None:
        self._authorize()
        store = self.server.store
        name = self._image_name()
        if name is None:
            raise RepoError(HTTPStatus.METHOD_NOT_ALLOWED, "PUT needs /images/<name>")
        expected = (self.headers.get(CHECKSUM_HEADER) or "").strip().lower() or None
        if expected is not None and not HEX64.match(expected):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"{CHECKSUM_HEADER} must be 64 hex digits")
        overwrite = self.headers.get("If-None-Match", "").strip() != "*"
        if not overwrite and store.exists(name):
            raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{name} already exists")
        length = self._body_length()
        if length is not None and store.max_size is not None and length > store.max_size:
            raise RepoError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes exceeds the repository limit")
        tmp = store.new_incoming(name)
        try:
            digest, size = self._receive(tmp, length)
            self._deadline(None)
            if expected is not None and digest != expected:
                raise RepoError(HTTPStatus.UNPROCESSABLE_ENTITY,
                                f"checksum mismatch: received sha256 {digest}, header says {expected}")
            replaced = store.publish(name, tmp, digest, overwrite=overwrite)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._deadline(self.server.client_timeout)
        status = HTTPStatus.OK if replaced else HTTPStatus.CREATED
        self._send_json(status, {"name": name, "size": size, "sha256": digest}, {CHECKSUM_HEADER: digest})

    def _body_length(self) -> int | None:
        """The declared body length, or None for a chunked body; RepoError 400/411/501 for bad framing."""
        codings = [c.strip().lower() for v in self.headers.get_all("Transfer-Encoding", []) for c in v.split(",")]
        lengths = [v.strip() for v in self.headers.get_all("Content-Length", [])]
        if codings:
            if lengths:
                raise RepoError(HTTPStatus.BAD_REQUEST, "Content-Length and Transfer-Encoding together")
            if codings != ["chunked"]:
                raise RepoError(HTTPStatus.NOT_IMPLEMENTED, "only the chunked transfer coding is supported")
            return None
        if not lengths:
            raise RepoError(HTTPStatus.LENGTH_REQUIRED, "Content-Length or chunked transfer encoding required")
        if len(set(lengths)) != 1 or not _DECIMAL.match(lengths[0]):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"Content-Length must be one decimal number, got "
                                                    f"{', '.join(lengths)[:40]!r}")
        return int(lengths[0])

    def _receive(self, tmp: Path, length: int | None) -> tuple[str, int]:
        """Stream the request body into ``tmp``; return its sha256 and size. A short body raises."""
        digest = hashlib.sha256()
        received = 0
        limit = self.server.store.max_size
        with open(tmp, "xb", buffering=0) as out:
            for chunk in self._body_chunks(length, limit):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
                received += len(chunk)
                if limit is not None and received > limit:
                    raise RepoError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body exceeds the repository limit")
                self._deadline(None)
                self._pace(received)
                self.on_body_progress(received)
            os.fsync(out.fileno())
        return digest.hexdigest(), received

    def _pace(self, received: int) -> None:
        """Hold an upload to the server's ``upload_rate`` (bytes/s per upload; None = unlimited)."""
        rate = self.server.upload_rate
        if not rate:
            return
        started = getattr(self, "_upload_started", None)
        if started is None or received <= CHUNK:
            started = self._upload_started = time.monotonic()
            return
        ahead = (received - CHUNK) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)

    def on_body_progress(self, received: int) -> None:
        """Hook called after each chunk of a PUT body is stored (tests inject faults here)."""

    def _read(self, count: int) -> bytes:
        """Up to ``count`` (> 0) body bytes within the transfer deadline; a closed connection raises."""
        self._transfer_deadline(count)
        chunk = self.rfile.read(count)
        if not chunk:
            self.close_connection = True
            raise ConnectionResetError("client closed the connection before the whole body arrived")
        return chunk

    def _line(self, what: str) -> bytes:
        self._transfer_deadline(0)
        line = self.rfile.readline(1026)
        if not line:
            raise ConnectionResetError(f"client closed the connection inside a chunked body ({what})")
        if not line.endswith(b"\n"):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"chunked body: {what} line too long")
        return line

    def _body_chunks(self, length: int | None, limit: int | None) -> Iterator[bytes]:
        if length is not None:
            remaining = length
            while remaining > 0:
                chunk = self._read(min(CHUNK, remaining))
                remaining -= len(chunk)
                yield chunk
            return
        received = 0
        while True:  # chunked transfer encoding (RFC 9112 section 7.1)
            text = self._line("chunk size").split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.match(text):
                raise RepoError(HTTPStatus.BAD_REQUEST, f"chunked body: invalid chunk size {text[:20]!r}")
            size = int(text, 16)
            if size == 0:
                for _ in range(_MAX_TRAILERS):
                    if self._line("trailer") in (b"\r\n", b"\n"):
                        return
                raise RepoError(HTTPStatus.BAD_REQUEST, "chunked body: too many trailer lines")
            received += size
            if limit is not None and received > limit:
                raise RepoError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body exceeds the repository limit")
            remaining = size
            while remaining > 0:
                chunk = self._read(min(CHUNK, remaining))
                remaining -= len(chunk)
                yield chunk
            if self._line("chunk end") not in (b"\r\n", b"\n"):
                raise RepoError(HTTPStatus.BAD_REQUEST, "chunked body: chunk data longer than its size")

    def _delete(self) -> None:
        self._authorize()
        name = self._image_name()
        if name is None:
            raise RepoError(HTTPStatus.METHOD_NOT_ALLOWED, "DELETE needs /images/<name>")
        self.server.store.delete(name)
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _move(self) -> None:
        self._authorize()
        name = self._image_name()
        if name is None:
            raise RepoError(HTTPStatus.METHOD_NOT_ALLOWED, "MOVE needs /images/<name>")
        destination = unquote(urlsplit(self.headers.get("Destination", "")).path)
        if not destination.startswith("/images/"):
            raise RepoError(HTTPStatus.BAD_REQUEST, "MOVE needs a Destination header naming /images/<name>")
        target = destination[len("/images/"):]
        overwrite = self.headers.get("Overwrite", "T").strip().upper() != "F"
        replaced = self.server.store.move(name, target, overwrite=overwrite)
        self._send_json(HTTPStatus.OK if replaced else HTTPStatus.CREATED, {"name": target, "replaced": replaced})


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """RFC 9110 section 14: the ``(first, last)`` byte positions of a single ``bytes=`` range of an image of
    ``size`` bytes; ``"unsatisfiable"`` when it starts past the end; None when the header is to be ignored (other
    units, several ranges, bad syntax). Numbers of any length are handled without converting huge digit strings."""
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first_text, last_text = match.groups()

    def number(text: str) -> int:
        return int(text) if len(text) <= 18 else 1 << 62

    if not first_text:
        suffix = number(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    first = number(first_text)
    last = number(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(last, size - 1)


class ImageRepoServer(ThreadingHTTPServer):
    """The repository server; ``url`` is its base URL (``http://127.0.0.1:PORT/``). ``tokens`` (bytes) guard the
    writes; None or empty leaves them open (loopback use only, see ``serve``)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, root: Path, address: tuple[str, int] = ("127.0.0.1", 0), *,
                 handler: type[ImageRepoHandler] = ImageRepoHandler, max_size: int | None = None,
                 upload_rate: float | None = None, tokens: Sequence[bytes] | None = None,
                 max_clients: int = MAX_CLIENTS, client_timeout: float = CLIENT_TIMEOUT,
                 min_rate: float = MIN_RATE) -> None:
        self.store = ImageStore(root, max_size=max_size)
        #: Per-upload ingest limit in bytes/s (a site's link or disk budget); None = as fast as it comes.
        self.upload_rate = upload_rate
        self.tokens = tuple(tokens or ())
        self.max_clients = max_clients
        self.client_timeout = client_timeout
        self.min_rate = min_rate
        self.refused_busy = 0
        self._slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, handler)
        self.deadlines = Deadlines()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a worker thread if one of ``max_clients`` slots is free, else answer 503."""
        if not self._slots.acquire(blocking=False):
            self.refused_busy += 1
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                body = b'{"error": "too many clients; retry later"}\n'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\n"
                                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.deadlines.set(request, None)
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.stop()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@contextlib.contextmanager
def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0, *,
                    handler: type[ImageRepoHandler] = ImageRepoHandler, max_size: int | None = None,
                    upload_rate: float | None = None, tokens: Sequence[bytes] | None = None,
                    max_clients: int = MAX_CLIENTS, client_timeout: float = CLIENT_TIMEOUT,
                    min_rate: float = MIN_RATE) -> Iterator[ImageRepoServer]:
    """Run a repository in a background thread for the duration of the ``with`` block (tests, benchmarks)."""
    server = ImageRepoServer(root, (host, port), handler=handler, max_size=max_size, upload_rate=upload_rate,
                             tokens=tokens, max_clients=max_clients, client_timeout=client_timeout,
                             min_rate=min_rate)
    with serving(server, f"image-repo-{server.server_address[1]}", poll_interval=0.1):
        yield server


# -- tokens and listen addresses ------------------------------------------------------------------------------


def load_tokens(path: Path) -> list[bytes]:
    """The bearer tokens in ``path``: one per line, blank lines and ``#`` comments ignored. Raises ValueError when
    the file is readable or writable by group/others, holds no token, or a token is shorter than 16 characters or
    contains whitespace. The error never contains a token."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if st.st_mode & 0o077:
        raise ValueError(f"token file {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"chmod 600 it")
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
            raise ValueError(f"token file {path} line {number}: a token must be at least {MIN_TOKEN_LENGTH} "
                             f"characters without whitespace")
        tokens.append(token.encode())
    if not tokens:
        raise ValueError(f"token file {path} holds no token")
    return tokens


# -- CLI ------------------------------------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    host, port = args.listen
    tokens: list[bytes] = []
    if args.token_file:
        try:
            tokens = load_tokens(Path(args.token_file))
        except ValueError as exc:
            print(f"image-repo: {exc}", file=sys.stderr)
            return 2
    elif not is_loopback(host):
        print(f"image-repo: refusing to listen on {host} without authentication: writes would be open to anyone "
              f"who can reach it; pass --token-file FILE (or listen on 127.0.0.1)", file=sys.stderr)
        return 2
    try:
        rate = args.limit_rate * 1024 * 1024 if args.limit_rate else None
        server = ImageRepoServer(Path(args.root), (host, port), max_size=args.max_size, upload_rate=rate,
                                 tokens=tokens, max_clients=args.max_clients, client_timeout=args.client_timeout)
    except OSError as exc:
        print(f"image-repo: cannot serve {args.root} on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stale = server.store.clean_incoming()
    if stale:
        print(f"image-repo: removed {stale} half-done upload(s) left by a previous run", file=sys.stderr)
    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    auth = f"writes need one of {len(tokens)} token(s)" if tokens else "writes open to local clients (no tokens)"
    print(f"image-repo: {auth}", file=sys.stderr, flush=True)
    print(f"image-repo: serving {server.store.root} at {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("image-repo: stopped", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stemforge image-repo serve``."""
    parser = subparsers.add_parser("image-repo", help="serve an HTTP image repository (a bare-metal site's images)")
    sub = parser.add_subparsers(dest="image_repo_command", metavar="SUBCOMMAND")
    sub.required = True
    serve = sub.add_parser("serve", help="serve DIR over HTTP (PUT/GET/HEAD/DELETE/MOVE with sha256 checks)")
    serve.add_argument("--root", required=True, help="directory holding the images (created if missing)")
    serve.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 8090),
                       help="HOST:PORT to listen on (default 127.0.0.1:8090; a non-loopback address needs "
                            "--token-file)")
    serve.add_argument("--token-file", metavar="FILE",
                       help="bearer tokens allowed to PUT/MOVE/DELETE, one per line (mode 0600); reads stay open")
    serve.add_argument("--max-size", type=int, default=None, help="refuse uploads larger than this many bytes")
    serve.add_argument("--limit-rate", type=float, default=None, metavar="MIB_PER_S",
                       help="accept each upload no faster than this many MiB/s (a site's link or disk budget)")
    serve.add_argument("--max-clients", type=int, default=MAX_CLIENTS, metavar="N",
                       help=f"connections served at once; more are answered 503 (default {MAX_CLIENTS})")
    serve.add_argument("--client-timeout", type=float, default=CLIENT_TIMEOUT, metavar="SECONDS",
                       help=f"time a client gets for its request head and each read/write (default "
                            f"{CLIENT_TIMEOUT:.0f})")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    serve.set_defaults(handler=_serve)
