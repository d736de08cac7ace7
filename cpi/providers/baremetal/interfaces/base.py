"""Ironic-style hardware interfaces: a server is driven through power, management, boot and deploy interfaces.

New hardware support is a new implementation of one interface (``redfish.py``, ``ipmi.py``, ...) registered in
``interfaces/__init__.py``; nothing else changes. Every method gets a ``Task``: the node (as read when the task
started, refreshed with ``task.refresh()``), the shared store, the config and a logger. Providers take the node's
lock (``Task.acquire``) for the whole operation so that two processes never drive one server at once.

BMC failures are ``BmcError`` (refused: 4xx, bad credentials; fail fast) or ``BmcUnreachable`` (timeouts,
connection errors, 5xx after the retries): callers turn the latter into maintenance with the reason.
Messages name the node and the BMC address, never credentials.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cpi.providers.baremetal.config import BmcPolicy, MetalConfig
from cpi.providers.baremetal.store import Job, MetalStore, Node
from stemforge_base.sqlite_store import safe_name

T = TypeVar("T")

POWER_ON = "on"
POWER_OFF = "off"
POWER_RESET = "reset"
BOOT_PXE = "pxe"
BOOT_DISK = "disk"


class InterfaceError(Exception):
    """A hardware interface failed; ``message`` names the node and what failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BmcError(InterfaceError):
    """The BMC answered but refused (4xx, bad credentials, unsupported value): retrying will not help."""


class BmcUnreachable(InterfaceError):
    """The BMC stayed unreachable (timeouts, connection errors, 5xx) through every retry."""


