"""The ``debian`` builder type (see :mod:`builders.builder_types.debian`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from builders.core import Artifact, BuilderType, ProvisionHook

from .config import OPTIONS_SCHEMA, TYPE_NAME, DebianConfig, parse_config

BUILDER_ID = "stemforge.debian"


class DebianBuilder(BuilderType):
    """Offline Debian image builds: debootstrap (cached) -> chroot customisation -> partitioned disk -> raw/qcow2.
    Provisioners reach the tree through the chroot communicator."""

    type_name: ClassVar[str] = TYPE_NAME
    options_schema: ClassVar[dict[str, Any]] = OPTIONS_SCHEMA

    _cfg: DebianConfig | None = None

    @property
    def cfg(self) -> DebianConfig:
        if self._cfg is None:
            self.prepare()
        assert self._cfg is not None
        return self._cfg

    def prepare(self) -> list[str]:
        """Validate the options (ConfigError lists every problem, each naming its key); returns warnings."""
        self._cfg = parse_config(self.config, self.ctx.build_name, force=self.ctx.force)
        warnings = []
        if self._cfg.include_cloud_init and not self._cfg.include_sshd:
            warnings.append(f"{TYPE_NAME}.{self.ctx.build_name}: include_cloud_init without include_sshd: "
                            "cloud-init's SSH keys will have no server")
        return warnings

    def steps(self, hook: ProvisionHook) -> Sequence[Any]:
        from .steps import build_steps

        return build_steps(self.cfg, self.ctx, hook)

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        files = state.get("artifact_files")
        if not files:
            return None
        primary = files[0]
        return Artifact(
            builder_id=BUILDER_ID,
            build_name=self.ctx.build_name,
            builder_type=TYPE_NAME,
            files=[Path(f["path"]) for f in files],
            artifact_id=self.cfg.vm_name,
            state={
                "format": primary["format"],
                "formats": [f["format"] for f in files],
                "sha256": primary["sha256"],
                "size": primary["size"],
                "files": files,
                "disk_size_mb": self.cfg.disk_size_mb,
                "root_uuid": state.get("root_uuid"),
                "suite": self.cfg.suite,
                "bootstrap_key": state.get("bootstrap_key"),
                "bootstrap_cached": state.get("bootstrap_cached"),
            },
        )
