"""EC2 tags from director metadata, within AWS's limits (as bosh-aws-cpi's ``TagManager``: keys cut to 127
characters, values to 255; at most 50 tags per resource; the reserved ``aws:`` prefix is dropped)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_KEY = 127
MAX_VALUE = 255
MAX_TAGS = 50


def tag_list(tags: Mapping[str, Any]) -> list[dict[str, str]]:
    """``[{"Key", "Value"}]`` for ``tags`` (None values skipped, everything else stringified, sorted by key)."""
    out: dict[str, str] = {}
    for key, value in tags.items():
        if key is None or value is None:
            continue
        name = str(key)[:MAX_KEY]
        if not name or name.lower().startswith("aws:"):
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[name] = str(value)[:MAX_VALUE]
    return [{"Key": k, "Value": out[k]} for k in sorted(out)][:MAX_TAGS]


def tag_specifications(resource_types: list[str], tags: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``TagSpecifications`` for creation calls; empty when there are no tags (AWS rejects an empty tag list)."""
    listed = tag_list(tags)
    if not listed:
        return []
    return [{"ResourceType": kind, "Tags": listed} for kind in resource_types]


def vm_name_tags(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the ``Name`` tag the AWS console shows, as bosh-aws-cpi derives it: ``name`` (moved to
    ``Name``), else ``job/index``, else ``compiling/<compiling>``."""
    tags = {str(k): str(v) for k, v in metadata.items()}
    if "name" in tags:
        tags["Name"] = tags.pop("name")
    elif "job" in tags and "index" in tags:
        tags["Name"] = f"{tags['job']}/{tags['index']}"
    elif "compiling" in tags:
        tags["Name"] = f"compiling/{tags['compiling']}"
    return tags


def snapshot_tags(metadata: Mapping[str, Any], device: str | None) -> tuple[str, dict[str, str]]:
    """``(description, tags)`` for a disk snapshot from the director's metadata, as bosh-aws-cpi shapes them:
    description and ``Name`` ``deployment/job/index[/device]``, ``director`` from ``director_name``,
    ``instance_index``, ``instance_name`` ``job/instance_id``; ``device`` when attached."""
    meta = {str(k): "" if v is None else str(v) for k, v in metadata.items()}
    parts = [meta.get(key, "") for key in ("deployment", "job", "index")]
    if device:
        parts.append(device.rsplit("/", 1)[-1])
        meta["device"] = device
    name = "/".join(parts)
    tags = dict(meta)
    if "director_name" in tags:
        tags["director"] = tags.pop("director_name")
    if "index" in tags:
        tags["instance_index"] = tags.pop("index")
    if "job" in tags:
        job = tags.pop("job")
        tags["instance_name"] = f"{job}/{meta['instance_id']}" if meta.get("instance_id") else job
    tags["Name"] = name
    return name, tags
