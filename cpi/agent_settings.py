"""The settings document a BOSH agent reads at boot (bosh-agent ``settings/settings.go``), built by the CPI.

``build`` makes the document from create_vm's arguments and the CPI's ``agent`` config; ``with_persistent`` /
``without_persistent`` return updated copies when disks are attached or detached so a rebooted agent sees the
truth. ``env`` is passed through verbatim; it holds secrets, so callers never log the document.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def build(
    *,
    agent_id: str,
    vm_name: str,
    networks: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, Any],
    agent_config: Mapping[str, Any],
    system_disk: Any,
    ephemeral_disk: Any | None,
    persistent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings document. ``networks`` must already carry each NIC's ``mac``; ``agent_config`` is the CPI
    config's ``agent`` section (mbus, ntp, blobstore), which ``env.bosh`` overrides inside the agent itself."""
    settings: dict[str, Any] = {
        "agent_id": agent_id,
        "vm": {"name": vm_name},
        "mbus": agent_config.get("mbus", ""),
        "ntp": list(agent_config.get("ntp", [])),
        "blobstore": copy.deepcopy(dict(agent_config.get("blobstore", {}))),
        "networks": {name: _agent_network(net) for name, net in networks.items()},
        "disks": {
            "system": system_disk,
            "ephemeral": ephemeral_disk,
            "persistent": dict(persistent or {}),
            "raw_ephemeral": None,
        },
        "env": copy.deepcopy(dict(env)),
    }
    return settings


def with_persistent(settings: Mapping[str, Any], disk_cid: str, hint: Any) -> dict[str, Any]:
    """A copy of ``settings`` listing ``disk_cid`` with ``hint`` under ``disks.persistent``."""
    out = copy.deepcopy(dict(settings))
    out.setdefault("disks", {}).setdefault("persistent", {})[disk_cid] = hint
    return out


def with_persistent_paths(settings: Mapping[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``settings`` whose persistent disk hints (those listed in ``paths``, by CID) carry the given
    device ``path``; a string hint becomes that string."""
    out = copy.deepcopy(dict(settings))
    persistent = out.setdefault("disks", {}).setdefault("persistent", {})
    for cid, path in paths.items():
        if cid not in persistent:
            continue
        if isinstance(persistent[cid], dict):
            persistent[cid]["path"] = path
        else:
            persistent[cid] = path
    return out


def without_persistent(settings: Mapping[str, Any], disk_cid: str) -> dict[str, Any]:
    """A copy of ``settings`` without ``disk_cid`` under ``disks.persistent``."""
    out = copy.deepcopy(dict(settings))
    out.setdefault("disks", {}).setdefault("persistent", {}).pop(disk_cid, None)
    return out


_NETWORK_KEYS = ("type", "ip", "netmask", "gateway", "dns", "default", "mac", "use_dhcp", "preconfigured",
                 "routes", "alias", "prefix", "cloud_properties")


def _agent_network(net: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: copy.deepcopy(net[k]) for k in _NETWORK_KEYS if k in net}
    if out.get("type") == "dynamic":
        out["use_dhcp"] = True
    return out


def openstack_network_data(networks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """cloud-init's ``network_data.json`` for the same networks (links by MAC, ipv4 or ipv4_dhcp)."""
    links: list[dict[str, Any]] = []
    nets: list[dict[str, Any]] = []
    dns: list[str] = []
    for index, (name, net) in enumerate(sorted(networks.items())):
        if not net.get("mac"):
            continue
        link_id = f"tap{index}"
        links.append({"id": link_id, "type": "phy", "ethernet_mac_address": net["mac"], "mtu": None})
        entry: dict[str, Any] = {"id": name, "link": link_id, "network_id": name}
        if net.get("type") == "dynamic" or net.get("use_dhcp"):
            entry["type"] = "ipv4_dhcp"
        else:
            entry.update(type="ipv4", ip_address=net.get("ip"), netmask=net.get("netmask"))
            if net.get("gateway") and "gateway" in (net.get("default") or []):
                entry["routes"] = [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": net["gateway"]}]
        nets.append(entry)
        dns.extend(d for d in net.get("dns") or [] if d not in dns)
    return {"links": links, "networks": nets, "services": [{"type": "dns", "address": d} for d in dns]}
