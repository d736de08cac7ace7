"""Deploy and clean through our ramdisk (Ironic's "direct" deploy, with a busybox ramdisk).

``deploy``: start a job (``boot.prepare_ramdisk``), power the server on (or hard-reset it), then follow the
events the ramdisk posts to ``metal serve`` (stored in the shared store): one progress line per stage with the
elapsed time, until its ``result``. A failed result raises DeployFailed with the ramdisk's exact message and
stage; no result before the job's deadline raises ``no callback from node X within N s (last stage: ...)``.
A node that restarts mid-deploy (``booted`` again after later stages) is reported and followed again: the ramdisk
starts over within the same deadline. ``clean`` and ``inspect`` are the same in their modes, then power the
server off.
"""

from __future__ import annotations

import time
from typing import Any

from cpi.providers.baremetal.interfaces.base import (
    POWER_OFF,
    POWER_ON,
    BootInterface,
    DeployFailed,
    DeployInterface,
    PowerInterface,
    Task,
)
from cpi.providers.baremetal.store import Job

POLL_S = 0.5


class RamdiskDeploy(DeployInterface):
    def __init__(self, power: PowerInterface, boot: BootInterface) -> None:
        self.power = power
        self.boot = boot

    def deploy(self, task: Task, instructions: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        body = {"mode": "deploy", "heartbeat_s": task.config.heartbeat_s, **instructions}
        return self._run(task, "deploy", body, timeout_s)

    def clean(self, task: Task, timeout_s: float) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"mode": "clean", "heartbeat_s": task.config.heartbeat_s}
        erase = (task.node.plan or {}).get("erase")
        if erase:  # the plan asks for a cleaning depth (metadata or full erase); the ramdisk's default is metadata
            body["erase"] = erase
        events = self._run(task, "clean", body, timeout_s)
        self.boot.clean_up_ramdisk(task)
        self.power.set_power_state(task, POWER_OFF)
        return events

    def inspect(self, task: Task, timeout_s: float) -> list[dict[str, Any]]:
        body = {"mode": "inspect", "heartbeat_s": task.config.heartbeat_s}
        events = self._run(task, "inspect", body, timeout_s)
        self.boot.clean_up_ramdisk(task)
        self.power.set_power_state(task, POWER_OFF)
        return events

    def _run(self, task: Task, kind: str, instructions: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        after = task.store.last_event_id(task.node.name)
        job = self.boot.prepare_ramdisk(task, kind, instructions, timeout_s)
        try:
            task.say(f"node {task.node.name}: {kind}: ramdisk job ready, booting the server from the network")
            if self.power.get_power_state(task) == POWER_ON:
                self.power.reboot(task)
            else:
                self.power.set_power_state(task, POWER_ON)
            return follow(task, job, after)
        except BaseException:
            self.boot.clean_up_ramdisk(task)
            raise


def follow(task: Task, job: Job, after_id: int) -> list[dict[str, Any]]:
    """Follow the ramdisk's events for ``job`` until its result or the job's deadline (see module doc)."""
    name = task.node.name
    started = time.time()
    stages: list[dict[str, Any]] = []
    last_stage = ""
    last_heartbeat: float | None = None
    while True:
        for event in task.store.events(name, after_id=after_id, kinds=("stage", "result", "heartbeat")):
            after_id = event.id
            data = event.data
            elapsed = event.ts - started
            if event.kind == "heartbeat":
                last_heartbeat = event.ts
                continue
            stage = str(data.get("stage") or "")
            message = str(data.get("message") or "")
            if event.kind == "stage":
                if stage == "booted" and last_stage and last_stage != "booted":
                    task.say(
                        f"node {name}: {job.kind}: the server restarted (was at stage {last_stage}); "
                        f"the ramdisk starts over"
                    )
                last_stage = stage or last_stage
                stages.append(data)
                suffix = f": {message}" if message else ""
                task.say(f"node {name}: {job.kind}: {stage} ({elapsed:.1f}s){suffix}")
                continue
            # result
            if data.get("ok"):
                task.say(f"node {name}: {job.kind}: finished ({elapsed:.1f}s)")
                stages.append(data)
                return stages
            failed_at = stage or last_stage or "unknown"
            raise DeployFailed(
                f"node {name}: {job.kind} failed at stage {failed_at}: {message or 'no reason given'}", failed_at
            )
        now = time.time()
        if now >= job.deadline:
            beat = f", last heartbeat {now - last_heartbeat:.0f}s ago" if last_heartbeat else ""
            raise DeployFailed(
                f"no callback from node {name} within {job.deadline - job.created:.0f} s "
                f"(last stage: {last_stage or 'none'}{beat})",
                last_stage,
                timed_out=True,
            )
        time.sleep(min(POLL_S, max(0.0, job.deadline - now)))
