"""Network boot through PXE/iPXE and ``stemforge metal serve``.

The provisioning services answer a node's ``GET /ipxe/<mac>`` with the deploy ramdisk only while the node has a
job in the store; otherwise iPXE exits and the firmware boots the disk. So:

- ``prepare_ramdisk`` = create the job (new token) + one-time PXE boot through the BMC;
- ``clean_up_ramdisk`` = end the job (the ramdisk's token stops working);
- ``prepare_instance`` = end the job + boot from disk persistently.
"""

from __future__ import annotations

from typing import Any

from cpi.providers.baremetal.interfaces.base import BOOT_DISK, BOOT_PXE, BootInterface, ManagementInterface, Task
from cpi.providers.baremetal.store import Job


class IpxeBoot(BootInterface):
    def __init__(self, management: ManagementInterface) -> None:
        self.management = management

    def prepare_ramdisk(self, task: Task, kind: str, instructions: dict[str, Any], timeout_s: float) -> Job:
        job = task.store.start_job(task.node.name, kind, instructions, timeout_s)
        try:
            self.management.set_boot_device(task, BOOT_PXE, persistent=False)
        except BaseException:
            task.store.end_job(task.node.name)
            raise
        return job

    def clean_up_ramdisk(self, task: Task) -> None:
        task.store.end_job(task.node.name)

    def prepare_instance(self, task: Task) -> None:
        task.store.end_job(task.node.name)
        self.management.set_boot_device(task, BOOT_DISK, persistent=True)
