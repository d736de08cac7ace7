"""A small HTTP image repository: what a bare-metal site runs so that a fan-out can publish images to it.

``stemforge image-repo serve --root DIR --listen 127.0.0.1:PORT`` serves DIR:

* ``PUT /images/<name>``: the body (``Content-Length`` or chunked) streams to a temporary file under
  ``DIR/.repo~incoming``, hashed on the way; an ``X-Checksum-Sha256`` header must match or the upload is refused
  (422) and nothing is kept; then the file is fsynced and renamed into place atomically. ``If-None-Match: *`` refuses
  to replace an existing image (412). A broken connection leaves nothing behind. Answers 201 with
  ``{"name", "size", "sha256"}``.
* ``GET /images/<name>``: the bytes with ``Content-Length`` (sent with ``sendfile``) and, when known,
  ``X-Checksum-Sha256``. ``HEAD`` answers the same headers and always includes ``X-Checksum-Sha256`` (hashing the
  file once if its recorded hash is stale).
* ``DELETE /images/<name>``: 204, or 404.
* ``MOVE /images/<name>`` with ``Destination: /images/<new>`` (WebDAV): an atomic rename; ``Overwrite: F`` refuses
  to replace (412). This is how a fan-out commits a staged upload.
* ``GET /`` or ``GET /images/``: JSON ``{"images": [{"name", "size", "sha256", "mtime"}], "incoming": [{"name",
  "bytes"}]}`` (``incoming``: uploads in progress, by image name).

Bodies are streamed in 1 MiB chunks and never held in memory. Hashes are kept in ``DIR/.repo~meta/<name>.json``
together with the file's size, inode and mtime, so a file replaced behind the repository's back is re-hashed rather
than trusted. Image names are single path segments (``[A-Za-z0-9._+-]``, a leading ``.`` allowed for staging names),
so no request can reach outside DIR. The repository has no authentication: bind it to loopback or a management
network only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

log = logging.getLogger("stemforge.image_repo")

CHUNK: Final = 1024 * 1024
INCOMING: Final = ".repo~incoming"
META: Final = ".repo~meta"
NAME_RE: Final = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
CHECKSUM_HEADER: Final = "X-Checksum-Sha256"
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


class RepoError(Exception):
    """A request the repository refuses; carries the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ImageStore:
    """The repository's directory: atomic writes, recorded hashes, safe names. Thread-safe."""

    def __init__(self, root: Path, *, max_size: int | None = None) -> None:
        self.root = root.resolve()
        self.max_size = max_size
        self.incoming = self.root / INCOMING
        self.meta = self.root / META
        for directory in (self.root, self.incoming, self.meta):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def clean_incoming(self) -> int:
        """Remove uploads a previous process left half-done; return how many."""
        count = 0
        for leftover in self.incoming.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
                count += 1
        return count

    def path(self, name: str) -> Path:
        if not NAME_RE.match(name) or name in (".", ".."):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"invalid image name {name!r}")
        return self.root / name

    def _meta_path(self, name: str) -> Path:
        return self.meta / f"{name}.json"

    def recorded_sha256(self, name: str) -> str | None:
        """The recorded sha256 of ``name`` if it still describes the file on disk, else None."""
        path = self.path(name)
        try:
            st = path.stat()
            meta = json.loads(self._meta_path(name).read_text())
        except (OSError, ValueError):
            return None
        if (meta.get("size"), meta.get("ino"), meta.get("mtime_ns")) != (st.st_size, st.st_ino, st.st_mtime_ns):
            return None
        sha = meta.get("sha256")
        return sha if isinstance(sha, str) and _HEX64.match(sha) else None

    def sha256(self, name: str) -> str:
        """The sha256 of ``name``, re-hashing the file (and recording it) when the record is missing or stale."""
        recorded = self.recorded_sha256(name)
        if recorded:
            return recorded
        path = self.path(name)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        sha = digest.hexdigest()
        self._record(name, path, sha)
        return sha

    def _record(self, name: str, path: Path, sha: str) -> None:
        st = path.stat()
        tmp = self.meta / f".{name}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"sha256": sha, "size": st.st_size, "ino": st.st_ino,
                                   "mtime_ns": st.st_mtime_ns}))
        os.replace(tmp, self._meta_path(name))

    def new_incoming(self, name: str) -> Path:
        return self.incoming / f"{name}.{uuid.uuid4().hex}"

    def publish(self, name: str, tmp: Path, sha: str, *, overwrite: bool) -> bool:
        """Move the verified upload ``tmp`` into place as ``name``; return True if it replaced an image."""
        final = self.path(name)
        with self._lock:
            existed = final.exists()
            if existed and not overwrite:
                raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{name} already exists")
            os.replace(tmp, final)
            self._record(name, final, sha)
            _fsync_dir(self.root)
        return existed

    def move(self, source: str, target: str, *, overwrite: bool) -> bool:
        """Rename image ``source`` to ``target`` (with its record); return True if ``target`` was replaced."""
        src = self.path(source)
        dst = self.path(target)
        with self._lock:
            if not src.is_file():
                raise RepoError(HTTPStatus.NOT_FOUND, f"{source} does not exist")
            existed = dst.exists()
            if existed and not overwrite:
                raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{target} already exists")
            os.replace(src, dst)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._meta_path(source), self._meta_path(target))
            _fsync_dir(self.root)
        return existed

    def delete(self, name: str) -> None:
        path = self.path(name)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise RepoError(HTTPStatus.NOT_FOUND, f"{name} does not exist") from None
            with contextlib.suppress(FileNotFoundError):
                self._meta_path(name).unlink()
            _fsync_dir(self.root)

    def listing(self) -> dict[str, Any]:
        images = []
        for entry in sorted(self.root.iterdir()):
            if entry.name in (INCOMING, META) or not entry.is_file():
                continue
            st = entry.stat()
            images.append({"name": entry.name, "size": st.st_size, "sha256": self.recorded_sha256(entry.name),
                           "mtime": int(st.st_mtime)})
        incoming = []
        for entry in sorted(self.incoming.iterdir()):
            with contextlib.suppress(OSError):
                incoming.append({"name": entry.name.rsplit(".", 1)[0], "bytes": entry.stat().st_size})
        return {"images": images, "incoming": incoming}


