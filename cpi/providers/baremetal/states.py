"""Ironic's provision states and the verbs that move a node between them (simplified).

::

    enroll --manage--> manageable --provide--> cleaning <-> clean wait --done--> available
    available --deploy (claim)--> deploying <-> wait call-back --done--> active
    active | deploy failed --undeploy--> deleting --clean--> cleaning ... --done--> available
    manageable --clean--> cleaning ... --done--> manageable          (manual cleaning)
    manageable --inspect--> inspecting <-> inspect wait --done--> manageable   (Ironic's inspection)
    -ing/wait states --fail--> deploy failed | clean failed
    wait call-back | clean wait --abort--> deploy failed | clean failed
    deploy failed --undeploy-->;  clean failed --manage--> manageable, --provide--> cleaning (again)
    inspecting | inspect wait --fail/abort--> inspect failed --manage--> manageable, --inspect--> inspecting

"-ing" states (deploying, cleaning, deleting) are worked on by a process holding the node's lock: if that process
dies, ``reap`` finds the state without a lock holder and fails it. Wait states (wait call-back, clean wait) carry
a deadline in the store, survive restarts of every process, and ``reap`` fails them once the deadline passed.
Failed states are left only by an explicit verb. An illegal verb raises ``IllegalTransition`` naming the node,
its state, the verb and what is allowed instead.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from cpi.providers.baremetal.store import _UNSET, MetalStore, Node, StateConflict, StoreError

ENROLL = "enroll"
MANAGEABLE = "manageable"
AVAILABLE = "available"
DEPLOYING = "deploying"
WAIT_CALLBACK = "wait call-back"
ACTIVE = "active"
DEPLOY_FAILED = "deploy failed"
DELETING = "deleting"
CLEANING = "cleaning"
CLEAN_WAIT = "clean wait"
CLEAN_FAILED = "clean failed"
INSPECTING = "inspecting"
INSPECT_WAIT = "inspect wait"
INSPECT_FAILED = "inspect failed"

ALL_STATES = (ENROLL, MANAGEABLE, AVAILABLE, DEPLOYING, WAIT_CALLBACK, ACTIVE, DEPLOY_FAILED, DELETING, CLEANING,
              CLEAN_WAIT, CLEAN_FAILED, INSPECTING, INSPECT_WAIT, INSPECT_FAILED)  # fmt: skip
WORKING_STATES = frozenset({DEPLOYING, CLEANING, DELETING, INSPECTING})
WAIT_STATES = frozenset({WAIT_CALLBACK, CLEAN_WAIT, INSPECT_WAIT})
FAILED_STATES = frozenset({DEPLOY_FAILED, CLEAN_FAILED, INSPECT_FAILED})
#: Default bound of a wait state (Ironic's default is 1800 s).
DEFAULT_WAIT_S = 1800.0

_TARGET = "<target>"  # "done" from cleaning goes to the target recorded when cleaning started

#: (state, verb) -> (new state, target recorded for later or None to keep it)
TABLE: dict[tuple[str, str], tuple[str, str | None]] = {
    (ENROLL, "manage"): (MANAGEABLE, ""),
    (AVAILABLE, "manage"): (MANAGEABLE, ""),
    (CLEAN_FAILED, "manage"): (MANAGEABLE, ""),
    (MANAGEABLE, "provide"): (CLEANING, AVAILABLE),
    (CLEAN_FAILED, "provide"): (CLEANING, AVAILABLE),
    (MANAGEABLE, "clean"): (CLEANING, MANAGEABLE),
    (AVAILABLE, "deploy"): (DEPLOYING, ACTIVE),
    (DEPLOYING, "wait"): (WAIT_CALLBACK, None),
    (WAIT_CALLBACK, "resume"): (DEPLOYING, None),
    (DEPLOYING, "done"): (ACTIVE, ""),
    (WAIT_CALLBACK, "done"): (ACTIVE, ""),
    (DEPLOYING, "fail"): (DEPLOY_FAILED, None),
    (WAIT_CALLBACK, "fail"): (DEPLOY_FAILED, None),
    (WAIT_CALLBACK, "abort"): (DEPLOY_FAILED, None),
    (ACTIVE, "undeploy"): (DELETING, AVAILABLE),
    (DEPLOY_FAILED, "undeploy"): (DELETING, AVAILABLE),
    (DELETING, "clean"): (CLEANING, AVAILABLE),
    (DELETING, "fail"): (CLEAN_FAILED, None),
    (CLEANING, "wait"): (CLEAN_WAIT, None),
    (CLEAN_WAIT, "resume"): (CLEANING, None),
    (CLEANING, "done"): (_TARGET, ""),
    (CLEAN_WAIT, "done"): (_TARGET, ""),
    (CLEANING, "fail"): (CLEAN_FAILED, None),
    (CLEAN_WAIT, "fail"): (CLEAN_FAILED, None),
    (CLEAN_WAIT, "abort"): (CLEAN_FAILED, None),
    (MANAGEABLE, "inspect"): (INSPECTING, MANAGEABLE),
    (INSPECT_FAILED, "inspect"): (INSPECTING, MANAGEABLE),
    (INSPECT_FAILED, "manage"): (MANAGEABLE, ""),
    (INSPECTING, "wait"): (INSPECT_WAIT, None),
    (INSPECT_WAIT, "resume"): (INSPECTING, None),
    (INSPECTING, "done"): (_TARGET, ""),
    (INSPECTING, "fail"): (INSPECT_FAILED, None),
    (INSPECT_WAIT, "fail"): (INSPECT_FAILED, None),
    (INSPECT_WAIT, "abort"): (INSPECT_FAILED, None),
}


class IllegalTransition(StoreError):
    """A verb that the node's current state does not allow."""

    def __init__(self, node: str, state: str, verb: str) -> None:
        allowed = sorted(v for (s, v) in TABLE if s == state)
        hint = f" (allowed in this state: {', '.join(allowed)})" if allowed else " (no verb is allowed in this state)"
        super().__init__(f"node {node!r} is in state {state!r}: cannot {verb}{hint}")
        self.node = node
        self.state = state
        self.verb = verb


