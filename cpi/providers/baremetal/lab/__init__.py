"""The emulated bare-metal lab (``stemforge metal lab up|down|status``): libvirt domains as servers, sushy-tools
Redfish BMCs and ``metal serve`` in a network namespace of its own. A development and test rig, deployed nowhere.

* ``cli.py``: the ``metal lab`` flags (cheap to import); ``lifecycle.py``: ``up``/``down``/``status`` (what ``up``
  builds, in order); ``steps.py``: the steps of ``up`` with their cleanups.
* ``record.py``: ``lab.json`` and the labs root; ``files.py``: the inventory and CPI config a lab hands out.
* ``plans.py``: the servers' hardware plans (bios1, uefi2, hints3: firmware, disks, what the inventory says);
  ``disks.py``: ``metal lab disk detach|attach``.
* ``domain.py``: names, addresses and the domain XML; ``virt.py``: the lab's domains and pool in libvirtd;
  ``net.py``: the namespace, bridge and VDE switch; ``bmc.py``: the Redfish emulator; ``proc.py``: child processes.

May import: the provider's modules (``inventory`` checks the lab's own enroll file), ``ramdisk`` (the deploy
ramdisk it serves), ``cpi``, ``stemforge_base``. Never imports ``serve/`` (it starts ``python -m
cpi.providers.baremetal.serve`` in the namespace); neither the provider nor ``serve/`` imports the lab.
"""
