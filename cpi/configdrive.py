"""OpenStack-style config drives (ISO 9660, label ``config-2``) holding the agent settings.

The drive carries both trees: ``ec2/latest/user-data`` (what bosh-agent's ConfigDrive source reads) and
``openstack/latest/{meta_data.json,user_data,network_data.json}`` (cloud-init's ConfigDrive datasource).
Writes are atomic: the ISO is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LABEL = "config-2"


def files_for(
    settings: Mapping[str, Any],
    *,
    instance_uuid: str,
    hostname: str,
    network_data: Mapping[str, Any],
    public_key: str | None = None,
) -> dict[str, bytes]:
    """The drive's files (path -> content) for an agent ``settings`` document."""
    user_data = json.dumps(settings, sort_keys=True).encode()
    meta: dict[str, Any] = {"uuid": instance_uuid, "hostname": hostname, "name": hostname}
    ec2_meta: dict[str, Any] = {"instance-id": instance_uuid, "hostname": hostname}
    if public_key:
        meta["public_keys"] = {"0": public_key}
        ec2_meta["public-keys"] = {"0": {"openssh-key": public_key}}
    return {
        "ec2/latest/user-data": user_data,
        "ec2/latest/meta-data.json": json.dumps(ec2_meta, sort_keys=True).encode(),
        "openstack/latest/user_data": user_data,
        "openstack/latest/meta_data.json": json.dumps(meta, sort_keys=True).encode(),
        "openstack/latest/network_data.json": json.dumps(network_data, sort_keys=True).encode(),
    }


def write_iso(path: str | os.PathLike[str], files: Mapping[str, bytes], label: str = LABEL) -> Path:
    """Write ``files`` into an ISO 9660 image (Rock Ridge + Joliet keep the names) at ``path`` atomically."""
    import pycdlib  # deferred: only create_vm / attach paths need it

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=label)
    made: set[str] = set()
    try:
        for name in sorted(files):
            parts = name.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    iso.add_directory(
                        iso_path="/" + directory.upper(),
                        rr_name=parts[depth - 1],
                        joliet_path="/" + directory,
                    )
                    made.add(directory)
            data = files[name]
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path="/" + _iso_name(name),
                rr_name=parts[-1],
                joliet_path="/" + name,
            )
        iso.write(str(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        iso.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def read_iso_file(path: str | os.PathLike[str], name: str) -> bytes:
    """Read one file (by its Rock Ridge/Joliet name) back from a config drive."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/" + name)
        return out.getvalue()
    finally:
        iso.close()


def _iso_name(name: str) -> str:
    """An ISO 9660 level-4 path for ``name`` (upper case, separators kept; ';1' added by pycdlib rules)."""
    parts = name.split("/")
    leaf = parts[-1].upper().replace("-", "_")
    return "/".join(p.upper() for p in parts[:-1]) + "/" + leaf
