"""The ``firstboot`` provisioner: a script that runs once, at the image's first boot, through any communicator.

Options: exactly one of ``inline`` (a list of shell lines) or ``script`` (a local file, relative to the template
directory). The script is installed as ``/usr/local/lib/stemforge/firstboot/<NN>-<sha8>.sh`` with a oneshot systemd
unit ``stemforge-firstboot-<NN>-<sha8>.service`` (enabled for multi-user.target, ordered after the previous
firstboot unit). When the unit stops, successfully or not, it disables itself and renames the script to
``*.done``, so it never runs again; its output goes to the journal and the console.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from builders.core import BuildError, Communicator, ConfigError, Provisioner
from builders.provisioners.hostname import as_root_command, schema_problems

LIB_DIR = "/usr/local/lib/stemforge/firstboot"
UNIT_DIR = "/etc/systemd/system"

UNIT = """[Unit]
Description=stemforge first-boot script {ident}
After=network.target{after}
ConditionPathExists={script}

[Service]
Type=oneshot
ExecStart=/bin/sh -e {script}
ExecStopPost=/bin/sh -c 'systemctl disable {unit} || rm -f {wants}/{unit}; mv -f {script} {script}.done'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=30min

[Install]
WantedBy=multi-user.target
"""

INSTALL = r"""set -e
script_tmp="$1"; unit_tmp="$2"; script="$3"; unit="$4"
mkdir -p "$(dirname "$script")" /etc/systemd/system/multi-user.target.wants
install -m 0755 "$script_tmp" "$script"
install -m 0644 "$unit_tmp" "/etc/systemd/system/$unit"
ln -sf "../$unit" "/etc/systemd/system/multi-user.target.wants/$unit"
rm -f "$script_tmp" "$unit_tmp"
"""

COUNT = f"ls {LIB_DIR} 2>/dev/null | grep -c '[.]sh' || true"


class FirstbootProvisioner(Provisioner):
    type_name: ClassVar[str] = "firstboot"
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string"},
            "inline": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "script": {"type": "string", "minLength": 1},
        },
    }

    body: str

    def prepare(self) -> list[str]:
        errors = schema_problems(self)
        if ("inline" in self.config) == ("script" in self.config):
            errors.append(f"{self.type_name}: exactly one of inline or script must be set")
        elif not errors:
            if "inline" in self.config:
                self.body = "#!/bin/sh\nset -e\n" + "\n".join(self.config["inline"]) + "\n"
            else:
                path = Path(self.config["script"]).expanduser()
                if not path.is_absolute():
                    path = self.ctx.template_dir / path
                try:
                    self.body = path.read_text()
                except (OSError, UnicodeDecodeError) as exc:
                    errors.append(f"{self.type_name}: script: cannot read {path}: {exc}")
        if errors:
            raise ConfigError("\n".join(errors))
        return []

    def provision(self, communicator: Communicator) -> None:
        if not hasattr(self, "body"):
            self.prepare()
        counted = communicator.run(COUNT, timeout=60, capture=True)
        try:
            index = int((counted.stdout or "0").strip().splitlines()[-1])
        except (ValueError, IndexError):
            index = 0
        ident = f"{index:02d}-{hashlib.sha256(self.body.encode()).hexdigest()[:8]}"
        unit = f"stemforge-firstboot-{ident}.service"
        script = f"{LIB_DIR}/{ident}.sh"
        after = ""
        if index:
            listing = communicator.run(f"ls {UNIT_DIR} 2>/dev/null | grep '^stemforge-firstboot-{index - 1:02d}-'"
                                       " || true", timeout=60, capture=True)
            previous = (listing.stdout or "").strip().splitlines()
            after = f" {previous[-1]}" if previous else ""
        unit_text = UNIT.format(ident=ident, after=after, script=script, unit=unit,
                                wants=f"{UNIT_DIR}/multi-user.target.wants")
        self.ctx.ui.say(f"Installing first-boot script {ident} ({unit})")
        with tempfile.TemporaryDirectory(prefix="stemforge-firstboot-") as tmp:
            local_script = Path(tmp) / f"{ident}.sh"
            local_unit = Path(tmp) / unit
            local_script.write_text(self.body)
            local_unit.write_text(unit_text)
            remote_script = f"/tmp/stemforge-firstboot-{ident}.sh"
            remote_unit = f"/tmp/{unit}"
            communicator.upload(local_script, remote_script)
            communicator.upload(local_unit, remote_unit)
        result = communicator.run(as_root_command(INSTALL, remote_script, remote_unit, script, unit), timeout=120,
                                  capture=True)
        if result.exit_status != 0:
            raise BuildError(f"firstboot: installing {unit} failed (exit status {result.exit_status}): "
                             f"{(result.stderr or result.stdout).strip()}")


PLUGIN = FirstbootProvisioner
