"""The bare-metal state store: one SQLite WAL file ``<state_dir>/metal.db`` (mode 0600) shared by every process.

CPI calls (host namespace), ``stemforge metal serve`` (inside the lab namespace) and the CLI all open the same file.
It holds the inventory (nodes with their BMC, NIC MACs, hardware plan and root-device hints), each node's
provision state, maintenance flag and claim, its last inspection (hardware facts with their time), a transitions
log (who/why/from/to/when), the ramdisk jobs with their tokens, the events the ramdisk and the booted OS report,
and the provider's records (VMs, stemcells, disks).

Concurrency: every write is one short ``BEGIN IMMEDIATE`` transaction. A claim is one conditional
``UPDATE ... WHERE provision_state = 'available' AND NOT maintenance AND claimed_by IS NULL``: two processes can
never claim the same server. State changes are compare-and-set (``transition``); the state machine's rules live
in ``states.py``. Long operations on one node serialise on a file lock (``lock``).

Secrets (BMC passwords, job and phone-home tokens) live only in this 0600 file; the dataclasses below hide them
from ``repr`` so they never reach a log line or an error message.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stemforge_base.sqlite_store import SqliteStore

SCHEMA_VERSION = 5  # 2: phone_home_uses; 3: inspections; 4: stemcell_rootfs; 5: stemcell_streams
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    bmc_driver TEXT NOT NULL,
    bmc_address TEXT NOT NULL,
    bmc_system_id TEXT NOT NULL DEFAULT '',
    bmc_username TEXT NOT NULL DEFAULT '',
    bmc_password TEXT NOT NULL DEFAULT '',
    bmc_verify_tls INTEGER NOT NULL DEFAULT 1,
    plan TEXT NOT NULL DEFAULT '{{}}',
    root_hints TEXT NOT NULL DEFAULT '{{}}',
    provision_state TEXT NOT NULL,
    target_state TEXT NOT NULL DEFAULT '',
    state_deadline REAL,
    maintenance INTEGER NOT NULL DEFAULT 0,
    maintenance_reason TEXT NOT NULL DEFAULT '',
    claimed_by TEXT UNIQUE,
    last_error TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{{}}',
    updated_at REAL NOT NULL DEFAULT {_NOW},
    created_at REAL NOT NULL DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS node_macs (
    mac TEXT PRIMARY KEY,
    node TEXT NOT NULL REFERENCES nodes(name) ON DELETE CASCADE,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    verb TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    who TEXT NOT NULL,
    why TEXT NOT NULL,
    ts REAL NOT NULL DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS jobs (
    node TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    instructions TEXT NOT NULL,
    token TEXT NOT NULL,
    created REAL NOT NULL,
    deadline REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    node TEXT PRIMARY KEY,
    phone_home TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS phone_home_uses (
    node TEXT PRIMARY KEY,
    last_boot INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node ON events(node, id);
CREATE TABLE IF NOT EXISTS vms (
    cid TEXT PRIMARY KEY,
    node TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    stemcell_cid TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{{}}',
    networks TEXT NOT NULL DEFAULT '{{}}',
    metadata TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS stemcells (
    cid TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL DEFAULT {_NOW}
);
CREATE TABLE IF NOT EXISTS stemcell_rootfs (
    cid TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stemcell_streams (
    cid TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inspections (
    node TEXT PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    data TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS disks (
    cid TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    device TEXT NOT NULL,
    size_mib INTEGER NOT NULL,
    attached INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL DEFAULT {_NOW},
    UNIQUE (node, device)
)
"""

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class StoreError(Exception):
    """A store operation was refused; the message names the node and the reason (never a secret)."""


class NodeNotFound(StoreError):
    pass


class StateConflict(StoreError):
    """A compare-and-set transition found the node in another state than expected."""

    def __init__(self, node: str, state: str, verb: str, expected: Sequence[str]) -> None:
        want = " or ".join(repr(s) for s in expected)
        super().__init__(f"node {node!r} is in state {state!r}: cannot {verb} (needs {want})")
        self.node = node
        self.state = state
        self.verb = verb


