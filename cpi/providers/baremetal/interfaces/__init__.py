"""The hardware interfaces a node is driven through, chosen by its BMC driver (``hardware_for``)."""

from __future__ import annotations

from cpi.providers.baremetal.interfaces.base import Hardware, ManagementInterface, PowerInterface
from cpi.providers.baremetal.interfaces.boot_ipxe import IpxeBoot
from cpi.providers.baremetal.interfaces.deploy_ramdisk import RamdiskDeploy
from cpi.providers.baremetal.store import Node

DRIVERS = ("redfish", "ipmi")


def hardware_for(node: Node) -> Hardware:
    """Power/management from the node's BMC driver; boot is iPXE and deploy our ramdisk for every driver."""
    power: PowerInterface
    management: ManagementInterface
    if node.bmc.driver == "redfish":
        # lazy: a driver's client library (sushy, pyghmi) loads only for the nodes that use it
        from cpi.providers.baremetal.interfaces.redfish import RedfishManagement, RedfishPower

        power, management = RedfishPower(), RedfishManagement()
    elif node.bmc.driver == "ipmi":
        from cpi.providers.baremetal.interfaces.ipmi import IpmiManagement, IpmiPower  # lazy: as above

        power, management = IpmiPower(), IpmiManagement()
    else:
        raise ValueError(f"node {node.name}: unknown BMC driver {node.bmc.driver!r} (known: {', '.join(DRIVERS)})")
    boot = IpxeBoot(management)
    return Hardware(power=power, management=management, boot=boot, deploy=RamdiskDeploy(power, boot))
