"""The ``ssh-inject`` provisioner: add public keys to a user's ``~/.ssh/authorized_keys`` through any
communicator (``.ssh`` 0700, the file 0600, both owned by the user; keys already present are not repeated).

Options: ``user`` (default ``root``; must exist in the image), and exactly one of ``public_key`` (the key text)
or ``public_key_file`` (a local file, relative to the template directory; one or more keys, ``#`` comments).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from builders.core import BuildError, Communicator, ConfigError, Provisioner
from builders.provisioners.hostname import as_root_command, schema_problems

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-", "sk-ssh-ed25519@", "sk-ecdsa-sha2-")

SCRIPT = r"""set -e
user="$1"; keys="$2"
entry=$(getent passwd "$user") || { echo "ssh-inject: there is no user '$user' in the image" >&2; exit 3; }
home=$(printf '%s' "$entry" | cut -d: -f6)
uid=$(printf '%s' "$entry" | cut -d: -f3)
gid=$(printf '%s' "$entry" | cut -d: -f4)
mkdir -p "$home/.ssh"
f="$home/.ssh/authorized_keys"
touch "$f"
if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then echo >> "$f"; fi
printf '%s\n' "$keys" | while IFS= read -r key; do
  [ -n "$key" ] || continue
  grep -qxF "$key" "$f" || printf '%s\n' "$key" >> "$f"
done
chmod 700 "$home/.ssh"
chmod 600 "$f"
chown "$uid:$gid" "$home/.ssh" "$f"
"""


def parse_keys(text: str, source: str) -> list[str]:
    """The key lines of ``text`` (comments and blanks dropped); ValueError naming ``source`` if one is not a key."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "PRIVATE KEY" in line:
            raise ValueError(f"{source}: line {number} is a private key; give the public key")
        if not any(line.startswith(t) or f" {t}" in line for t in KEY_TYPES):
            raise ValueError(f"{source}: line {number} is not an OpenSSH public key")
        keys.append(line)
    if not keys:
        raise ValueError(f"{source}: no public key found")
    return keys


class SshInjectProvisioner(Provisioner):
    type_name: ClassVar[str] = "ssh-inject"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string"},
            "user": {"type": "string", "pattern": "^[a-z_][a-z0-9_.-]*[$]?$"},
            "public_key": {"type": "string"},
            "public_key_file": {"type": "string"},
        },
    }

    keys: list[str]

    def prepare(self) -> list[str]:
        errors = schema_problems(self)
        has_key, has_file = "public_key" in self.config, "public_key_file" in self.config
        if has_key == has_file:
            errors.append(f"{self.type_name}: exactly one of public_key or public_key_file must be set")
        elif not errors:
            try:
                if has_key:
                    self.keys = parse_keys(self.config["public_key"], "public_key")
                else:
                    path = Path(self.config["public_key_file"]).expanduser()
                    if not path.is_absolute():
                        path = self.ctx.template_dir / path
                    try:
                        text = path.read_text()
                    except OSError as exc:
                        raise ValueError(f"public_key_file: cannot read {path}: {exc.strerror}") from exc
                    self.keys = parse_keys(text, f"public_key_file {path}")
            except ValueError as exc:
                errors.append(f"{self.type_name}: {exc}")
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    def provision(self, communicator: Communicator) -> None:
        if not hasattr(self, "keys"):
            self.prepare()
        user = self.config.get("user", "root")
        self.ctx.ui.say(f"Injecting {len(self.keys)} SSH public key(s) for {user}")
        result = communicator.run(as_root_command(SCRIPT, user, "\n".join(self.keys)), timeout=120, capture=True)
        if result.exit_status != 0:
            raise BuildError(f"ssh-inject: adding the key(s) for {user!r} failed (exit status "
                             f"{result.exit_status}): {(result.stderr or result.stdout).strip()}")


PLUGIN = SshInjectProvisioner
