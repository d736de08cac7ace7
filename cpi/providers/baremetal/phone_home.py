"""Phone-home from cloud-init: the config drive's ``vendor_data.json`` and what ``metal serve`` accepts from it.

cloud-init's ``phone_home`` module (``cloudinit/config/cc_phone_home.py``, canonical/cloud-init) runs once per
instance after boot and POSTs ``application/x-www-form-urlencoded`` fields -- those listed in ``post`` (here
``instance_id`` and ``hostname``; an unavailable one is sent as ``N/A``) -- to ``url`` (``$INSTANCE_ID`` in it is
replaced), retrying ``tries`` times 3 s apart (``retries=tries - 1``). It cannot send headers, so the phone-home
token is in the URL's path: ``<provisioning_url>/v1/nodes/<node>/phone-home/<token>``; :func:`redact` removes it
from every log line ``metal serve`` writes.

The OpenStack config drive carries vendor data as ``openstack/latest/vendor_data.json``; cloud-init's ConfigDrive
data source reads it through ``openstack.convert_vendordata`` (``cloudinit/sources/helpers/openstack.py``): a
JSON object's ``cloud-init`` member is the vendor data, here a ``#cloud-config`` document (JSON is YAML). The
``instance_id`` cloud-init sends is the drive's ``meta_data.json`` ``uuid``: ``metal serve`` records the report as
event ``phone-home`` only when it equals the uuid of the VM the node runs (``vm-<uuid>``).
"""

from __future__ import annotations

import json
import re
from typing import Final
from urllib.parse import parse_qs

VENDOR_DATA_PATH: Final = "openstack/latest/vendor_data.json"
#: The form fields cloud-init is asked to post (cc_phone_home's POST_LIST_ALL minus the host keys).
POST: Final = ("instance_id", "hostname")
TRIES: Final = 10
MAX_FIELD: Final = 4096
_TOKEN_IN_PATH: Final = re.compile(r"(/phone-home/)[^/\s?#'\"]+")


def url(base: str, node: str, token: str) -> str:
    """The URL cloud-init posts to (the token is the last path segment)."""
    return f"{base}/v1/nodes/{node}/phone-home/{token}"


def vendor_data(post_url: str) -> bytes:
    """``vendor_data.json``: ``{"cloud-init": "#cloud-config\\n{phone_home: {url, post, tries}}"}``."""
    config = {"phone_home": {"url": post_url, "post": list(POST), "tries": TRIES}}
    return json.dumps({"cloud-init": "#cloud-config\n" + json.dumps(config, sort_keys=True)}, sort_keys=True).encode()


def redact(text: str) -> str:
    """``text`` with any phone-home token in a path replaced by ``***``."""
    return _TOKEN_IN_PATH.sub(r"\1***", text)


def parse_form(body: bytes) -> dict[str, str]:
    """cloud-init's form body as ``{field: value}`` (each field once, at most :data:`MAX_FIELD` characters);
    ValueError naming the problem. ``instance_id`` is required."""
    try:
        text = body.decode("ascii")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a form (application/x-www-form-urlencoded): {exc}") from None
    out: dict[str, str] = {}
    for key, values in fields.items():
        if len(values) != 1:
            raise ValueError(f"field {key!r} is sent {len(values)} times")
        if len(values[0]) > MAX_FIELD or len(key) > 64:
            raise ValueError(f"field {key[:64]!r} is longer than {MAX_FIELD} characters")
        out[key] = values[0]
    if not out.get("instance_id"):
        raise ValueError("instance_id is missing")
    return out
