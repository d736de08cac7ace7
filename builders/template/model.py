"""The parsed template: builders, provisioners, post-processor chains, resolved variables, and rendering."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.template.functions import RenderContext, render_string
from builders.template.gotemplate.errors import GoTemplateError
from builders.template.sensitive import SensitiveValues


class TemplateError(Exception):
    """The template (or its variables) is invalid. ``str()`` is the user-facing message, Packer's words where
    Packer has them, one error per line; ``errors`` holds the individual messages."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def _skip(only: Sequence[str], except_: Sequence[str], name: str) -> bool:
    """Packer's ``OnlyExcept.Skip``."""
    if only:
        return name not in only
    if except_:
        return name in except_
    return False


@dataclass
class BuilderSpec:
    """One ``builders`` entry. ``config`` is the raw (unrendered) options without ``name``/``type`` and without
    ``_``-prefixed comment keys. ``name`` is the build name after user variables were rendered (Packer renders
    builder names once); ``raw_name`` is as written."""

    name: str
    type: str
    config: dict[str, Any]
    index: int
    raw_name: str = ""


@dataclass
class ProvisionerSpec:
    """One ``provisioners`` entry with Packer's meta-keys taken out of ``config``. ``only``/``except_``/
    ``override`` keys are build names (as rendered). ``pause_before``/``timeout`` are seconds."""

    type: str
    config: dict[str, Any]
    only: list[str] = field(default_factory=list)
    except_: list[str] = field(default_factory=list)
    override: dict[str, dict[str, Any]] = field(default_factory=dict)
    pause_before: float = 0.0
    max_retries: int = 0
    timeout: float | None = None
    index: int = 0

    def applies_to(self, build_name: str) -> bool:
        """Whether this provisioner runs for ``build_name`` (``only`` wins over ``except``)."""
        return not _skip(self.only, self.except_, build_name)

    def config_for(self, build_name: str) -> dict[str, Any]:
        """The raw config with ``override[build_name]`` merged over it (top-level keys replaced, as Packer's
        successive config decoding does)."""
        merged = dict(self.config)
        merged.update(self.override.get(build_name, {}))
        return merged


@dataclass
class PostProcessorSpec:
    """One post-processor of a chain. ``name`` defaults to ``type`` (Packer); ``keep_input_artifact`` is None
    when not set (the post-processor decides)."""

    type: str
    name: str | None
    config: dict[str, Any]
    keep_input_artifact: bool | None = None
    only: list[str] = field(default_factory=list)
    except_: list[str] = field(default_factory=list)
    index: tuple[int, int] = (0, 0)

    def applies_to(self, build_name: str) -> bool:
        return not _skip(self.only, self.except_, build_name)


