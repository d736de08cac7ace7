"""Test harness for the libvirt provider: a private storage pool and state directory per test session, the test
stemcell imported once, and a director-style ``bin/cpi`` wrapper run as a real subprocess for every call.

Everything lives under ``/var/lib/stemforge/tests/run-<id>`` (QEMU, running as libvirt-qemu, must be able to
traverse it) and in a pool named ``sft-<id>``; teardown removes every domain whose disks live in that pool, the
pool and the directory. Guests get QEMU user-mode NICs only (the network rule).

A session killed before its teardown (SIGKILL, a CI timeout) leaks its run: ``run-<id>/owner.json`` names the
process that owns it (pid, start time, boot id, pid namespace) and :func:`sweep_dead_runs`, called when a test
session starts (``tests/conftest.py``), removes the runs whose owner is gone. The same pattern as the metal lab's
``reap_orphans`` (``cpi/providers/baremetal/lab/lifecycle.py``); labs (``sf-lab-*``) are never touched here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stemforge_base.cpi_client import DIRECTOR_ENV, build_request, exchange, parse_response

BASE = Path("/var/lib/stemforge/tests")
OWNER_FILE = "owner.json"
#: a run directory without a readable owner file (made by an older harness, or a session killed between its
#: ``mkdir`` and writing the file) counts as dead once nothing in it changed for this long
UNOWNED_AGE = 6 * 3600
USER_NET = {"cloud_properties": {"type": "user"}}


@dataclass
class CpiResult:
    response: dict[str, Any]
    stdout: bytes
    stderr: bytes
    returncode: int
    seconds: float

    @property
    def result(self) -> Any:
        assert self.response["error"] is None, f"CPI error: {self.response['error']}"
        return self.response["result"]

    @property
    def error(self) -> dict[str, Any]:
        assert self.response["error"] is not None, f"expected an error, got result {self.response['result']!r}"
        return dict(self.response["error"])


def run_wrapper(
    wrapper: Path,
    request: Mapping[str, Any] | bytes,
    *,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> CpiResult:
    """One call of a director-style ``bin/cpi`` through the director-style client's :func:`exchange` (the
    director's environment plus ``extra_env``, bounded); asserts exit status 0 and a valid response envelope."""
    run = exchange([str(wrapper)], request, timeout=timeout, env={**DIRECTOR_ENV, **(extra_env or {})}, cwd=None)
    assert run.returncode == 0, f"CPI exited {run.returncode}: {run.stderr_text[-3000:]}"
    response = parse_response(
        str(request.get("method", "")) if isinstance(request, Mapping) else "", run.stdout, run.stderr_text
    )
    return CpiResult(response, run.stdout, run.stderr, run.returncode, run.seconds)


