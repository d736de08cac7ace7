"""create_vm failing after each of its creation steps leaves nothing behind, and 32 concurrent CPI processes
leave consistent state (libvirt, the pool, the state database and the config drives agree)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cpi import configdrive
from tests.harness.libvirt import USER_NET, LibvirtCpi

pytestmark = [pytest.mark.libvirt]

CREATE_VM_STEPS = ["create_root_disk", "create_ephemeral_disk", "write_config_drive", "define_domain",
                   "record_vm", "start_domain", "confirm_running"]


def _snapshot(cpi: LibvirtCpi) -> tuple[list[str], list[str], list[str]]:
    return cpi.our_domains(), cpi.volumes(), sorted(r["cid"] for r in cpi.state_rows("vms"))


@pytest.mark.parametrize("step", CREATE_VM_STEPS)
def test_create_vm_failure_after_each_step_leaves_nothing(libvirt_cpi: LibvirtCpi, stemcell_cid: str,
                                                          step: str) -> None:
    cpi = libvirt_cpi
    before = _snapshot(cpi)
    r = cpi.call("create_vm", "agent-fail", stemcell_cid, {"ram": 128, "ephemeral_disk_size": 16},
                 {"n": {"type": "dynamic", **USER_NET}}, [], {"bosh": {"password": "fail-SECRET"}},
                 extra_env={"STEMFORGE_FAILPOINTS": f"after:{step}"})
    err = r.error
    assert err["type"] == "Bosh::Clouds::VMCreationFailed"
    assert f"after:{step}" in err["message"]
    assert _snapshot(cpi) == before, f"create_vm left something behind after failing past {step}"
    assert "fail-SECRET" not in (r.stdout + r.stderr).decode()


def test_32_concurrent_cpi_processes(libvirt_cpi: LibvirtCpi, stemcell_cid: str) -> None:
    cpi = libvirt_cpi
    before_domains = cpi.our_domains()
    vm_a, _ = cpi.ok("create_vm", "agent-a", stemcell_cid, {"ram": 128}, {"n": {"type": "dynamic", **USER_NET}},
                     [], {})
    vm_b, _ = cpi.ok("create_vm", "agent-b", stemcell_cid, {"ram": 128}, {"n": {"type": "dynamic", **USER_NET}},
                     [], {})
    to_attach = [cpi.ok("create_disk", 8, {}, None) for _ in range(8)]
    to_delete = [cpi.ok("create_disk", 8, {}, None) for _ in range(4)]

    requests: list[tuple[str, dict[str, Any]]] = []
    for i, disk in enumerate(to_attach):
        requests.append(("attach", cpi.request("attach_disk", vm_a if i < 4 else vm_b, disk)))
    for disk in to_delete:
        requests.append(("delete_disk", cpi.request("delete_disk", disk)))
    for i in range(6):
        requests.append(("create_vm", cpi.request("create_vm", f"agent-c{i}", stemcell_cid, {"ram": 64},
                                                  {"n": {"type": "dynamic", **USER_NET}}, [], {})))
    for _ in range(6):
        requests.append(("create_disk", cpi.request("create_disk", 4, {}, None)))
    for _ in range(6):
        requests.append(("has_vm", cpi.request("has_vm", vm_a)))
    for vm in (vm_a, vm_b):
        requests.append(("metadata", cpi.request("set_vm_metadata", vm, {"deployment": "c", "name": vm})))
    assert len(requests) == 32

    def run(req: dict[str, Any]) -> dict[str, Any]:
        return cpi.run(req).response  # exit status 0 and a valid envelope, asserted there

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(run, [r for _, r in requests]))
    by_kind: dict[str, list[Any]] = {}
    for (kind, _), resp in zip(requests, responses, strict=True):
        by_kind.setdefault(kind, []).append(resp["result"])
    new_vms = [r[0] for r in by_kind["create_vm"] if r]
    new_disks = [d for d in by_kind["create_disk"] if d]
    try:
        errors = [(kind, resp["error"]) for (kind, _), resp in zip(requests, responses, strict=True) if resp["error"]]
        assert errors == []
        assert all(by_kind["has_vm"])
        # every attach is recorded, in libvirt and in the agent settings on the current config drive
        for vm, disks in ((vm_a, to_attach[:4]), (vm_b, to_attach[4:])):
            assert sorted(cpi.ok("get_disks", vm)) == sorted(disks)
            row = next(r for r in cpi.state_rows("vms") if r["cid"] == vm)
            settings = json.loads(configdrive.read_iso_file(row["config_drive"], "ec2/latest/user-data"))
            assert sorted(settings["disks"]["persistent"]) == sorted(disks), "a concurrent attach was lost"
            targets = [h["path"] for h in settings["disks"]["persistent"].values()]
            assert len(set(targets)) == 4
            isos = [p for p in cpi.volumes() if p.startswith(f"{vm}-config-")]
            assert len(isos) == 1, f"stale config drives left: {isos}"
        for disk in to_delete:
            assert cpi.ok("has_disk", disk) is False
        for disk in new_disks:
            assert cpi.ok("has_disk", disk) is True
        assert set(new_vms) <= set(cpi.our_domains())
        assert len(set(new_vms)) == 6
    finally:
        # tear down concurrently too: 8 delete_vm + 14 delete_disk at once
        deletes = [cpi.request("delete_vm", vm) for vm in [vm_a, vm_b, *new_vms]]
        with ThreadPoolExecutor(max_workers=32) as pool:
            assert all(r["error"] is None for r in pool.map(run, deletes))
        disk_deletes = [cpi.request("delete_disk", d) for d in [*to_attach, *to_delete, *new_disks]]
        with ThreadPoolExecutor(max_workers=32) as pool:
            outcomes = list(pool.map(run, disk_deletes))
        assert all(r["error"] is None or r["error"]["type"] == "Bosh::Clouds::DiskNotFound" for r in outcomes)
    assert cpi.our_domains() == before_domains
    assert not [v for v in cpi.volumes() if v.startswith(("vm-", "disk-"))]
    assert [r for r in cpi.state_rows("disks")] == []
