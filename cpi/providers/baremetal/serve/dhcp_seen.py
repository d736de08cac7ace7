"""The DHCP-seen signal: every address dnsmasq hands to an enrolled server becomes a ``dhcp`` event of that node.

``metal serve`` passes :func:`recorder` to :class:`~cpi.providers.baremetal.serve.dnsmasq.DnsmasqProcess` as its
line callback. dnsmasq logs each acknowledged lease as ``DHCPACK(<interface>) <ip> <mac>[ <hostname>]`` (its
``log_packet()`` in ``src/rfc2131.c``; with ``--log-dhcp`` the line starts with the transaction id), the same for
a PXE ROM, iPXE, our ramdisk and the OS booted from the server's disk. The event data is ``{"mac", "ip",
"interface"}``; the provider tells the sources apart by order (see ``provider._WaitBooted``): a DHCP request that
arrives after create_vm rebooted the server into its deployed disk comes from that disk's OS, which needs no agent
of ours to send it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cpi.providers.baremetal.config import DHCP_EVENT
from cpi.providers.baremetal.serve.shared_store import SharedStore

log = logging.getLogger("stemforge.metal.dhcp")

_ACK_RE: Final = re.compile(
    r"(?:^|\s)DHCPACK\((?P<interface>[^)\s]+)\) (?P<ip>\d{1,3}(?:\.\d{1,3}){3}) "
    r"(?P<mac>[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5})(?:\s|$)"
)


@dataclass(frozen=True)
class DhcpAck:
    interface: str
    ip: str
    mac: str


def parse_ack(text: str) -> DhcpAck | None:
    """The lease a dnsmasq log line acknowledges, or None for any other line."""
    match = _ACK_RE.search(text)
    if match is None:
        return None
    return DhcpAck(match["interface"], match["ip"], match["mac"].lower())


def recorder(store: SharedStore) -> Callable[[str], None]:
    """A dnsmasq line callback recording each DHCPACK to an enrolled MAC as a ``dhcp`` event of its node.
    Lines for unknown MACs are ignored; a store error is logged and never stops dnsmasq's log pump."""

    def on_line(text: str) -> None:
        ack = parse_ack(text)
        if ack is None:
            return
        try:
            node = store.call(lambda s: s.node_for_mac(ack.mac))
            if node is not None:
                data = {"kind": DHCP_EVENT, "mac": ack.mac, "ip": ack.ip, "interface": ack.interface}
                store.call(lambda s: s.add_event(node, DHCP_EVENT, data))
        except Exception as exc:  # noqa: BLE001 - a lost signal is reported, the DHCP service goes on
            log.warning("cannot record the DHCP lease of %s: %s", ack.mac, exc)

    return on_line