@dataclass
class Template:
    """A parsed, validated template with its user variables resolved. Rendering of plugin configs happens later,
    per build, through :meth:`render`."""

    path: Path
    description: str | None
    min_packer_version: str | None
    variables: dict[str, str]
    sensitive_variables: list[str]
    builders: list[BuilderSpec]
    provisioners: list[ProvisionerSpec]
    post_processors: list[list[PostProcessorSpec]]
    error_cleanup_provisioner: ProvisionerSpec | None
    run_timestamp: int
    run_uuid: str
    #: Root-level ``_comment`` style keys.
    comments: dict[str, str] = field(default_factory=dict)
    #: Things that work but are probably not what the author meant (e.g. a reference to an undefined variable,
    #: which Packer renders as an empty string).
    warnings: list[str] = field(default_factory=list)
    #: ``json`` or ``yaml``.
    format: str = "json"
    #: Variables declared with a ``null`` default (must be set with -var/-var-file), sorted.
    required_variables: list[str] = field(default_factory=list)
    run_time: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.UTC))
    #: Sensitive strings: the sensitive variables' values and every value rendered from them (grows while builds
    #: render their configs; see ``builders.template.sensitive``).
    sensitive: SensitiveValues = field(default_factory=SensitiveValues)

    # -- rendering ---------------------------------------------------------------------------------------------

    def context(self, *, build_name: str = "", build_type: str = "",
                generated: Mapping[str, Any] | None = None) -> RenderContext:
        """The function context Packer gives plugin configs (``env`` disabled)."""
        return RenderContext(user_variables=self.variables, enable_env=False, build_name=build_name,
                             build_type=build_type, template_path=str(self.path), data=generated,
                             init_time=self.run_time, sensitive_variables=frozenset(self.sensitive_variables),
                             sensitive=self.sensitive)

    def render(self, value: Any, *, build_name: str, build_type: str, generated: Mapping[str, Any] | None = None,
               where: str = "") -> Any:
        """Render every string (and map key) inside ``value`` once, as Packer renders a plugin config.

        ``generated`` is the build's generated data (``build `Key```, ``{{ .Key }}``); None means not known yet:
        ``build`` yields the placeholder ``{{.Key}}`` and actions reading dot fields (``{{ .HTTPIP }}``) are kept
        verbatim for the builder to render. Returns a new value; raises TemplateError listing every failing
        string as ``<where>: <key path>: <Go template error> in "<string>"`` (sensitive values masked)."""
        ctx = self.context(build_name=build_name, build_type=build_type, generated=generated)
        errors: list[str] = []
        result = self._render(value, ctx, where, "", errors)
        if errors:
            raise TemplateError([self.mask(e) for e in errors])
        return result

    def _render(self, value: Any, ctx: RenderContext, where: str, path: str, errors: list[str]) -> Any:
        if isinstance(value, str):
            try:
                return render_string(value, ctx)
            except GoTemplateError as e:
                shown = value if len(value) <= 120 else value[:117] + "..."
                label = ": ".join(p for p in (where, path) if p)
                errors.append(f"{label + ': ' if label else ''}{e} in {json.dumps(shown)}")
                return value
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                sub = f"{path}.{k}" if path else str(k)
                key = self._render(k, ctx, where, sub, errors) if isinstance(k, str) else k
                out[key] = self._render(v, ctx, where, sub, errors)
            return out
        if isinstance(value, list | tuple):
            return [self._render(v, ctx, where, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return value

    def mask(self, text: str) -> str:
        """Replace in ``text`` each sensitive variable's (non-empty) value, each variable value derived from one,
        and every value rendered from them so far, with ``<sensitive>``."""
        for name in self.sensitive_variables:
            self.sensitive.add_literal(self.variables.get(name, ""))
        self.sensitive.record(self.variables)
        return self.sensitive.mask(text)

    # -- selection ---------------------------------------------------------------------------------------------

    def builder(self, name: str) -> BuilderSpec:
        for b in self.builders:
            if b.name == name:
                return b
        raise TemplateError(f"no such build found: {name}")

    def select_builders(self, only: Sequence[str], except_: Sequence[str]) -> list[BuilderSpec]:
        """The builds ``-only``/``-except`` select, in template order. Unknown names are errors (``-except`` may
        also name a post-processor, which Packer uses to skip that post-processor)."""
        names = [b.name for b in self.builders]
        pp_names = {pp.name for chain in self.post_processors for pp in chain if pp.name}
        errors = [f"-only: no builder named '{n}' in this template (builders: {', '.join(names)})"
                  for n in only if n not in names]
        errors += [f"-except: no builder or post-processor named '{n}' in this template (builders: "
                   f"{', '.join(names)})" for n in except_ if n not in names and n not in pp_names]
        if errors:
            raise TemplateError(errors)
        return [b for b in self.builders if (not only or b.name in only) and b.name not in except_]

    def provisioners_for(self, build_name: str) -> list[ProvisionerSpec]:
        """The provisioners that run for ``build_name``, in order."""
        return [p for p in self.provisioners if p.applies_to(build_name)]

    def post_processor_chains_for(self, build_name: str, except_: Sequence[str] = ()) -> list[list[PostProcessorSpec]]:
        """Packer's chain selection for one build: post-processors whose only/except skip the build are left out,
        a chain stops at a post-processor named in ``-except``, empty chains are dropped."""
        chains: list[list[PostProcessorSpec]] = []
        for chain in self.post_processors:
            current: list[PostProcessorSpec] = []
            for pp in chain:
                if not pp.applies_to(build_name):
                    continue
                if pp.name and pp.name in except_:
                    break
                current.append(pp)
            if current:
                chains.append(current)
        return chains

    # -- output ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary with sensitive values masked (for ``python -m builders.template`` and inspect)."""

        def prov(p: ProvisionerSpec) -> dict[str, Any]:
            return {"type": p.type, "config": p.config, "only": p.only, "except": p.except_,
                    "override": p.override, "pause_before": p.pause_before, "max_retries": p.max_retries,
                    "timeout": p.timeout}

        data = {
            "path": str(self.path),
            "format": self.format,
            "description": self.description,
            "min_packer_version": self.min_packer_version,
            "variables": {k: ("<sensitive>" if k in self.sensitive_variables and v else v)
                          for k, v in sorted(self.variables.items())},
            "sensitive_variables": self.sensitive_variables,
            "required_variables": self.required_variables,
            "builders": [{"name": b.name, "type": b.type, "config": b.config} for b in self.builders],
            "provisioners": [prov(p) for p in self.provisioners],
            "post_processors": [[{"type": pp.type, "name": pp.name, "config": pp.config,
                                  "keep_input_artifact": pp.keep_input_artifact, "only": pp.only,
                                  "except": pp.except_} for pp in chain] for chain in self.post_processors],
            "error_cleanup_provisioner": prov(self.error_cleanup_provisioner)
            if self.error_cleanup_provisioner else None,
            "run_timestamp": self.run_timestamp,
            "run_uuid": self.run_uuid,
            "comments": self.comments,
            "warnings": self.warnings,
        }
        return self.mask_value(data)

    def mask_value(self, value: Any) -> Any:
        """:meth:`mask` applied to every string inside ``value``."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {k: self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value
