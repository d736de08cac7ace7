"""The provisioning services of ``stemforge metal serve``: what a bare-metal server talks to while it is deployed.

* ``dnsmasq.py``: the DHCP + TFTP child process (per-MAC host entries for enrolled servers, iPXE chainload).
* ``ipxe.py``: the iPXE scripts (``/boot.ipxe`` and the per-MAC script that boots the deploy ramdisk).
* ``instructions.py``: a job's instructions rendered as the shell assignments the ramdisk sources.
* ``callbacks.py``: the callback API's rules (tokens, event and phone-home bodies).
* ``http.py``: the HTTP server (scripts, ramdisk files, images, config drives, callbacks).
* ``serve.py``: the long-running process that runs all of them (``stemforge metal serve``).
"""
