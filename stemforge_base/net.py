"""Network helpers shared by the packages (imports only the standard library): the loopback-address rule and a
``socketserver`` server run in a background thread."""

from __future__ import annotations

import contextlib
import ipaddress
import socketserver
import threading
from collections.abc import Iterator
from typing import TypeVar

ServerT = TypeVar("ServerT", bound=socketserver.BaseServer)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, optionally with a ``%zone``, or ``localhost``) only reaches this machine.
    A name other than ``localhost``/``localhost.localdomain`` is not loopback (it is never resolved here)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def serving(server: ServerT, name: str, *, poll_interval: float = 0.2) -> Iterator[ServerT]:
    """Run ``server.serve_forever`` in a daemon thread named ``name`` for the ``with`` block; afterwards shut it
    down, close its socket and wait (at most 10 s) for the thread."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name=name,
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
