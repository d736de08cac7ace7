"""MetalStore: inventory, compare-and-set transitions, atomic claims across processes, jobs, tokens and events."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from cpi.providers.baremetal.store import (
    Bmc,
    MetalStore,
    NodeNotFound,
    NodeSpec,
    StateConflict,
    StoreError,
)

SECRET = "s3cret-bmc-pass"


def spec(name: str, macs: tuple[str, ...] = (), cpus: int = 2) -> NodeSpec:
    return NodeSpec(
        name=name,
        bmc=Bmc("redfish", "http://127.0.0.1:8000", f"/redfish/v1/Systems/{name}", "admin", SECRET),
        macs=macs or (f"52:54:00:00:00:{abs(hash(name)) % 256:02x}",),
        plan={"arch": "x86_64", "cpus": cpus, "memory_mib": 1024, "disks": [{"size_gib": 4}], "labels": {}},
        root_hints={"size": 4},
    )


def test_db_file_is_private_and_secrets_hidden(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1", ("52:54:00:aa:bb:01",))], who="test")
    assert stat.S_IMODE(os.stat(tmp_path / "metal.db").st_mode) == 0o600
    node = store.get_node("n1")
    assert node.bmc.password == SECRET
    assert SECRET not in repr(node) and SECRET not in str(node.public())
    job = store.start_job("n1", "deploy", {"mode": "deploy"}, 60)
    assert job.token not in repr(job)


def test_enroll_is_all_or_nothing(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1", ("52:54:00:aa:bb:01",))], who="test")
    with pytest.raises(StoreError, match="MAC 52:54:00:aa:bb:01 already belongs to node 'n1'"):
        store.enroll([spec("n2", ("52:54:00:aa:bb:02",)), spec("n3", ("52-54-00-AA-BB-01",))], who="test")
    assert [n.name for n in store.nodes()] == ["n1"]
    with pytest.raises(StoreError, match="already enrolled"):
        store.enroll([spec("n1", ("52:54:00:aa:bb:09",))], who="test")


def test_mac_lookup_any_format(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1", ("52:54:00:aa:bb:01", "52:54:00:aa:bb:02"))], who="test")
    assert store.node_for_mac("52-54-00-AA-BB-02") == "n1"
    assert store.node_for_mac("52:54:00:aa:bb:03") is None
    assert store.node_for_mac("garbage") is None
    assert store.job_for_mac("52:54:00:aa:bb:01") is None
    job = store.start_job("n1", "clean", {"mode": "clean"}, 30)
    found = store.job_for_mac("52:54:00:AA:BB:02")
    assert found is not None and found.token == job.token and found.kind == "clean"
    assert found.deadline == pytest.approx(job.created + 30)


def test_job_and_phone_home_tokens(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1")], who="test")
    first = store.start_job("n1", "deploy", {}, 60)
    second = store.start_job("n1", "deploy", {}, 60)
    assert first.token != second.token
    assert not store.check_token("n1", first.token, "job")
    assert store.check_token("n1", second.token, "job")
    assert not store.check_token("n1", "", "job")
    store.end_job("n1")
    assert not store.check_token("n1", second.token, "job")
    ph1 = store.issue_phone_home_token("n1")
    ph2 = store.issue_phone_home_token("n1")
    assert not store.check_token("n1", ph1, "phone-home") and store.check_token("n1", ph2, "phone-home")
    assert not store.check_token("n1", ph2, "job")
    with pytest.raises(StoreError):
        store.start_job("n1", "reboot", {}, 1)
    with pytest.raises(NodeNotFound):
        store.start_job("nope", "deploy", {}, 1)


def test_events_filter_and_order(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    a = store.add_event("n1", "stage", {"stage": "booted"})
    store.add_event("n2", "stage", {"stage": "booted"})
    b = store.add_event("n1", "result", {"ok": True})
    assert [e.id for e in store.events("n1")] == [a, b]
    assert [e.kind for e in store.events("n1", after_id=a)] == ["result"]
    assert [e.data for e in store.events("n1", kinds=["stage"])] == [{"stage": "booted"}]
    assert store.last_event_id("n1") == b


def test_transition_compare_and_set_and_log(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1")], who="test")
    store.transition("n1", "manage", ["enroll"], "manageable", "alice", "bmc ok")
    with pytest.raises(StateConflict, match="node 'n1' is in state 'manageable': cannot manage"):
        store.transition("n1", "manage", ["enroll"], "manageable", "alice", "again")
    log = store.transitions("n1")
    assert [(t.verb, t.from_state, t.to_state, t.who) for t in log] == [
        ("enroll", "", "enroll", "test"),
        ("manage", "enroll", "manageable", "alice"),
    ]
    node = store.set_maintenance("n1", True, "BMC unreachable", "cpi")
    assert node.maintenance and node.maintenance_reason == "BMC unreachable"
    assert store.transitions("n1")[-1].why == "BMC unreachable"


def test_claim_respects_state_and_maintenance(tmp_path: Path) -> None:
    store = MetalStore(tmp_path)
    store.enroll([spec("n1"), spec("n2", ("52:54:00:00:01:02",))], who="test")
    assert not store.claim("n1", "vm-1", "deploying", "cpi", "create_vm")  # still enroll
    for name in ("n1", "n2"):
        store.transition(name, "manage", ["enroll"], "manageable", "t", "t")
        store.transition(name, "provide", ["manageable"], "available", "t", "t")
    store.set_maintenance("n2", True, "broken fan", "t")
    assert not store.claim("n2", "vm-2", "deploying", "cpi", "create_vm")
    assert store.claim("n1", "vm-1", "deploying", "cpi", "create_vm")
    assert not store.claim("n1", "vm-3", "deploying", "cpi", "create_vm")
    node = store.node_for_vm("vm-1")
    assert node is not None and node.name == "n1" and node.provision_state == "deploying"


def _race(state_dir: str, vm: str, names: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = MetalStore(state_dir)
    won = [n for n in names if store.claim(n, f"{vm}-{n}", "deploying", vm, "race")]
    out.put((vm, won))


def test_claim_race_across_processes(tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(4)]
    store = MetalStore(tmp_path)
    store.enroll([spec(n, (f"52:54:00:00:02:{i:02x}",)) for i, n in enumerate(names)], who="test")
    for n in names:
        store.transition(n, "manage", ["enroll"], "manageable", "t", "t")
        store.transition(n, "provide", ["manageable"], "available", "t", "t")
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_race, args=(str(tmp_path), f"p{i}", names, out)) for i in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    winners = [n for _, won in results for n in won]
    assert sorted(winners) == names  # every node claimed exactly once
    claims = [t for t in store.transitions() if t.verb == "deploy"]
    assert len(claims) == 4


def test_first_use_from_many_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=MetalStore, args=(str(tmp_path),)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert MetalStore(tmp_path).nodes() == []


# -- the state machine (states.py) ------------------------------------------------------------------------------
def test_lifecycle_verbs_and_illegal_ones(tmp_path: Path) -> None:
    from cpi.providers.baremetal import states

    store = MetalStore(tmp_path)
    store.enroll([spec("n1")], who="test")
    with pytest.raises(states.IllegalTransition, match=r"node 'n1' is in state 'enroll': cannot provide \(allowed"):
        states.apply(store, "n1", "provide", "t", "t")
    states.apply(store, "n1", "manage", "t", "bmc ok")
    node = states.apply(store, "n1", "provide", "t", "t")
    assert (node.provision_state, node.target_state) == ("cleaning", "available")
    node = states.apply(store, "n1", "wait", "t", "t", wait_s=5)
    assert node.provision_state == "clean wait" and node.state_deadline is not None
    assert states.apply(store, "n1", "done", "t", "t").provision_state == "available"
    assert states.claim(store, "n1", "vm-1", "cpi", "create_vm")
    states.apply(store, "n1", "wait", "cpi", "deploy job")
    states.apply(store, "n1", "resume", "cpi", "callback")
    assert states.apply(store, "n1", "done", "cpi", "phone-home").provision_state == "active"
    with pytest.raises(states.IllegalTransition, match="'active': cannot provide"):
        states.apply(store, "n1", "provide", "t", "t")
    states.apply(store, "n1", "undeploy", "cpi", "delete_vm")
    states.apply(store, "n1", "clean", "cpi", "delete_vm")
    node = states.apply(store, "n1", "done", "cpi", "wiped")
    assert node.provision_state == "available" and node.claimed_by is None
    # manual cleaning returns to manageable
    states.apply(store, "n1", "manage", "t", "t")
    states.apply(store, "n1", "clean", "t", "t")
    assert states.apply(store, "n1", "done", "t", "t").provision_state == "manageable"


def test_failed_states_need_explicit_verbs(tmp_path: Path) -> None:
    from cpi.providers.baremetal import states

    store = MetalStore(tmp_path)
    store.enroll([spec("n1")], who="test")
    for verb in ("manage", "provide", "done"):
        states.apply(store, "n1", verb, "t", "t")
    assert states.claim(store, "n1", "vm-1", "cpi", "t")
    states.apply(store, "n1", "wait", "cpi", "t")
    node = states.apply(store, "n1", "abort", "op", "stuck", last_error="aborted by operator")
    assert node.provision_state == "deploy failed" and node.last_error == "aborted by operator"
    for verb in ("done", "provide", "manage", "deploy"):
        with pytest.raises(states.IllegalTransition, match="allowed in this state: undeploy"):
            states.apply(store, "n1", verb, "t", "t")
    states.apply(store, "n1", "undeploy", "t", "t")
    states.apply(store, "n1", "fail", "t", "power off failed")
    assert store.get_node("n1").provision_state == "clean failed"
    with pytest.raises(states.IllegalTransition):
        states.apply(store, "n1", "done", "t", "t")
    assert states.apply(store, "n1", "provide", "t", "again").provision_state == "cleaning"


def test_reap_times_out_waits_and_orphaned_work(tmp_path: Path) -> None:
    from cpi.providers.baremetal import states

    store = MetalStore(tmp_path)
    store.enroll([spec("n1"), spec("n2", ("52:54:00:00:03:02",))], who="test")
    for name in ("n1", "n2"):
        for verb in ("manage", "provide"):
            states.apply(store, name, verb, "t", "t")
    states.apply(store, "n1", "wait", "t", "t", wait_s=0.0)
    # n2 is "cleaning" with its lock held by this process (someone working): left alone
    with store.lock("node", "n2"):
        moved = states.reap(store, "reaper", now=time.time() + 1)
    assert [n.name for n in moved] == ["n1"]
    n1 = store.get_node("n1")
    assert n1.provision_state == "clean failed" and "timed out in state 'clean wait'" in n1.last_error
    # a restart: nobody holds n2's lock any more -> its "-ing" state is failed
    moved = states.reap(store, "reaper")
    assert [n.name for n in moved] == ["n2"] and store.get_node("n2").provision_state == "clean failed"


def _posix_locks_on(path: Path) -> int:
    inode = os.stat(path).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if f":{inode} " in line and "POSIX" in line)


def test_opening_another_store_keeps_this_process_sqlite_locks(tmp_path: Path) -> None:
    """Opening and closing a raw descriptor of a database file drops every POSIX lock the process holds on it
    (SQLite's "how to corrupt" list): a second MetalStore in the same process must not do that."""
    first = MetalStore(tmp_path)
    first._db.execute("BEGIN IMMEDIATE")  # a write lock on metal.db held by `first`
    try:
        held = _posix_locks_on(tmp_path / "metal.db")
        assert held >= 1
        MetalStore(tmp_path)  # e.g. a second store in a test process or a CLI helper
        assert _posix_locks_on(tmp_path / "metal.db") == held
    finally:
        first._db.execute("ROLLBACK")


def test_a_version_3_database_gains_the_stemcell_rootfs_table(tmp_path: Path) -> None:
    """Schema 4 adds stemcell_rootfs (the image's root partition, for layout deploys); a database of version 3
    (before it) gets the table when opened, keeping its stemcells."""
    import sqlite3

    store = MetalStore(tmp_path)
    store.put_stemcell("sc-old", "/x.raw", "ab" * 32, 10, "raw", {})
    store.close()
    db = sqlite3.connect(tmp_path / "metal.db")
    db.execute("DROP TABLE stemcell_rootfs")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    store = MetalStore(tmp_path)
    old = store.stemcell("sc-old")
    assert old is not None and old["rootfs"] is None and old["size"] == 10 and old["path"] == "/x.raw"
    rootfs = {"offset": 1048576, "size": 4096, "sha256": "cd" * 32, "fstype": "ext4", "index": 2}
    store.put_stemcell("sc-new", "/y.raw", "ab" * 32, 10, "raw", {}, rootfs)
    assert store.stemcell("sc-new")["rootfs"] == rootfs  # type: ignore[index]
    store.delete_stemcell("sc-new")
    assert store.stemcell("sc-new") is None
    assert store._db.execute("SELECT COUNT(*) FROM stemcell_rootfs").fetchone()[0] == 0
