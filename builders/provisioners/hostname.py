"""The ``hostname`` provisioner: set the machine's host name through any communicator.

Writes ``/etc/hostname`` and the ``127.0.1.1`` line of ``/etc/hosts``. On a running system (SSH into a VM) the
name is also applied at once; in a chroot it is not (that would rename the build host): a chroot is detected by
comparing ``/`` with PID 1's root. Non-root logins go through ``sudo -n``.
"""

from __future__ import annotations

import shlex
from typing import Any, ClassVar

from builders.core import BuildError, Communicator, ConfigError, Provisioner

SCRIPT = r"""set -e
name="$1"
printf '%s\n' "$name" > /etc/hostname
if [ -f /etc/hosts ]; then
  grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts > /etc/hosts.stemforge || true
else
  printf '127.0.0.1\tlocalhost\n' > /etc/hosts.stemforge
fi
printf '127.0.1.1\t%s\n' "$name" >> /etc/hosts.stemforge
cat /etc/hosts.stemforge > /etc/hosts
rm -f /etc/hosts.stemforge
if [ -d /run/systemd/system ] && [ "$(stat -c %d:%i /)" = "$(stat -Lc %d:%i /proc/1/root/ 2>/dev/null)" ]; then
  hostnamectl set-hostname "$name" 2>/dev/null || hostname "$name"
fi
"""


def as_root_command(script: str, *args: str) -> str:
    """A shell command running ``script`` (with positional ``args``) as root: directly when the login is root,
    else through ``sudo -n``. Everything is quoted into the command (no reliance on forwarded environment)."""
    inner = " ".join(["sh", "-c", shlex.quote(script), "stemforge", *(shlex.quote(a) for a in args)])
    return f'if [ "$(id -u)" -eq 0 ]; then {inner}; else sudo -n {inner}; fi'


def schema_problems(plugin: Provisioner) -> list[str]:
    """Validate ``plugin.config`` with the registry's Packer-style decoder; on success the coerced options replace
    it. Returns the problems (one line each, unknown keys in Packer's words)."""
    from builders.registry import validate_options

    try:
        plugin.config = validate_options(type(plugin), plugin.config, plugin.type_name)
    except ConfigError as exc:
        return str(exc).splitlines()
    return []


class HostnameProvisioner(Provisioner):
    type_name: ClassVar[str] = "hostname"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["hostname"],
        "properties": {"type": {"type": "string"}, "hostname": {"type": "string"}},
    }

    def prepare(self) -> list[str]:
        from builders.builder_types.debian.config import valid_hostname

        errors = schema_problems(self)
        name = self.config.get("hostname")
        if isinstance(name, str) and not valid_hostname(name):
            errors.append(f"{self.type_name}: hostname: {name!r} is not a valid host name")
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    def provision(self, communicator: Communicator) -> None:
        name = self.config["hostname"]
        self.ctx.ui.say(f"Setting the host name to {name}")
        result = communicator.run(as_root_command(SCRIPT, name), timeout=120, capture=True)
        if result.exit_status != 0:
            raise BuildError(f"hostname: setting {name!r} failed (exit status {result.exit_status}): "
                             f"{(result.stderr or result.stdout).strip()}")


PLUGIN = HostnameProvisioner
