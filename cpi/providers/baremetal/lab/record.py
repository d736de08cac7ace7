"""The lab's record and where labs live: ``<lab>/lab.json`` (:class:`LabRecord`, everything a lab made, mode 0600),
the labs root (``$STEMFORGE_LABS_ROOT`` or /var/lib/stemforge/labs) and its ``index/<id>`` entries for labs
built elsewhere (``--state-dir``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.lab import domain as lab_domain
from cpi.providers.baremetal.lab import net as lab_net

LABS_ROOT_ENV = "STEMFORGE_LABS_ROOT"
DEFAULT_LABS_ROOT = "/var/lib/stemforge/labs"
SERVE_PORT = 8080
MAX_SERVERS = 16
LIBVIRT_URI = "qemu:///system"


def labs_root() -> Path:
    return Path(os.environ.get(LABS_ROOT_ENV) or DEFAULT_LABS_ROOT)


def write_private(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0600 from the start (lab files hold credentials)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class LabError(RuntimeError):
    """Bad input or a failed lab operation; the message names the field or the resource at fault."""


@dataclass
class LabRecord:
    """Everything a lab made (``<lab>/lab.json``). ``bmc["password"]`` is a secret: ``repr`` hides it."""

    id: str
    dir: str
    dir_preexisted: bool = False
    namespace: str = ""
    bridge: str = lab_domain.BRIDGE
    bridge_ip: str = ""
    prefix: int = 24
    dhcp_range: list[str] = field(default_factory=list)
    serve_port: int = SERVE_PORT
    provisioning_url: str = ""
    state_dir: str = ""
    pool: dict[str, Any] = field(default_factory=dict)
    vde: dict[str, Any] | None = None
    bmc: dict[str, Any] | None = None
    serve: dict[str, Any] | None = None
    ramdisk: dict[str, Any] | None = None
    accelerator: str = ""
    memory_mib: int = 512
    vcpus: int = 1
    servers: list[dict[str, Any]] = field(default_factory=list)
    inventory: str = ""
    cpi_config: str = ""
    phase: str = "creating"  # creating | ready
    #: the process the lab belongs to ({"pid", "starttime"}), for labs that must not outlive it (test harness);
    #: None for labs made by ``stemforge metal lab up``, which outlive the command by design
    owner: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return f"LabRecord(id={self.id!r}, dir={self.dir!r}, phase={self.phase!r}, servers={len(self.servers)})"

    @property
    def path(self) -> Path:
        return Path(self.dir) / "lab.json"

    def save(self) -> None:
        """Atomically rewrite ``lab.json`` (mode 0600)."""
        write_private(self.path, json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> LabRecord:
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def public(self) -> dict[str, Any]:
        """The record with the BMC password masked (for ``status`` and logs)."""
        data = asdict(self)
        if data.get("bmc") and data["bmc"].get("password"):
            data["bmc"]["password"] = "***"
        return data


# -- locating labs ---------------------------------------------------------------------------------------------------
def index_entry(lab_id: str) -> Path:
    return labs_root() / "index" / lab_id


def find_lab_dir(lab_id: str | None = None, lab_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory of lab ``lab_id`` (or ``lab_dir`` itself when given), or None when unknown."""
    if lab_dir is not None:
        return Path(lab_dir)
    if lab_id is None:
        raise LabError("name the lab: --name ID (or --state-dir DIR)")
    lab_domain.check_lab_id(lab_id)
    default = labs_root() / lab_id
    if (default / "lab.json").exists():
        return default
    entry = index_entry(lab_id)
    with contextlib.suppress(OSError):
        return Path(entry.read_text().strip())
    return default if default.exists() else None


def list_labs() -> list[str]:
    """Ids of the labs known under the labs root (directories and index entries)."""
    root = labs_root()
    ids = set()
    if root.is_dir():
        ids |= {p.name for p in root.iterdir() if lab_domain.LAB_ID_RE.match(p.name)}
    if (root / "index").is_dir():
        ids |= {p.name for p in (root / "index").iterdir() if lab_domain.LAB_ID_RE.match(p.name)}
    ids |= {
        ns[len(lab_domain.NAMESPACE_PREFIX) :]
        for ns in lab_net.namespaces()
        if ns.startswith(lab_domain.NAMESPACE_PREFIX)
        and lab_domain.LAB_ID_RE.match(ns[len(lab_domain.NAMESPACE_PREFIX) :])
    }
    return sorted(ids)


def load(lab_id: str | None = None, lab_dir: str | os.PathLike[str] | None = None) -> LabRecord:
    found = find_lab_dir(lab_id, lab_dir)
    if found is None or not (found / "lab.json").exists():
        raise LabError(f"no lab {lab_id or lab_dir}: {found or labs_root() / str(lab_id)}/lab.json does not exist")
    return LabRecord.load(found / "lab.json")


def remove_lab_files(rec: LabRecord) -> None:
    path = Path(rec.dir)
    if rec.dir_preexisted:
        for child in path.iterdir() if path.exists() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
    index_entry(rec.id).unlink(missing_ok=True)
