"""The iPXE scripts ``stemforge metal serve`` hands to network-booting servers.

* :func:`boot_script` (``GET /boot.ipxe``): the script dnsmasq points every iPXE client at. It chains the per-MAC
  script of the NIC iPXE booted from (``${netX/mac}``: the interface that got the DHCP answer, so a server with
  several NICs asks with the right MAC); if that fails it exits, so the firmware moves on to the next boot device.
* :func:`ramdisk_script` (``GET /ipxe/<mac>`` while the MAC's node has a job): boots the deploy ramdisk with the
  kernel arguments ``console=ttyS0 quiet loglevel=3 sf.api=<base>/v1/nodes/<node> sf.token=<job token>``
  (+ ``sf.debug=1``); ``quiet loglevel=3`` keeps the kernel from echoing its command line (the token) on the console.
* :func:`exit_script` (``GET /ipxe/<mac>`` otherwise): ``exit 1``, so the firmware boots the disk.

Quoting: iPXE splits command lines on spaces and expands ``${...}``; every value that goes into a script is either
checked against a strict pattern (the base URL, the token) or percent-encoded (the node name), so no value can add
an argument, a command or an expansion. The scripts returned by :func:`ramdisk_script` hold the job token: never
log them.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

#: The ramdisk files the per-MAC script boots (RAMDISK's build output, served from ``/ramdisk/``).
KERNEL_FILE: Final = "vmlinuz"
INITRD_FILE: Final = "initrd.img"

_BASE_RE: Final = re.compile(r"^http://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?$")
_TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_\-]{16,128}$")


class ScriptError(ValueError):
    """A value that cannot be put into an iPXE script safely; the message names it (never a token's value)."""


def check_base_url(base_url: str) -> str:
    """``base_url`` (``http://IP:PORT``, no trailing slash) if it is safe to embed in a script, else ScriptError."""
    if not _BASE_RE.match(base_url):
        raise ScriptError(f"base URL must look like http://IP:PORT (no path, spaces or '$'), got {base_url!r}")
    return base_url


def node_api_url(base_url: str, node: str) -> str:
    """The callback API base of ``node`` (``<base>/v1/nodes/<node, percent-encoded>``)."""
    return f"{check_base_url(base_url)}/v1/nodes/{quote(node, safe='')}"


def boot_script(base_url: str) -> str:
    """The script behind ``/boot.ipxe``: chain the per-MAC script of the booting NIC, or exit to the next device."""
    base = check_base_url(base_url)
    return (
        "#!ipxe\n"
        "echo stemforge: asking for the boot script of ${netX/mac}\n"
        f"chain {base}/ipxe/${{netX/mac}} || goto failed\n"
        "exit 0\n"
        ":failed\n"
        "echo stemforge: no boot script; trying the next boot device\n"
        "exit 1\n"
    )


def ramdisk_script(base_url: str, node: str, kind: str, token: str, *, debug: bool = False) -> str:
    """The per-MAC script that boots the deploy ramdisk for ``node``'s job. Holds ``token``: never log it."""
    base = check_base_url(base_url)
    if not _TOKEN_RE.match(token):
        raise ScriptError(f"the job token of node {node!r} is not URL-safe base64 of a sane length")
    if kind not in ("deploy", "clean", "inspect"):
        raise ScriptError(f"job kind of node {node!r} must be 'deploy', 'clean' or 'inspect', not {kind!r}")
    args = [
        f"initrd={INITRD_FILE}",
        "console=ttyS0",
        # the kernel prints its command line (with the token) at notice level: keep it off the console
        "quiet",
        "loglevel=3",
        f"sf.api={node_api_url(base, node)}",
        f"sf.token={token}",
    ]
    if debug:
        args.append("sf.debug=1")
    label = quote(node, safe="")
    return (
        "#!ipxe\n"
        f"echo stemforge: {kind} of node {label}: booting the deploy ramdisk\n"
        f"kernel {base}/ramdisk/{KERNEL_FILE} {' '.join(args)} || goto failed\n"
        f"initrd {base}/ramdisk/{INITRD_FILE} || goto failed\n"
        "boot || goto failed\n"
        ":failed\n"
        "echo stemforge: could not boot the deploy ramdisk\n"
        "exit 1\n"
    )


def exit_script(reason: str) -> str:
    """The per-MAC script for a server with nothing to do: say why, exit so the firmware boots the disk."""
    safe = re.sub(r"[^A-Za-z0-9 ._:/()'-]", "_", reason)[:200]
    return f"#!ipxe\necho stemforge: {safe}: booting from disk\nexit 1\n"
