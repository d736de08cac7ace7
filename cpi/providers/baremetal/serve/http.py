"""The HTTP side of ``stemforge metal serve``: iPXE scripts, ramdisk files, images, config drives and callbacks.

Routes (base ``http://<provisioning address>:<port>``; see /work/coord/METAL.md for the contract):

=====================================  ============  ==============================================================
``GET /boot.ipxe``                     none          chains ``/ipxe/${netX/mac}`` (dnsmasq hands this URL to iPXE)
``GET /ipxe/<mac>``                    DHCP lease    boots the deploy ramdisk if the MAC's node has a job (not past
                                                     its deadline), else ``exit 1`` (the firmware boots the disk);
                                                     only to the address dnsmasq leased that MAC (else 403); the
                                                     body (it holds the token) is never logged
``GET|HEAD /ramdisk/<file>``           none          files of the ramdisk directory
``GET|HEAD /images/<path>``            none          files under ``<state_dir>/images/``
``GET /v1/nodes/<node>/instructions``  job token     ``SF_*`` shell assignments (``text/plain``)
``GET|HEAD /v1/nodes/<node>/configdrive``  job token ``<state_dir>/configdrives/<node>.iso``
``POST /v1/nodes/<node>/events``       job token     ramdisk heartbeat/stage/result → 204
``POST /v1/nodes/<node>/root-device``  job token     the ramdisk's disks → ``SF_ROOT_DEVICE``/``SF_ROOT_ERROR``
``POST /v1/nodes/<node>/layout``       job token     the ramdisk's disks → ``lay_*`` lines/``SF_LAYOUT_ERROR``
``POST /v1/nodes/<node>/phone-home``   phone-home    the booted OS's report → 204
``POST /v1/nodes/<node>/phone-home/<token>``         cloud-init's phone_home form (token in the path, redacted
                                                     from every log line) → 204
=====================================  ============  ==============================================================

Trust: the routes marked "none" serve nothing secret. The job token reaches a server only in its per-MAC iPXE
script, which is bound to the DHCP lease: with ``lease_file`` (dnsmasq's lease file; ``metal serve`` always passes
it) the script goes only to the address dnsmasq's current lease for that MAC names, so another machine asking for
it by MAC gets 403. What remains trusted is the provisioning network itself: plain HTTP, and a machine there that
spoofs both the MAC and the address it was leased can still take the token (see README's security section).
Job tokens stop working at their job's deadline; phone-home tokens are spent per boot (``callbacks.py``).

Files are streamed with ``Content-Length`` in 1 MiB ``sendfile`` chunks (never read whole); a single ``Range``
(``bytes=N-`` / ``bytes=N-M``) is answered 206 so a ramdisk can resume. Paths are resolved and must stay inside
their directory (``..``, hidden names and symlinks leading out are refused). Request log lines carry the method,
the path without its query string, the status, the size and the client address; never headers or bodies. Errors
answer ``{"error": "..."}`` as JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Final
from urllib.parse import unquote, urlsplit

from cpi.providers.baremetal.phone_home import redact
from cpi.providers.baremetal.serve import ipxe, leases
from cpi.providers.baremetal.serve.callbacks import (
    MAX_EVENT_BYTES,
    MAX_PHONE_HOME_BYTES,
    TOKEN_HEADER,
    CallbackError,
    Callbacks,
    Caller,
)
from cpi.providers.baremetal.serve.shared_store import SharedStore
from cpi.providers.baremetal.store import normalize_mac
from stemforge_base.net import serving

log = logging.getLogger("stemforge.metal.http")

CHUNK: Final = 1024 * 1024
#: Streams at least this big get a completion line (bytes, seconds, MiB/s); so does every stream cut short.
BIG_FILE: Final = 64 * 1024 * 1024
_SEGMENT_RE: Final = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,254}$")
_RANGE_RE: Final = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")


class MetalHTTPServer(ThreadingHTTPServer):
    """The provisioning HTTP server. ``base_url`` is what servers are told to fetch from."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: SharedStore,
        state_dir: Path,
        ramdisk_dir: Path,
        base_url: str | None = None,
        ramdisk_debug: bool = False,
        lease_file: Path | None = None,
    ) -> None:
        """``lease_file``: dnsmasq's lease file; the per-MAC iPXE script goes only to the address leased to that MAC.
        None (a server without a DHCP server of ours, e.g. in tests) sends it to whoever asks."""
        self.store = store
        self.lease_file = lease_file
        self.state_dir = Path(state_dir)
        self.images_dir = self.state_dir / "images"
        self.ramdisk_dir = Path(ramdisk_dir)
        self.callbacks = Callbacks(store, self.state_dir)
        self.ramdisk_debug = ramdisk_debug
        super().__init__(address, MetalRequestHandler)
        host, port = self.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        self.base_url = ipxe.check_base_url(base_url or f"http://{host_text}:{port}")

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class MetalRequestHandler(BaseHTTPRequestHandler):
    """Routes of :class:`MetalHTTPServer`."""

    server: MetalHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "stemforge-metal/1"
    #: Idle connections are dropped after this many seconds (a stalled ramdisk cannot hold a thread forever).
    timeout = 300

    # -- logging: method, path without query, status, size, client; nothing else ------------------------------
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        status = code.value if isinstance(code, HTTPStatus) else code
        level = logging.DEBUG if getattr(self, "_quiet", False) else logging.INFO  # heartbeats: every few seconds
        log.log(level, "%s %s %s %s from %s", self.command, self._logged_path(), status, size, self.client_address[0])

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.warning(
            "%s: %s", self.client_address[0], redact(format % args if args else format)
        )  # a request line may hold a token

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s: %s", self.client_address[0], redact(format % args if args else format))

    def _path(self) -> str:
        return urlsplit(getattr(self, "path", "") or "").path

    def _logged_path(self) -> str:
        """The path as logs show it: a phone-home token in it is replaced by ``***``."""
        return redact(self._path())

    # -- answers -------------------------------------------------------------------------------------------------
    def _send_bytes(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_text(self, text: str, content_type: str = "text/plain; charset=utf-8") -> None:
        self._send_bytes(HTTPStatus.OK, text.encode(), content_type)

    def _send_error_json(self, status: HTTPStatus, message: str) -> None:
        body = (json.dumps({"error": message}) + "\n").encode()
        self._send_bytes(status, body, "application/json")

    def _no_content(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        self._quiet = False
        try:
            route = self._route(method)
            route()
        except CallbackError as exc:
            if exc.status >= 400 and self._has_unread_body():
                self.close_connection = True
            self._send_error_json(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except OSError as exc:
            log.error("%s %s: %s", self.command, self._logged_path(), exc.strerror or exc)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, exc.strerror or str(exc))
        except Exception as exc:  # noqa: BLE001 - e.g. the store is locked too long: answer, log, keep serving
            log.exception("%s %s failed", self.command, self._logged_path())
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__})")

    def _has_unread_body(self) -> bool:
        return self.command not in ("GET", "HEAD") and not getattr(self, "_body_read", False)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # -- routing -------------------------------------------------------------------------------------------------
    def _route(self, method: str) -> Callable[[], None]:
        path = self._path()
        parts = [unquote(p) for p in path.split("/")[1:]]
        get = method in ("GET", "HEAD")
        if parts == ["boot.ipxe"]:
            return self._allow(get, method, self._boot_ipxe)
        if len(parts) == 2 and parts[0] == "ipxe":
            return self._allow(get, method, lambda: self._mac_script(parts[1]))
        if len(parts) >= 2 and parts[0] == "ramdisk":
            return self._allow(get, method, lambda: self._send_file(self.server.ramdisk_dir, parts[1:]))
        if len(parts) >= 2 and parts[0] == "images":
            return self._allow(get, method, lambda: self._send_file(self.server.images_dir, parts[1:]))
        if len(parts) == 5 and parts[:2] == ["v1", "nodes"] and parts[3] == "phone-home":
            caller = Caller(parts[2], parts[4], self.client_address[0])
            cloud_init = self.server.callbacks.record_cloud_init_phone_home
            return self._allow(method == "POST", method, lambda: self._post(lambda b: cloud_init(caller, b), 65536))
        if len(parts) == 4 and parts[:2] == ["v1", "nodes"]:
            caller = Caller(parts[2], self.headers.get(TOKEN_HEADER, "").strip(), self.client_address[0])
            callbacks = self.server.callbacks
            if parts[3] == "instructions":
                return self._allow(get, method, lambda: self._send_text(callbacks.instructions(caller)))
            if parts[3] == "configdrive":
                return self._allow(get, method, lambda: self._stream(callbacks.configdrive(caller)))
            if parts[3] == "events":
                return self._allow(
                    method == "POST",
                    method,
                    lambda: self._post(lambda body: self._event(callbacks.record_event(caller, body)), MAX_EVENT_BYTES),
                )
            if parts[3] == "root-device":
                return self._allow(
                    method == "POST",
                    method,
                    lambda: self._send_text(callbacks.root_device(caller, self._read_body(MAX_EVENT_BYTES))),
                )
            if parts[3] == "layout":
                return self._allow(
                    method == "POST",
                    method,
                    lambda: self._send_text(callbacks.layout(caller, self._read_body(MAX_EVENT_BYTES))),
                )
            if parts[3] == "phone-home":
                return self._allow(
                    method == "POST",
                    method,
                    lambda: self._post(lambda body: callbacks.record_phone_home(caller, body), MAX_PHONE_HOME_BYTES),
                )
        raise CallbackError(HTTPStatus.NOT_FOUND, f"no such path {redact(path)}")

    @staticmethod
    def _allow(allowed: bool, method: str, action: Callable[[], None]) -> Callable[[], None]:
        if not allowed:
            raise CallbackError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here")
        return action

    # -- iPXE ----------------------------------------------------------------------------------------------------
    def _boot_ipxe(self) -> None:
        self._send_text(ipxe.boot_script(self.server.base_url))

    def _mac_script(self, mac: str) -> None:
        try:
            norm = normalize_mac(mac)
        except ValueError:
            raise CallbackError(HTTPStatus.BAD_REQUEST, f"not a MAC address: {mac[:40]!r}") from None
        node, job = self.server.store.call(lambda s: (s.node_for_mac(norm), s.job_for_mac(norm)))
        if node is None:
            log.info("iPXE script for unknown MAC %s from %s: boot from disk", norm, self.client_address[0])
            self._send_text(ipxe.exit_script(f"{norm} is not enrolled"))
            return
        if job is None:
            log.info("iPXE script for node %s (%s): no job, boot from disk", node, norm)
            self._send_text(ipxe.exit_script(f"node {node} has no job"))
            return
        if job.deadline and time.time() > job.deadline:
            # a job its provider never ended (it died?): do not run the ramdisk on every boot from now on
            log.warning("iPXE script for node %s (%s): its %s job expired %.0fs ago, boot from disk", node, norm,
                        job.kind, time.time() - job.deadline)  # fmt: skip
            self._send_text(ipxe.exit_script(f"the {job.kind} job of node {node} expired"))
            return
        client = self.client_address[0]
        if self.server.lease_file is not None:
            leased = leases.wait_for_lease(self.server.lease_file, norm, client)
            if leased != client:
                log.warning("iPXE script for node %s (%s) refused to %s: dnsmasq leased that MAC %s", node, norm,
                            client, f"to {leased}" if leased else "no address")  # fmt: skip
                raise CallbackError(
                    HTTPStatus.FORBIDDEN, f"{norm}: the boot script goes only to the address leased to that MAC"
                )
        try:
            script = ipxe.ramdisk_script(
                self.server.base_url, job.node, job.kind, job.token, debug=self.server.ramdisk_debug
            )
        except ipxe.ScriptError as exc:
            log.error("iPXE script for node %s: %s", node, exc)
            raise CallbackError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc)) from None
        log.info("iPXE script for node %s (%s, %s job) sent to %s", node, norm, job.kind, self.client_address[0])
        self._send_text(script)

    # -- files ---------------------------------------------------------------------------------------------------
    def _send_file(self, root: Path, segments: list[str]) -> None:
        self._stream(resolve_inside(root, segments))

    def _stream(self, path: Path) -> None:
        """Send ``path`` with Content-Length (or one Range, 206), in 1 MiB sendfile chunks."""
        try:
            fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise CallbackError(HTTPStatus.NOT_FOUND, f"{self._path()} does not exist") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            start, end = self._range(size)
            length = end - start
            status = HTTPStatus.PARTIAL_CONTENT if (start, end) != (0, size) else HTTPStatus.OK
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            self.wfile.flush()
            offset = start
            began = time.monotonic()
            try:
                while offset < end:
                    sent = self.connection.sendfile(fh, offset, min(CHUNK, end - offset))
                    if sent == 0:  # the file shrank under us: the client sees a short body
                        self.close_connection = True
                        log.error("%s: file ended at byte %d of %d", self._path(), offset, end)
                        return
                    offset += sent
            finally:
                if length >= BIG_FILE or offset < end:
                    seconds = max(time.monotonic() - began, 1e-6)
                    log.info("%s %s: sent %d of %d bytes in %.1fs (%.0f MiB/s) to %s", self.command, self._path(),
                             offset - start, length, seconds, (offset - start) / seconds / CHUNK,
                             self.client_address[0])  # fmt: skip

    def _range(self, size: int) -> tuple[int, int]:
        header = self.headers.get("Range")
        if not header:
            return 0, size
        match = _RANGE_RE.match(header.strip())
        if not match or match.groups() == ("", ""):
            raise CallbackError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"unsupported Range {header[:60]!r}")
        first, last = match.groups()
        # (RFC 9110 14.1.2: a last position at or past the end means the end; a number of any length is valid
        # syntax, so the digits are capped before int() -- Python refuses to convert more than 4300 of them)
        if first == "":  # suffix: the last N bytes
            start, end = max(0, size - _capped(last, size)), size
        else:
            start = _capped(first, size)
            end = min(size, _capped(last, size) + 1) if last else size
        if start >= size or start >= end:
            raise CallbackError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, f"Range {header[:60]!r} outside 0-{size}")
        return start, end

    # -- callbacks -----------------------------------------------------------------------------------------------
    def _event(self, recorded: tuple[int, str]) -> int:
        self._quiet = recorded[1] == "heartbeat"
        return recorded[0]

    def _post(self, action: Callable[[bytes], int], limit: int) -> None:
        body = self._read_body(limit)
        action(body)
        self._no_content()

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise CallbackError(HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length, not chunked")
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            raise CallbackError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        length = int(raw)
        if length > limit:
            raise CallbackError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit}")
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            self.close_connection = True
            raise CallbackError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
        return body


def _capped(digits: str, cap: int) -> int:
    """The decimal number ``digits`` or ``cap``, whichever is smaller, for numbers of any length."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits), cap)


def resolve_inside(root: Path, segments: list[str]) -> Path:
    """``root/segments...`` if every segment is a plain name and the real path stays inside ``root``; else 404/400."""
    if not segments or any(not _SEGMENT_RE.match(s) for s in segments):
        raise CallbackError(HTTPStatus.BAD_REQUEST, "file names are plain names ([A-Za-z0-9._+-], no '..' or '/')")
    base = root.resolve()
    target = base.joinpath(*segments).resolve()
    if not target.is_relative_to(base) or target == base:
        raise CallbackError(HTTPStatus.BAD_REQUEST, "path leads outside the served directory")
    if not target.is_file():
        raise CallbackError(HTTPStatus.NOT_FOUND, f"/{'/'.join(segments)} does not exist")
    return target


def serve_in_thread(server: MetalHTTPServer) -> contextlib.AbstractContextManager[MetalHTTPServer]:
    """Run ``server`` in a background thread (``metal-http-<port>``) for the ``with`` block; shut it down and close
    it afterwards (:func:`stemforge_base.net.serving`)."""
    return serving(server, f"metal-http-{server.port}")
