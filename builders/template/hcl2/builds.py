"""``build`` blocks -> builds, provisioners and post-processors, as Packer's ``hcl2template`` decodes them:
each (build block, source) pair is one :class:`HCL2BuilderSpec`; provisioners and post-processors are
evaluated per build when they read ``source.*``/``build.*`` and once otherwise; ``only``/``except`` select."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from lark import Token, Tree

from builders.registry import load_builder, load_post_processor, load_provisioner
from builders.template.hcl2.body import Attr, Block, Body
from builders.template.hcl2.diagnostics import HCLError
from builders.template.hcl2.loader import Loader, SourceRefs
from builders.template.hcl2.template import HCL2BuilderSpec, HCL2Template, build_name_of
from builders.template.hcl2.values import json_compatible, to_string
from builders.template.model import PostProcessorSpec, ProvisionerSpec
from stemforge_base.durations import parse_duration


def load_plugin(kind: str, type_name: str) -> Any:
    """The plugin class of ``kind`` named ``type_name``, or None when it is unknown or fails to load."""
    loader: Callable[[str], Any] = {"builder": load_builder, "provisioner": load_provisioner,
                                    "post-processor": load_post_processor}[kind]
    try:
        return loader(type_name)
    except Exception:  # noqa: BLE001 - unknown or broken plugin: reported by the caller
        return None


def selected(ld: Loader, full: str, short: str) -> bool:
    """Whether the command line's ``-only``/``-except`` keep the build ``full`` (``short`` = ``<type>.<name>``),
    with the globs of :meth:`HCL2Template.select_builders`."""
    def matches(pattern: str) -> bool:
        return fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(short, pattern)

    return (not ld.only or any(matches(p) for p in ld.only)) and not any(matches(p) for p in ld.except_)


def report_unknown_type(ld: Loader, kind: str, type_name: str, where: Block) -> None:
    key = f"{kind}:{type_name}"
    if key in ld.reported_unknown:
        return
    ld.reported_unknown.add(key)
    word = {"builder": "source", "provisioner": "provisioner", "post-processor": "post-processor"}[kind]
    ld.errors.append(ld.diag(f"Unknown {word} type {json.dumps(type_name)}",
                             f'The {word} "{type_name}" is unknown by Packer, and is likely part of a plugin that '
                             "is not installed.\nYou may find the needed plugin along with installation "
                             "instructions documented on the Packer integrations page.\n\n"
                             f"https://developer.hashicorp.com/packer/integrations?filter={type_name}", where))


_PROV_META = frozenset({"only", "except", "pause_before", "max_retries", "timeout", "override", "name"})
_PP_META = frozenset({"only", "except", "keep_input_artifact", "name"})


#: (builder type, source name, the build's ``source`` block refining it or None, where it was named)
_Usage = tuple[str, str, Block | None, Block | Attr]


def decode_builds(ld: Loader, t: HCL2Template, blocks: list[Block], syntax_only: bool) -> None:
    """Decode the ``build`` blocks into ``t``'s builders, provisioners, post-processor chains and
    ``build_blocks`` (what ``inspect`` shows); problems go to ``ld.errors``/``ld.warnings``."""
    decoder = _BuildDecoder(ld, t, syntax_only)
    for bi, block in enumerate(blocks):
        decoder.build_block(bi, block)


class _BuildDecoder:
    """One template's build blocks, in order: build names are unique across them and provisioners are numbered
    across them (Packer's ``index``)."""

    def __init__(self, ld: Loader, t: HCL2Template, syntax_only: bool) -> None:
        self.ld = ld
        self.t = t
        self.syntax_only = syntax_only
        self.names: set[str] = set()
        self.prov_index = 0

    def build_block(self, bi: int, block: Block) -> None:
        ld, ctx = self.ld, block.context()
        scope0 = ld.scope()
        build_name, description = self.header(block, scope0)
        specs = [spec for usage in self.usages(block, scope0)
                 if (spec := self.source_spec(bi, usage, build_name, scope0, ctx)) is not None]
        info: dict[str, Any] = {"name": build_name, "description": description,
                                "sources": [s.config_source for s in specs], "provisioners": [],
                                "post_processors": []}
        self.t.build_blocks.append(info)
        for pb in block.body.blocks:
            self.child(pb, specs, info, ctx)
        for name in block.body.attrs:
            if name not in ("name", "description", "sources"):
                ld.errors.append(ld.diag("Unsupported argument", f'An argument named "{name}" is not expected '
                                                                 "here.", block.body.attrs[name], ctx))

    def header(self, block: Block, scope0: Mapping[str, Any]) -> tuple[str, str]:
        """The build block's ``name`` and ``description`` (the first description is the template's)."""
        ld, ctx = self.ld, block.context()
        build_name = ""
        if "name" in block.body.attrs:
            try:
                build_name = to_string(ld.eval_attr(block.body.attrs["name"], scope0, ctx)[0])
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
            except ValueError as e:
                ld.errors.append(ld.diag("Incorrect attribute value type", f'Inappropriate value for attribute '
                                         f'"name": {e}.', block.body.attrs["name"], ctx))
        description = ""
        if "description" in block.body.attrs and not self.syntax_only:
            description = str(ld.eval_attr(block.body.attrs["description"], scope0, ctx)[0] or "")
        if description and self.t.description is None:
            self.t.description = description
        return build_name, description

    def usages(self, block: Block, scope0: Mapping[str, Any]) -> list[_Usage]:
        """The sources the build uses: ``sources = [...]`` first, then its ``source "<type>.<name>"`` blocks."""
        ld, ctx = self.ld, block.context()
        usages: list[_Usage] = []
        if "sources" in block.body.attrs:
            attr = block.body.attrs["sources"]
            try:
                refs, _ = ld.eval_attr(attr, {**scope0, "source": SourceRefs()}, ctx)
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
                refs = []
            if not isinstance(refs, list):
                ld.errors.append(ld.diag("Incorrect attribute value type", 'Inappropriate value for attribute '
                                         '"sources": list of string required.', attr, ctx))
                refs = []
            for ref in refs:
                text = str(ref)
                # Packer's sourceRefFromString: "<type>.<name>", or any first part (normally "source") then
                # type and name; a name keeps any further dots here (Packer would cut it at the next one)
                parts = text.split(".", 2)
                if len(parts) == 2:
                    parts = ["source", *parts]
                if len(parts) != 3 or not all(parts):
                    ld.errors.append(ld.diag("Invalid sources reference", f'"{text}" is not a valid source '
                                             'reference; use "source.<type>.<name>".', attr, ctx))
                    continue
                usages.append((parts[1], parts[2], None, attr))
        for sb in block.body.blocks:
            if sb.type != "source":
                continue
            ref = sb.labels[0] if sb.labels else ""
            parts = ref.removeprefix("source.").split(".", 1)
            if len(parts) != 2:
                ld.errors.append(ld.diag("Invalid source reference", f'"{ref}" is not a valid source reference; use '
                                         '"<type>.<name>".', sb, ctx))
                continue
            usages.append((parts[0], parts[1], sb, sb))
        return usages

    def source_spec(self, bi: int, usage: _Usage, build_name: str, scope0: Mapping[str, Any],
                    ctx: str) -> HCL2BuilderSpec | None:
        """The build of one source in build block ``bi``: its config evaluated with ``source.*`` set and the
        build's override applied; None (and a diagnostic) for an unknown source or a duplicate name."""
        ld, t = self.ld, self.t
        type_name, src_name, override, where = usage
        key = f"{type_name}.{src_name}"
        src = ld.source_blocks.get(key)
        if src is None:
            ld.errors.append(ld.diag("Unknown source", f"Unknown source {key}", where, ctx))
            return None
        final_name = src_name
        if override is not None and "name" in override.body.attrs:
            try:
                final_name = to_string(ld.eval_attr(override.body.attrs["name"], scope0, ctx)[0])
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
        short = f"{type_name}.{final_name}"
        full = f"{build_name}.{short}" if build_name else short
        if not selected(ld, full, short):
            return None
        plugin = load_plugin("builder", type_name)
        if plugin is None:
            report_unknown_type(ld, "builder", type_name, src)
        if full in self.names:
            ld.errors.append(ld.diag("Duplicate build", f'A build named "{full}" is already defined; give the '
                                     "build block a name or the source a distinct name.", where, ctx))
            return None
        self.names.add(full)
        config: dict[str, Any] = {}
        if not self.syntax_only:
            scope = ld.scope(source=(type_name, final_name), build_name=build_name)
            try:
                config = ld.eval_body(src.body, scope, src.context(), plugin)
                if override is not None:
                    config.update(ld.eval_body(override.body, scope, override.context(), plugin,
                                               skip=frozenset({"name"})))
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
        spec = HCL2BuilderSpec(name=full, type=type_name, config=config, index=len(t.builders),
                               raw_name=full, config_source=short, build_block=bi)
        t.builders.append(spec)
        return spec

    def child(self, pb: Block, specs: list[HCL2BuilderSpec], info: dict[str, Any], ctx: str) -> None:
        """One block inside the build block (provisioner, post-processor(s), ...)."""
        ld = self.ld
        if pb.type in ("provisioner", "error-cleanup-provisioner", "post-processor") and len(pb.labels) != 1:
            ld.errors.append(ld.diag("Missing name for " + pb.type, f"All {pb.type} blocks must have 1 label "
                                                                     "(the type).", pb, ctx))
        elif pb.type in ("provisioner", "error-cleanup-provisioner"):
            self.provisioner(pb, specs, info)
        elif pb.type in ("post-processor", "post-processors"):
            self.post_processors(pb, specs, info)
        elif pb.type == "hcp_packer_registry":
            ld.warnings.append(ld.diag("HCP Packer registry not supported", "stemforge does not publish to HCP "
                                       "Packer; the hcp_packer_registry block is ignored.", pb, ctx,
                                       severity="warning"))
        elif pb.type != "source":
            ld.errors.append(ld.diag("Unsupported block type", f'Blocks of type "{pb.type}" are not expected '
                                                               "here.", pb, ctx))

    def provisioner(self, pb: Block, specs: list[HCL2BuilderSpec], info: dict[str, Any]) -> None:
        """A ``provisioner`` (or the ``error-cleanup-provisioner``, whose builds merge into the first one)."""
        ld, t = self.ld, self.t
        type_name = pb.labels[0] if pb.labels else ""
        info["provisioners"].append(type_name)
        plugin = load_plugin("provisioner", type_name)
        applicable = [spec for spec in specs if applies_to(ld, pb, spec)]
        if plugin is None:
            if applicable or not (ld.only or ld.except_):  # a provisioner no selected build runs is not started
                report_unknown_type(ld, "provisioner", type_name, pb)
            return
        if applicable:
            p = _provisioner_for(ld, pb, applicable, plugin, self.syntax_only, self.prov_index)
            if pb.type == "provisioner":
                t.provisioners.append(p)
            elif t.error_cleanup_provisioner is None:
                t.error_cleanup_provisioner = p
            else:
                first = t.error_cleanup_provisioner
                first.only += p.only
                first.override.update({name: p.override.get(name, p.config) for name in p.only})
        if pb.type == "provisioner":
            self.prov_index += 1

    def post_processors(self, pb: Block, specs: list[HCL2BuilderSpec], info: dict[str, Any]) -> None:
        """A ``post-processor`` (a chain of one) or a ``post-processors`` chain: evaluated once when no member
        reads ``source.*``/``build.*`` (each lists the builds it applies to), else one chain per build."""
        ld, t, syntax_only = self.ld, self.t, self.syntax_only
        chain_blocks = [pb] if pb.type == "post-processor" else [b for b in pb.body.blocks
                                                                  if b.type == "post-processor"]
        info["post_processors"].append([b.labels[0] if b.labels else "" for b in chain_blocks])
        chain_index = len(info["post_processors"]) - 1
        if not any(uses_build_context(ld, b) for b in chain_blocks):
            shared: list[PostProcessorSpec] = []
            for j, ppb in enumerate(chain_blocks):
                applicable = [spec for spec in specs if applies_to(ld, ppb, spec)]
                pp = _post_processor(ld, ppb, applicable[0], syntax_only, (chain_index, j)) if applicable else None
                if pp is not None:
                    pp.only = [spec.name for spec in applicable]
                    shared.append(pp)
            if shared:
                t.post_processors.append(shared)
            return
        for spec in specs:
            chain: list[PostProcessorSpec] = []
            for j, ppb in enumerate(chain_blocks):
                pp = _post_processor(ld, ppb, spec, syntax_only, (chain_index, j)) \
                    if applies_to(ld, ppb, spec) else None
                if pp is not None:
                    chain.append(pp)
            if chain:
                t.post_processors.append(chain)


_GLOB = re.compile(r"[*?\[]")


def uses_build_context(ld: Loader, block: Block) -> bool:
    """Whether anything in ``block`` reads ``source.*`` or ``build.*`` (then it is evaluated per build)."""
    key = id(block)
    if key not in ld.context_cache:
        def body_uses(body: Body) -> bool:
            for attr in body.attrs.values():
                expr = attr.expr
                if isinstance(expr, Tree) and any(
                        tok.type == "NAME" and str(tok) in ("source", "build")
                        for tok in expr.scan_values(lambda v: isinstance(v, Token))):
                    return True
            return any(body_uses(b.body) for b in body.blocks)

        ld.context_cache[key] = body_uses(block.body) or "override" in block.body.attrs
    return ld.context_cache[key]


def applies_to(ld: Loader, block: Block, spec: HCL2BuilderSpec) -> bool:
    """Whether ``block`` (provisioner / post-processor) applies to ``spec`` by its ``only``/``except``."""
    for key, want in (("only", True), ("except", False)):
        attr = block.body.attrs.get(key)
        if attr is None:
            continue
        cache_key = (id(block), key)
        if cache_key not in ld.filter_cache:
            try:
                raw, _ = ld.eval_attr(attr, {}, block.context())
            except HCLError as e:
                ld.errors.extend(e.diagnostics)
                raw = None
            if raw is None:
                ld.filter_cache[cache_key] = None
            else:
                if not isinstance(raw, list):
                    ld.errors.append(ld.diag("Incorrect attribute value type", f'Inappropriate value for attribute '
                                             f'"{key}": list of string required.', attr, block.context()))
                    ld.filter_cache[cache_key] = None
                    return False
                names = [str(n) for n in raw]
                ld.filter_cache[cache_key] = ({n for n in names if not _GLOB.search(n)},
                                              [n for n in names if _GLOB.search(n)])
        cached = ld.filter_cache[cache_key]
        if cached is None:
            return False
        literal, globs = cached
        hit = spec.config_source in literal or spec.raw_name in literal or any(
            fnmatch.fnmatchcase(spec.config_source, n) or fnmatch.fnmatchcase(spec.raw_name, n) for n in globs)
        if hit != want:
            return False
    return True


def _duration(ld: Loader, block: Block, key: str, scope: Mapping[str, Any]) -> float | None:
    attr = block.body.attrs.get(key)
    if attr is None:
        return None
    try:
        value, _ = ld.eval_attr(attr, scope, block.context())
        return parse_duration(str(value), mode="go")
    except HCLError as e:
        ld.errors.extend(e.diagnostics)
    except ValueError as e:
        ld.errors.append(ld.diag("Invalid duration", f"{key}: {e}", attr, block.context()))
    return None


def _provisioner_for(ld: Loader, pb: Block, specs: list[HCL2BuilderSpec], plugin: Any, syntax_only: bool,
                     index: int) -> ProvisionerSpec:
    """One provisioner spec for the builds ``specs`` (its ``only``): evaluated once, or per build (into
    ``override``) when the block reads ``source.*``/``build.*``."""
    first = _provisioner(ld, pb, specs[0], plugin, syntax_only, index)
    if uses_build_context(ld, pb):
        first.override = {specs[0].name: dict(first.config)}
        for spec in specs[1:]:
            first.override[spec.name] = _provisioner(ld, pb, spec, plugin, syntax_only, index).config
    first.only = [spec.name for spec in specs]
    return first


def _provisioner(ld: Loader, pb: Block, spec: HCL2BuilderSpec, plugin: Any, syntax_only: bool,
                 index: int) -> ProvisionerSpec:
    scope = ld.scope(source=(spec.type, spec.config_source.split(".", 1)[1]),
                     build_name=build_name_of(spec))
    config: dict[str, Any] = {}
    max_retries = 0
    if not syntax_only:
        try:
            config = ld.eval_body(pb.body, scope, pb.context(), plugin, skip=_PROV_META)
            if "override" in pb.body.attrs:
                overrides, _ = ld.eval_attr(pb.body.attrs["override"], scope, pb.context())
                for key in (spec.config_source.split(".", 1)[1], spec.config_source, spec.raw_name):
                    if isinstance(overrides, dict) and isinstance(overrides.get(key), dict):
                        config.update(json_compatible(overrides[key]))
            if "max_retries" in pb.body.attrs:
                max_retries = int(ld.eval_attr(pb.body.attrs["max_retries"], scope, pb.context())[0])
        except HCLError as e:
            ld.errors.extend(e.diagnostics)
        except (TypeError, ValueError):
            ld.errors.append(ld.diag("Invalid max_retries", "max_retries must be a whole number.",
                                     pb.body.attrs["max_retries"], pb.context()))
    return ProvisionerSpec(type=pb.labels[0], config=config, only=[spec.name],
                           pause_before=_duration(ld, pb, "pause_before", scope) or 0.0, max_retries=max_retries,
                           timeout=_duration(ld, pb, "timeout", scope), index=index)



def _post_processor(ld: Loader, ppb: Block, spec: HCL2BuilderSpec, syntax_only: bool,
                    index: tuple[int, int]) -> PostProcessorSpec | None:
    type_name = ppb.labels[0] if ppb.labels else ""
    plugin = load_plugin("post-processor", type_name)
    if plugin is None:
        report_unknown_type(ld, "post-processor", type_name, ppb)
        return None
    scope = ld.scope(source=(spec.type, spec.config_source.split(".", 1)[1]), build_name=build_name_of(spec))
    config: dict[str, Any] = {}
    keep: bool | None = None
    name: str | None = type_name
    try:
        if not syntax_only:
            config = ld.eval_body(ppb.body, scope, ppb.context(), plugin, skip=_PP_META)
        if "keep_input_artifact" in ppb.body.attrs:
            keep = bool(ld.eval_attr(ppb.body.attrs["keep_input_artifact"], scope, ppb.context())[0])
        if "name" in ppb.body.attrs:
            name = to_string(ld.eval_attr(ppb.body.attrs["name"], scope, ppb.context())[0])
    except HCLError as e:
        ld.errors.extend(e.diagnostics)
    return PostProcessorSpec(type=type_name, name=name, config=config, keep_input_artifact=keep, only=[spec.name],
                             index=index)
