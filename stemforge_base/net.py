"""Network address predicates shared by the packages (imports only the standard library)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, optionally with a ``%zone``, or ``localhost``) only reaches this machine.
    A name other than ``localhost``/``localhost.localdomain`` is not loopback (it is never resolved here)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
