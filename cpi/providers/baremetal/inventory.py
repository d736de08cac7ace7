"""The server inventory: enrolment from a file, and the operator verbs (:class:`Operator`: manage, inspect, provide,
clean, undeploy; maintenance).

An inventory file (YAML or JSON) is ``{"nodes": [...], "storage_plans": [...]}``, each node with ``name``, ``bmc``
(driver, address, system_id, username, password), ``macs``, ``plan`` (arch, cpus, memory_mib, disks, labels,
optional ``boot_mode`` bios|uefi and ``storage``: a storage plan's name), optional ``root_hints`` (Ironic's
root-device hints, checked by :mod:`.root_hints`) and optional ``layout`` (a :mod:`.layout` document: a
file-based deploy). A storage plan (MAAS storage layouts, OVHcloud's hardware plans) is ``{name, match:
{boot_mode, min_disks}, layout and/or root_hints}``; a node without ``plan.storage`` or ``layout`` takes the first
plan whose ``match`` its plan satisfies. The effective storage is recorded in the node's ``extra.storage``
(:func:`node_layout`); ``metal show`` prints :func:`storage_summary`. Everything is validated with jsonschema
and :func:`.layout.check_shape` (errors name the field path, e.g. ``nodes/1/bmc/address``,
``nodes/0/layout/disks/0/partitions/1/size``, ``nodes/2/plan/storage``) and checked for duplicate names and MACs
before anything is written; enrolment is one transaction, so a bad file enrols nothing. Whether a layout fits the
disks is checked against the inspection, when a deploy is asked for (``placement.py``) and by the ramdisk's
``POST layout`` (the disks it sees).

The verbs run under the node's lock and move it through ``states``: ``manage`` first reads the power state through
the BMC (an unreachable BMC puts the node in maintenance with the reason); ``provide`` and ``clean`` run cleaning
through the deploy interface (the ramdisk wipes the disks) and fail to ``clean failed`` with the exact reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpi.errors import CpiError
from cpi.providers.baremetal import inspection, layout, root_hints, states
from cpi.providers.baremetal.config import MetalConfig
from cpi.providers.baremetal.interfaces import DRIVERS, hardware_for
from cpi.providers.baremetal.interfaces.base import BmcUnreachable, InterfaceError, Task
from cpi.providers.baremetal.store import Bmc, MetalStore, Node, NodeSpec, StoreError, normalize_mac
from cpi.validation import validate

MAX_INVENTORY_BYTES = 4 * 1024 * 1024
_MAC = "^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$"
_TEXT = {"type": "string", "minLength": 1, "maxLength": 256}

DISK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["size_gib"],
    "properties": {
        "size_gib": {"type": "number", "exclusiveMinimum": 0},
        "name": {"type": "string", "pattern": "^/dev/"},
        "serial": _TEXT,
        "wwn": _TEXT,
        "model": _TEXT,
    },
}

_PLAN_NAME = "^[a-z0-9][a-z0-9._-]{0,62}$"
ROOT_HINTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "size": {"oneOf": [{"type": "integer", "minimum": 1}, _TEXT]},
        "rotational": {"oneOf": [{"type": "boolean"}, _TEXT]},
        **{k: _TEXT for k in root_hints.HINT_ORDER if k not in ("size", "rotational")},
    },  # fmt: skip
}

NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "bmc", "macs", "plan"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
        "bmc": {
            "type": "object",
            "additionalProperties": False,
            "required": ["driver", "address"],
            "properties": {
                "driver": {"enum": list(DRIVERS)},
                "address": {"type": "string", "minLength": 1, "maxLength": 512},
                "system_id": {"type": "string", "minLength": 1},
                "username": {"type": "string"},
                "password": {"type": "string"},
                "verify_tls": {"type": "boolean"},
            },
            "if": {"properties": {"driver": {"const": "redfish"}}},
            "then": {"properties": {"address": {"pattern": "^https?://"}}},
        },
        "macs": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "string", "pattern": _MAC}},
        "plan": {
            "type": "object",
            "additionalProperties": False,
            "required": ["arch", "cpus", "memory_mib", "disks"],
            "properties": {
                "arch": {"type": "string", "minLength": 1},
                "cpus": {"type": "integer", "minimum": 1},
                "memory_mib": {"type": "integer", "minimum": 1},
                "disks": {"type": "array", "minItems": 1, "items": DISK_SCHEMA},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                # cleaning depth (services.instructions.ERASE_MODES): metadata (default) or full
                "erase": {"enum": ["metadata", "full"]},
                # the firmware the server boots with (a deploy checks it against the inspection)
                "boot_mode": {"enum": ["bios", "uefi"]},
                # the name of an entry of the inventory's storage_plans
                "storage": {"type": "string", "pattern": _PLAN_NAME},
            },
        },
        "root_hints": ROOT_HINTS_SCHEMA,
        # a layout.py document (its shape is checked by layout.check_shape, naming the field)
        "layout": {"type": "object"},
    },
}

STORAGE_PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "anyOf": [{"required": ["layout"]}, {"required": ["root_hints"]}],
    "properties": {
        "name": {"type": "string", "pattern": _PLAN_NAME},
        "match": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"boot_mode": {"enum": ["bios", "uefi"]}, "min_disks": {"type": "integer", "minimum": 1}},
        },
        "layout": {"type": "object"},
        "root_hints": ROOT_HINTS_SCHEMA,
    },
}

INVENTORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["nodes"],
    "properties": {
        "nodes": {"type": "array", "minItems": 1, "items": NODE_SCHEMA},
        "storage_plans": {"type": "array", "items": STORAGE_PLAN_SCHEMA},
    },
}


class InventoryError(Exception):
    """A bad inventory file or a refused verb; the message names the file/field or node (never a secret)."""


def parse_inventory(text: str, source: str = "inventory") -> list[NodeSpec]:
    """Parse and validate an inventory document (JSON, else YAML). Raises InventoryError naming the field."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise InventoryError(f"{source}: not valid YAML or JSON{where}") from None
    try:
        validate(source, INVENTORY_SCHEMA, data)
    except CpiError as exc:
        raise InventoryError(exc.message) from None
    storage_plans = _storage_plans(data, source)
    specs: list[NodeSpec] = []
    names: dict[str, int] = {}
    macs: dict[str, str] = {}
    for index, raw in enumerate(data["nodes"]):
        where = f"{source}: 'nodes/{index}"
        name = raw["name"]
        if name in names:
            raise InventoryError(f"{where}/name' {name!r} is already used by nodes/{names[name]}")
        names[name] = index
        norm_macs = []
        for m_index, mac in enumerate(raw["macs"]):
            norm = normalize_mac(mac)
            if norm in macs:
                raise InventoryError(f"{where}/macs/{m_index}' {norm} is already the MAC of node {macs[norm]!r}")
            macs[norm] = name
            norm_macs.append(norm)
        bmc = raw["bmc"]
        if bmc["driver"] == "redfish" and not bmc.get("system_id"):
            raise InventoryError(f"{where}/bmc' a redfish BMC needs 'system_id' (the system's path or id)")
        plan = dict(raw["plan"])
        plan.setdefault("labels", {})
        _check_hints(raw.get("root_hints"), where)
        storage = _storage(raw, storage_plans, where)
        specs.append(
            NodeSpec(
                name=name,
                bmc=Bmc(
                    driver=bmc["driver"],
                    address=bmc["address"],
                    system_id=bmc.get("system_id", ""),
                    username=bmc.get("username", ""),
                    password=bmc.get("password", ""),
                    verify_tls=bool(bmc.get("verify_tls", True)),
                ),
                macs=tuple(norm_macs),
                plan=plan,
                root_hints=dict(raw.get("root_hints") or storage.pop("root_hints", None) or {}),
                extra={
                    **({"storage": storage} if storage else {}),
                    **({"storage_plans": storage_plans} if storage_plans else {}),
                },
            )
        )
    return specs