def normalize_mac(mac: str) -> str:
    """``AA-BB-CC-DD-EE-FF`` / ``aa:bb:...`` → ``aa:bb:cc:dd:ee:ff``; ValueError names a malformed one."""
    norm = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(norm):
        raise ValueError(f"not a MAC address: {mac!r}")
    return norm


@dataclass(frozen=True)
class Bmc:
    """How to reach a node's BMC. ``password`` never appears in ``repr``."""

    driver: str  # "redfish" | "ipmi"
    address: str  # redfish: base URL (http://127.0.0.1:8000); ipmi: host[:port]
    system_id: str = ""  # redfish: /redfish/v1/Systems/<id> (path or bare id)
    username: str = ""
    password: str = field(default="", repr=False)
    verify_tls: bool = True

    def __repr__(self) -> str:
        return (
            f"Bmc(driver={self.driver!r}, address={self.address!r}, system_id={self.system_id!r}, "
            f"username={self.username!r}, password='***')"
        )

    def public(self) -> dict[str, Any]:
        """The BMC as shown to users: credentials masked."""
        return {
            "driver": self.driver,
            "address": self.address,
            "system_id": self.system_id,
            "username": self.username,
            "password": "***" if self.password else "",
            "verify_tls": self.verify_tls,
        }


@dataclass(frozen=True)
class NodeSpec:
    """What enrolment records for a server (validated by ``inventory.py`` before it gets here)."""

    name: str
    bmc: Bmc
    macs: tuple[str, ...]
    plan: Mapping[str, Any]  # {arch, cpus, memory_mib, disks: [{size_gib, name, serial, ...}], labels: {...}}
    root_hints: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    """One server as the store knows it now."""

    name: str
    bmc: Bmc
    macs: tuple[str, ...]
    plan: dict[str, Any]
    root_hints: dict[str, Any]
    provision_state: str
    state_deadline: float | None
    target_state: str
    maintenance: bool
    maintenance_reason: str
    claimed_by: str | None
    last_error: str
    extra: dict[str, Any]
    updated_at: float

    def public(self) -> dict[str, Any]:
        """A JSON-able view for ``show``/``list``: credentials masked."""
        return {
            "name": self.name,
            "bmc": self.bmc.public(),
            "macs": list(self.macs),
            "plan": self.plan,
            "root_hints": self.root_hints,
            "provision_state": self.provision_state,
            "target_state": self.target_state,
            "state_deadline": self.state_deadline,
            "maintenance": self.maintenance,
            "maintenance_reason": self.maintenance_reason,
            "claimed_by": self.claimed_by,
            "last_error": self.last_error,
            "extra": self.extra,
        }


@dataclass(frozen=True)
class Job:
    """The work a ramdisk does for one node; at most one per node. ``token`` never appears in ``repr``."""

    node: str
    kind: str  # "deploy" | "clean" | "inspect"
    instructions: dict[str, Any]
    token: str = field(repr=False)
    created: float = 0.0
    deadline: float = 0.0


@dataclass(frozen=True)
class Inspection:
    """A node's last inspection: the hardware facts its ramdisk reported (``inspection.py`` checks them) and when."""

    node: str
    data: dict[str, Any]
    ts: float


@dataclass(frozen=True)
class Event:
    id: int
    node: str
    kind: str
    data: dict[str, Any]
    ts: float


@dataclass(frozen=True)
class Transition:
    id: int
    node: str
    verb: str
    from_state: str
    to_state: str
    who: str
    why: str
    ts: float


_UNSET: Any = object()