class ImageRepoHandler(BaseHTTPRequestHandler):
    """HTTP front of ``ImageStore``. Subclass it in tests to inject faults (e.g. fail after N bytes)."""

    server: ImageRepoServer
    protocol_version = "HTTP/1.1"
    server_version = "stemforge-image-repo/1"

    # -- plumbing ---------------------------------------------------------------------------------------------
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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        self._send_json(status, {"error": message})

    def _dispatch(self, method: Any) -> None:
        try:
            method()
        except RepoError as exc:
            self._send_error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except OSError as exc:
            log.error("%s %s: %s", self.command, self.path, exc)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR, exc.strerror or str(exc))

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
        path = store.path(name)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below after sendfile
        except (FileNotFoundError, IsADirectoryError):
            raise RepoError(HTTPStatus.NOT_FOUND, f"{name} does not exist") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            sha = store.sha256(name) if self.command == "HEAD" else store.recorded_sha256(name)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            if sha:
                self.send_header(CHECKSUM_HEADER, sha)
                self.send_header("ETag", f'"{sha}"')
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            sent = self.connection.sendfile(fh, 0, size)
            if sent != size:
                self.close_connection = True

    def _put(self) -> None:
        store = self.server.store
        name = self._image_name()
        if name is None:
            raise RepoError(HTTPStatus.METHOD_NOT_ALLOWED, "PUT needs /images/<name>")
        store.path(name)
        expected = (self.headers.get(CHECKSUM_HEADER) or "").strip().lower() or None
        if expected is not None and not _HEX64.match(expected):
            raise RepoError(HTTPStatus.BAD_REQUEST, f"{CHECKSUM_HEADER} must be 64 hex digits")
        overwrite = self.headers.get("If-None-Match", "").strip() != "*"
        if not overwrite and store.path(name).exists():
            self.close_connection = True  # the body was not read
            raise RepoError(HTTPStatus.PRECONDITION_FAILED, f"{name} already exists")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length_header = self.headers.get("Content-Length")
        if not chunked and length_header is None:
            self.close_connection = True
            raise RepoError(HTTPStatus.LENGTH_REQUIRED, "Content-Length or chunked transfer encoding required")
        length = None if chunked else int(length_header or "0")
        if length is not None and self.server.store.max_size is not None and length > self.server.store.max_size:
            self.close_connection = True
            raise RepoError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length} bytes exceeds the repository limit")
        tmp = store.new_incoming(name)
        try:
            digest, size = self._receive(tmp, length)
            if expected is not None and digest != expected:
                raise RepoError(HTTPStatus.UNPROCESSABLE_ENTITY,
                                f"checksum mismatch: received sha256 {digest}, header says {expected}")
            replaced = store.publish(name, tmp, digest, overwrite=overwrite)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        status = HTTPStatus.OK if replaced else HTTPStatus.CREATED
        self._send_json(status, {"name": name, "size": size, "sha256": digest}, {CHECKSUM_HEADER: digest})

    def _receive(self, tmp: Path, length: int | None) -> tuple[str, int]:
        """Stream the request body into ``tmp``; return its sha256 and size. A short body raises."""
        digest = hashlib.sha256()
        received = 0
        with open(tmp, "xb", buffering=0) as out:
            for chunk in self._body_chunks(length):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view):]
                received += len(chunk)
                self._pace(received)
                self.on_body_progress(received)
                limit = self.server.store.max_size
                if limit is not None and received > limit:
                    self.close_connection = True
                    raise RepoError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body exceeds the repository limit")
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

    def _body_chunks(self, length: int | None) -> Iterator[bytes]:
        rfile = self.rfile
        if length is not None:
            remaining = length
            while remaining:
                chunk = rfile.read(min(CHUNK, remaining))
                if not chunk:
                    self.close_connection = True
                    raise ConnectionResetError("client closed the connection before the whole body arrived")
                remaining -= len(chunk)
                yield chunk
            return
        while True:  # chunked transfer encoding
            line = rfile.readline(65537)
            if not line:
                raise ConnectionResetError("client closed the connection inside a chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return
            remaining = size
            while remaining:
                chunk = rfile.read(min(CHUNK, remaining))
                if not chunk:
                    raise ConnectionResetError("client closed the connection inside a chunked body")
                remaining -= len(chunk)
                yield chunk
            rfile.readline(3)

    def _delete(self) -> None:
        name = self._image_name()
        if name is None:
            raise RepoError(HTTPStatus.METHOD_NOT_ALLOWED, "DELETE needs /images/<name>")
        self.server.store.delete(name)
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _move(self) -> None:
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


class ImageRepoServer(ThreadingHTTPServer):
    """The repository server; ``url`` is its base URL (``http://127.0.0.1:PORT/``)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, address: tuple[str, int] = ("127.0.0.1", 0), *,
                 handler: type[ImageRepoHandler] = ImageRepoHandler, max_size: int | None = None,
                 upload_rate: float | None = None) -> None:
        self.store = ImageStore(root, max_size=max_size)
        #: Per-upload ingest limit in bytes/s (a site's link or disk budget); None = as fast as it comes.
        self.upload_rate = upload_rate
        super().__init__(address, handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@contextlib.contextmanager
def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0, *,
                    handler: type[ImageRepoHandler] = ImageRepoHandler, max_size: int | None = None,
                    upload_rate: float | None = None) -> Iterator[ImageRepoServer]:
    """Run a repository in a background thread for the duration of the ``with`` block (tests, benchmarks)."""
    server = ImageRepoServer(root, (host, port), handler=handler, max_size=max_size, upload_rate=upload_rate)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"image-repo-{server.server_address[1]}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


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
    try:
        rate = args.limit_rate * 1024 * 1024 if args.limit_rate else None
        server = ImageRepoServer(Path(args.root), (host, port), max_size=args.max_size, upload_rate=rate)
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
                       help="HOST:PORT to listen on (default 127.0.0.1:8090; no authentication: keep it private)")
    serve.add_argument("--max-size", type=int, default=None, help="refuse uploads larger than this many bytes")
    serve.add_argument("--limit-rate", type=float, default=None, metavar="MIB_PER_S",
                       help="accept each upload no faster than this many MiB/s (a site's link or disk budget)")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    serve.set_defaults(handler=_serve)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

