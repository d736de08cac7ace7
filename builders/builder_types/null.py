"""Packer's core ``null`` builder (packer ``builder/null``): no machine of its own. With ``communicator = "none"``
it only runs the provisioners that need no machine (``shell-local``, used by public templates for preparation
builds); with ``ssh`` it connects to ``ssh_host`` and provisions that host. The artifact exports nothing.

Steps: ``StepConnect`` (the SDK's: ``none`` gives a NoCommunicator, ``ssh`` connects to ``ssh_host:ssh_port``) and
``StepProvision``. Validation is Packer's ``Config.Prepare``: the communicator part, and for a communicator other than
``none`` a host, a username and exactly one authentication method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from builders.builder_types import _sdk_options as sdk
from builders.builder_types._sdk.builder import ComposedBuilder
from builders.builder_types._sdk.communicator import CommConfig, SSHTarget
from builders.builder_types._sdk.communicator import StepConnect as SdkStepConnect
from builders.builder_types._sdk.options import Options
from builders.core import Artifact, BuildContext, ConfigError, ProvisionHook, StepProvision

#: Packer's builder id for null artifacts.
BUILDER_ID = "fnoeding.null"

SUPPORTED: dict[str, dict[str, Any]] = {
    "communicator": sdk.STR, "ssh_host": sdk.STR, "ssh_port": sdk.INT, "ssh_username": sdk.STR,
    "ssh_password": sdk.STR, "ssh_private_key_file": sdk.STR, "ssh_timeout": sdk.DUR, "ssh_wait_timeout": sdk.DUR,
    "ssh_handshake_attempts": sdk.INT, "ssh_pty": sdk.BOOL, "pause_before_connecting": sdk.DUR,
}
_NO_KEY_PAIR = "the null builder makes no key pair (it connects to an existing host)"
IGNORED: dict[str, str] = {
    **{k: v for k, v in sdk.IGNORED_COMMUNICATOR.items() if k not in SUPPORTED},
    "ssh_keypair_name": _NO_KEY_PAIR, "temporary_key_pair_name": _NO_KEY_PAIR,
    "temporary_key_pair_type": _NO_KEY_PAIR, "temporary_key_pair_bits": _NO_KEY_PAIR,
    "ssh_clear_authorized_keys": _NO_KEY_PAIR,
}
REFUSED: dict[str, str] = dict(sdk.REFUSED_COMMUNICATOR)
OPTIONS_SCHEMA: dict[str, Any] = sdk.options_schema(SUPPORTED, IGNORED, REFUSED)


@dataclass(kw_only=True)
class NullConfig(CommConfig):
    """The communicator options; nothing else."""


def prepare_config(raw: Mapping[str, Any], template_dir: Path, prefix: str) -> tuple[NullConfig, list[str]]:
    """Packer's null ``Config.Prepare``; ConfigError with every problem, each prefixed with ``prefix``."""
    opts = Options(raw, template_dir)
    opts.check_unsupported(REFUSED, IGNORED, "stemforge")
    cfg = NullConfig()
    cfg.prepare_comm(opts)
    if cfg.communicator != "none":
        if not cfg.ssh_host:
            opts.errors.append("a Host must be specified, please reference your communicator documentation")
        if not cfg.ssh_username:
            opts.errors.append("a Username must be specified, please reference your communicator documentation")
        if not cfg.ssh_password and not cfg.ssh_private_key_file:
            opts.errors.append("one authentication method must be specified, please reference your communicator "
                               "documentation")
        if cfg.ssh_password and cfg.ssh_private_key_file:
            opts.errors.append("only one of ssh_agent_auth, ssh_password, and ssh_private_key_file must be "
                               "specified")
    if opts.errors:
        raise ConfigError("\n".join(f"{prefix}: {e}" for e in opts.errors))
    return cfg, opts.warnings


class StepConnect(SdkStepConnect[NullConfig]):
    """Connect to the configured host (Packer's ``CommHost(Host())``)."""

    def target(self, state: dict[str, Any]) -> SSHTarget:
        cfg = self.cfg
        key = Path(cfg.ssh_private_key_file).read_text() if cfg.ssh_private_key_file else None
        return SSHTarget(cfg.ssh_host, cfg.ssh_port, key, alive=lambda: None)


class NullArtifact(Artifact):
    """Packer's ``NullArtifact``: id ``Null``, no files."""

    def describe(self) -> str:
        return "Did not export anything. This is the null builder"

    def destroy(self) -> None:
        """Nothing to remove."""


class NullBuilder(ComposedBuilder[NullConfig]):
    """The ``null`` builder type."""

    type_name: ClassVar[str] = "null"
    options_schema: ClassVar[dict[str, Any]] = OPTIONS_SCHEMA

    def prepare_config(self, options: Mapping[str, Any]) -> tuple[NullConfig, list[str]]:
        return prepare_config(options, Path(self.ctx.template_dir), self.label)

    def build_steps(self, cfg: NullConfig, hook: ProvisionHook) -> Sequence[Any]:
        ctx: BuildContext = self.ctx
        return [StepConnect(cfg, ctx), StepProvision(hook)]

    def artifact(self, state: Mapping[str, Any]) -> Artifact | None:
        return NullArtifact(builder_id=BUILDER_ID, build_name=self.ctx.build_name, builder_type=self.type_name,
                            files=[], artifact_id="Null", state={"generated_data": {"ID": "Null"}})


PLUGIN = NullBuilder