class MetalStore(SqliteStore):
    """Process-safe bare-metal state. Construct one per process; ``state_dir`` is created (0700) if missing.

    The database, its schema versions (``SCHEMA_VERSION``), write transactions (``write``) and the per-resource file
    locks (``lock``, ``try_lock``, e.g. ``lock("node", "n1")`` held across BMC calls) are
    :class:`stemforge_base.sqlite_store.SqliteStore`'s; the connection may be used by the threads of ``metal
    serve``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        super().__init__(state_dir, "metal.db", SCHEMA, SCHEMA_VERSION, init_lock=("store", "init"),
                         private_dirs=False, foreign_keys=True, threads=True)  # fmt: skip

    # -- inventory ----------------------------------------------------------------------------------------------
    def enroll(self, specs: Sequence[NodeSpec], who: str, why: str = "enrolled") -> list[Node]:
        """Add servers in state ``enroll``, all or none: a duplicate name or MAC raises StoreError and adds nothing."""
        with self.write() as db:
            for spec in specs:
                if db.execute("SELECT 1 FROM nodes WHERE name = ?", (spec.name,)).fetchone():
                    raise StoreError(f"node {spec.name!r} is already enrolled")
                db.execute(
                    "INSERT INTO nodes (name, bmc_driver, bmc_address, bmc_system_id, bmc_username, bmc_password,"
                    " bmc_verify_tls, plan, root_hints, provision_state, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        spec.name,
                        spec.bmc.driver,
                        spec.bmc.address,
                        spec.bmc.system_id,
                        spec.bmc.username,
                        spec.bmc.password,
                        int(spec.bmc.verify_tls),
                        json.dumps(dict(spec.plan), sort_keys=True),
                        json.dumps(dict(spec.root_hints), sort_keys=True),
                        "enroll",
                        json.dumps(dict(spec.extra), sort_keys=True),
                    ),
                )
                for position, mac in enumerate(spec.macs):
                    norm = normalize_mac(mac)
                    owner = db.execute("SELECT node FROM node_macs WHERE mac = ?", (norm,)).fetchone()
                    if owner:
                        raise StoreError(f"node {spec.name!r}: MAC {norm} already belongs to node {owner[0]!r}")
                    db.execute(
                        "INSERT INTO node_macs (mac, node, position) VALUES (?,?,?)", (norm, spec.name, position)
                    )
                self._log(db, spec.name, "enroll", "", "enroll", who, why)
        return [self.get_node(s.name) for s in specs]

    def delete_node(self, name: str, who: str, why: str = "deleted") -> None:
        """Remove a server from the inventory (only when not claimed)."""
        with self.write() as db:
            row = db.execute("SELECT provision_state, claimed_by FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NodeNotFound(f"node {name!r} is not enrolled")
            if row["claimed_by"]:
                raise StoreError(f"node {name!r} is claimed by {row['claimed_by']!r}; delete that VM first")
            db.execute("DELETE FROM nodes WHERE name = ?", (name,))
            db.execute("DELETE FROM jobs WHERE node = ?", (name,))
            db.execute("DELETE FROM tokens WHERE node = ?", (name,))
            db.execute("DELETE FROM phone_home_uses WHERE node = ?", (name,))
            self._log(db, name, "delete", row["provision_state"], "", who, why)

    def node(self, name: str) -> Node | None:
        row = self._db.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
        return self._node(row) if row else None

    def get_node(self, name: str) -> Node:
        """The node, or NodeNotFound naming it."""
        found = self.node(name)
        if found is None:
            raise NodeNotFound(f"node {name!r} is not enrolled")
        return found

    def nodes(self) -> list[Node]:
        return [self._node(r) for r in self._db.execute("SELECT * FROM nodes ORDER BY name").fetchall()]

    def node_for_mac(self, mac: str) -> str | None:
        try:
            norm = normalize_mac(mac)
        except ValueError:
            return None
        row = self._db.execute("SELECT node FROM node_macs WHERE mac = ?", (norm,)).fetchone()
        return str(row[0]) if row else None

    def node_for_vm(self, vm_cid: str) -> Node | None:
        row = self._db.execute("SELECT * FROM nodes WHERE claimed_by = ?", (vm_cid,)).fetchone()
        return self._node(row) if row else None

    def _node(self, row: sqlite3.Row) -> Node:
        macs = self._db.execute("SELECT mac FROM node_macs WHERE node = ? ORDER BY position", (row["name"],))
        return Node(
            name=row["name"],
            bmc=Bmc(
                driver=row["bmc_driver"],
                address=row["bmc_address"],
                system_id=row["bmc_system_id"],
                username=row["bmc_username"],
                password=row["bmc_password"],
                verify_tls=bool(row["bmc_verify_tls"]),
            ),
            macs=tuple(m[0] for m in macs.fetchall()),
            plan=json.loads(row["plan"]),
            root_hints=json.loads(row["root_hints"]),
            provision_state=row["provision_state"],
            state_deadline=row["state_deadline"],
            target_state=row["target_state"],
            maintenance=bool(row["maintenance"]),
            maintenance_reason=row["maintenance_reason"],
            claimed_by=row["claimed_by"],
            last_error=row["last_error"],
            extra=json.loads(row["extra"]),
            updated_at=row["updated_at"],
        )

    # -- state changes ------------------------------------------------------------------------------------------
    def transition(
        self,
        name: str,
        verb: str,
        from_states: Iterable[str],
        to_state: str,
        who: str,
        why: str,
        *,
        deadline: float | None = None,
        claimed_by: str | None = _UNSET,
        last_error: str | None = None,
        target_state: str | None = None,
    ) -> Node:
        """Compare-and-set ``provision_state`` from one of ``from_states`` to ``to_state`` and log it.

        ``deadline`` (epoch s) is stored for wait states (cleared otherwise); ``claimed_by`` changes the claim
        when given (None releases it); ``last_error`` / ``target_state`` replace the node's when given.
        Raises NodeNotFound or StateConflict (naming node, state and verb)."""
        expected = list(from_states)
        with self.write() as db:
            row = db.execute("SELECT provision_state FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NodeNotFound(f"node {name!r} is not enrolled")
            current = row["provision_state"]
            if current not in expected:
                raise StateConflict(name, current, verb, expected)
            sets = ["provision_state = ?", "state_deadline = ?", f"updated_at = {_NOW}"]
            values: list[Any] = [to_state, deadline]
            if claimed_by is not _UNSET:
                sets.append("claimed_by = ?")
                values.append(claimed_by)
            if last_error is not None:
                sets.append("last_error = ?")
                values.append(last_error)
            if target_state is not None:
                sets.append("target_state = ?")
                values.append(target_state)
            db.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE name = ?", (*values, name))
            self._log(db, name, verb, current, to_state, who, why)
        return self.get_node(name)

    def claim(
        self, name: str, vm_cid: str, to_state: str, who: str, why: str, *, deadline: float | None = None
    ) -> bool:
        """Atomically claim an ``available`` node that is not in maintenance and not claimed, moving it to
        ``to_state`` with ``claimed_by = vm_cid``. False when another process got there first (or it is not free)."""
        with self.write() as db:
            cur = db.execute(
                "UPDATE nodes SET provision_state = ?, claimed_by = ?, state_deadline = ?, last_error = '',"
                " target_state = 'active',"
                f" updated_at = {_NOW} WHERE name = ? AND provision_state = 'available' AND maintenance = 0"
                " AND claimed_by IS NULL",
                (to_state, vm_cid, deadline, name),
            )
            if cur.rowcount != 1:
                return False
            self._log(db, name, "deploy", "available", to_state, who, why)
        return True

    def set_maintenance(self, name: str, on: bool, reason: str, who: str) -> Node:
        """Set or clear the maintenance flag (reason kept when set, cleared when unset); logged as a transition."""
        with self.write() as db:
            row = db.execute("SELECT provision_state FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NodeNotFound(f"node {name!r} is not enrolled")
            db.execute(
                f"UPDATE nodes SET maintenance = ?, maintenance_reason = ?, updated_at = {_NOW} WHERE name = ?",
                (int(on), reason if on else "", name),
            )
            state = row["provision_state"]
            verb = "maintenance-set" if on else "maintenance-unset"
            self._log(db, name, verb, state, state, who, reason or verb)
        return self.get_node(name)

    def set_bmc_address(self, name: str, address: str, who: str, why: str) -> Node:
        """Point a node at another BMC address (a replaced BMC card, a moved emulator); logged as a transition."""
        with self.write() as db:
            row = db.execute("SELECT provision_state, bmc_address FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NodeNotFound(f"node {name!r} is not enrolled")
            db.execute(f"UPDATE nodes SET bmc_address = ?, updated_at = {_NOW} WHERE name = ?", (address, name))
            state = row["provision_state"]
            self._log(db, name, "bmc-address", state, state, who, f"{why} ({row['bmc_address']} -> {address})")
        return self.get_node(name)

    def set_last_error(self, name: str, message: str) -> None:
        with self.write() as db:
            db.execute("UPDATE nodes SET last_error = ? WHERE name = ?", (message, name))

    def transitions(self, name: str | None = None) -> list[Transition]:
        if name is None:
            rows = self._db.execute("SELECT * FROM transitions ORDER BY id").fetchall()
        else:
            rows = self._db.execute("SELECT * FROM transitions WHERE node = ? ORDER BY id", (name,)).fetchall()
        return [Transition(**dict(r)) for r in rows]

    @staticmethod
    def _log(db: sqlite3.Connection, node: str, verb: str, frm: str, to: str, who: str, why: str) -> None:
        db.execute(
            "INSERT INTO transitions (node, verb, from_state, to_state, who, why, ts) VALUES (?,?,?,?,?,?,?)",
            (node, verb, frm, to, who, why, time.time()),
        )

    # -- jobs and tokens (the ramdisk's side) -------------------------------------------------------------------
    def start_job(self, node: str, kind: str, instructions: Mapping[str, Any], timeout_s: float) -> Job:
        """Create the node's job with a new random token, replacing any previous job of the node."""
        if kind not in ("deploy", "clean", "inspect"):
            raise StoreError(f"job kind must be 'deploy', 'clean' or 'inspect', not {kind!r}")
        now = time.time()
        job = Job(node, kind, dict(instructions), secrets.token_urlsafe(32), now, now + timeout_s)
        with self.write() as db:
            if db.execute("SELECT 1 FROM nodes WHERE name = ?", (node,)).fetchone() is None:
                raise NodeNotFound(f"node {node!r} is not enrolled")
            db.execute(
                "INSERT OR REPLACE INTO jobs (node, kind, instructions, token, created, deadline) VALUES (?,?,?,?,?,?)",
                (node, kind, json.dumps(job.instructions, sort_keys=True), job.token, job.created, job.deadline),
            )
        return job

    def job(self, node: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE node = ?", (node,)).fetchone()
        return _job(row) if row else None

    def job_for_mac(self, mac: str) -> Job | None:
        """The job of the node owning ``mac`` (any case, ':' or '-' separated, any of the node's NICs)."""
        node = self.node_for_mac(mac)
        return self.job(node) if node else None

    def end_job(self, node: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM jobs WHERE node = ?", (node,))

    def issue_phone_home_token(self, node: str) -> str:
        """A new phone-home token for the node's next deployment (the previous one stops working)."""
        token = secrets.token_urlsafe(32)
        with self.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO tokens (node, phone_home, created) VALUES (?,?,?)", (node, token, time.time())
            )
            db.execute("DELETE FROM phone_home_uses WHERE node = ?", (node,))
        return token

    def revoke_phone_home_token(self, node: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM tokens WHERE node = ?", (node,))
            db.execute("DELETE FROM phone_home_uses WHERE node = ?", (node,))

    def use_phone_home_token(self, node: str, token: str, boot: int) -> str:
        """Spend the node's phone-home token for the report of boot number ``boot`` (the booted OS's boot count,
        0 when it sends none), atomically: ``"ok"`` (recorded), ``"bad"`` (not the current token) or
        ``"replayed"`` (a report for this boot or a later one was already accepted with this token). So a token
        is single-use per boot: a captured report cannot be sent again, and a report without a boot count is
        accepted once."""
        with self.write() as db:
            row = db.execute("SELECT phone_home FROM tokens WHERE node = ?", (node,)).fetchone()
            if row is None or not token or not hmac.compare_digest(str(row[0]).encode(), token.encode()):
                return "bad"
            used = db.execute("SELECT last_boot FROM phone_home_uses WHERE node = ?", (node,)).fetchone()
            if used is not None and boot <= int(used[0]):
                return "replayed"
            db.execute("INSERT OR REPLACE INTO phone_home_uses (node, last_boot) VALUES (?,?)", (node, boot))
        return "ok"

    def check_token(self, node: str, token: str, purpose: str) -> bool:
        """True when ``token`` is the node's current ``purpose`` token ("job" | "phone-home"); constant-time. A job
        token stops working at its job's deadline."""
        if purpose == "job":
            row = self._db.execute("SELECT token FROM jobs WHERE node = ? AND deadline >= ?",
                                   (node, time.time())).fetchone()  # fmt: skip
        elif purpose == "phone-home":
            row = self._db.execute("SELECT phone_home FROM tokens WHERE node = ?", (node,)).fetchone()
        else:
            raise StoreError(f"token purpose must be 'job' or 'phone-home', not {purpose!r}")
        if row is None or not token:
            return False
        return hmac.compare_digest(str(row[0]).encode(), token.encode())

    # -- inspections ------------------------------------------------------------------------------------------
    def set_inspection(self, node: str, data: Mapping[str, Any], ts: float | None = None) -> Inspection:
        """Record ``node``'s inspection (replacing the previous one); NodeNotFound for an unknown node."""
        record = Inspection(node, dict(data), time.time() if ts is None else ts)
        with self.write() as db:
            if db.execute("SELECT 1 FROM nodes WHERE name = ?", (node,)).fetchone() is None:
                raise NodeNotFound(f"no node {node!r}")
            db.execute(
                "INSERT OR REPLACE INTO inspections (node, data, ts) VALUES (?,?,?)",
                (node, json.dumps(record.data, sort_keys=True), record.ts),
            )
        return record

    def inspection(self, node: str) -> Inspection | None:
        """``node``'s last inspection, or None when it was never inspected."""
        row = self._db.execute("SELECT data, ts FROM inspections WHERE node = ?", (node,)).fetchone()
        return None if row is None else Inspection(node, json.loads(row["data"]), float(row["ts"]))

    # -- events -------------------------------------------------------------------------------------------------
    def add_event(self, node: str, kind: str, data: Mapping[str, Any]) -> int:
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO events (node, kind, data, ts) VALUES (?,?,?,?)",
                (node, kind, json.dumps(dict(data), sort_keys=True), time.time()),
            )
            return int(cur.lastrowid or 0)

    def events(self, node: str, after_id: int = 0, kinds: Iterable[str] | None = None) -> list[Event]:
        sql = "SELECT * FROM events WHERE node = ? AND id > ?"
        args: list[Any] = [node, after_id]
        if kinds is not None:
            wanted = list(kinds)
            sql += f" AND kind IN ({','.join('?' for _ in wanted)})"
            args.extend(wanted)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [Event(r["id"], r["node"], r["kind"], json.loads(r["data"]), r["ts"]) for r in rows]

    def last_event_id(self, node: str) -> int:
        row = self._db.execute("SELECT MAX(id) FROM events WHERE node = ?", (node,)).fetchone()
        return int(row[0] or 0)

    # -- provider records: VMs, stemcells, disks ----------------------------------------------------------------
    def put_vm(self, cid: str, node: str, agent_id: str, stemcell_cid: str, settings: Mapping[str, Any],
               networks: Mapping[str, Any]) -> None:  # fmt: skip
        with self.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO vms (cid, node, agent_id, stemcell_cid, settings, networks)"
                " VALUES (?,?,?,?,?,?)",
                (cid, node, agent_id, stemcell_cid, _j(settings), _j(networks)),
            )

    def vm(self, cid: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM vms WHERE cid = ?", (cid,)).fetchone()
        return _decode(row, "settings", "networks", "metadata") if row else None

    def vms(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM vms ORDER BY cid").fetchall()
        return [_decode(r, "settings", "networks", "metadata") for r in rows]

    def update_vm(self, cid: str, **values: Any) -> int:
        """Update ``settings``/``networks``/``metadata`` of a VM record; returns rows changed (0 when unknown)."""
        allowed = {"settings", "networks", "metadata"}
        if not values or set(values) - allowed:
            raise StoreError(f"update_vm takes only {sorted(allowed)}")
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.write() as db:
            return db.execute(f"UPDATE vms SET {sets} WHERE cid = ?", (*(_j(v) for v in values.values()), cid)).rowcount

    def delete_vm(self, cid: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM vms WHERE cid = ?", (cid,))

    def put_stemcell(
        self,
        cid: str,
        path: str,
        sha256: str,
        size: int,
        fmt: str,
        tags: Mapping[str, Any],
        rootfs: Mapping[str, Any] | None = None,
        streams: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a stemcell; ``rootfs``: its image's root partition (``stemcell_images.root_partition``);
        ``streams``: what ``metal serve`` streams of it (``stemcell_images.streams``)."""
        with self.write() as db:
            db.execute(
                "INSERT INTO stemcells (cid, path, sha256, size, format, tags) VALUES (?,?,?,?,?,?)",
                (cid, path, sha256, size, fmt, _j(tags)),
            )
            if rootfs is not None:
                db.execute("INSERT OR REPLACE INTO stemcell_rootfs (cid, data) VALUES (?,?)", (cid, _j(rootfs)))
            if streams is not None:
                db.execute("INSERT OR REPLACE INTO stemcell_streams (cid, data) VALUES (?,?)", (cid, _j(streams)))

    def stemcell(self, cid: str) -> dict[str, Any] | None:
        """The record (``rootfs``: the root partition's offset, size, sha256 and fstype, or None; ``streams``: the
        gzip files served for it, or {} for a stemcell recorded before they existed)."""
        row = self._db.execute("SELECT * FROM stemcells WHERE cid = ?", (cid,)).fetchone()
        if row is None:
            return None
        rootfs = self._db.execute("SELECT data FROM stemcell_rootfs WHERE cid = ?", (cid,)).fetchone()
        streams = self._db.execute("SELECT data FROM stemcell_streams WHERE cid = ?", (cid,)).fetchone()
        return {**_decode(row, "tags"), "rootfs": json.loads(rootfs[0]) if rootfs else None,
                "streams": json.loads(streams[0]) if streams else {}}  # fmt: skip

    def delete_stemcell(self, cid: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM stemcells WHERE cid = ?", (cid,))
            db.execute("DELETE FROM stemcell_rootfs WHERE cid = ?", (cid,))
            db.execute("DELETE FROM stemcell_streams WHERE cid = ?", (cid,))

    def reserve_disk(self, cid: str, node: str, candidates: Sequence[Mapping[str, Any]], size_mib: int) -> str | None:
        """Reserve the first of ``candidates`` (the node's extra disks, each with a unique ``device`` key) not
        already reserved on ``node``; records the disk and returns its device key, or None when all are taken."""
        with self.write() as db:
            taken = {r[0] for r in db.execute("SELECT device FROM disks WHERE node = ?", (node,)).fetchall()}
            for disk in candidates:
                device = str(disk["device"])
                if device not in taken:
                    db.execute(
                        "INSERT INTO disks (cid, node, device, size_mib) VALUES (?,?,?,?)",
                        (cid, node, device, size_mib),
                    )
                    return device
        return None

    def disk(self, cid: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM disks WHERE cid = ?", (cid,)).fetchone()
        return _decode(row, "metadata") if row else None

    def disks_of_node(self, node: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM disks WHERE node = ? ORDER BY cid", (node,)).fetchall()
        return [_decode(r, "metadata") for r in rows]

    def update_disk(self, cid: str, *, attached: bool | None = None, metadata: Mapping[str, Any] | None = None) -> int:
        with self.write() as db:
            n = 0
            if attached is not None:
                n = db.execute("UPDATE disks SET attached = ? WHERE cid = ?", (int(attached), cid)).rowcount
            if metadata is not None:
                n = db.execute("UPDATE disks SET metadata = ? WHERE cid = ?", (_j(metadata), cid)).rowcount
            return n

    def delete_disk(self, cid: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM disks WHERE cid = ?", (cid,))


def _job(row: sqlite3.Row) -> Job:
    return Job(
        node=row["node"],
        kind=row["kind"],
        instructions=json.loads(row["instructions"]),
        token=row["token"],
        created=row["created"],
        deadline=row["deadline"],
    )


def _j(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True)


def _decode(row: sqlite3.Row, *json_cols: str) -> dict[str, Any]:
    out = dict(row)
    for key in json_cols:
        out[key] = json.loads(out[key])
    return out
