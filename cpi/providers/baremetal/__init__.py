"""The bare-metal CPI provider: BOSH VMs as enrolled servers, driven through Ironic-style hardware interfaces and
deployed by PXE/iPXE and our ramdisk. Four deployables live here; only the first is the provider:

* the provider (this package's top-level modules and ``interfaces/``): ``provider.py`` (the CPI methods),
  ``config.py``, ``store.py`` + ``states.py`` (the inventory database and its state machine), ``inventory.py``
  (enrolment and the operator verbs), ``interfaces/`` (power, management, boot, deploy drivers), ``instructions.py``
  (the ramdisk job contract), ``root_hints.py``, ``plan_disks.py``, ``layout.py``, ``inspection.py``,
  ``stemcell_images.py``; ``cli.py`` is ``stemforge metal`` (inventory verbs; it registers the ``serve`` and ``lab``
  flags from their ``cli`` modules and imports their work only when such a verb runs);
* ``serve/``: the ``stemforge metal serve`` daemon (DHCP/TFTP, iPXE, HTTP, callbacks) on the provisioning network;
* ``ramdisk/``: the deploy ramdisk's offline build and the scripts it runs;
* ``lab/``: the emulated lab (libvirt servers, Redfish BMCs, a network namespace) for development and tests.

May import: ``cpi`` (protocol, errors, state), ``stemcells`` and ``stemforge_base``; never another provider. The
provider's modules never import ``serve/`` or ``lab/``; those two may import the provider, never each other.
"""
