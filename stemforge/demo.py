"""``stemforge demo``: the main job. A VM through the CPI end to end on libvirt, printing each step.

It builds the tiny test stemcell (cached), writes a CPI config and a director-style ``bin/cpi`` wrapper, then
drives the real ``stemforge-cpi`` process exactly as the BOSH director would (stripped environment, one JSON
request per process): create_stemcell, create_vm, set_vm_metadata, create_disk, attach_disk, detach_disk and the
deletes, showing what the guest's agent reported on its serial console. Everything it creates is deleted at the
end, also when a step fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from stemforge_base.cpi_client import CpiCallError, CpiClient

DEFAULT_WORKDIR = Path("/var/lib/stemforge/demo")
#: The libvirt storage pool the demo's CPI defines (in ``<workdir>/pool``) and the demo removes at the end.
POOL = "stemforge-demo"
#: Seconds one CPI call may take (create_vm under TCG included).
CALL_TIMEOUT = 900


class DemoFailed(Exception):
    pass


class Demo:
    def __init__(self, workdir: Path, agent_timeout: float) -> None:
        self.workdir = workdir
        self.agent_timeout = agent_timeout
        self.started = time.monotonic()
        self.director_uuid = str(uuid.uuid4())
        self.client: CpiClient | None = None
        self.created: list[tuple[str, list[Any]]] = []  # (delete method, args), undone in reverse

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    # -- CPI calls ------------------------------------------------------------------------------------------
    def call(self, method: str, *arguments: Any, api_version: int = 2, quiet: bool = False) -> Any:
        assert self.client is not None
        try:
            call = self.client.call(method, *arguments, api_version=api_version)
        except CpiCallError as exc:  # an error response, or no valid response (CpiProcessError, with the stderr)
            raise DemoFailed(str(exc)) from None
        if not quiet:
            self.say(f"{method} -> {json.dumps(call.result)[:160]}  ({call.seconds:.2f}s)")
        return call.result

    # -- the job -------------------------------------------------------------------------------------------
    def run(self) -> None:
        from cpi.wrapper import write_wrapper  # lazy: every `stemforge` command imports this module (`demo`)
        from stemcells.tarball import extract_stemcell  # lazy: as above (jsonschema, PyYAML)
        from stemcells.testimage.stemcell import build_test_stemcell  # lazy: as above

        self.say("building the test stemcell (cached after the first run)")
        tarball = build_test_stemcell(self.workdir / "stemcells", progress=lambda line: self.say(f"  {line}"))
        self.say(f"stemcell: {tarball} ({tarball.stat().st_size // 1024} KiB)")
        extracted = self.workdir / "extracted"
        shutil.rmtree(extracted, ignore_errors=True)
        stemcell = extract_stemcell(tarball, extracted)
        self.say(f"stemcell.MF: {stemcell.manifest.name} {stemcell.manifest.version}, "
                 f"formats {', '.join(stemcell.manifest.stemcell_formats)}")

        config = self.write_config()
        wrapper = write_wrapper(config, self.workdir / "cpi-job")
        self.client = CpiClient([str(wrapper)], director_uuid=self.director_uuid, timeout=CALL_TIMEOUT)
        self.say(f"CPI wrapper (what the director runs): {wrapper}")
        self.say(f"info -> {json.dumps(self.call('info', api_version=1, quiet=True))}")

        sc = self.call("create_stemcell", str(stemcell.image_path), stemcell.manifest.cloud_properties,
                       {"tags": {"demo": "stemforge"}}, api_version=3)
        self.created.append(("delete_stemcell", [sc]))
        networks = {"default": {"type": "manual", "ip": "10.0.2.15", "netmask": "255.255.255.0",
                                "gateway": "10.0.2.2", "dns": ["10.0.2.3"], "default": ["dns", "gateway"],
                                "cloud_properties": {"type": "user"}}}
        env = {"bosh": {"password": "demo-password-not-a-secret-anywhere", "group": "stemforge-demo"}}
        agent_id = f"agent-{uuid.uuid4()}"
        vm_cid, nets = self.call("create_vm", agent_id, sc, {"cpu": 1, "ram": 256, "ephemeral_disk_size": 128},
                                 networks, [], env)
        self.created.append(("delete_vm", [vm_cid]))
        self.say(f"  NIC MAC {nets['default']['mac']}")
        console = self.state_dir / "consoles" / f"{vm_cid}.log"
        self.show_agent(console, lambda e: e.get("event") == "ready", "the agent to finish booting")
        self.call("has_vm", vm_cid)
        self.call("set_vm_metadata", vm_cid, {"director": "demo", "deployment": "stemforge-demo", "job": "demo",
                                              "index": "0", "name": "demo/0"})
        disk = self.call("create_disk", 256, {}, vm_cid)
        self.created.append(("delete_disk", [disk]))
        self.call("attach_disk", vm_cid, disk)
        self.show_agent(console, lambda e: e.get("event") == "disk" and e.get("cid") == disk,
                        "the agent to mount the persistent disk")
        self.call("get_disks", vm_cid)
        self.call("detach_disk", vm_cid, disk)
        self.show_agent(console, lambda e: e.get("event") == "disk-removed" and e.get("cid") == disk,
                        "the agent to notice the detach")

    def show_agent(self, console: Path, predicate: Any, what: str) -> None:
        from stemcells.testimage.agent_events import read_events, wait_for  # lazy: as above

        before = len(read_events(console))
        self.say(f"waiting for {what} (serial console {console})")
        _, index = wait_for(console, predicate, self.agent_timeout, what=what)
        for event in read_events(console)[min(before, index):index + 1]:
            self.say("  agent: " + json.dumps(event))

    def cleanup(self) -> None:
        while self.created:
            method, args = self.created.pop()
            try:
                self.call(method, *args)
            except Exception as exc:  # noqa: BLE001 - keep deleting the rest
                self.say(f"cleanup {method} {args[0]} failed: {exc}")
        self.remove_pool()

    def remove_pool(self) -> None:
        """Stop and undefine the demo's storage pool once it holds no volume (the CPI defined it; a workdir removed
        later must not leave libvirt a pool pointing at nothing)."""
        try:
            import libvirt  # lazy: the libvirt extra; the other commands work without it

            conn = libvirt.open("qemu:///system")
        except Exception as exc:  # noqa: BLE001 - reported, the demo's result stands
            self.say(f"cleanup: cannot reach libvirt to remove pool {POOL}: {exc}")
            return
        try:
            pool = conn.storagePoolLookupByName(POOL)
            if pool.isActive():
                pool.refresh(0)
                if pool.numOfVolumes():
                    self.say(f"cleanup: pool {POOL} still holds volumes {pool.listVolumes()}; kept")
                    return
                pool.destroy()
            pool.undefine()
            self.say(f"removed storage pool {POOL}")
        except Exception as exc:  # noqa: BLE001
            if "no storage pool" not in str(exc).lower():
                self.say(f"cleanup: removing pool {POOL} failed: {exc}")
        finally:
            conn.close()

    # -- config --------------------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.workdir / "cpi-state"

    def write_config(self) -> Path:
        config = {"cloud": {"plugin": "libvirt", "properties": {
            "state_dir": str(self.state_dir),
            "libvirt": {"uri": "qemu:///system", "storage_pool": POOL,
                        "pool_path": str(self.workdir / "pool"), "accelerator": "auto"},
            "agent": {"mbus": "nats://nats:nats-password@127.0.0.1:4222", "ntp": ["127.0.0.1"],
                      "blobstore": {"provider": "local",
                                    "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}}},
        }}}
        path = self.workdir / "cpi.json"
        path.write_text(json.dumps(config, indent=2) + "\n")
        self.say(f"CPI config: {path}")
        return path


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run a VM through the CPI end to end on libvirt (the main job)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where the demo keeps its files")
    parser.add_argument("--agent-timeout", type=float, default=180.0, help="seconds to wait for each agent report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)
    closed = [str(d) for d in args.workdir.resolve().parents if not d.stat().st_mode & 0o001]
    if closed:  # libvirt's QEMU runs as its own user: it must be able to reach the demo's pool
        print(f"stemforge demo: --workdir {args.workdir}: libvirt's QEMU user cannot traverse {closed[0]} "
              "(no search permission for others); use a workdir whose parents are mode o+x", file=sys.stderr)
        return 2
    demo = Demo(args.workdir, args.agent_timeout)
    status = 0
    try:
        demo.run()
    except (DemoFailed, TimeoutError) as exc:
        demo.say(f"FAILED: {exc}")
        status = 1
    except KeyboardInterrupt:
        demo.say("interrupted; deleting what was created")
        status = 130
    finally:
        demo.cleanup()
    demo.say("done: everything created was deleted" if status == 0 else "demo failed (see above)")
    return status


if __name__ == "__main__":
    from stemforge.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
