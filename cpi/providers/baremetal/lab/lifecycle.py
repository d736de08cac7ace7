"""``up``, ``down`` and ``status`` of the emulated bare-metal lab, as Ironic's and metal3's CI emulate it.

What ``up`` builds, in order (each a Packer-style step with its cleanup next to it, run by
``stemforge_base.steps.StepRunner``: a failure, Ctrl-C/SIGTERM or an armed failpoint ``after:<step>`` removes everything
the completed steps made, in reverse):

1. ``lab_dir``: the lab directory (default ``/var/lib/stemforge/labs/<id>``; every parent must be traversable by the
   QEMU user) and ``lab.json`` (0600), rewritten after every change, which describes everything the lab made
   (names, pids with their start times, ports, paths). ``down`` is driven by it, so it works after a crash too.
2. ``lab_namespace``: network namespace ``sf-lab-<id>`` with ``lo`` and the bridge ``sfbr0`` = ``10.a.b.1/24``
   (``a``, ``b``: the first two bytes of the 6-hex-digit id) plus an IPv6 ULA, so that ``metal serve`` sends
   router advertisements (iPXE otherwise waits ~13 s for IPv6 autoconfiguration on every network boot).
3. ``lab_vde_switch``: ``vde_switch`` inside the namespace, its tap ``sfvde0`` enslaved to the bridge
   (see :mod:`.net`).
4. ``lab_ramdisk``: RAMDISK's deploy ramdisk (``ensure_ramdisk()``, built once and cached).
5. ``lab_pool`` and ``lab_disks``: a private libvirt ``dir`` pool ``sf-lab-<id>`` in ``<lab>/pool`` holding each
   server's sparse raw volumes as its hardware plan says (:mod:`.plans`: ``default`` = a 4 GiB and a 1 GiB disk),
   with distinct serials; ``uefi2`` servers also get their NVRAM, a copy of OVMF's ``OVMF_VARS.fd`` in
   ``<lab>/nvram``.
6. ``lab_domains``: the servers, libvirt domains ``sf-lab-<id>-s<n>`` in the HOST libvirtd (TCG unless KVM really
   works: :func:`cpi.providers.libvirt.accel.choose`), defined and powered off, network boot first, serial console
   to ``<lab>/consoles/<name>.log``; the virtio NIC reaches the bridge through the VDE switch (see
   :mod:`.domain` for how the NIC is declared so sushy-tools can switch Pxe/Hdd).
7. ``lab_redfish``: sushy-tools' ``sushy-emulator`` (libvirt driver) on ``127.0.0.1:<free port>`` in the host
   namespace, basic auth with a generated password, restricted to the lab's domains (see :mod:`.bmc`).
8. ``lab_serve``: SERVICES's ``stemforge metal serve`` inside the namespace (``ip netns exec``), serving DHCP/TFTP
   and HTTP on the bridge address; the step waits until ``/boot.ipxe`` answers from inside the namespace.
9. ``lab_files``: ``<lab>/inventory.yml`` (the enroll file for ``stemforge metal enroll``, 0600: it holds the BMC
   credentials) and ``<lab>/cpi.json`` (a CPI config for plugin ``baremetal`` whose state dir is ``<lab>/metal``,
   shared with ``metal serve``).

Why VDE and the host libvirtd (not the spec's fallback, a private libvirtd inside the namespace): verified on this
machine that a host-libvirtd domain whose NIC is plugged into a VDE switch running in the namespace gets DHCP from
dnsmasq there and iPXE-boots over HTTP (~20 s under TCG). The VDE control socket is a filesystem path, which QEMU
in the host namespace can reach, while the frames only ever appear inside the namespace. One libvirtd serves the
CPI tests and the lab, and sushy-tools' libvirt driver talks to it as it would in Ironic's CI.

The network rule holds by construction: the namespace has only ``lo`` and the bridge (no uplink, no route out), and
the emulator listens on loopback only.

``down`` removes, in reverse and idempotently: ``metal serve``, the emulator, the domains (destroy + undefine, found
by name prefix), the volumes and the pool, the VDE switch, every process still in the namespace, the namespace
(with the bridge and tap), the lab directory and its index entry. A lab built for a process (``up(owner_pid=...)``,
as the test harness does) is removed by :func:`reap_orphans` once that process is gone, so a killed test run does
not leak VMs and namespaces; labs from ``stemforge metal lab up`` have no owner and stay until ``down``.
Secrets (the BMC password) live only in ``lab.json`` and ``inventory.yml`` (both 0600); nothing logs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpi.providers.baremetal.lab import domain as lab_domain
from cpi.providers.baremetal.lab import net as lab_net
from cpi.providers.baremetal.lab import plans as lab_plans
from cpi.providers.baremetal.lab import proc as lab_proc
from cpi.providers.baremetal.lab.record import (
    MAX_SERVERS,
    LabError,
    LabRecord,
    find_lab_dir,
    index_entry,
    labs_root,
    list_labs,
    load,
    remove_lab_files,
)
from cpi.providers.baremetal.lab.steps import steps, stop_bmc
from cpi.providers.baremetal.lab.virt import domain_states, remove_domains, remove_pool
from stemforge_base.steps import StepRunner

log = logging.getLogger("stemforge.metal.lab")


# -- up / down / status ----------------------------------------------------------------------------------------------
def plan(
    servers: int,
    *,
    lab_id: str | None = None,
    lab_dir: str | os.PathLike[str] | None = None,
    memory_mib: int = 512,
    vcpus: int = 1,
    plans: str | Sequence[str] | None = None,
) -> LabRecord:
    """Validate the request and compute every name, address and path (nothing is created). ``plans``: hardware
    plan names (:mod:`.plans`) cycled over the servers; None = every server ``default``."""
    if isinstance(servers, bool) or not isinstance(servers, int) or not 1 <= servers <= MAX_SERVERS:
        raise LabError(f"servers: must be an integer from 1 to {MAX_SERVERS}, got {servers!r}")
    if not isinstance(memory_mib, int) or not 128 <= memory_mib <= 8192:
        raise LabError(f"memory_mib: must be an integer from 128 to 8192, got {memory_mib!r}")
    if not isinstance(vcpus, int) or not 1 <= vcpus <= 4:
        raise LabError(f"vcpus: must be an integer from 1 to 4, got {vcpus!r}")
    try:
        plan_names = lab_plans.parse_plans(plans)
    except ValueError as exc:
        raise LabError(f"plans: {exc}") from None
    if lab_id is None:
        lab_id = _new_id()
    try:
        lab_domain.check_lab_id(lab_id)
    except ValueError as exc:
        raise LabError(f"name: {exc}") from None
    directory = Path(lab_dir) if lab_dir is not None else labs_root() / lab_id
    if not directory.is_absolute():
        directory = directory.absolute()
    rec = LabRecord(
        id=lab_id,
        dir=str(directory),
        namespace=lab_domain.namespace(lab_id),
        bridge_ip=lab_domain.bridge_ip(lab_id),
        dhcp_range=list(lab_domain.dhcp_range(lab_id)),
        memory_mib=memory_mib,
        vcpus=vcpus,
        state_dir=str(directory / "metal"),
    )
    rec.provisioning_url = f"http://{rec.bridge_ip}:{rec.serve_port}"
    for n in range(servers):
        rec.servers.append(_plan_server(rec, n, lab_plans.plan_for(plan_names, n)))
    return rec


def _plan_server(rec: LabRecord, n: int, plan: lab_plans.ServerPlan) -> dict[str, Any]:
    """Server ``n`` of the lab as ``lab.json`` records it: names, MAC, plan, firmware files and disks."""
    name = lab_domain.server_name(rec.id, n)
    disks = [
        {
            "volume": f"{name}-disk{d}.raw",
            "path": "",
            "target": plan.target(d),
            "bus": plan.bus,
            "serial": lab_domain.disk_serial(rec.id, n, d),
            "vendor": disk.vendor,
            "model": disk.model,
            "size_bytes": disk.size_gib * lab_domain.GIB,
            "attached": True,
        }
        for d, disk in enumerate(plan.disks)
    ]
    return {
        "name": name,
        "uuid": str(uuid.uuid4()),
        "plan": plan.name,
        "firmware": plan.firmware,
        "nvram": str(Path(rec.dir) / "nvram" / f"{name}_VARS.fd") if plan.firmware == "uefi" else "",
        "macs": [lab_domain.mac(rec.id, n)],
        "disks": disks,
        "console_log": str(Path(rec.dir) / "consoles" / f"{name}.log"),
        "bmc_address": "",
        "system_id": "",
    }


def up(
    servers: int,
    *,
    lab_id: str | None = None,
    lab_dir: str | os.PathLike[str] | None = None,
    memory_mib: int = 512,
    vcpus: int = 1,
    plans: str | Sequence[str] | None = None,
    with_serve: bool = True,
    with_ramdisk: bool = True,
    owner_pid: int | None = None,
    runner: StepRunner | None = None,
) -> LabRecord:
    """Build a lab of ``servers`` emulated servers; on any failure (or interrupt) nothing is left behind.

    ``owner_pid``: the lab belongs to that process; once it is gone, :func:`reap_orphans` removes the lab."""
    rec = plan(servers, lab_id=lab_id, lab_dir=lab_dir, memory_mib=memory_mib, vcpus=vcpus, plans=plans)
    if owner_pid is not None:
        rec.owner = lab_proc.identity(owner_pid)
    if lab_net.namespace_exists(rec.namespace):
        raise LabError(f"name: lab {rec.id} already exists (namespace {rec.namespace})")
    runner = runner or StepRunner(log=log)
    started = time.monotonic()
    log.info("lab %s: %d server(s) in %s", rec.id, servers, rec.dir)
    state: dict[str, Any] = {"lab": rec, "with_serve": with_serve, "with_ramdisk": with_ramdisk}
    runner.run(steps(), state)
    log.info("lab %s up in %.1fs", rec.id, time.monotonic() - started)
    return rec


def down(lab_id: str | None = None, *, lab_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove everything lab ``lab_id`` made (driven by ``lab.json``, names as a fallback); returns what was
    removed. Idempotent: a second call, or one for a lab that never finished ``up``, is fine."""
    found = find_lab_dir(lab_id, lab_dir)
    rec: LabRecord | None = None
    if found is not None and (found / "lab.json").exists():
        with contextlib.suppress(OSError, ValueError, TypeError):
            rec = LabRecord.load(found / "lab.json")
    if rec is None:
        if lab_id is None:
            raise LabError(f"no lab.json in {found}: name the lab with --name ID")
        rec = LabRecord(id=lab_id, dir=str(found or labs_root() / lab_id), namespace=lab_domain.namespace(lab_id))
    lab_id = rec.id
    removed: list[str] = []
    if lab_proc.stop(rec.serve):
        removed.append("metal serve")
    if stop_bmc(rec):
        removed.append("redfish emulator")
    removed += [f"domain {d}" for d in remove_domains(lab_id)]
    removed += [f"volume {v}" if not v.startswith("pool ") else v for v in remove_pool(lab_id)]
    if lab_net.stop_vde_switch(rec.vde):
        removed.append("vde_switch")
    if lab_net.delete_namespace(rec.namespace or lab_domain.namespace(lab_id)):
        removed.append(f"namespace {rec.namespace}")
    if found is not None and found.exists():
        remove_lab_files(rec)
        removed.append(f"directory {found}")
    index_entry(lab_id).unlink(missing_ok=True)
    for line in removed:
        log.info("removed %s", line)
    return removed


