"""Post-processors: ``manifest``, ``checksum``, ``compress`` (Packer's), ``fanout`` / ``region-fanout`` (publish one
image to N destinations in parallel, all or nothing, with proof of consistency) and ``stemcell`` (heavy or light
BOSH stemcells).

Each module exposes ``PLUGIN`` (found by ``builders.registry`` by type name). The helpers here are what they share:
option validation (through ``builders.registry.validate_options``, so unknown keys are reported in Packer's words),
rendering of Packer's per-post-processor ``output`` templates (``{{.BuildName}}``, ``{{.BuilderType}}``,
``{{.ChecksumType}}`` ...), throttled byte progress and human sizes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from builders.core import BuildContext, ConfigError, Plugin, PostProcessor

#: Keys the template layer owns (see ``builders.registry.META_KEYS``); tolerated and ignored here.
META_KEYS = frozenset({"type", "name", "only", "except", "keep_input_artifact"})


def validated_options(plugin: Plugin) -> dict[str, Any]:
    """``plugin.config`` without template meta keys, checked against the plugin's ``options_schema`` with Go-style
    weak typing applied. Raises ConfigError listing every problem (``unknown configuration key: 'x'``)."""
    from builders.registry import validate_options

    options = {k: v for k, v in plugin.config.items() if k not in META_KEYS}
    where = f"{plugin.ctx.build_name}: post-processor {plugin.type_name}"
    return validate_options(type(plugin), options, where)


class ValidatedPostProcessor(PostProcessor):
    """A post-processor whose ``options`` are its config checked by :func:`validated_options` plus its own rules
    (:meth:`check_options`). ``prepare`` checks them; ``options`` prepares on first use when the runner did not."""

    _options: dict[str, Any] | None = None

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The plugin's rules beyond the schema: the options to use, or ConfigError naming the key."""
        return options

    def prepare(self) -> list[str]:
        self._options = self.check_options(validated_options(self))
        return []

    @property
    def options(self) -> dict[str, Any]:
        if self._options is None:
            self.prepare()
        assert self._options is not None
        return self._options


def render_output(ctx: BuildContext, text: str, data: Mapping[str, Any], *, key: str = "output") -> str:
    """Render a Go template such as ``packer_{{.BuildName}}_{{.BuilderType}}_{{.ChecksumType}}.checksum`` with
    ``data`` (plus the build's generated data) as its dot. ConfigError names ``key`` when it cannot be rendered."""
    values: dict[str, Any] = {**ctx.generated, "BuildName": ctx.build_name, "BuilderType": ctx.build_type, **data}
    if "{{" not in text:
        return text
    try:
        from builders.template.functions import RenderContext, render_string
    except ImportError:  # pragma: no cover - the template package ships with builders
        return _render_simple(text, values, key)
    try:
        return render_string(text, RenderContext(build_name=ctx.build_name, build_type=ctx.build_type, data=values))
    except Exception as exc:  # noqa: BLE001 - GoTemplateError and friends
        raise ConfigError(f"{ctx.build_name}: error rendering '{key}' ({text!r}): {exc}") from exc


def _render_simple(text: str, values: Mapping[str, Any], key: str) -> str:
    def field(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"error rendering '{key}': no value for .{name}")
        return str(values[name])

    return re.sub(r"\{\{-?\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}", field, text)


def human_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


class Progress:
    """Byte progress for one label, forwarded to ``ui.progress`` at most every ``interval`` seconds (always the
    first and the last report), so fast copies do not flood the UI lock."""

    def __init__(self, ctx: BuildContext, label: str, total: int | None, interval: float = 0.25) -> None:
        self.ctx = ctx
        self.label = label
        self.total = total
        self.interval = interval
        self._last = 0.0

    def relabel(self, label: str) -> None:
        self.label = label
        self._last = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        final = self.total is not None and done >= self.total
        if final or now - self._last >= self.interval:
            self._last = now
            self.ctx.ui.progress(self.label, done, self.total)
