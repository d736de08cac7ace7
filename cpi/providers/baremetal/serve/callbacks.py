"""The callback API's rules: who may call (per-deployment tokens) and what a call may say (event bodies).

Routes (all under ``/v1/nodes/<node>/``, token in the ``X-Stemforge-Token`` header):

* ``GET instructions`` (job token): the job rendered by :mod:`.instructions` (``text/plain``).
* ``GET configdrive`` (job token): ``<state_dir>/configdrives/<node>.iso``.
* ``POST events`` (job token): ``{"kind": "heartbeat"|"stage"|"result"|"bench", "stage": str, "ok": bool,
  "message": str, "data": {...}}``; stored as-is with ``add_event(node, kind, body)``; answers 204.
* ``POST root-device`` (job token of a deploy job): ``{"disks": [...]}`` as the ramdisk sees them; answers
  ``text/plain`` ``SF_ROOT_DEVICE='vda'`` or ``SF_ROOT_ERROR='...'`` (:func:`.instructions.render_root_device`;
  also an error when the node's last inspection recorded other disks: a hardware change fails the deploy).
* ``POST layout`` (job token of a deploy job): the same body; answers ``text/plain``: the ``lay_*`` lines of the
  job's layout on those disks or one line ``SF_LAYOUT_ERROR='...'`` (:func:`.instructions.render_layout_answer`:
  the disk set differs from the last inspection, the layout does not fit, wrong boot mode or root fs type).
  On both routes a disk set that differs from the last inspection is also recorded as event ``hardware-change``
  (``placement.py`` refuses the server until it is inspected again).
* ``POST phone-home`` (phone-home token): any JSON object (what the booted OS read from its config drive); stored
  as event kind ``phone-home``; answers 204.
* ``POST phone-home/<token>`` (the phone-home token in the path: cloud-init cannot send headers): cloud-init's
  ``phone_home`` form (:mod:`..phone_home`); its ``instance_id`` must be the uuid of the node's VM (the config
  drive's); stored as event kind ``phone-home``; answers 204. The token is redacted from every log line.

Answers: unknown node 404; missing or wrong token (or no job) 401, logged as ``rejected callback for node X from
IP (bad token)``; a job token past its job's deadline 401 (logged ``job expired``); a phone-home report replayed
(its token already spent on this boot, see ``MetalStore.use_phone_home_token``) 409; a body that is not what the
route takes 400 naming the problem (also JSON nested deeper than :data:`MAX_JSON_DEPTH`). Tokens are compared in
constant time by ``MetalStore.check_token`` and never appear in a log line, an error or an answer.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from cpi.fastjson import depth_exceeds
from cpi.providers.baremetal import phone_home
from cpi.providers.baremetal.instructions import (
    InstructionsError,
    disk_change,
    parse_disk_report,
    render_instructions,
    render_layout_answer,
    render_root_device,
)
from cpi.providers.baremetal.placement import HARDWARE_CHANGE
from cpi.providers.baremetal.serve.shared_store import SharedStore

log = logging.getLogger("stemforge.metal.callbacks")

TOKEN_HEADER: Final = "X-Stemforge-Token"
#: ``bench``: the ramdisk's benchmark mode (``sf.bench=N``) reports one event per round.
EVENT_KINDS: Final = ("heartbeat", "stage", "result", "bench")
EVENT_FIELDS: Final = ("kind", "stage", "ok", "message", "data")
#: The ramdisk's stage names, in order (deploy, then clean); other names are accepted and stored as sent.
STAGES: Final = ("booted", "disk-selected", "image-written", "checksum-ok", "configdrive-written", "disk-wiped", "done")
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_PHONE_HOME_BYTES: Final = 1024 * 1024
#: Deepest nesting of arrays/objects a body may have (the ramdisk and the test agent send 2-3 levels).
MAX_JSON_DEPTH: Final = 32
#: The largest boot count a phone-home report may carry (an SQLite INTEGER holds it; no OS boots that often).
MAX_BOOT: Final = 2**31 - 1
_NODE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CallbackError(Exception):
    """A refused callback; ``status`` is the HTTP answer, the message is safe to send and log."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    """Who is calling: the node named in the path, the token it sent (maybe empty) and its address."""

    node: str
    token: str
    client_ip: str

    def __repr__(self) -> str:
        return f"Caller(node={self.node!r}, client_ip={self.client_ip!r}, token='***')"


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, or CallbackError 400 saying what is wrong with it."""
    try:
        value = json.loads(body.decode("utf-8"))
    except RecursionError:
        raise CallbackError(HTTPStatus.BAD_REQUEST, f"{what}: body is JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise CallbackError(HTTPStatus.BAD_REQUEST, f"{what}: body is not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise CallbackError(
            HTTPStatus.BAD_REQUEST, f"{what}: body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise CallbackError(HTTPStatus.BAD_REQUEST, f"{what}: body must be a JSON object, not {type(value).__name__}")
    if depth_exceeds(value, MAX_JSON_DEPTH):
        raise CallbackError(HTTPStatus.BAD_REQUEST, f"{what}: body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_event(body: bytes) -> dict[str, Any]:
    """A ramdisk event body, checked field by field (unknown fields are refused, not dropped)."""
    event = parse_json_object(body, "event")

    def bad(field: str, problem: str) -> CallbackError:
        return CallbackError(HTTPStatus.BAD_REQUEST, f"event: {field}: {problem}")

    unknown = sorted(k for k in event if k not in EVENT_FIELDS)
    if unknown:
        raise bad(", ".join(unknown), f"unknown field(s); allowed: {', '.join(EVENT_FIELDS)}")
    kind = event.get("kind")
    if kind not in EVENT_KINDS:
        raise bad("kind", f"must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
    for field, typ, name in (("stage", str, "a string"), ("message", str, "a string"), ("ok", bool, "true or false"),
                             ("data", dict, "an object")):  # fmt: skip
        if field in event and not isinstance(event[field], typ):
            raise bad(field, f"must be {name}, got {type(event[field]).__name__}")
    if kind in ("stage", "result") and not event.get("stage"):
        raise bad("stage", f"required for a {kind} event")
    if kind == "result" and "ok" not in event:
        raise bad("ok", "required for a result event")
    if len(str(event.get("stage", ""))) > 64:
        raise bad("stage", "longer than 64 characters")
    return event


class Callbacks:
    """The callback API over a shared store; each method authenticates first, then acts."""

    def __init__(self, store: SharedStore, state_dir: Path) -> None:
        self.store = store
        self.configdrives = state_dir / "configdrives"

    def authenticate(self, caller: Caller, purpose: str) -> None:
        """Return if ``caller`` holds the node's current ``purpose`` token; else CallbackError 404 or 401."""
        if not _NODE_RE.match(caller.node):
            raise CallbackError(HTTPStatus.NOT_FOUND, f"no node {caller.node!r}")
        known = self.store.call(lambda s: s.node(caller.node) is not None)
        if not known:
            log.warning("callback for unknown node %r from %s", caller.node, caller.client_ip)
            raise CallbackError(HTTPStatus.NOT_FOUND, f"no node {caller.node!r}")
        if not caller.token:
            reason = "no token"
        elif self.store.call(lambda s: s.check_token(caller.node, caller.token, purpose)):
            return
        elif purpose == "job" and self._expired(caller):
            reason = "job expired"
        else:
            reason = "bad token"
        log.warning("rejected callback for node %s from %s (%s)", caller.node, caller.client_ip, reason)
        raise CallbackError(HTTPStatus.UNAUTHORIZED, f"{purpose} token missing or not valid for node {caller.node!r}")

    def _expired(self, caller: Caller) -> bool:
        """``caller`` holds the node's job token, but the job's deadline has passed."""
        job = self.store.call(lambda s: s.job(caller.node))
        return (
            job is not None
            and hmac.compare_digest(job.token.encode(), caller.token.encode())
            and time.time() > job.deadline
        )

    def instructions(self, caller: Caller) -> str:
        """The job of ``caller.node`` as ``SF_*`` shell assignments."""
        self.authenticate(caller, "job")
        job = self.store.call(lambda s: s.job(caller.node))
        if job is None:  # ended between the token check and now
            raise CallbackError(HTTPStatus.UNAUTHORIZED, f"job token not valid for node {caller.node!r}")
        try:
            text = render_instructions(job.node, job.kind, job.instructions)
        except InstructionsError as exc:
            log.error("%s", exc)
            raise CallbackError(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc)) from None
        log.info("instructions (%s) sent to node %s at %s", job.kind, caller.node, caller.client_ip)
        return text

    def root_device(self, caller: Caller, body: bytes) -> str:
        """The root disk for ``caller.node``'s deploy job among the disks its ramdisk reported (``SF_*`` lines)."""
        return self._disk_answer(caller, body, "root-device", render_root_device)

    def layout(self, caller: Caller, body: bytes) -> str:
        """The ``lay_*`` lines (or ``SF_LAYOUT_ERROR``) for ``caller.node``'s layout deploy job, from the disks its
        ramdisk reported and the node's last inspection (:func:`.instructions.render_layout_answer`)."""
        return self._disk_answer(caller, body, "layout", render_layout_answer)

    def _disk_answer(self, caller: Caller, body: bytes, what: str, render: Any) -> str:
        """Authenticate a deploy job's ramdisk, parse its disk report and answer with ``render(node, instructions,
        report, inspection inventory or None, inspection time)``."""
        self.authenticate(caller, "job")
        job = self.store.call(lambda s: s.job(caller.node))
        if job is None:
            raise CallbackError(HTTPStatus.UNAUTHORIZED, f"job token not valid for node {caller.node!r}")
        if job.kind != "deploy":
            raise CallbackError(HTTPStatus.CONFLICT, f"node {caller.node!r} has a {job.kind} job, not a deploy job")
        report = parse_json_object(body, what)
        record = self.store.call(lambda s: s.inspection(caller.node))
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.ts)) if record is not None else ""
        try:
            text: str = render(job.node, job.instructions, report, record.data if record else None, when)
            changed = disk_change(job.node, parse_disk_report(report), record.data if record else None, when)
        except ValueError as exc:
            raise CallbackError(HTTPStatus.BAD_REQUEST, f"{what}: {exc}") from None
        if changed:  # placement.py refuses the server until it is inspected again
            self.store.call(lambda s: s.add_event(caller.node, HARDWARE_CHANGE, {"message": changed, "route": what}))
            log.warning("%s", changed)
        first = text.splitlines()[0] if text else ""
        log.info(
            "node %s %s: %s", caller.node, what, first if first.startswith("SF_") else f"{len(text.splitlines())} lines"
        )
        return text

    def configdrive(self, caller: Caller) -> Path:
        """The path of ``caller.node``'s config drive ISO (CallbackError 404 when the provider wrote none)."""
        self.authenticate(caller, "job")
        path = self.configdrives / f"{caller.node}.iso"
        if not path.is_file():
            raise CallbackError(HTTPStatus.NOT_FOUND, f"no config drive for node {caller.node!r}")
        return path

    def record_event(self, caller: Caller, body: bytes) -> tuple[int, str]:
        """Store a ramdisk event; return its id and kind."""
        self.authenticate(caller, "job")
        event = parse_event(body)
        event_id = self.store.call(lambda s: s.add_event(caller.node, event["kind"], event))
        if event["kind"] != "heartbeat":
            ok = "" if "ok" not in event else (" ok" if event["ok"] else " FAILED")
            message = f": {event['message'][:300]}" if event.get("message") else ""
            log.info("node %s %s %s%s%s", caller.node, event["kind"], event.get("stage", ""), ok, message)
        return event_id, str(event["kind"])

    def record_phone_home(self, caller: Caller, body: bytes) -> int:
        """Store what the booted OS reported as event ``phone-home``; return its id. The token is spent on the
        report's ``boot`` (a non-negative integer, 0 when absent): the same report sent again is refused (409)."""
        self.authenticate(caller, "phone-home")
        report = parse_json_object(body, "phone-home")
        boot = report.get("boot", 0)
        if isinstance(boot, bool) or not isinstance(boot, int) or not 0 <= boot <= MAX_BOOT:
            raise CallbackError(HTTPStatus.BAD_REQUEST, f"phone-home: boot must be an integer 0-{MAX_BOOT}")
        used = self.store.call(lambda s: s.use_phone_home_token(caller.node, caller.token, boot))
        if used == "bad":  # rotated or revoked since authenticate
            log.warning("rejected callback for node %s from %s (bad token)", caller.node, caller.client_ip)
            raise CallbackError(HTTPStatus.UNAUTHORIZED, f"phone-home token not valid for node {caller.node!r}")
        if used == "replayed":
            log.warning("rejected phone-home of node %s from %s (replayed: boot %d already reported)", caller.node,
                        caller.client_ip, boot)  # fmt: skip
            raise CallbackError(
                HTTPStatus.CONFLICT, f"phone-home of node {caller.node!r}: boot {boot} was already reported"
            )
        event_id = self.store.call(lambda s: s.add_event(caller.node, "phone-home", report))
        log.info("node %s phoned home from %s", caller.node, caller.client_ip)
        return event_id

    def record_cloud_init_phone_home(self, caller: Caller, body: bytes) -> int:
        """Store cloud-init's phone-home form (:mod:`..phone_home`; the token came in the path) as event
        ``phone-home`` (``{"source": "cloud-init", "instance_id", "hostname", ...}``) when its ``instance_id`` is the
        uuid of the config drive of the VM the node runs (else 409); the token is spent as for boot 0."""
        self.authenticate(caller, "phone-home")
        try:
            form = phone_home.parse_form(body)
        except ValueError as exc:
            raise CallbackError(HTTPStatus.BAD_REQUEST, f"phone-home: {exc}") from None
        node = self.store.call(lambda s: s.node(caller.node))
        expected = str(node.claimed_by or "").removeprefix("vm-") if node is not None else ""
        if not expected or not hmac.compare_digest(form["instance_id"].encode(), expected.encode()):
            log.warning("rejected phone-home of node %s from %s (instance_id %r is not its config drive's uuid)",
                        caller.node, caller.client_ip, form["instance_id"][:64])  # fmt: skip
            raise CallbackError(
                HTTPStatus.CONFLICT,
                f"phone-home of node {caller.node!r}: instance_id is not its VM's config drive uuid",
            )
        used = self.store.call(lambda s: s.use_phone_home_token(caller.node, caller.token, 0))
        if used != "ok":
            log.warning("rejected phone-home of node %s from %s (%s)", caller.node, caller.client_ip, used)
            status = HTTPStatus.UNAUTHORIZED if used == "bad" else HTTPStatus.CONFLICT
            raise CallbackError(status, f"phone-home of node {caller.node!r}: token {used}")
        report = {"source": "cloud-init", **form}
        event_id = self.store.call(lambda s: s.add_event(caller.node, "phone-home", report))
        log.info(
            "node %s phoned home (cloud-init, instance %s) from %s", caller.node, form["instance_id"], caller.client_ip
        )
        return event_id
