"""The builder-type base shared by the builders whose config is composed of SDK parts (``qemu``,
``amazon-ebs``): ``prepare`` runs the one schema check (``validate_options``, idempotent after the runner's) and
the builder's ``prepare_config``; ``steps`` prepares first when the runner did not."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from builders.core import BuilderType, ProvisionHook
from builders.registry import validate_options

ConfigT = TypeVar("ConfigT")


class ComposedBuilder(BuilderType, Generic[ConfigT]):
    """A builder type with a prepared config ``cfg`` (None until ``prepare``)."""

    def __init__(self, config: Mapping[str, Any], ctx: Any) -> None:
        super().__init__(config, ctx)
        self.cfg: ConfigT | None = None

    @property
    def label(self) -> str:
        """How the runner labels this build: the type alone when the build's name is the type."""
        name = self.ctx.build_name
        return self.type_name if name == self.type_name else f"{self.type_name}.{name}"

    @abstractmethod
    def prepare_config(self, options: Mapping[str, Any]) -> tuple[ConfigT, list[str]]:
        """The builder's ``Config.Prepare`` on schema-checked ``options``: (config, warnings); ConfigError
        listing every problem, each line prefixed with ``self.label``."""

    @abstractmethod
    def build_steps(self, cfg: ConfigT, hook: ProvisionHook) -> Sequence[Any]:
        """The build's steps for a prepared config."""

    def prepare(self) -> list[str]:
        options = validate_options(type(self), self.config, self.label)
        self.cfg, warnings = self.prepare_config(options)
        return warnings

    def steps(self, hook: ProvisionHook) -> Sequence[Any]:
        if self.cfg is None:
            self.prepare()
        assert self.cfg is not None
        return self.build_steps(self.cfg, hook)

    def prepare_args(self) -> tuple[str, Path, bool]:
        """``(build name, template directory, force)`` for the builder's ``prepare_config`` function."""
        return self.ctx.build_name, Path(self.ctx.template_dir), bool(self.ctx.force)