def allowed(state: str, verb: str) -> bool:
    return (state, verb) in TABLE


def apply(
    store: MetalStore,
    name: str,
    verb: str,
    who: str,
    why: str,
    *,
    wait_s: float | None = None,
    claimed_by: str | None = _UNSET,
    last_error: str | None = None,
    expect: str | None = None,
) -> Node:
    """Apply ``verb`` to node ``name`` (compare-and-set on the state read; retried once if another process moved
    the node meanwhile). ``wait_s`` sets the deadline of a wait state (default ``DEFAULT_WAIT_S``); ``expect``
    refuses unless the node is in that state now. Raises IllegalTransition / NodeNotFound."""
    for attempt in range(2):
        node = store.get_node(name)
        state = node.provision_state
        if expect is not None and state != expect:
            raise IllegalTransition(name, state, verb)
        if (state, verb) not in TABLE:
            raise IllegalTransition(name, state, verb)
        to_state, target = TABLE[(state, verb)]
        if to_state == _TARGET:
            to_state = node.target_state or AVAILABLE
        deadline = time.time() + (wait_s if wait_s is not None else DEFAULT_WAIT_S) if to_state in WAIT_STATES else None
        if to_state == AVAILABLE and claimed_by is _UNSET:
            claimed_by = None  # back in the pool: never still claimed
        try:
            return store.transition(
                name,
                verb,
                [state],
                to_state,
                who,
                why,
                deadline=deadline,
                claimed_by=claimed_by,
                last_error=last_error,
                target_state=target,
            )
        except StateConflict:
            if attempt:
                raise
    raise AssertionError("unreachable")


def claim(store: MetalStore, name: str, vm_cid: str, who: str, why: str) -> bool:
    """Claim an available, not-in-maintenance, unclaimed node for ``vm_cid`` (→ deploying); False if taken."""
    return store.claim(name, vm_cid, DEPLOYING, who, why)


def _lock_is_held(store: MetalStore, name: str) -> bool:
    with store.try_lock("node", name) as got:
        return not got


def reap(store: MetalStore, who: str, now: float | None = None) -> list[Node]:
    """Fail wait states whose deadline passed and "-ing" states nobody works on (their process died).
    Returns the nodes moved. Safe to call from any process at any time."""
    moved: list[Node] = []
    now = time.time() if now is None else now
    for node in store.nodes():
        state = node.provision_state
        reason = ""
        if state in WAIT_STATES and node.state_deadline is not None and node.state_deadline < now:
            if _lock_is_held(store, node.name):
                continue  # the process waiting on it will time it out itself, with a better message
            reason = f"timed out in state {state!r} (deadline passed {now - node.state_deadline:.0f}s ago)"
        elif state in WORKING_STATES and not _lock_is_held(store, node.name):
            reason = f"no process is working on state {state!r} any more (it stopped or was killed)"
        if not reason:
            continue
        with contextlib.suppress(StateConflict, IllegalTransition):
            moved.append(apply(store, node.name, "fail", who, reason, last_error=reason, expect=state))
    return moved


def describe(node: Node) -> dict[str, Any]:
    """A short status view: state, target, maintenance, claim, deadline in seconds from now."""
    out: dict[str, Any] = {"state": node.provision_state, "target": node.target_state or None}
    if node.state_deadline is not None:
        out["deadline_in_s"] = round(node.state_deadline - time.time(), 1)
    if node.maintenance:
        out["maintenance"] = node.maintenance_reason or True
    if node.claimed_by:
        out["claimed_by"] = node.claimed_by
    return out
