"""Power and management over Redfish, through the OpenStack ``sushy`` client library.

- Power: ``ComputerSystem.Reset`` (On / ForceOff / ForceRestart), then the system's ``PowerState`` is polled until
  it reaches the target, bounded by ``timeouts.power`` (real BMCs and sushy-tools apply power changes later).
- Boot device: ``Boot.BootSourceOverrideTarget`` Pxe / Hdd with ``BootSourceOverrideEnabled`` Once / Continuous.
- Every HTTP exchange goes through ``base.call_bmc``: paced per BMC, retried with backoff on connection errors,
  timeouts and 5xx, failed at once on 4xx (401/403: credentials refused). sushy's own retry loops are reduced to a
  single attempt so that ours is the only policy.

The node's ``bmc.address`` is the BMC's base URL (``http://127.0.0.1:8000``); ``bmc.system_id`` the system's path
(``/redfish/v1/Systems/<id>``) or bare id. Clients are cached per process, keyed by URL and user.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
import sushy
from sushy import exceptions as sushy_exc
from sushy.auth import BasicAuth

from cpi.providers.baremetal.interfaces.base import (
    BOOT_DISK,
    BOOT_PXE,
    POWER_OFF,
    POWER_ON,
    POWER_RESET,
    BmcError,
    ManagementInterface,
    PowerInterface,
    Task,
    call_bmc,
)

_clients: dict[tuple[str, str, str], sushy.Sushy] = {}
_clients_lock = threading.Lock()

_BOOT_TARGETS = {BOOT_PXE: sushy.BootSource.PXE, BOOT_DISK: sushy.BootSource.HDD}
_RESETS = {
    POWER_ON: sushy.ResetType.ON,
    POWER_OFF: sushy.ResetType.FORCE_OFF,
    POWER_RESET: sushy.ResetType.FORCE_RESTART,
}


def system_path(system_id: str) -> str:
    """``abc`` → ``/redfish/v1/Systems/abc``; a full path is kept."""
    if system_id.startswith("/"):
        return system_id.rstrip("/")
    return f"/redfish/v1/Systems/{system_id}"


def transient(exc: BaseException) -> bool:
    """Worth retrying: no answer, a timeout, or a 5xx."""
    if isinstance(exc, sushy_exc.ServerSideError):
        return True
    if isinstance(exc, sushy_exc.ConnectionError):
        return True
    if isinstance(exc, sushy_exc.HTTPError):
        return int(getattr(exc, "status_code", 0) or 0) >= 500
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | OSError)


def describe(exc: BaseException) -> str:
    """A short reason without secrets (sushy messages carry URLs and the BMC's error text, never credentials)."""
    if isinstance(exc, sushy_exc.AccessError):
        return f"HTTP {exc.status_code}: credentials refused"
    if isinstance(exc, sushy_exc.HTTPError):
        detail = (exc.detail or exc.message or "").strip().splitlines()
        return f"HTTP {exc.status_code}: {detail[0][:200] if detail else ''}".rstrip(": ")
    if isinstance(exc, sushy_exc.ConnectionError):
        text = str(exc)
        for marker in ("Read timed out", "Connection refused", "timed out", "Max retries exceeded"):
            if marker in text:
                return f"connection error ({marker.lower()})"
        return "connection error"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class RedfishClient:
    """The per-node view of one Redfish BMC, with every call paced and retried."""

    def __init__(self, task: Task) -> None:
        self.task = task
        bmc = task.node.bmc
        self.base_url = bmc.address.rstrip("/")
        self.path = system_path(bmc.system_id or "1")

    def _connection(self) -> sushy.Sushy:
        bmc = self.task.node.bmc
        policy = self.task.config.bmc
        key = (self.base_url, bmc.username, bmc.password)
        with _clients_lock:
            conn = _clients.get(key)
        if conn is not None:
            return conn
        conn = sushy.Sushy(
            self.base_url,
            auth=BasicAuth(username=bmc.username, password=bmc.password),
            verify=bmc.verify_tls,
            server_side_retries=1,  # sushy retries GETs on 5xx this many times: ours is the only retry loop
            server_side_retries_delay=0,
            read_timeout=policy.read_timeout_s,
            connect_timeout=policy.connect_timeout_s,
        )
        with _clients_lock:
            _clients[key] = conn
        return conn

    def call(self, what: str, fn: Any) -> Any:
        def run() -> Any:
            return fn(self._connection())

        return call_bmc(self.task, what, run, transient, describe)

    def system(self) -> Any:
        return self.call("GET system", lambda conn: conn.get_system(self.path))


def forget_clients() -> None:
    """Drop cached connections (tests; a BMC whose credentials changed)."""
    with _clients_lock:
        _clients.clear()


def _power_word(value: Any) -> str:
    text = str(getattr(value, "value", value) or "unknown")
    return text.lower()


class RedfishPower(PowerInterface):
    def get_power_state(self, task: Task) -> str:
        return _power_word(RedfishClient(task).system().power_state)

    def request_power(self, task: Task, action: str) -> None:
        reset = _RESETS[action]
        client = RedfishClient(task)
        label = "reset" if action == POWER_RESET else f"power {action}"
        client.call(label, lambda conn: conn.get_system(client.path).reset_system(reset))


class RedfishManagement(ManagementInterface):
    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in _BOOT_TARGETS:
            raise BmcError(f"node {task.node.name}: unknown boot device {device!r} (pxe or disk)")
        client = RedfishClient(task)
        enabled = sushy.BootSourceOverrideEnabled.CONTINUOUS if persistent else sushy.BootSourceOverrideEnabled.ONCE
        client.call(
            f"set boot device {device}",
            lambda conn: conn.get_system(client.path).set_system_boot_options(
                target=_BOOT_TARGETS[device], enabled=enabled
            ),
        )

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        boot = RedfishClient(task).system().boot
        target = getattr(boot.target, "value", boot.target)
        enabled = getattr(boot.enabled, "value", boot.enabled)
        words = {"Pxe": BOOT_PXE, "Hdd": BOOT_DISK}
        return {"device": words.get(str(target), str(target).lower()), "persistent": str(enabled) == "Continuous"}

    def get_bmc_info(self, task: Task) -> dict[str, Any]:
        system = RedfishClient(task).system()
        return {
            "driver": "redfish",
            "address": task.node.bmc.address,
            "system": system.path,
            "name": system.name,
            "uuid": system.uuid,
            "manufacturer": system.manufacturer,
            "power_state": _power_word(system.power_state),
        }