def _check_hints(hints: Any, where: str) -> None:
    try:
        root_hints.parse_root_device_hints(hints)
    except root_hints.RootHintsError as exc:
        field = exc.field.replace(".", "/")
        raise InventoryError(f"{where}/{field}' {str(exc).split(': ', 1)[1]}") from None


def _storage_plans(data: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The inventory's ``storage_plans`` by name, each layout's shape and hints checked (errors name the field)."""
    plans: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(data.get("storage_plans") or []):
        where = f"{source}: 'storage_plans/{index}"
        if entry["name"] in plans:
            raise InventoryError(f"{where}/name' {entry['name']!r} is already the name of another storage plan")
        _check_hints(entry.get("root_hints"), where)
        if "layout" in entry:
            _check_layout(entry["layout"], f"{where}/layout")
        plans[entry["name"]] = dict(entry)
    return plans


def _check_layout(document: Any, where: str) -> None:
    try:
        layout.check_shape(document)
    except layout.LayoutError as exc:
        field = "" if exc.field == "layout" else f"/{exc.field}"
        raise InventoryError(f"{where}{field}' {str(exc).split(': ', 2)[-1]}") from None


def _storage(raw: Mapping[str, Any], plans: Mapping[str, Mapping[str, Any]], where: str) -> dict[str, Any]:
    """A node's storage: ``{"plan": name or "", "layout": {...}, "root_hints": {...}}`` (what is given) from its
    inline ``layout``, else its ``plan.storage``, else the first storage plan whose ``match`` (``boot_mode``,
    ``min_disks``) the node's plan satisfies; ``{}`` when none applies (a whole-disk deploy with its root_hints)."""
    plan = raw["plan"]
    name = plan.get("storage")
    if "layout" in raw:
        if name:
            raise InventoryError(f"{where}/layout' give either an inline layout or plan.storage ({name!r}), not both")
        _check_layout(raw["layout"], f"{where}/layout")
        mode = raw["layout"].get("boot_mode")
        if mode and plan.get("boot_mode") and mode != plan["boot_mode"]:
            raise InventoryError(f"{where}/layout/boot_mode' {mode} but plan.boot_mode is {plan['boot_mode']}")
        return {"plan": "", "layout": dict(raw["layout"])}
    if name:
        if name not in plans:
            known = ", ".join(plans) or "none defined"
            raise InventoryError(f"{where}/plan/storage' no storage plan named {name!r} (storage_plans: {known})")
        chosen = plans[name]
    else:
        chosen = next((p for p in plans.values() if "match" in p and _plan_matches(plan, p["match"])), {})
        if not chosen:
            return {}
    out: dict[str, Any] = {"plan": chosen["name"]}
    out.update({k: dict(chosen[k]) for k in ("layout", "root_hints") if k in chosen})
    mode = (chosen.get("layout") or {}).get("boot_mode")
    if mode and plan.get("boot_mode") and mode != plan["boot_mode"]:
        raise InventoryError(
            f"{where}/plan/storage' storage plan {chosen['name']!r} is for {mode}, "
            f"plan.boot_mode is {plan['boot_mode']}"
        )
    return out


def _plan_matches(plan: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    if "boot_mode" in match and plan.get("boot_mode") != match["boot_mode"]:
        return False
    return len(plan.get("disks") or []) >= int(match.get("min_disks", 1))


def node_layout(node: Node) -> Mapping[str, Any] | None:
    """The layout a deploy of ``node`` builds (inline or from its storage plan), or None (whole-disk deploy)."""
    storage = node.extra.get("storage") or {}
    found = storage.get("layout")
    return found if isinstance(found, Mapping) else None


def storage_summary(node: Node) -> str:
    """``metal show``'s one line on how the server is deployed: whole disk (with hints) or its layout."""
    storage = node.extra.get("storage") or {}
    source = f"storage plan {storage['plan']}" if storage.get("plan") else "inline layout"
    boot = node.plan.get("boot_mode") or "boot mode from the inspection"
    document = node_layout(node)
    if document is None:
        hints = root_hints.format_hints(node.root_hints) or "none (the smallest disk >= 4 GiB)"
        via = f" ({source})" if storage.get("plan") else ""
        return f"whole-disk image{via}, {boot}, root hints {hints}"
    return f"file-based deploy ({source}), {boot}: {layout.summary(document)}"


def load_inventory(path: str | Path) -> list[NodeSpec]:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_INVENTORY_BYTES:
            raise InventoryError(f"{p}: larger than {MAX_INVENTORY_BYTES // 1024 // 1024} MiB")
        text = p.read_text()
    except OSError as exc:
        raise InventoryError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InventoryError(f"{p}: not a text file") from None
    return parse_inventory(text, str(p))


def enroll_file(store: MetalStore, path: str | Path, who: str) -> list[Node]:
    """Validate the whole file, then enrol every node in one transaction (state ``enroll``)."""
    specs = load_inventory(path)
    try:
        return store.enroll(specs, who=who, why=f"enrolled from {path}")
    except StoreError as exc:
        raise InventoryError(f"{path}: {exc}") from None


# -- verbs ------------------------------------------------------------------------------------------------------
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Operator:
    """Who runs the operator verbs against which store: each verb holds the node's lock (a ``Task``) for its whole
    run and moves the node through ``states``; ``progress`` gets the ramdisk's progress lines."""

    store: MetalStore
    config: MetalConfig
    log: logging.Logger
    who: str
    progress: Progress | None = None

    @contextlib.contextmanager
    def _task(self, name: str) -> Iterator[Task]:
        with Task.acquire(self.store, name, self.config, self.log, self.who) as task:
            task.progress = self.progress
            yield task

    def manage(self, name: str) -> Node:
        """Verify the BMC answers (a power-state read), then → manageable. BmcUnreachable → maintenance + error."""
        with self._task(name) as task:
            if not states.allowed(task.node.provision_state, "manage"):
                raise states.IllegalTransition(name, task.node.provision_state, "manage")
            power = verify_bmc(task)
            return states.apply(self.store, name, "manage", self.who, f"BMC answered (power {power})")

    def provide(self, name: str, *, skip_cleaning: bool = False) -> Node:
        """manageable (or clean failed) → cleaning → available. ``skip_cleaning`` only for disks known blank."""
        with self._task(name) as task:
            why = "provide" + (" (cleaning skipped)" if skip_cleaning else "")
            states.apply(self.store, name, "provide", self.who, why)
            if skip_cleaning:
                blank = "cleaning skipped by the operator (blank disks)"
                return states.apply(self.store, name, "done", self.who, blank)
            return run_cleaning(task, self.who, "provide")

    def clean(self, name: str) -> Node:
        """Manual cleaning: manageable → cleaning → manageable."""
        with self._task(name) as task:
            states.apply(self.store, name, "clean", self.who, "manual cleaning")
            return run_cleaning(task, self.who, "clean")

    def undeploy(self, name: str) -> Node:
        """deploy failed (or an unclaimed active) → deleting → power off → cleaning → available. A node a VM still
        claims is refused: delete that VM (delete_vm cleans the server itself)."""
        with self._task(name) as task:
            if task.node.claimed_by:
                raise InventoryError(f"node {name} runs VM {task.node.claimed_by}; delete that VM instead")
            states.apply(self.store, name, "undeploy", self.who, "undeploy by the operator")
            try:
                hardware_for(task.node).power.set_power_state(task, "off")
            except InterfaceError as exc:
                states.apply(self.store, name, "fail", self.who, exc.message, last_error=exc.message)
                raise InventoryError(f"undeploy of node {name} failed: {exc.message}") from None
            states.apply(self.store, name, "clean", self.who, "undeploy by the operator")
            return run_cleaning(task, self.who, "undeploy")

    def inspect(self, name: str) -> Node:
        """Ironic's inspection: manageable (or inspect failed) → inspecting → inspect wait → manageable, with the
        hardware facts the ramdisk reported recorded in the store (``store.inspection``) with their time. Bounded
        by the cleaning timeout. A failure → ``inspect failed`` with the reason (maintenance when the BMC is
        unreachable), the server powered off, InventoryError."""
        with self._task(name) as task:
            states.apply(self.store, name, "inspect", self.who, "inspection")
            return run_inspection(task, self.who)


def verify_bmc(task: Task) -> str:
    """Read the power state; on BmcUnreachable put the node in maintenance with the reason and re-raise."""
    try:
        return hardware_for(task.node).power.get_power_state(task)
    except BmcUnreachable as exc:
        task.store.set_maintenance(task.node.name, True, exc.message, task.who)
        raise


def run_cleaning(task: Task, who: str, why: str) -> Node:
    """With the node in ``cleaning`` (lock held): clean through the deploy interface, waiting in ``clean wait``;
    → the target state on success, → ``clean failed`` (with the exact reason; maintenance when the BMC is
    unreachable) on failure, then re-raise as InventoryError."""
    name = task.node.name
    store = task.store
    timeout = task.config.timeouts.clean
    try:
        hw = hardware_for(task.refresh())
        states.apply(store, name, "wait", who, f"{why}: clean job started", wait_s=timeout + 60)
        hw.deploy.clean(task, timeout)
        states.apply(store, name, "resume", who, "ramdisk reported the disks wiped")
        return states.apply(store, name, "done", who, f"{why}: cleaned")
    except InterfaceError as exc:
        if isinstance(exc, BmcUnreachable):
            store.set_maintenance(name, True, exc.message, who)
        else:
            _power_off_quietly(task)
        state = store.get_node(name).provision_state
        if state in (states.CLEANING, states.CLEAN_WAIT):
            states.apply(store, name, "fail", who, exc.message, last_error=exc.message)
        raise InventoryError(f"cleaning node {name} failed: {exc.message}") from None
    except BaseException:
        state = store.get_node(name).provision_state
        if state in (states.CLEANING, states.CLEAN_WAIT):
            states.apply(store, name, "fail", who, "cleaning interrupted", last_error="cleaning interrupted")
        raise


def run_inspection(task: Task, who: str) -> Node:
    """With the node in ``inspecting`` (lock held): boot the ramdisk in inspect mode, record its report."""
    name = task.node.name
    store = task.store
    timeout = task.config.timeouts.clean
    try:
        hw = hardware_for(task.refresh())
        states.apply(store, name, "wait", who, "inspection: ramdisk job started", wait_s=timeout + 60)
        events = hw.deploy.inspect(task, timeout)
        inventory = inspection.parse_report(events[-1].get("data") or {}, name)
        record = store.set_inspection(name, inventory)
        states.apply(store, name, "resume", who, "ramdisk reported the hardware")
        task.say(f"node {name}: inspected: {inspection.summary(record.data)}")
        return states.apply(store, name, "done", who, f"inspected: {inspection.summary(record.data)}"[:500])
    except (InterfaceError, inspection.InspectionError) as exc:
        message = exc.message if isinstance(exc, InterfaceError) else str(exc)
        if isinstance(exc, BmcUnreachable):
            store.set_maintenance(name, True, message, who)
        else:
            _power_off_quietly(task)
        if store.get_node(name).provision_state in (states.INSPECTING, states.INSPECT_WAIT):
            states.apply(store, name, "fail", who, message, last_error=message)
        raise InventoryError(f"inspecting node {name} failed: {message}") from None
    except BaseException:
        if store.get_node(name).provision_state in (states.INSPECTING, states.INSPECT_WAIT):
            states.apply(store, name, "fail", who, "inspection interrupted", last_error="inspection interrupted")
        raise


def _power_off_quietly(task: Task) -> None:
    """Best effort after a failure: a server must not keep running a ramdisk or a half-written OS."""
    try:
        hardware_for(task.node).power.set_power_state(task, "off")
    except InterfaceError as exc:
        task.log.warning("node %s: could not power off after the failure: %s", task.node.name, exc.message)


def set_maintenance(store: MetalStore, name: str, on: bool, reason: str, who: str) -> Node:
    if on and not reason.strip():
        raise InventoryError(f"node {name}: maintenance needs a --reason")
    return store.set_maintenance(name, on, reason.strip(), who)


def summary(node: Node) -> Mapping[str, Any]:
    """One row of ``metal list``."""
    plan = node.plan
    disks = "+".join(f"{d.get('size_gib', '?')}G" for d in plan.get("disks", []))
    return {
        "name": node.name,
        "state": node.provision_state,
        "maintenance": node.maintenance_reason or ("yes" if node.maintenance else ""),
        "claimed_by": node.claimed_by or "",
        "bmc": node.bmc.driver,
        "plan": f"{plan.get('arch', '?')} {plan.get('cpus', '?')}cpu {plan.get('memory_mib', '?')}MiB {disks}",
        "labels": ",".join(f"{k}={v}" for k, v in sorted((plan.get("labels") or {}).items())),
    }
