#!/usr/bin/env python3
"""Bare-metal deploy time of 1, 2 and 4 servers at once through the CPI: does it stay flat in N?

For each N, a fresh emulated lab of N servers (``tests/harness/metal.metal_lab``: libvirt VMs with blank disks,
the sushy-tools Redfish emulator, ``metal serve`` with dnsmasq + iPXE + HTTP in the lab's namespace, RAMDISK's
deploy ramdisk), the servers enrolled, managed and provided (``stemforge metal enroll|manage|provide
--skip-cleaning``: the lab's disks are blank), the test stemcell registered with ``create_stemcell``, then N
``create_vm`` calls started at the same moment, each through a real director-style ``bin/cpi`` process. A call
returns once its server was PXE-booted into the ramdisk, the image streamed to its disk and verified, the config
drive written, the server rebooted from disk and the installed OS phoned home.

Reported per N: the wall time until the last call returned, each call's time, and where the time goes, from the
ramdisk's and the OS's own reports in the state store (median over the N servers, seconds since the server entered
``deploying``): ``booted`` (PXE + iPXE + ramdisk kernel up), ``image-written``, ``done`` (config drive written),
``phone-home`` (installed OS up; not with ``--no-phone-home``) and the ramdisk's own image write rate
(``image MiB/s``). The ratio of each N's mean call time to N=1's is the flatness: the target is <= 1.5x (the
spec: "flat in N while bandwidth allows").

Read it with the machine in mind: the servers are TCG-emulated guests (no KVM here), so every booting server
needs a host core; with 2 cores, several servers booting at once are CPU-bound and the ratio shows the CPU, not the
provisioning services. Each round prints the 1-minute load average during it (a shared machine: other work moves
the numbers a lot) and ``--repeat`` runs the N values again in reverse order, the summary taking medians. The
lab's VDE network moves ~70 MiB/s between the bridge and its ports (measured with two concurrent flows), far above
what a TCG guest writes, so the image write (``image-written`` - ``booted``, and ``image MiB/s``) is guest CPU.

Run: ``.venv/bin/python benchmarks/bench_metal_deploy.py [--servers 1,2,4] [--repeat 2] [--strict]`` (root,
libvirtd, vde2). ``--servers 1`` is the smoke-test size. Exit status 0 unless a deploy failed (2) or, with
``--strict``, the target was missed (1). Each lab is removed at the end of its round, whatever happened.

``--file-based`` measures the other question (issue 15): what a file-based deploy costs against a whole-disk one of
the same image. One lab of one ``uefi2`` server (OVMF, two 8 GiB disks), the bookworm ``metal`` test image as the
stemcell (``test_debian_image_raw(variant="metal")``), enrolled without its inline layout (whole-disk on its first
disk by ``root_hints``); each round deploys it whole-disk (``create_vm`` with ``{"node"}``) and file-based onto
RAID1 + LVM (``{"node", "layout"}``: the lab plan's layout, ESP on both disks, md0 -> vg0 -> root + swap), in
alternating order, each on blank disks (the volume files are emptied between deploys, the server powered off), the
CPI's default readiness (the OS's DHCP request: no phone-home, RAID resync not waited for). Reported per deploy:
the ``create_vm`` call time, the ramdisk's part (``booted`` -> ``done``) and the bytes written to each disk when the
ramdisk reported ``done`` (the volume files' allocation, before the OS boots and md resyncs). Target: file-based
<= 1.5x whole-disk (median create_vm time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.libvirt import CpiResult, LibvirtCpi  # noqa: E402
from tests.harness.metal import Lab, LabServer, metal_lab, metal_unavailable_reason  # noqa: E402

TARGET_RATIO = 1.5
STEMFORGE = [sys.executable, "-m", "stemforge.cli"]
NETWORKS = {"default": {"type": "dynamic", "default": ["dns", "gateway"], "dns": ["10.0.0.2"], "cloud_properties": {}}}
STAGES = ("booted", "image-written", "done", "phone-home")
COLUMNS = (*STAGES, "image MiB/s")
STEMCELL_DIR = Path("/var/lib/stemforge/tests/stemcells")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def stemcell_image(work: Path) -> tuple[Path, dict[str, Any]]:
    from stemcells.tarball import extract_stemcell
    from stemcells.testimage.stemcell import build_test_stemcell

    STEMCELL_DIR.mkdir(parents=True, exist_ok=True)
    extracted = extract_stemcell(build_test_stemcell(STEMCELL_DIR), work / "stemcell")
    return extracted.image_path, dict(extracted.manifest.cloud_properties)


def make_cpi(lab: Lab, root: Path, phone_home: bool) -> LibvirtCpi:
    from cpi.wrapper import write_wrapper

    config = json.loads(lab.cpi_config_path.read_text())
    section = config["cloud"]["properties"]["baremetal"]
    section["timeouts"] = {"power": 120, "deploy": 900, "phone_home": 900, "clean": 600}
    section["phone_home"] = phone_home
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cpi.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return LibvirtCpi(root=root, pool_name="", config_path=path, wrapper=write_wrapper(path, root / "job"))


def metal(lab: Lab, *args: str) -> None:
    proc = subprocess.run([*STEMFORGE, "metal", *args, "--state-dir", str(lab.state_dir)], capture_output=True,
                          text=True, timeout=900, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"stemforge metal {args[0]} failed: {proc.stderr.strip()[-2000:]}")


def stage_times(lab: Lab, node: str) -> dict[str, float]:
    """Seconds from the node entering ``deploying`` to each stage (the store's transitions and events)."""
    events = lab.store().events(node)
    created = _deploy_started(lab, node)
    if created is None:
        return {}
    out: dict[str, float] = {}
    for ev in events:
        stage = "phone-home" if ev.kind == "phone-home" else ev.data.get("stage")
        if stage in STAGES and stage not in out and ev.ts >= created:
            out[stage] = ev.ts - created
            if stage == "image-written" and isinstance(ev.data.get("data"), dict):
                rate = ev.data["data"].get("mib_per_s")
                if isinstance(rate, (int, float)):
                    out["image MiB/s"] = float(rate)
    return out


def _deploy_started(lab: Lab, node: str) -> float | None:
    """When the node entered ``deploying`` (its transitions log)."""
    for t in lab.store().transitions(node):
        if t.to_state == "deploying":
            return float(t.ts)
    return None


def keep_logs(lab: Lab, n: int) -> Path:
    """Copy the serve log, the emulator log and the consoles out of the lab (which is removed) for inspection."""
    import shutil

    dest = Path(tempfile.mkdtemp(prefix=f"bench-metal-deploy-failed-n{n}-"))
    sources = [lab.serve_log_path, Path(lab.dir) / "redfish" / "emulator.log", *(s.console_log for s in lab.servers)]
    for src in sources:
        if src is not None and src.exists():
            shutil.copy(src, dest / src.name)
    return dest


def one_round(n: int, image: tuple[Path, dict[str, Any]], work: Path, phone_home: bool) -> dict[str, Any]:
    say(f"N={n}: building a lab of {n} server(s)")
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    with metal_lab(n) as lab:
        names = [s.name for s in lab.servers]
        metal(lab, "enroll", str(lab.inventory_path))
        metal(lab, "manage", *names)  # inspected: create_vm refuses a server never inspected (placement.py)
        metal(lab, "provide", "--skip-cleaning", *names)
        cpi = make_cpi(lab, work / f"cpi-{n}-{uuid.uuid4().hex[:6]}", phone_home)
        stemcell_cid = cpi.ok("create_stemcell", str(image[0]), image[1], {"tags": {"bench": "metal"}},
                              api_version=3)  # fmt: skip
        say(f"N={n}: lab ready in {time.monotonic() - t0:.1f}s; {n} create_vm call(s) at once")
        results: list[CpiResult | BaseException] = [RuntimeError("not run")] * n
        barrier = threading.Barrier(n)

        def deploy(i: int) -> None:
            try:
                barrier.wait()
                req = cpi.request("create_vm", f"agent-bench-{i}", stemcell_cid, {}, NETWORKS, [], {}, api_version=2)
                results[i] = cpi.run(req, timeout=1800)
            except BaseException as exc:  # noqa: BLE001 - reported below
                results[i] = exc

        threads = [threading.Thread(target=deploy, args=(i,), daemon=True) for i in range(n)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        calls, errors = [], []
        for r in results:
            if isinstance(r, CpiResult) and r.response["error"] is None:
                calls.append(r.seconds)
            else:
                errors.append(str(r.response["error"]) if isinstance(r, CpiResult) else repr(r))
        stages = {name: stage_times(lab, name) for name in names}
        if errors:
            say(f"N={n}: {len(errors)} deploy(s) failed: {errors[0][:500]}")
            say(f"N={n}: the lab's logs and consoles are kept in {keep_logs(lab, n)}")
    load = (load_before + os.getloadavg()[0]) / 2
    return {"n": n, "wall": wall, "calls": calls, "errors": errors, "stages": stages, "load": load}


# -- --file-based: whole-disk vs RAID1+LVM on the uefi2 plan --------------------------------------------------------
def blank_disks(lab: Lab, server: LabServer) -> None:
    """Empty the server's (powered-off) volume files: blank disks again, as on a new server."""
    if lab.power_state(server) != "Off":
        lab.power_off(server)
        _wait(lambda: lab.power_state(server) == "Off", 120, f"{server.name} did not power off")
    for disk in server.disks:
        with open(disk.path, "r+b") as fh:
            fh.truncate(0)
            fh.truncate(disk.size_bytes)


def _wait(probe: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.5)


def deploy_once(lab: Lab, cpi: LibvirtCpi, cid: str, props: dict[str, Any]) -> dict[str, Any]:
    """One create_vm on blank disks; the bytes on each disk when the ramdisk reported ``done``; delete_vm."""
    server = lab.servers[0]
    blank_disks(lab, server)
    store = lab.store()
    after = store.last_event_id(server.name)
    written: dict[str, int] = {}
    stop = threading.Event()

    def watch() -> None:  # the allocation at ``done``, before the OS boots (and md resyncs)
        while not stop.is_set():
            events = store.events(server.name, after_id=after, kinds=["stage"])
            if any(e.data.get("stage") == "done" for e in events):
                written.update({d.serial: d.path.stat().st_blocks * 512 for d in server.disks})
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    req = cpi.request("create_vm", "agent-bench-fb", cid, props, NETWORKS, [], {}, api_version=2)
    res = cpi.run(req, timeout=2400)
    stop.set()
    watcher.join(10)
    if res.response["error"] is not None:
        raise SystemExit(f"create_vm {sorted(props)} failed: {res.response['error']}\n{lab.diagnostics(server.name)}")
    at = {e.data.get("stage"): e.ts for e in store.events(server.name, after_id=after, kinds=["stage"])}
    delete = cpi.call("delete_vm", res.response["result"][0])
    if delete.response["error"] is not None:
        raise SystemExit(f"delete_vm failed: {delete.response['error']}")
    return {"call": res.seconds, "ramdisk": at.get("done", 0.0) - at.get("booted", 0.0), "written": written}


def file_based(repeat: int, strict: bool) -> int:
    import yaml

    from builders.builder_types.debian.testimage import test_debian_image_raw

    image = test_debian_image_raw(variant="metal")
    say(f"stemcell image: {image} ({image.stat().st_size / 2**20:.0f} MiB, {image.stat().st_blocks / 2**11:.0f} MiB "
        "allocated)")  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {"whole-disk": [], "raid1-lvm": []}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-metal-fb-") as tmp, metal_lab(1, plans="uefi2") as lab:
        server = lab.servers[0]
        inventory = yaml.safe_load(lab.inventory_path.read_text())
        node = inventory["nodes"][0]
        layout = node.pop("layout")
        node["root_hints"] = {"serial": server.disks[0].serial}
        path = Path(tmp) / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory))
        metal(lab, "enroll", str(path))
        metal(lab, "manage", server.name)
        metal(lab, "provide", "--skip-cleaning", server.name)
        cpi = make_cpi(lab, Path(tmp) / "cpi", phone_home=False)
        cid = cpi.ok("create_stemcell", str(image), {}, {"tags": {"bench": "file-based"}}, api_version=3)
        kinds = {"whole-disk": {"node": server.name}, "raid1-lvm": {"node": server.name, "layout": layout}}
        for r in range(repeat):
            for kind in list(kinds) if r % 2 == 0 else list(reversed(kinds)):
                say(f"round {r + 1}: {kind}")
                results[kind].append(deploy_once(lab, cpi, cid, kinds[kind]))
                say(f"round {r + 1}: {kind}: create_vm {results[kind][-1]['call']:.1f}s")
        serials = [d.serial for d in server.disks]
    load = (load_before + os.getloadavg()[0]) / 2
    return report_file_based(results, serials, load, strict)