@dataclass
class LibvirtCpi:
    """One test session's CPI: config, wrapper, state dir and pool."""

    root: Path
    pool_name: str
    config_path: Path
    wrapper: Path
    director_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def pool_path(self) -> Path:
        return self.root / "pool"

    def console(self, vm_cid: str) -> Path:
        return self.state_dir / "consoles" / f"{vm_cid}.log"

    def request(
        self, method: str, *arguments: Any, api_version: int | None = 2, context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return build_request(
            method, arguments, director_uuid=self.director_uuid, api_version=api_version, context=context
        )

    def run(
        self, request: Mapping[str, Any] | bytes, *, extra_env: Mapping[str, str] | None = None, timeout: float = 600
    ) -> CpiResult:
        return run_wrapper(self.wrapper, request, extra_env=extra_env, timeout=timeout)

    def call(
        self, method: str, *arguments: Any, api_version: int | None = 2, extra_env: Mapping[str, str] | None = None
    ) -> CpiResult:
        return self.run(self.request(method, *arguments, api_version=api_version), extra_env=extra_env)

    def ok(self, method: str, *arguments: Any, api_version: int | None = 2) -> Any:
        return self.call(method, *arguments, api_version=api_version).result

    # -- inspection (straight from libvirt and the pool, not through the CPI) -------------------------------
    def libvirt(self) -> Any:
        import libvirt

        return libvirt.open("qemu:///system")

    def our_domains(self) -> list[str]:
        """Domains whose disks live in this session's pool."""
        conn = self.libvirt()
        try:
            return sorted(d.name() for d in conn.listAllDomains(0) if str(self.pool_path) in d.XMLDesc(0))
        finally:
            conn.close()

    def volumes(self) -> list[str]:
        return sorted(p.name for p in self.pool_path.iterdir()) if self.pool_path.exists() else []

    def state_rows(self, table: str) -> list[dict[str, Any]]:
        import sqlite3

        db = sqlite3.connect(self.state_dir / "state.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(f"SELECT * FROM {table}")]
        finally:
            db.close()


def make_cpi(tag: str = "") -> LibvirtCpi:
    from cpi.wrapper import write_wrapper

    run_id = uuid.uuid4().hex[:8]
    BASE.mkdir(parents=True, exist_ok=True)
    for p in (BASE.parent, BASE):
        p.chmod(0o755)
    root = BASE / f"run-{tag}{run_id}"
    root.mkdir()
    root.chmod(0o755)
    write_owner(root)
    pool = f"sft-{tag}{run_id}"
    config = {
        "cloud": {
            "plugin": "libvirt",
            "properties": {
                "state_dir": str(root / "state"),
                "libvirt": {
                    "uri": "qemu:///system",
                    "storage_pool": pool,
                    "pool_path": str(root / "pool"),
                    "accelerator": "auto",
                    "detach_timeout": 90,
                },
                "agent": {
                    "mbus": "nats://nats-user:mbus-SECRET-pw@127.0.0.1:4222",
                    "ntp": ["127.0.0.1"],
                    "blobstore": {
                        "provider": "dav",
                        "options": {"endpoint": "http://127.0.0.1:25250", "password": "blobstore-SECRET-pw"},
                    },
                },
            },
        }
    }
    config_path = root / "cpi.json"
    config_path.write_text(json.dumps(config))
    wrapper = write_wrapper(config_path, root / "job")
    return LibvirtCpi(root=root, pool_name=pool, config_path=config_path, wrapper=wrapper)


@contextlib.contextmanager
def system_connection() -> Iterator[Any]:
    """A connection to ``qemu:///system``, closed at the end of the block."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        yield conn
    finally:
        conn.close()


def destroy(cpi: LibvirtCpi) -> None:
    """Remove everything the session created, whatever the CPI left."""
    with system_connection() as conn:
        remove_run(conn, cpi.root, cpi.pool_name)


def remove_run(conn: Any, root: Path, pool_name: str) -> list[str]:
    """Remove one run: every domain with a disk in ``root/pool`` or in pool ``pool_name`` (destroyed if running,
    undefined with its NVRAM), the pool (stopped, undefined) and ``root``. Idempotent, and quiet about what another
    process removed meanwhile. Returns what it removed."""
    import libvirt

    # a UEFI guest's NVRAM file goes with it (``virsh undefine --nvram``; libvirt refuses to undefine it otherwise)
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    )
    removed = []
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            if _uses_pool(dom.XMLDesc(0), root / "pool", pool_name):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(flags)
                removed.append(f"domain {dom.name()}")
    for pool in conn.listAllStoragePools(0):  # not a lookup by name: libvirt logs a miss to stderr
        with contextlib.suppress(libvirt.libvirtError):
            if pool.name() == pool_name:
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
                removed.append(f"pool {pool_name}")
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
        removed.append(f"directory {root}")
    return removed


def _uses_pool(domain_xml: str, pool_path: Path, pool_name: str) -> bool:
    """Whether a domain has a disk (or a disk's backing file) in the pool."""
    prefix = f"{pool_path}/"
    for source in ET.fromstring(domain_xml).iterfind("./devices/disk//source"):
        if source.get("pool") == pool_name or (source.get("file") or "").startswith(prefix):
            return True
    return False


# -- runs of dead sessions ------------------------------------------------------------------------------------


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def write_owner(root: Path, pid: int | None = None) -> None:
    """Record process ``pid`` (default: the current one) as the owner of run ``root`` (written whole, then renamed
    into place)."""
    from cpi.providers.baremetal.lab.proc import identity

    owner = {**identity(pid or os.getpid()), "boot_id": _boot_id(), "pid_namespace": _pid_namespace()}
    tmp = root / f".{OWNER_FILE}.tmp"
    tmp.write_text(json.dumps(owner))
    tmp.rename(root / OWNER_FILE)


def _newest_change(root: Path) -> float:
    """The newest modification time of ``root`` and everything under it (a run holds a few dozen files)."""
    newest = root.stat().st_mtime
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def run_is_dead(root: Path, *, now: float | None = None) -> bool:
    """Whether the session that owns run directory ``root`` is gone: its owner process (pid and start time, field
    22 of ``/proc/<pid>/stat``, so a recycled pid is not mistaken for it) no longer exists, or the machine has
    rebooted since. An owner this process cannot judge (no readable owner file, another pid namespace) counts as
    gone only after :data:`UNOWNED_AGE` without a change in the directory tree. A directory that vanished is not
    dead (someone else is removing it)."""
    from cpi.providers.baremetal.lab.proc import alive

    try:
        age = (time.time() if now is None else now) - _newest_change(root)
    except FileNotFoundError:
        return False
    try:
        owner = json.loads((root / OWNER_FILE).read_text())
        if not isinstance(owner, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        return age > UNOWNED_AGE
    if owner.get("boot_id") != _boot_id():
        return True
    if owner.get("pid_namespace") != _pid_namespace():
        return age > UNOWNED_AGE
    return not alive(owner)


def sweep_dead_runs(base: Path = BASE) -> list[str]:
    """Remove the runs of test sessions that died before their teardown: every ``base/run-<id>`` that
    :func:`run_is_dead` judges dead, with pool ``sft-<id>`` and its domains, and every pool ``sft-<id>`` at
    ``base/run-<id>/pool`` whose directory is gone (a pool is only ever defined after its directory exists, and
    teardown removes the pool before the directory). Nothing else: no other name, no pool elsewhere (a test's
    own ``sft-*`` pool in its tmp_path), no metal lab. Safe against concurrent sessions and concurrent sweeps.
    Returns what it removed."""
    import libvirt

    runs = {p.name.removeprefix("run-") for p in base.glob("run-*") if p.is_dir()} if base.is_dir() else set()
    with system_connection() as conn:
        for pool in conn.listAllStoragePools(0):
            name = pool.name()
            with contextlib.suppress(libvirt.libvirtError):
                target = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path")
                if name.startswith("sft-") and target == str(base / f"run-{name.removeprefix('sft-')}" / "pool"):
                    runs.add(name.removeprefix("sft-"))
        removed: list[str] = []
        for run_id in sorted(runs):
            root = base / f"run-{run_id}"
            if root.exists() and not run_is_dead(root):
                continue
            removed += remove_run(conn, root, f"sft-{run_id}")
    return removed


@contextlib.contextmanager
def session_cpi(tag: str = "") -> Iterator[LibvirtCpi]:
    cpi = make_cpi(tag)
    try:
        yield cpi
    finally:
        destroy(cpi)


@contextlib.contextmanager
def session_cpi_or_skip(tag: str = "") -> Iterator[LibvirtCpi]:
    """:func:`session_cpi`, or skip the test (saying why) when libvirt cannot run guests here."""
    reason = libvirt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with session_cpi(tag) as cpi:
        yield cpi


def libvirt_unavailable_reason() -> str | None:
    """Why libvirt tests cannot run on this machine, or None. (On the project's machines they always run:
    scripts/setup.sh installs and starts libvirtd.)"""
    if shutil.which("virsh") is None or shutil.which("qemu-system-x86_64") is None:
        return "libvirt/QEMU not installed (run scripts/setup.sh)"
    if os.geteuid() != 0:
        return "the libvirt tests use qemu:///system and need root"
    try:
        import libvirt

        libvirt.open("qemu:///system").close()
    except Exception as exc:  # noqa: BLE001
        return f"libvirtd not reachable: {exc}"
    return None