def reap_orphans() -> list[str]:
    """Remove every lab whose owner process is gone (a test run that was killed before its teardown). Labs
    without an owner are never touched. Returns the ids removed."""
    reaped = []
    for lab_id in list_labs():
        try:
            rec = load(lab_id)
        except (LabError, OSError, ValueError, TypeError):
            continue
        if rec.owner and not lab_proc.alive(rec.owner):
            log.info("lab %s: its owner (pid %s) is gone; removing it", lab_id, rec.owner.get("pid"))
            try:
                down(lab_id, lab_dir=rec.dir)
            except Exception as exc:  # noqa: BLE001 - another process may be reaping it too; never fail the caller
                log.warning("lab %s: removing it failed: %s", lab_id, exc)
                continue
            reaped.append(lab_id)
    return reaped


def status(lab_id: str | None = None, *, lab_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What the lab is and what of it is alive now (credentials masked)."""
    rec = load(lab_id, lab_dir)
    states = domain_states(rec.id)
    return {
        "id": rec.id,
        "dir": rec.dir,
        "phase": rec.phase,
        "namespace": rec.namespace,
        "namespace_exists": lab_net.namespace_exists(rec.namespace),
        "bridge_ip": rec.bridge_ip,
        "provisioning_url": rec.provisioning_url,
        "vde_switch": "running" if lab_proc.alive(rec.vde) else "stopped",
        "redfish": {"address": (rec.bmc or {}).get("address"), "running": lab_proc.alive(rec.bmc)},
        "serve": {"running": lab_proc.alive(rec.serve), "log": (rec.serve or {}).get("log")},
        "servers": [
            {
                "name": s["name"],
                "power": states.get(s["name"], "missing"),
                "macs": s["macs"],
                "system_id": s["system_id"],
                "console_log": s["console_log"],
            }
            for s in rec.servers
        ],
        "inventory": rec.inventory,
        "cpi_config": rec.cpi_config,
        "state_dir": rec.state_dir,
    }


# -- helpers ---------------------------------------------------------------------------------------------------------
def _new_id() -> str:
    for _ in range(100):
        lab_id = secrets.token_hex(3)
        a, b = lab_domain.subnet(lab_id)
        if a == 0 or b == 0:
            continue
        if not lab_net.namespace_exists(lab_domain.namespace(lab_id)) and not (labs_root() / lab_id).exists():
            return lab_id
    raise LabError("could not pick a free lab id")
