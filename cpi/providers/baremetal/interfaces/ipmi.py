"""Power and management over IPMI (RMCP+ lanplus), through ``pyghmi``.

The node's ``bmc.address`` is ``host`` or ``host:port`` (default 623). Every command goes through
``base.call_bmc``: paced per BMC (Ironic keeps seconds between IPMI commands; ``bmc.min_interval_s``), retried with
backoff when the BMC does not answer (pyghmi's timeouts, lost sessions), failed at once when it refuses
(bad credentials, an unsupported command). Power changes are polled until reached, bounded by ``timeouts.power``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cpi.providers.baremetal.interfaces.base import (
    BOOT_DISK,
    BOOT_PXE,
    BmcError,
    ManagementInterface,
    PowerInterface,
    Task,
    call_bmc,
)

_BOOTDEV = {BOOT_PXE: "network", BOOT_DISK: "hd"}
_TRANSIENT_WORDS = ("timeout", "timed out", "session no longer connected", "no response", "unreachable",
                    "connection", "temporarily", "busy")  # fmt: skip


def address(task: Task) -> tuple[str, int]:
    host, _, port = task.node.bmc.address.rpartition(":") if task.node.bmc.address.count(":") == 1 else (
        task.node.bmc.address, "", "")  # fmt: skip
    if not host:
        return task.node.bmc.address, 623
    try:
        return host, int(port) if port else 623
    except ValueError:
        raise BmcError(f"node {task.node.name}: IPMI address {task.node.bmc.address!r} is not host[:port]") from None


def transient(exc: BaseException) -> bool:
    """No answer (pyghmi raises IpmiException without a message when the session never opened), a timeout or a
    lost session: worth retrying. A refusal (bad password, unsupported command) is not."""
    text = str(exc).lower()
    if type(exc).__name__ == "IpmiException" and text in ("", "none"):
        return True
    return isinstance(exc, OSError) or any(word in text for word in _TRANSIENT_WORDS)


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if text in ("", "None"):
        return "no answer from the BMC"
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"


_PATCHED = False
_commands: dict[tuple[str, int, str, str], Any] = {}


def _follow_negotiated_auth() -> None:
    """pyghmi's client offers RAKP-HMAC-SHA256 first and keeps using it even when the BMC's open-session response
    picks RAKP-HMAC-SHA1 (cipher suite 3; pyghmi's own BMC side, hence virtualbmc, always does): the RAKP2 check
    then fails with a struct error. Follow the algorithm the BMC chose (byte 16 of the response: 1 = SHA1)."""
    global _PATCHED
    if _PATCHED:
        return
    from pyghmi.ipmi.private import session  # lazy: pyghmi loads only when an IPMI node is driven

    original = session.Session._got_rmcp_response

    def got_rmcp_response(self: Any, data: Any) -> Any:
        if len(data) > 24 and data[1] == 0 and data[16] == 1 and self.currhashlib is hashlib.sha256:
            self.attemptedhash = 1
            self.currhashlib = hashlib.sha1
            self.currhashlen = 12
        return original(self, data)

    session.Session._got_rmcp_response = got_rmcp_response
    _PATCHED = True


def _run(task: Task, what: str, fn: Any) -> Any:
    from pyghmi.ipmi import command  # lazy: as above

    _follow_negotiated_auth()

    host, port = address(task)
    bmc = task.node.bmc

    def call() -> Any:
        # one pyghmi session per (BMC, user) and process: a second Command on a live session hangs
        key = (host, port, bmc.username, bmc.password)
        conn = _commands.get(key)
        if conn is None or getattr(conn.ipmi_session, "broken", False) or not conn.ipmi_session.logged:
            conn = command.Command(bmc=host, userid=bmc.username, password=bmc.password, port=port, keepalive=False)
            _commands[key] = conn
        try:
            return fn(conn)
        except Exception:
            _commands.pop(key, None)
            raise

    return call_bmc(task, what, call, transient, describe)


class IpmiPower(PowerInterface):
    def get_power_state(self, task: Task) -> str:
        return str(_run(task, "get power", lambda c: c.get_power())["powerstate"]).lower()

    def request_power(self, task: Task, action: str) -> None:
        label = "reset" if action == "reset" else f"power {action}"
        _run(task, label, lambda c: c.set_power(action, wait=False))


class IpmiManagement(ManagementInterface):
    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        if device not in _BOOTDEV:
            raise BmcError(f"node {task.node.name}: unknown boot device {device!r} (pxe or disk)")
        _run(task, f"set boot device {device}", lambda c: c.set_bootdev(_BOOTDEV[device], persist=persistent))

    def get_boot_device(self, task: Task) -> dict[str, Any]:
        answer = _run(task, "get boot device", lambda c: c.get_bootdev())
        words = {"network": BOOT_PXE, "hd": BOOT_DISK}
        dev = str(answer.get("bootdev", ""))
        return {"device": words.get(dev, dev), "persistent": bool(answer.get("persistent", False))}

    def get_bmc_info(self, task: Task) -> dict[str, Any]:
        power = _run(task, "get power", lambda c: c.get_power())
        return {"driver": "ipmi", "address": task.node.bmc.address, "power_state": str(power["powerstate"]).lower()}
