"""``stemforge metal serve``: the provisioning services a bare-metal server talks to while it is deployed, one
long-running daemon on the provisioning network (a deployable of its own, beside the CPI provider).

* ``cli.py``: the flags and the ``metal serve`` subcommand (cheap to import); ``__main__.py``: ``python -m``.
* ``daemon.py``: the process that runs all of the below (start-up steps, ready file, signals).
* ``dnsmasq.py``: the DHCP + TFTP child process (per-MAC host entries for enrolled servers, iPXE chainload);
  ``dhcp_seen.py`` turns its lease log lines into ``dhcp`` events; ``leases.py`` reads its lease file.
* ``ipxe.py``: the iPXE scripts (``/boot.ipxe`` and the per-MAC script that boots the deploy ramdisk).
* ``callbacks.py``: the callback API's rules (tokens, event and phone-home bodies).
* ``http.py``: the HTTP server (scripts, ramdisk files, images, config drives, callbacks).
* ``shared_store.py``: one :class:`~cpi.providers.baremetal.store.MetalStore` shared by the server threads.

May import: the provider's modules (``store``, ``instructions``, ``root_hints``, ``inspection``), ``cpi`` and
``stemforge_base``. Never imported by the provider or the lab (the lab starts it as ``python -m``).
"""
