"""The build model of an HCL2 template: :class:`HCL2Template` (a :class:`Template` plus what ``inspect``
shows in HCL2 mode), its builds and its variables."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from builders.template.hcl2.body import Block
from builders.template.hcl2.diagnostics import Diagnostic
from builders.template.hcl2.types import HclType
from builders.template.model import BuilderSpec, PostProcessorSpec, Template


@dataclass
class VariableInfo:
    name: str
    type: HclType
    default: Any
    has_default: bool
    description: str
    sensitive: bool
    nullable: bool
    block: Block | None
    value: Any = None
    set_by: str = "default"


@dataclass
class HCL2Template(Template):
    """A :class:`Template` read from HCL2: the same build model, plus what ``inspect`` shows in HCL2 mode. Its
    ``sensitive`` (``builders.template.sensitive``) holds the sensitive variables' and locals' values and every
    value derived from them (config strings derived from one are ``Tainted``), so output, logs and manifests mask
    them and a file or image name derived from one is refused, exactly as for JSON templates."""

    hcl_variables: dict[str, VariableInfo] = field(default_factory=dict)
    hcl_locals: dict[str, Any] = field(default_factory=dict)
    build_blocks: list[dict[str, Any]] = field(default_factory=list)
    #: Diagnostics that are warnings (printed by validate/build).
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def select_builders(self, only: Sequence[str], except_: Sequence[str]) -> list[BuilderSpec]:
        """Packer's HCL2 ``-only``/``-except``: globs over ``<type>.<name>`` or ``<build>.<type>.<name>``."""

        def matches(pattern: str, b: BuilderSpec) -> bool:
            names = (b.name, b.raw_name, b.config_source if isinstance(b, HCL2BuilderSpec) else b.name)
            return any(fnmatch.fnmatchcase(n, pattern) for n in names if n)

        return [b for b in self.builders
                if (not only or any(matches(p, b) for p in only)) and not any(matches(p, b) for p in except_)]

    def post_processor_chains_for(self, build_name: str, except_: Sequence[str] = ()) -> list[list[PostProcessorSpec]]:
        """As for JSON, with ``-except`` naming a post-processor by its ``name`` (or type)."""
        return super().post_processor_chains_for(build_name, except_)


@dataclass
class HCL2BuilderSpec(BuilderSpec):
    """A build of an HCL2 template: ``config_source`` is ``<type>.<name>`` (what ``only``/``except`` match),
    ``raw_name`` the full ``[<build>.]<type>.<name>``, ``name`` the build name plugins see (see
    :func:`_packer_build_names`)."""

    config_source: str = ""
    build_block: int = 0



def build_name_of(spec: HCL2BuilderSpec) -> str:
    return spec.raw_name[:-len(spec.config_source) - 1] if spec.raw_name != spec.config_source else ""