def report_file_based(results: dict[str, list[dict[str, Any]]], serials: list[str], load: float, strict: bool) -> int:
    print(f"\n=== bench_metal_deploy --file-based ({os.cpu_count()} cores, load {load:.2f}; TCG guests; uefi2 plan; "
          "create_vm until the OS's DHCP request, resync not waited for) ===")  # fmt: skip
    print(
        f"{'deploy':>11} {'create_vm s':>12} {'ramdisk s':>10}   " + "  ".join(f"{'MiB on ' + s:>24}" for s in serials)
    )
    medians = {}
    for kind, rounds in results.items():
        medians[kind] = statistics.median(r["call"] for r in rounds)
        ramdisk = statistics.median(r["ramdisk"] for r in rounds)
        per_disk = [statistics.median(r["written"].get(s, 0) for r in rounds) / 2**20 for s in serials]
        print(f"{kind:>11} {medians[kind]:12.1f} {ramdisk:10.1f}   " + "  ".join(f"{b:24.0f}" for b in per_disk))
    ratio = medians["raid1-lvm"] / medians["whole-disk"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"file-based / whole-disk (median create_vm): {ratio:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
    return 1 if strict and verdict == "MISS" else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="1,2,4", help="comma-separated N values (default 1,2,4)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per N, in alternating order (default 1)")
    parser.add_argument("--no-phone-home", action="store_true", help="create_vm returns once the server boots "
                        "from disk (does not wait for the installed OS's phone-home)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--file-based", action="store_true", help="whole-disk vs RAID1+LVM file-based deploy of the "
                        "bookworm image on one uefi2 server (--repeat rounds of each)")  # fmt: skip
    args = parser.parse_args()
    ns = [int(x) for x in args.servers.split(",") if x.strip()]
    if not ns or any(not 1 <= x <= 8 for x in ns):
        parser.error("--servers: numbers from 1 to 8")
    if not 1 <= args.repeat <= 5:
        parser.error("--repeat: 1 to 5")
    reason = metal_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if args.file_based:
        return file_based(args.repeat, args.strict)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-metal-") as tmp:
        image = stemcell_image(Path(tmp))
        say(f"stemcell image: {image[0].stat().st_size / 2**20:.0f} MiB")
        for r in range(args.repeat):
            for n in ns if r % 2 == 0 else list(reversed(ns)):
                rounds.append(one_round(n, image, Path(tmp), not args.no_phone_home))
    return report(rounds, ns, args)


