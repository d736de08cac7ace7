"""The libvirt test harness removes what test sessions killed before their teardown left behind
(``tests/harness/libvirt.py``: ``sweep_dead_runs``, run when a pytest session starts) and never a live session's
run, a pool it does not own or a directory without a verdict. Real libvirt pools, volumes and domains (defined,
never started: seconds), real owner processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirt import (
    BASE,
    OWNER_FILE,
    UNOWNED_AGE,
    destroy,
    libvirt_unavailable_reason,
    make_cpi,
    remove_run,
    sweep_dead_runs,
    system_connection,
    write_owner,
)

pytestmark = [pytest.mark.libvirt]

OVMF = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd")


@pytest.fixture()
def conn() -> Iterator[Any]:
    if reason := libvirt_unavailable_reason():
        pytest.skip(reason)
    with system_connection() as connection:
        yield connection


def add_pool_and_domain(conn: Any, root: Path, pool_name: str, *, uefi: bool = False) -> str:
    """A started ``dir`` pool at ``root/pool`` with a 1 MiB volume and a defined (not started) domain booting from
    it, as the CPI leaves them; with ``uefi`` the domain has OVMF and its own NVRAM file (under ``root``), which
    libvirt refuses to undefine without ``--nvram``. Returns the domain's name."""
    (root / "pool").mkdir(parents=True)
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{pool_name}</name><target><path>{root / 'pool'}</path></target></pool>", 0
    )
    pool.create(0)
    vol = pool.createXML(
        "<volume><name>root.raw</name><capacity unit='MiB'>1</capacity><target><format type='raw'/></target></volume>",
        0,
    )
    name = f"vm-{pool_name}"
    firmware = ""
    if uefi:
        nvram = root / "nvram" / f"{name}_VARS.fd"
        nvram.parent.mkdir()
        shutil.copyfile(OVMF[1], nvram)
        firmware = f"<loader readonly='yes' type='pflash'>{OVMF[0]}</loader><nvram>{nvram}</nvram>"
    conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='pc'>hvm</type>{firmware}</os><features><acpi/></features><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{vol.path()}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    return name


def exists(conn: Any, *, domain: str | None = None, pool: str | None = None) -> bool:
    import libvirt

    try:
        if domain:
            conn.lookupByName(domain)
        if pool:
            conn.storagePoolLookupByName(pool)
    except libvirt.libvirtError:
        return False
    return True


def owned_by_a_dead_process(root: Path) -> None:
    """``root``'s owner file names a real process that has exited since."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        write_owner(root, proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_sweep_removes_dead_sessions_runs_and_keeps_live_ones(conn: Any, tmp_path: Path) -> None:
    tag = f"sweep{uuid.uuid4().hex[:6]}"
    ids = {kind: f"{tag}{kind}" for kind in ("dead", "reused", "orphanpool", "oldunowned", "newunowned")}
    roots = {kind: BASE / f"run-{i}" for kind, i in ids.items()}
    other_pool = f"sft-{tag}elsewhere"  # an ``sft-*`` pool that is no run's (a test's own, in its tmp_path)
    live = make_cpi(tag)
    try:
        # a dead session's run: UEFI domain (with NVRAM) in its pool, owner process gone
        dead_domain = add_pool_and_domain(conn, roots["dead"], f"sft-{ids['dead']}", uefi=True)
        owned_by_a_dead_process(roots["dead"])
        # the owner's pid is in use again (by this very process), by another process than the recorded one
        roots["reused"].mkdir()
        write_owner(roots["reused"])
        owner = json.loads((roots["reused"] / OWNER_FILE).read_text())
        (roots["reused"] / OWNER_FILE).write_text(json.dumps({**owner, "starttime": owner["starttime"] - 1}))
        # a pool whose run directory is gone (killed between teardown's pool and directory steps... or after)
        add_pool_and_domain(conn, roots["orphanpool"], f"sft-{ids['orphanpool']}")
        conn.storagePoolLookupByName(f"sft-{ids['orphanpool']}").destroy()
        shutil.rmtree(roots["orphanpool"])
        # directories without an owner file: judged by age
        for kind in ("oldunowned", "newunowned"):
            roots[kind].mkdir()
            (roots[kind] / "state").mkdir()
        old = time.time() - UNOWNED_AGE - 60
        for path in (roots["oldunowned"] / "state", roots["oldunowned"]):
            os.utime(path, (old, old))
        # the live session (this process): its pool and domain stay
        live_domain = add_pool_and_domain(conn, live.root, live.pool_name)
        conn.storagePoolDefineXML(
            f"<pool type='dir'><name>{other_pool}</name><target><path>{tmp_path}</path></target></pool>", 0
        )

        removed = sweep_dead_runs()

        assert {
            f"domain {dead_domain}",
            f"pool sft-{ids['dead']}",
            f"directory {roots['dead']}",
            f"directory {roots['reused']}",
            f"domain vm-sft-{ids['orphanpool']}",
            f"pool sft-{ids['orphanpool']}",
            f"directory {roots['oldunowned']}",
        } <= set(removed), removed
        assert not exists(conn, domain=dead_domain) and not exists(conn, pool=f"sft-{ids['dead']}")
        assert not exists(conn, domain=f"vm-sft-{ids['orphanpool']}")
        assert not exists(conn, pool=f"sft-{ids['orphanpool']}")
        assert [k for k, r in roots.items() if r.exists()] == ["newunowned"]
        assert exists(conn, domain=live_domain, pool=live.pool_name) and (live.root / OWNER_FILE).is_file()
        assert exists(conn, pool=other_pool)
        assert not [r for r in removed if tag in r and ("live" in r or "newunowned" in r or "elsewhere" in r)]
    finally:
        for kind, run_id in ids.items():
            remove_run(conn, roots[kind], f"sft-{run_id}")
        remove_run(conn, tmp_path / "none", other_pool)
        destroy(live)
    assert not exists(conn, domain=live_domain) and not live.root.exists()
