"""Option tables of packer-plugin-sdk's shared configs, which every Packer builder of a kind embeds.

Each table lists the ``mapstructure`` keys of one SDK struct, taken from the SDK source and the generated
documentation partials (the names Packer accepts; ``undocumented:"true"`` fields included, because Packer's
decoder accepts them too):

- ``communicator/config.go``: ``Config`` (``communicator``, ``pause_before_connecting``), ``SSH``,
  ``SSHTemporaryKeyPair``, ``WinRM`` and ``SSHInterface``;
- ``bootcommand/config.go``: ``BootConfig`` and ``VNCConfig``;
- ``multistep/commonsteps/http_config.go`` ``HTTPConfig``; ``iso_config.go`` ``ISOConfig``;
  ``floppy_config.go`` ``FloppyConfig``; ``extra_iso_config.go`` ``CDConfig``;
- ``shutdowncommand/config.go`` ``ShutdownConfig``.

A builder's ``config.py`` sorts each key into what it implements (``SUPPORTED``), what it accepts with no effect
here (``IGNORED``, a warning when set, listed in ``docs/packer-options.md``) and what it refuses when set to a
non-zero value (``REFUSED``: the build would depend on it). ``tests/builders/test_template_fidelity.py`` checks
that every key below is in each builder's schema and that the documentation lists every ignored and refused key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: JSON-schema fragments of the option types (values arrive weakly decoded by ``validate_options``).
STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
#: A Go duration (``"5m"``); a number only as 0 (checked when prepared).
DUR: dict[str, Any] = {"type": ["string", "integer"]}
STRLIST: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
STRMAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}

#: ``communicator.Config`` (the keys outside the SSH/WinRM structs).
COMMUNICATOR = ("communicator", "pause_before_connecting")

#: ``communicator.SSH`` and ``SSHTemporaryKeyPair``.
SSH = (
    "ssh_host", "ssh_port", "ssh_username", "ssh_password", "ssh_keypair_name", "temporary_key_pair_name",
    "temporary_key_pair_type", "temporary_key_pair_bits", "ssh_ciphers", "ssh_clear_authorized_keys",
    "ssh_key_exchange_algorithms", "ssh_private_key_file", "ssh_certificate_file", "ssh_pty", "ssh_timeout",
    "ssh_wait_timeout", "ssh_agent_auth", "ssh_disable_agent_forwarding", "ssh_handshake_attempts",
    "ssh_bastion_host", "ssh_bastion_port", "ssh_bastion_agent_auth", "ssh_bastion_username",
    "ssh_bastion_password", "ssh_bastion_interactive", "ssh_bastion_private_key_file",
    "ssh_bastion_certificate_file", "ssh_file_transfer_method", "ssh_proxy_host", "ssh_proxy_port",
    "ssh_proxy_username", "ssh_proxy_password", "ssh_keep_alive_interval", "ssh_read_write_timeout",
    "ssh_remote_tunnels", "ssh_local_tunnels", "ssh_public_key", "ssh_private_key",
)

#: ``communicator.WinRM``.
WINRM = ("winrm_username", "winrm_password", "winrm_host", "winrm_no_proxy", "winrm_port", "winrm_timeout",
         "winrm_use_ssl", "winrm_insecure", "winrm_use_ntlm")

#: ``communicator.SSHInterface`` (cloud builders).
SSH_INTERFACE = ("ssh_interface", "ssh_ip_version")

#: ``bootcommand.BootConfig`` + ``VNCConfig``.
BOOT = ("boot_keygroup_interval", "boot_wait", "boot_command", "disable_vnc", "boot_key_interval")

#: ``commonsteps.HTTPConfig``.
HTTP = ("http_directory", "http_content", "http_port_min", "http_port_max", "http_bind_address",
        "http_network_protocol")

#: ``commonsteps.ISOConfig``.
ISO = ("iso_checksum", "iso_url", "iso_urls", "iso_target_path", "iso_target_extension")

#: ``commonsteps.FloppyConfig``.
FLOPPY = ("floppy_files", "floppy_dirs", "floppy_content", "floppy_label")

#: ``commonsteps.CDConfig``.
CD = ("cd_files", "cd_content", "cd_label")

#: ``shutdowncommand.ShutdownConfig``.
SHUTDOWN = ("shutdown_command", "shutdown_timeout")

_WINRM_REASON = "only used by the winrm communicator, which stemforge does not have ('communicator: winrm' is refused)"
_UNUSED_SSH = "stemforge's SSH client negotiates its own algorithms and transfers files over SFTP"

#: SSH/WinRM options every stemforge builder accepts with no effect, with the reason.
IGNORED_COMMUNICATOR: dict[str, str] = {
    **{key: _WINRM_REASON for key in WINRM},
    "ssh_ciphers": _UNUSED_SSH,
    "ssh_key_exchange_algorithms": _UNUSED_SSH,
    "ssh_file_transfer_method": _UNUSED_SSH,
    "ssh_disable_agent_forwarding": "agent forwarding is never requested",
    "ssh_read_write_timeout": "each provisioner's 'timeout' bounds its remote commands",
    "ssh_keep_alive_interval": "the SSH client uses its own keep-alive interval",
    "ssh_public_key": "an internal field Packer fills itself (the temporary key pair)",
    "ssh_private_key": "an internal field Packer fills itself (the temporary key pair)",
    "ssh_ip_version": "the guest is reached at the address the builder knows",
}

#: SSH options every stemforge builder refuses when set: the connection would depend on them.
REFUSED_COMMUNICATOR: dict[str, str] = {
    "ssh_agent_auth": "SSH agent authentication is not supported",
    "ssh_certificate_file": "SSH user certificates are not supported",
    "ssh_bastion_host": "bastion hosts are not supported",
    "ssh_bastion_port": "bastion hosts are not supported",
    "ssh_bastion_agent_auth": "bastion hosts are not supported",
    "ssh_bastion_username": "bastion hosts are not supported",
    "ssh_bastion_password": "bastion hosts are not supported",
    "ssh_bastion_interactive": "bastion hosts are not supported",
    "ssh_bastion_private_key_file": "bastion hosts are not supported",
    "ssh_bastion_certificate_file": "bastion hosts are not supported",
    "ssh_proxy_host": "SSH proxies are not supported",
    "ssh_proxy_port": "SSH proxies are not supported",
    "ssh_proxy_username": "SSH proxies are not supported",
    "ssh_proxy_password": "SSH proxies are not supported",
    "ssh_remote_tunnels": "SSH tunnels are not supported",
    "ssh_local_tunnels": "SSH tunnels are not supported",
}


def zero(value: object) -> bool:
    """True for the values that request nothing (Go's zero values and empty collections): a refused option set
    to one of them is accepted."""
    if isinstance(value, str):
        return value in ("", "0", "f", "F", "FALSE", "false", "False")
    return value in (None, [], {}, False, 0)


def options_schema(supported: Mapping[str, Any], ignored: Mapping[str, str],
                   refused: Mapping[str, str]) -> dict[str, Any]:
    """A builder's ``options_schema``: the supported keys with their types; ignored and refused keys accept any
    value (``prepare_config`` warns about or refuses them); any other key is unknown."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**supported, **{k: {} for k in ignored}, **{k: {} for k in refused}},
    }