def report(rounds: list[dict[str, Any]], ns: list[int], args: argparse.Namespace) -> int:
    load = os.getloadavg()
    print(
        f"\n=== bench_metal_deploy summary ({os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f}; TCG guests; "
        f"create_vm {'until phone-home' if not args.no_phone_home else 'until booted from disk'}) ==="
    )
    print(f"{'N':>3} {'load':>5} {'wall s':>8} {'call mean s':>12} {'call max s':>11}   "
          + "  ".join(f"{c:>14}" for c in COLUMNS))  # fmt: skip
    failed = False
    means: dict[int, list[float]] = {n: [] for n in ns}
    for r in rounds:
        if r["errors"] or not r["calls"]:
            failed = True
            print(f"{r['n']:>3} FAILED: {len(r['errors'])} deploy(s) failed: {r['errors'][0][:300]}")
            continue
        mean = statistics.mean(r["calls"])
        means[r["n"]].append(mean)
        med = []
        for column in COLUMNS:
            values = [t[column] for t in r["stages"].values() if column in t]
            med.append(f"{statistics.median(values):14.1f}" if values else f"{'-':>14}")
        print(f"{r['n']:>3} {r['load']:5.1f} {r['wall']:8.1f} {mean:12.1f} {max(r['calls']):11.1f}   " + "  ".join(med))
    if failed:
        return 2
    if len(ns) > 1:
        base = statistics.median(means[min(ns)])
        worst = 0.0
        for n in sorted(ns):
            ratio = statistics.median(means[n]) / base
            worst = max(worst, ratio)
            print(f"  N={n}: median mean call {statistics.median(means[n]):.1f}s = {ratio:.2f}x N={min(ns)}")
        verdict = "PASS" if worst <= TARGET_RATIO else "MISS"
        print(f"flat in N: worst ratio {worst:.2f}x (target <= {TARGET_RATIO}x): {verdict}")
        if verdict == "MISS" and (os.cpu_count() or 1) < max(ns):
            print(
                f"  note: {max(ns)} TCG guests booting at once on {os.cpu_count()} cores are CPU-bound (the lab's VDE "
                "network moves ~70 MiB/s; a guest writes its image at a few MiB/s when it gets little CPU): compare "
                "the image MiB/s column with the load column"
            )
        if args.strict and verdict == "MISS":
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
