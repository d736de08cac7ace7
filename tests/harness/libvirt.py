"""Test harness for the libvirt provider: a private storage pool and state directory per test session, the test
stemcell imported once, and a director-style ``bin/cpi`` wrapper run as a real subprocess for every call.

Everything lives under ``/var/lib/stemforge/tests/run-<id>`` (QEMU, running as libvirt-qemu, must be able to
traverse it) and in a pool named ``sft-<id>``; teardown removes every domain whose disks live in that pool, the
pool and the directory. Guests get QEMU user-mode NICs only (the network rule).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stemforge_base.cpi_client import DIRECTOR_ENV, build_request, exchange, parse_response

BASE = Path("/var/lib/stemforge/tests")
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


def run_wrapper(wrapper: Path, request: Mapping[str, Any] | bytes, *, extra_env: Mapping[str, str] | None = None,
                timeout: float = 600) -> CpiResult:
    """One call of a director-style ``bin/cpi`` through the director-style client's :func:`exchange` (the
    director's environment plus ``extra_env``, bounded); asserts exit status 0 and a valid response envelope."""
    run = exchange([str(wrapper)], request, timeout=timeout, env={**DIRECTOR_ENV, **(extra_env or {})}, cwd=None)
    assert run.returncode == 0, f"CPI exited {run.returncode}: {run.stderr_text[-3000:]}"
    response = parse_response(str(request.get("method", "")) if isinstance(request, Mapping) else "", run.stdout,
                              run.stderr_text)
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

    def request(self, method: str, *arguments: Any, api_version: int | None = 2,
                context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return build_request(method, arguments, director_uuid=self.director_uuid, api_version=api_version,
                             context=context)

    def run(self, request: Mapping[str, Any] | bytes, *, extra_env: Mapping[str, str] | None = None,
            timeout: float = 600) -> CpiResult:
        return run_wrapper(self.wrapper, request, extra_env=extra_env, timeout=timeout)

    def call(self, method: str, *arguments: Any, api_version: int | None = 2,
             extra_env: Mapping[str, str] | None = None) -> CpiResult:
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
    pool = f"sft-{tag}{run_id}"
    config = {"cloud": {"plugin": "libvirt", "properties": {
        "state_dir": str(root / "state"),
        "libvirt": {"uri": "qemu:///system", "storage_pool": pool, "pool_path": str(root / "pool"),
                    "accelerator": "auto", "detach_timeout": 90},
        "agent": {"mbus": "nats://nats-user:mbus-SECRET-pw@127.0.0.1:4222", "ntp": ["127.0.0.1"],
                  "blobstore": {"provider": "dav", "options": {"endpoint": "http://127.0.0.1:25250",
                                                               "password": "blobstore-SECRET-pw"}}},
    }}}
    config_path = root / "cpi.json"
    config_path.write_text(json.dumps(config))
    wrapper = write_wrapper(config_path, root / "job")
    return LibvirtCpi(root=root, pool_name=pool, config_path=config_path, wrapper=wrapper)


def destroy(cpi: LibvirtCpi) -> None:
    """Remove everything the session created, whatever the CPI left."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if str(cpi.pool_path) in dom.XMLDesc(0):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(cpi.pool_name)
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
            pool.undefine()
    finally:
        conn.close()
    shutil.rmtree(cpi.root, ignore_errors=True)


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
