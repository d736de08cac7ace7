"""``http_directory`` / ``http_content``: a small HTTP server on 127.0.0.1 only, on a free port in
``[http_port_min, http_port_max]`` (Packer's StepHTTPServer). The guest reaches it through a QEMU ``guestfwd`` rule
(see ``qemu_process``), never through a host interface."""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import random
import threading
from pathlib import Path
from typing import Any

from builders.core import BuildError

LOG = logging.getLogger("stemforge.builders.qemu.http")


class _DirHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("http %s - %s", self.address_string(), format % args)


class _ContentHandler(http.server.BaseHTTPRequestHandler):
    content: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = "/" + self.path.split("?", 1)[0].lstrip("/")
        data = self.content.get(path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.debug("http %s - %s", self.address_string(), format % args)


class HTTPServer:
    """Serves a directory or a content map; ``start`` picks the port, ``stop`` is idempotent."""

    def __init__(self, directory: Path | None = None, content: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.content = {("/" + k.lstrip("/")): v.encode() for k, v in (content or {}).items()}
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port_min: int, port_max: int) -> int:
        """Listen on a free port of the range. A missing directory fails here, at build time, as Packer's
        ``StepHTTPServer.Run`` does (its HTTPConfig.Prepare does not look at the directory)."""
        if self.directory is not None and not self.directory.exists():
            raise BuildError(f'Error finding "{self.directory}": stat {self.directory}: no such file or directory')
        handler: Any
        if self.directory is not None:
            handler = functools.partial(_DirHandler, directory=str(self.directory))
        else:
            handler = type("Content", (_ContentHandler,), {"content": self.content})
        ports = list(range(port_min, port_max + 1))
        start = random.randrange(len(ports))
        last: OSError | None = None
        for port in ports[start:] + ports[:start]:
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError as exc:
                last = exc
                continue
            server.daemon_threads = True
            self._server = server
            self.port = port
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                            name=f"http-{port}", daemon=True)
            self._thread.start()
            return port
        raise OSError(f"no free port on 127.0.0.1 between {port_min} and {port_max}: {last}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
