"""The bare-metal CPI end to end on the emulated lab (LAB's ``metal_lab``): libvirt VMs with blank disks as the
servers, the sushy-tools Redfish emulator as their BMCs, ``metal serve`` (dnsmasq + iPXE + HTTP) in the lab's
namespace, RAMDISK's deploy ramdisk and the test stemcell. Every CPI call goes through a real ``bin/cpi`` process
with the director's stripped environment.

One lab of 4 servers for the module. The flow: enroll 2 → create_vm deploys the test stemcell by PXE + iPXE → the
installed OS phones home with what it read from its config drive (``phone_home: true``, the opt-in readiness check)
→ reboot_vm → delete_vm cleans (disks verified wiped) and the server is available again → a second create_vm reuses
it, through the lab's default config (readiness without the guest's help: BMC power + the OS's DHCP request) with
the test stemcell built so its agent never phones home (a stock stemcell's behaviour). Then 8 concurrent create_vm
on the 4 servers (4 succeed, 4 fail with "no server available", nothing double-claimed) and the faults: a callback
with a wrong token, a deploy timeout, a wrong checksum, a server power-cycled mid-deploy and a BMC that is down.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpi import configdrive
from cpi.providers.baremetal.store import MetalStore
from stemcells.testimage.agent_events import read_events, wait_for
from tests.harness.libvirt import CpiResult, LibvirtCpi
from tests.harness.metal import Lab, metal_lab, metal_unavailable_reason, wait_until

pytestmark = [pytest.mark.metal, pytest.mark.slow]
MIB = 1024 * 1024
NETWORKS = {"default": {"type": "dynamic", "default": ["dns", "gateway"], "dns": ["10.0.0.2"], "cloud_properties": {}}}
ENV = {"bosh": {"password": "env-SECRET-pw", "mbus": {"cert": {"private_key": "mbus-SECRET-key"}}}}
STEMFORGE = [sys.executable, "-m", "stemforge.cli"]


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = metal_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with metal_lab(4) as running:
        try:
            yield running
        finally:
            # keep the services' log: the lab directory goes with `down`
            keep = Path(f"/tmp/core-e2e-serve-{running.id}.log")
            keep.write_text(running.serve_log())
            print(f"\nmetal serve log kept in {keep}")


@pytest.fixture(autouse=True)
def serve_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts (and ends) with ``metal serve`` running, or says so with its log instead of timing out."""
    from cpi.providers.baremetal.lab import proc as lab_proc

    lab = request.getfixturevalue("lab")
    if lab.record.serve and not lab_proc.alive(lab.record.serve):
        pytest.fail(f"metal serve of lab {lab.id} is not running\n{lab.serve_log()[-4000:]}")
    yield
    if lab.record.serve and not lab_proc.alive(lab.record.serve):
        pytest.fail(f"metal serve of lab {lab.id} died during the test\n{lab.serve_log()[-4000:]}")


def make_cpi(lab: Lab, root: Path, **overrides: Any) -> LibvirtCpi:
    """A director-style ``bin/cpi`` for the lab's CPI config with ``overrides`` merged into ``baremetal``."""
    from cpi.wrapper import write_wrapper

    config = json.loads(lab.cpi_config_path.read_text())
    section = config["cloud"]["properties"]["baremetal"]
    section["timeouts"] = {"power": 120, "deploy": 420, "boot_to_disk": 420, "phone_home": 420, "clean": 420}
    section["bmc"] = {"min_interval_s": 0.1}
    for key, value in overrides.items():
        if isinstance(value, dict):
            section.setdefault(key, {}).update(value)
        else:
            section[key] = value
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cpi.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return LibvirtCpi(root=root, pool_name="", config_path=path, wrapper=write_wrapper(path, root / "job"))