class DeployFailed(InterfaceError):
    """The ramdisk reported a failure, or never called back in time. ``stage`` is the last stage reached."""

    def __init__(self, message: str, stage: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.timed_out = timed_out


@dataclass
class Task:
    """One operation on one node. ``node`` is a snapshot; ``refresh()`` re-reads it."""

    store: MetalStore
    node: Node
    config: MetalConfig
    log: logging.Logger
    who: str = "stemforge"
    progress: Callable[[str], None] | None = field(default=None, repr=False)

    @classmethod
    @contextlib.contextmanager
    def acquire(
        cls, store: MetalStore, name: str, config: MetalConfig, log: logging.Logger, who: str = "stemforge"
    ) -> Iterator[Task]:
        """Lock the node (waiting for another process's operation to end) and yield a task for it."""
        with store.lock("node", name):
            yield cls(store, store.get_node(name), config, log, who)

    def refresh(self) -> Node:
        self.node = self.store.get_node(self.node.name)
        return self.node

    def say(self, message: str) -> None:
        """A progress line (also logged)."""
        self.log.info("%s", message)
        if self.progress is not None:
            self.progress(message)


class PowerInterface(ABC):
    """A driver's power: it reads the state and requests a change (``get_power_state``, ``request_power``); turning
    on/off and rebooting, each waited for until the BMC reports the result, are the same for every driver."""

    @abstractmethod
    def get_power_state(self, task: Task) -> str:
        """``"on"`` or ``"off"`` (anything else is reported as the BMC's own word, lower case)."""

    @abstractmethod
    def request_power(self, task: Task, action: str) -> None:
        """Ask the BMC for ``"on"``, ``"off"`` (forced) or ``"reset"`` (hard) without waiting for it."""

    def set_power_state(self, task: Task, state: str, timeout: float | None = None) -> None:
        """Turn the server on or off (forced) and wait, bounded by ``timeout`` (default timeouts.power), until
        the BMC reports that state. No-op when already there."""
        if state not in (POWER_ON, POWER_OFF):
            raise BmcError(f"node {task.node.name}: unknown power state {state!r} (on or off)")
        if self.get_power_state(task) != state:
            self.request_power(task, state)
        wait_for_power(task, self, state, timeout or task.config.timeouts.power)

    def reboot(self, task: Task, timeout: float | None = None) -> None:
        """Hard reset (or power on when off) and wait until the BMC reports it on."""
        self.request_power(task, POWER_RESET if self.get_power_state(task) == POWER_ON else POWER_ON)
        wait_for_power(task, self, POWER_ON, timeout or task.config.timeouts.power)


class ManagementInterface(ABC):
    @abstractmethod
    def set_boot_device(self, task: Task, device: str, persistent: bool = False) -> None:
        """Boot from ``"pxe"`` or ``"disk"``, once (next boot only) or persistently."""

    @abstractmethod
    def get_boot_device(self, task: Task) -> dict[str, Any]:
        """``{"device": "pxe"|"disk"|<other>, "persistent": bool}``."""

    @abstractmethod
    def get_bmc_info(self, task: Task) -> dict[str, Any]:
        """What the BMC says about the system (manufacturer, model, power state, ...), no secrets."""


class BootInterface(ABC):
    @abstractmethod
    def prepare_ramdisk(self, task: Task, kind: str, instructions: dict[str, Any], timeout_s: float) -> Job:
        """Arrange for the next boot to run the deploy ramdisk with a new job (``kind`` deploy|clean)."""

    @abstractmethod
    def clean_up_ramdisk(self, task: Task) -> None:
        """End the node's job: its next network boot falls through to the disk."""

    @abstractmethod
    def prepare_instance(self, task: Task) -> None:
        """Arrange for the server to boot the installed OS from its disk from now on."""


class DeployInterface(ABC):
    @abstractmethod
    def deploy(self, task: Task, instructions: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        """Boot the ramdisk, let it write the image and config drive, follow its stages until its ``result``.
        Returns the stage events seen. Raises DeployFailed (exact failure, or no callback within the bound)."""

    @abstractmethod
    def clean(self, task: Task, timeout_s: float) -> list[dict[str, Any]]:
        """Boot the ramdisk in clean mode (wipe signatures and the first/last MiB of every disk), wait for its
        result, power the server off. Raises DeployFailed like ``deploy``."""

    @abstractmethod
    def inspect(self, task: Task, timeout_s: float) -> list[dict[str, Any]]:
        """Boot the ramdisk in inspect mode (nothing written), wait for its result (whose data is the hardware
        report), power the server off. Raises DeployFailed like ``deploy``."""


@dataclass(frozen=True)
class Hardware:
    """The interfaces one node is driven through."""

    power: PowerInterface
    management: ManagementInterface
    boot: BootInterface
    deploy: DeployInterface


# -- shared BMC plumbing: pacing and retries -------------------------------------------------------------------
class BmcPacer:
    """At least ``min_interval_s`` between two calls to one BMC, across every process sharing the state dir
    (a timestamp in a locked file under ``<state_dir>/locks``)."""

    def __init__(self, store: MetalStore, address: str, min_interval_s: float) -> None:
        self.path = store.dir / "locks" / f"bmc-{safe_name(address)}.lock"
        self.min_interval_s = min_interval_s

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if self.min_interval_s <= 0:
            yield
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 64, 0)
            try:
                last = float(raw.decode() or 0)
            except ValueError:
                last = 0.0
            wait = last + self.min_interval_s - time.time()
            if 0 < wait <= self.min_interval_s:
                time.sleep(wait)
            try:
                yield
            finally:
                stamp = f"{time.time():.6f}".encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def call_bmc(
    task: Task,
    what: str,
    fn: Callable[[], T],
    transient: Callable[[BaseException], bool],
    describe: Callable[[BaseException], str],
    policy: BmcPolicy | None = None,
) -> T:
    """Run one BMC call paced per BMC and retried with exponential backoff while ``transient(exc)``; after the
    last attempt BmcUnreachable, on a non-transient error BmcError at once. Messages: node, BMC, what, why."""
    from tenacity import (
        RetryCallState,
        Retrying,
        retry_if_exception,
        stop_after_attempt,
        stop_after_delay,
        wait_exponential,
    )

    policy = policy or task.config.bmc
    node = task.node
    pacer = BmcPacer(task.store, node.bmc.address, policy.min_interval_s)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        task.log.warning(
            "node %s: BMC %s: %s failed (%s); attempt %d/%d, retrying in %.1fs",
            node.name,
            node.bmc.address,
            what,
            describe(exc) if exc else "?",
            state.attempt_number,
            policy.attempts,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def attempt() -> T:
        with pacer.turn():
            return fn()

    try:
        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_elapsed_s),
            wait=wait_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s),
            retry=retry_if_exception(transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(attempt)
    except InterfaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below, never leaked raw
        reason = describe(exc)
        if transient(exc):
            raise BmcUnreachable(
                f"node {node.name}: BMC {node.bmc.address} unreachable: {what} failed after retries: {reason}"
            ) from None
        raise BmcError(f"node {node.name}: BMC {node.bmc.address} refused {what}: {reason}") from None


def wait_for_power(task: Task, power: PowerInterface, target: str, timeout: float) -> None:
    """Poll the power state until ``target`` (bounded); BmcError naming the last state seen on timeout."""
    deadline = time.monotonic() + timeout
    interval = 0.5
    state = "?"
    while True:
        state = power.get_power_state(task)
        if state == target:
            return
        if time.monotonic() >= deadline:
            raise BmcError(
                f"node {task.node.name}: BMC {task.node.bmc.address} did not reach power {target} within "
                f"{timeout:g}s (last state: {state})"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 3.0)
