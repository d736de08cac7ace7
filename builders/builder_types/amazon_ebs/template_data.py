"""Packer's amazon build-time template data: the fields ``tags``, ``run_tags``, ``snapshot_tags`` and
``ami_description`` may use (``{{ .SourceAMIName }}``, ``{{ .BuildRegion }}``...), rendered when the step that
uses them runs, and the EC2 tag lists made from them (also used by the ``amazon-import`` post-processor)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from builders.core import BuildContext, BuildError
from builders.template.functions import RenderContext, render_string


def render_text(ctx: BuildContext, text: str, data: Mapping[str, Any]) -> str:
    """Render Packer's build-time fields (``{{ .SourceAMIName }}``, ``{{ .BuildRegion }}``...) in ``text``."""
    if "{{" not in text:
        return text
    try:
        return render_string(
            text, RenderContext(build_name=ctx.build_name, build_type=ctx.build_type, data={**ctx.generated, **data})
        )
    except Exception as exc:  # noqa: BLE001 - GoTemplateError
        raise BuildError(f"error rendering {text!r}: {exc}") from None


def ec2_tags(ctx: BuildContext, tags: Mapping[str, str], data: Mapping[str, Any]) -> list[dict[str, str]]:
    """EC2 ``Tags`` with keys and values rendered against ``data``."""
    return [{"Key": render_text(ctx, k, data), "Value": render_text(ctx, v, data)} for k, v in tags.items()]


def tag_specs(ctx: BuildContext, kinds: Mapping[str, Mapping[str, str]], data: Mapping[str, Any]) -> list[Any]:
    """EC2 ``TagSpecifications`` for each resource type with tags."""
    return [{"ResourceType": kind, "Tags": ec2_tags(ctx, tags, data)} for kind, tags in kinds.items() if tags]


def build_data(state: Mapping[str, Any], region: str) -> dict[str, Any]:
    """Packer's amazon template data for tags and descriptions."""
    image = state.get("source_image") or {}
    return {
        "BuildRegion": region,
        "SourceAMI": image.get("ImageId", ""),
        "SourceAMIName": image.get("Name", ""),
        "SourceAMIOwner": image.get("OwnerId", ""),
        "SourceAMIOwnerName": image.get("ImageOwnerAlias", ""),
        "SourceAMICreationDate": image.get("CreationDate", ""),
    }
