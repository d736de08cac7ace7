"""dnsmasq's lease file, read by ``metal serve`` to bind a MAC's iPXE script to the address dnsmasq leased it.

The per-MAC iPXE script carries the job token, so ``GET /ipxe/<mac>`` is answered only to the address that
dnsmasq's current lease for ``<mac>`` names (see ``http.py``). The file format is dnsmasq's ``lease_update_file()``
(``src/lease.c``): one IPv4 lease per line, ``<expiry epoch s, 0 = infinite> <hwaddr> <ip> <hostname|*>
<client-id|*>``, where ``<hwaddr>`` is ``aa:bb:..`` for Ethernet (other hardware types are prefixed ``<type>-``);
DHCPv6 leases follow a ``duid ...`` line and are ignored here. dnsmasq rewrites the file after every DHCP
transaction (``dhcp_packet()`` calls ``lease_update_file()`` once the reply is sent), so a lease can be a few
milliseconds younger than the client's next request: :func:`wait_for_lease` re-reads it for a short while.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from cpi.providers.baremetal.store import normalize_mac

#: How long ``GET /ipxe/<mac>`` waits for dnsmasq to write a lease that matches the caller.
LEASE_WAIT_S: Final = 2.0


def read_leases(path: Path, now: float | None = None) -> dict[str, str]:
    """MAC (normalised) -> IPv4 address of every unexpired IPv4 lease in ``path`` ({} when there is no file)."""
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    now = time.time() if now is None else now
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():  # the ``duid`` line and what follows it
            continue
        expiry = int(fields[0])
        if expiry and expiry < now:
            continue
        try:
            mac = normalize_mac(fields[1])
        except ValueError:  # not Ethernet (``<type>-...``) or a DHCPv6 line
            continue
        out[mac] = fields[2]
    return out


def wait_for_lease(path: Path, mac: str, client_ip: str, timeout: float = LEASE_WAIT_S) -> str | None:
    """The address dnsmasq leased ``mac``; when it is not ``client_ip`` re-read for up to ``timeout`` seconds
    (dnsmasq writes the file just after answering). None when ``mac`` holds no lease."""
    deadline = time.monotonic() + timeout
    while True:
        leased = read_leases(path).get(normalize_mac(mac))
        if leased == client_ip or time.monotonic() >= deadline:
            return leased
        time.sleep(0.1)
