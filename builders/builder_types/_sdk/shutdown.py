"""The shutdown config part (packer-plugin-sdk ``shutdowncommand/config.go`` ``ShutdownConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from builders.builder_types._sdk.options import Options


@dataclass(kw_only=True)
class ShutdownConfig:
    shutdown_command: str = ""
    shutdown_timeout: float = 300.0

    def prepare_shutdown(self, opts: Options) -> None:
        """Packer's ``ShutdownConfig.Prepare``: ``shutdown_timeout`` defaults to 5m."""
        self.shutdown_command = opts.text("shutdown_command")
        self.shutdown_timeout = opts.duration("shutdown_timeout", 300.0)