@pytest.fixture(scope="module")
def cpi(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> LibvirtCpi:
    # the test agent phones home: these tests also wait for it (the opt-in readiness check)
    return make_cpi(lab, tmp_path_factory.mktemp("metal-cpi"), phone_home=True)


@pytest.fixture(scope="module")
def default_cpi(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> LibvirtCpi:
    """``bin/cpi`` for the lab's ``cpi.json`` exactly as ``metal lab up`` wrote it."""
    from cpi.wrapper import write_wrapper

    root = tmp_path_factory.mktemp("metal-cpi-default")
    return LibvirtCpi(
        root=root,
        pool_name="",
        config_path=lab.cpi_config_path,
        wrapper=write_wrapper(lab.cpi_config_path, root / "job"),
    )


@pytest.fixture(scope="module")
def silent_image() -> Path:
    """The test stemcell's raw disk built with ``phone_home=False``: its agent reads and prints the config drive and
    never calls the provisioning network (what a stock bosh-agent does)."""
    from stemcells.testimage.build import build_test_image

    return build_test_image(fmt="raw", phone_home=False)


@pytest.fixture(scope="module")
def stemcell_cid(cpi: LibvirtCpi, stemcell_image: tuple[Path, dict[str, Any]]) -> str:
    image, cloud_properties = stemcell_image
    cid: str = cpi.ok("create_stemcell", str(image), cloud_properties, {"tags": {"suite": "metal"}}, api_version=3)
    return cid


def metal(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STEMFORGE, "metal", *args, "--state-dir", str(lab.state_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def enroll(lab: Lab, names: list[str], tmp: Path) -> None:
    """``metal enroll`` the named lab servers, then ``manage`` (BMC read, then a real inspection: the ramdisk boots
    in inspect mode and reports the hardware; create_vm refuses a server never inspected) and ``provide
    --skip-cleaning``. The inspection's cost is printed (``manage`` per server)."""
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    inventory["nodes"] = [n for n in inventory["nodes"] if n["name"] in names]
    path = tmp / f"inventory-{len(names)}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(inventory))
    for verb in (["enroll", str(path)], ["manage", *names], ["provide", "--skip-cleaning", *names]):
        started = time.monotonic()
        proc = metal(lab, *verb)
        assert proc.returncode == 0, f"metal {verb[0]}: {proc.stderr}"
        assert lab.servers[0].password not in proc.stdout + proc.stderr
        if verb[0] == "manage":
            print(f"\nmanage + inspection of {len(names)} server(s): {time.monotonic() - started:.1f}s")
    store = lab.store()
    for name in names:
        record = store.inspection(name)
        assert record is not None and record.data["disks"], f"{name} was not inspected"


def ensure_enrolled(lab: Lab, names: list[str], tmp: Path) -> None:
    store = lab.store()
    missing = [n for n in names if store.node(n) is None]
    if missing:
        enroll(lab, missing, tmp)


def available(store: MetalStore) -> list[str]:
    return [n.name for n in store.nodes() if n.provision_state == "available" and not n.maintenance]


def create_vm(cpi: LibvirtCpi, agent_id: str, stemcell: str, props: dict[str, Any] | None = None) -> CpiResult:
    return cpi.run(
        cpi.request("create_vm", agent_id, stemcell, props or {}, NETWORKS, [], ENV, api_version=2), timeout=1500
    )


def assert_no_secrets(lab: Lab, *texts: str | bytes) -> None:
    store = lab.store()
    secrets = [lab.servers[0].password, "env-SECRET-pw", "mbus-SECRET-key"]
    for node in store.nodes():
        job = store.job(node.name)
        if job is not None:
            secrets.append(job.token)
    for text in texts:
        blob = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in secrets:
            assert secret not in blob


def disk_region(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def assert_wiped(lab: Lab, server_name: str) -> None:
    """Ironic's metadata erase: the first and last MiB of every disk of the server are zeros."""
    for disk in lab.server(server_name).disks:
        assert disk_region(disk.path, 0, MIB) == bytes(MIB), f"{disk.path}: first MiB not wiped"
        assert disk_region(disk.path, disk.size_bytes - MIB, MIB) == bytes(MIB), f"{disk.path}: last MiB not wiped"


def phone_homes(store: MetalStore, node: str, after: int = 0) -> list[Any]:
    return store.events(node, after_id=after, kinds=["phone-home"])


# -- the flow ---------------------------------------------------------------------------------------------------
@pytest.mark.timeout(2700)
def test_deploy_phone_home_reboot_delete_and_reuse(
    lab: Lab,
    cpi: LibvirtCpi,
    default_cpi: LibvirtCpi,
    stemcell_cid: str,
    stemcell_image: tuple[Path, dict[str, Any]],
    silent_image: Path,
    tmp_path: Path,
) -> None:
    # all 4 are enrolled up front (enrolling more while `metal serve` runs makes its dnsmasq reload crash, see the
    # report); this flow is confined to 2 of them by cloud_properties
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    names = [s.name for s in lab.servers[:2]]
    pair = {"nodes": names}
    store = lab.store()
    assert set(names) <= set(available(store))
    stemcell = store.stemcell(stemcell_cid)
    assert stemcell is not None and stemcell["size"] > 0

    started = time.monotonic()
    res = create_vm(cpi, "agent-e2e-1", stemcell_cid, pair)
    vm_cid, networks = res.result
    deploy_s = time.monotonic() - started
    node = store.node_for_vm(vm_cid)
    assert node is not None and node.name in names and node.provision_state == "active"
    assert networks["default"]["mac"] == node.macs[0]
    assert "deploy: booted" in res.response["log"] and "phoned home" in res.response["log"]
    assert_no_secrets(lab, res.stdout, res.stderr, lab.serve_log())
    # the OS phoned home with what it read from its config drive
    report = phone_homes(store, node.name)[-1].data
    assert report["agent_id"] == "agent-e2e-1"
    iso = lab.state_dir / "configdrives" / f"{node.name}.iso"
    assert report["configdrive_sha256"] == hashlib.sha256(iso.read_bytes()).hexdigest()
    assert node.macs[0] in [m.lower() for m in report["macs"]]
    # the image is on the root disk, the config drive in a partition over its last 64 MiB
    root = lab.server(node.name).root_disk
    image = Path(stemcell["path"])
    # (the booted OS has written to its root filesystem since: compare what it does not touch, and the digest the
    # ramdisk computed on the stream while writing)
    assert disk_region(root.path, 0, 446) == disk_region(image, 0, 446)  # boot code (the MBR gained a partition)
    assert disk_region(root.path, MIB, 512) == disk_region(image, MIB, 512)  # the boot partition's boot sector
    checksum = [e.data for e in store.events(node.name, kinds=["stage"]) if e.data.get("stage") == "checksum-ok"]
    served = stemcell["streams"]["disk"]  # what metal serve streamed: the raw image gzipped at create_stemcell
    assert checksum and checksum[-1]["data"]["sha256"] == served["sha256"]
    assert gzip.decompress((image.parent / served["path"]).read_bytes()) == image.read_bytes()
    assert disk_region(root.path, root.size_bytes - 64 * MIB + 32769, 5) == b"CD001"
    assert cpi.ok("has_vm", vm_cid) is True
    cpi.ok("set_vm_metadata", vm_cid, {"deployment": "e2e", "job": "j", "index": "0"})

    # reboot_vm: a BMC reset; the OS boots again and phones home again
    last = store.last_event_id(node.name)
    cpi.ok("reboot_vm", vm_cid)
    wait_until(
        lambda: phone_homes(store, node.name, last),
        420,
        lambda: f"no phone-home after reboot_vm\n{lab.diagnostics(node.name)}",
    )

    # delete_vm: powered off, cleaned (disks wiped), available again
    res = cpi.call("delete_vm", vm_cid)
    assert res.response["error"] is None, res.response["error"]
    node = store.get_node(node.name)
    assert node.provision_state == "available" and node.claimed_by is None
    assert_wiped(lab, node.name)
    assert lab.power_state(lab.server(node.name)) == "Off"
    assert cpi.ok("has_vm", vm_cid) is False
    assert cpi.call("delete_vm", vm_cid).response["error"] is None  # idempotent
    verbs = [t.verb for t in store.transitions(node.name)]
    assert verbs[-5:] == ["undeploy", "clean", "wait", "resume", "done"]

    # a second create_vm reuses the cleaned server: the lab's default config and a stemcell that never phones home
    config = json.loads(lab.cpi_config_path.read_text())["cloud"]["properties"]["baremetal"]
    assert "phone_home" not in config and "boot_check" not in config  # the provider's defaults
    silent = default_cpi.ok("create_stemcell", str(silent_image), {}, {"tags": {"agent": "silent"}}, api_version=3)
    console = lab.server(node.name).console_log
    seen_before = len(read_events(console))
    last = store.last_event_id(node.name)
    started = time.monotonic()
    res = create_vm(default_cpi, "agent-e2e-2", silent, {"node": node.name})
    vm2, _ = res.result
    silent_s = time.monotonic() - started
    assert store.get_node(node.name).claimed_by == vm2
    assert f"booted its disk: its OS asked for an address on {node.macs[0]}" in res.response["log"]
    assert "phoned home" not in res.response["log"]
    # the OS read config-2 and printed it (the agent's settings line: the drive's user-data, byte for byte) ...
    user_data = configdrive.read_iso_file(iso, "ec2/latest/user-data")
    settings, index = wait_for(console, lambda e: e.get("event") == "settings", 120, after=seen_before,
                               what="the silent agent's settings")  # fmt: skip
    assert settings["agent_id"] == "agent-e2e-2" and settings["source"] == "config-drive"
    assert settings["settings_sha256"] == hashlib.sha256(user_data).hexdigest()
    # ... and never phoned home
    wait_for(console, lambda e: e.get("event") == "phone-home", 120, after=index, what="the disabled phone-home")
    assert [e for e in read_events(console)[seen_before:] if e.get("event") == "phone-home"] == [
        {"event": "phone-home", "ok": False, "disabled": True}
    ]
    assert phone_homes(store, node.name, last) == []
    assert_no_secrets(lab, res.stdout, res.stderr, lab.serve_log())
    assert default_cpi.call("delete_vm", vm2).response["error"] is None
    assert store.get_node(node.name).provision_state == "available"
    default_cpi.ok("delete_stemcell", silent)
    print(f"\nfirst deploy (PXE + iPXE + ramdisk + boot + phone-home): {deploy_s:.0f}s")
    print(f"deploy of the silent stemcell (PXE + iPXE + ramdisk + boot + DHCP): {silent_s:.0f}s")


@pytest.mark.timeout(2700)
def test_concurrent_create_vm_never_double_claims(lab: Lab, cpi: LibvirtCpi, stemcell_cid: str, tmp_path: Path) -> None:
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    assert len(available(store)) == 4
    results: dict[int, CpiResult] = {}

    def one(i: int) -> None:
        results[i] = create_vm(cpi, f"agent-c{i}", stemcell_cid)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1600)
    assert len(results) == 8
    ok = [r.response["result"][0] for r in results.values() if r.response["error"] is None]
    failed = [r.response["error"] for r in results.values() if r.response["error"] is not None]
    try:
        assert len(ok) == 4, failed
        assert len(failed) == 4
        for error in failed:
            assert error["type"] == "Bosh::Clouds::VMCreationFailed" and "no server available" in error["message"]
        claims = [store.node_for_vm(vm) for vm in ok]
        assert len({n.name for n in claims if n is not None}) == 4
        claims_log = [t for t in store.transitions() if t.verb == "deploy" and t.from_state == "available"]
        per_vm = [t.why for t in claims_log]
        assert len(per_vm) == len(set(per_vm))
    finally:
        deleters = [threading.Thread(target=cpi.call, args=("delete_vm", vm)) for vm in ok]
        for t in deleters:
            t.start()
        for t in deleters:
            t.join(1200)
    assert len(available(store)) == 4


# -- faults -----------------------------------------------------------------------------------------------------
def post_in_namespace(lab: Lab, url: str, body: dict[str, Any], token: str) -> int:
    code = (
        "import sys,json,urllib.request,urllib.error\n"
        "req=urllib.request.Request(sys.argv[1],data=sys.argv[2].encode(),method='POST',"
        "headers={'Content-Type':'application/json','X-Stemforge-Token':sys.argv[3]})\n"
        "try:\n r=urllib.request.urlopen(req,timeout=10);print(r.status)\n"
        "except urllib.error.HTTPError as e:\n print(e.code)\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.namespace, sys.executable, "-I", "-S", "-c", code, url, json.dumps(body), token],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def test_callback_with_a_wrong_token_is_rejected_and_logged(lab: Lab, tmp_path: Path) -> None:
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    node = lab.servers[0].name
    before = store.last_event_id(node)
    wrong = "not-the-token-" + uuid.uuid4().hex
    base = f"{lab.provisioning_url}/v1/nodes/{node}"
    assert post_in_namespace(lab, f"{base}/events", {"kind": "result", "stage": "done", "ok": True}, wrong) == 401
    assert post_in_namespace(lab, f"{base}/phone-home", {"agent_id": "intruder"}, wrong) == 401
    assert store.last_event_id(node) == before
    wait_until(lambda: f"rejected callback for node {node}" in lab.serve_log(), 10, lambda: lab.serve_log()[-2000:])
    assert wrong not in lab.serve_log()


def test_deploy_timeout_names_the_node_and_cleans(lab: Lab, stemcell_cid: str, tmp_path: Path, cpi: LibvirtCpi) -> None:
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    node = available(store)[0]
    impatient = make_cpi(lab, tmp_path / "cpi", timeouts={"deploy": 5})
    res = create_vm(impatient, "agent-timeout", stemcell_cid, {"node": node})
    error = res.error
    assert error["type"] == "Bosh::Clouds::VMCreationFailed"
    assert f"no callback from node {node} within 5 s (last stage: " in error["message"]
    state = store.get_node(node)
    assert state.provision_state == "available" and state.claimed_by is None
    assert store.vms() == [] and store.job(node) is None


def test_wrong_checksum_fails_cleans_and_releases(lab: Lab, cpi: LibvirtCpi, stemcell_cid: str, tmp_path: Path) -> None:
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    node = available(store)[0]
    good = store.stemcell(stemcell_cid)
    assert good is not None
    bad_cid = f"sc-badsum-{uuid.uuid4().hex[:8]}"
    store.put_stemcell(bad_cid, good["path"], "0" * 64, good["size"], "raw", {})
    res = create_vm(cpi, "agent-badsum", bad_cid, {"node": node})
    error = res.error
    assert error["type"] == "Bosh::Clouds::VMCreationFailed" and "checksum" in error["message"], error
    state = store.get_node(node)
    assert state.provision_state == "available" and state.claimed_by is None
    to_states = [t.to_state for t in store.transitions(node)]
    assert "deploy failed" in to_states[-8:] and "clean wait" in to_states[-8:]
    assert_wiped(lab, node)
    store.delete_stemcell(bad_cid)


def test_power_cycle_mid_deploy_recovers(lab: Lab, cpi: LibvirtCpi, stemcell_cid: str, tmp_path: Path) -> None:
    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    node = available(store)[0]
    after = store.last_event_id(node)
    result: dict[str, CpiResult] = {}
    thread = threading.Thread(
        target=lambda: result.update(r=create_vm(cpi, "agent-cycle", stemcell_cid, {"node": node}))
    )
    thread.start()
    lab.wait_for_event(node, "disk-selected", timeout=300, after_id=after)
    lab.reset(lab.server(node), "ForceRestart")
    thread.join(1500)
    res = result["r"]
    vm, _ = res.result
    assert "restarted (was at stage" in res.response["log"]
    assert store.get_node(node).provision_state == "active"
    assert cpi.call("delete_vm", vm).response["error"] is None


def test_bmc_down_retries_then_maintenance(lab: Lab, cpi: LibvirtCpi, stemcell_cid: str, tmp_path: Path) -> None:
    import socket

    ensure_enrolled(lab, [s.name for s in lab.servers], tmp_path)
    store = lab.store()
    node = available(store)[0]
    real = store.get_node(node).bmc.address
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    store.set_bmc_address(node, dead, "test", "BMC down")
    try:
        res = create_vm(cpi, "agent-bmc", stemcell_cid, {"node": node})
        error = res.error
        assert "no server available" in error["message"] and f"tried and failed: {node}" in error["message"]
        broken = store.get_node(node)
        assert broken.maintenance and "unreachable" in broken.maintenance_reason and broken.claimed_by is None
        assert "attempt" in res.response["log"]  # the retries are logged
    finally:
        store.set_bmc_address(node, real, "test", "BMC back")
    assert metal(lab, "maintenance", "unset", node).returncode == 0
    proc = metal(lab, "undeploy", node)
    assert proc.returncode == 0, proc.stderr
    assert store.get_node(node).provision_state == "available"
