"""The HTTP config part (packer-plugin-sdk ``multistep/commonsteps/http_config.go`` ``HTTPConfig``): what the
build's HTTP server serves and on which ports. stemforge's server only listens on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field

from builders.builder_types._sdk.options import Options
from stemforge_base.net import is_loopback


@dataclass(kw_only=True)
class HTTPConfig:
    http_directory: str = ""
    http_content: dict[str, str] = field(default_factory=dict)
    http_port_min: int = 8000
    http_port_max: int = 9000

    def prepare_http(self, opts: Options) -> None:
        """Packer's ``HTTPConfig.Prepare`` plus: ``http_bind_address`` must be loopback. Like Packer, the
        ``http_directory`` is not looked at here: the HTTP server step fails on a missing one at build time."""
        self.http_directory = opts.text("http_directory")
        self.http_content = opts.mapping("http_content")
        if self.http_directory and self.http_content:
            opts.errors.append("http_directory and http_content cannot both be set")
        self.http_port_min = opts.value("http_port_min", 8000)
        self.http_port_max = opts.value("http_port_max", 9000)
        if self.http_port_min > self.http_port_max:
            opts.errors.append("http_port_min must be less than http_port_max")
        bind = opts.text("http_bind_address")
        if bind and not is_loopback(bind):
            opts.errors.append(f"http_bind_address: {bind!r} is not a loopback address (the HTTP server only "
                               "listens on 127.0.0.1)")
