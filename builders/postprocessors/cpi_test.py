"""``cpi-test``: deploy the built image through a real BOSH CPI on every hardware plan before anything publishes it.

Template usage (the first post-processor of a chain ``[cpi-test, fanout, release]``)::

    {"type": "cpi-test",
     "stemcell": {"name": "bosh-libvirt-kvm-debian-go_agent", "version": "0.1", "os": "debian-bookworm"},
     "targets": [
       {"name": "small", "cpi_config": "/var/vcap/jobs/cpi/config/cpi.json",
        "cloud_properties": {"cpu": 1, "ram": 1024},
        "checks": [{"console": "login:", "timeout": "3m"}],
        "smoke": [{"username": "root", "private_key_file": "keys/id_ed25519",
                   "commands": ["systemctl is-system-running --wait"]}]},
       {"name": "large", "cpi_config": "...", "cloud_properties": {"cpu": 8, "ram": 16384},
        "checks": [{"agent": "ready"}]}]}

For every target -- all at once unless ``parallel`` is false -- the post-processor does what the BOSH director does:
``create_stemcell`` from the stemcell's extracted ``image`` (the input artifact is used as is when it already is a
stemcell tarball; a bare disk image is first wrapped in a temporary heavy stemcell with ``stemcells.tarball.
write_stemcell`` using the ``stemcell`` options), ``create_vm`` with the target's ``cloud_properties``, ``networks``
(default: one dynamic network on a restricted QEMU user-mode NIC) and ``env``; then it waits for each check in
order -- ``console`` (a regular expression searched in the VM's serial console log, which the libvirt CPI keeps at
``<console_dir or state_dir/consoles>/<vm_cid>.log``) or ``agent: ready`` (the stemforge test agent's ``ready``
event on that console) -- each bounded by its ``timeout`` (default 3m) and by cancellation; then it runs the
``smoke`` commands over SSH through a loopback port forward into the guest (a free port on 127.0.0.1 is added to
the network's ``port_forwards``; every command must exit 0 within its ``timeout``). ``delete_vm`` and
``delete_stemcell`` always follow (also after a failure, Ctrl-C or SIGTERM; CPI processes run in their own session
so the signal that asked for cleanup does not kill the cleanup), and the temporary stemcell and wrappers are
removed: nothing is left in libvirt, the storage pool or on disk. Per-target progress lines carry the elapsed time.

The result is the input artifact (same files, kept) with ``state["tests"] = {target: {"passed", "seconds",
"detail"}}`` and ``state["tested_sha256"]`` (the sha256 of the tested file, so ``release`` can prove it releases
exactly the tested bytes); the results travel down the chain in the artifact's state only (``fanout`` carries them
forward), so a chain without ``cpi-test`` has none. When ANY target fails, the post-processor raises CpiTestFailed
(a BuildError carrying every target's result) naming every failing target and why (``image unreleased: target
'large' failed: no console match for 'login:' within 180s``): the rest of the chain (fan-out, release) never runs
and nothing is published.

Options: ``targets`` (required, at least one; each ``name``, ``cpi_config``, ``cloud_properties``, optional
``networks``, ``env``, ``checks`` (at least one), ``smoke``, ``timeout`` for each CPI call), ``parallel`` (default
true), ``stemcell`` (``name``, ``version``, ``os``, ``stemcell_formats``, ``cloud_properties``; only used for a bare
disk image), ``source`` (which artifact file to test when there are several), ``console_log_directory`` (keep a
copy of each target's console log there, ``<target>.log``). Unknown keys are errors naming the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

from builders.core import Artifact, BuildContext, BuildError, ConfigError, PostProcessor
from builders.postprocessors import Progress, human_size, validated_options
from builders.registry import closed_object
from cpi.wrapper import write_wrapper
from stemforge_base.cpi_client import CpiCallError, CpiClient
from stemforge_base.durations import parse_duration
from stemforge_base.hashing import sha256_file
from stemforge_base.steps import Cancelled

LOG: Final = logging.getLogger("stemforge.build.cpi_test")
DEFAULT_CHECK_TIMEOUT: Final = 180.0
DEFAULT_SMOKE_TIMEOUT: Final = 300.0
DEFAULT_CPI_TIMEOUT: Final = 900.0
DEFAULT_STATE_DIR: Final = "/var/lib/stemforge/cpi"  # the libvirt provider's default (cpi.providers.libvirt)
#: How often a waiting target says it is still waiting.
WAIT_REPORT_INTERVAL: Final = 15.0
POLL_INTERVAL: Final = 0.5
_NAME_RE: Final = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_DURATION: Final = {"type": ["string", "number"]}
_CONTROL: Final = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


# -- configuration ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One thing to wait for on the VM: a console regex or an agent event."""

    kind: str  # "console" | "agent"
    timeout: float
    pattern: re.Pattern[str] | None = None
    agent_event: str = ""

    def describe(self) -> str:
        if self.kind == "console":
            assert self.pattern is not None
            return f"console match for {self.pattern.pattern!r}"
        return f"agent {self.agent_event}"


@dataclass(frozen=True)
class Smoke:
    """Commands run over SSH through a loopback port forward into the guest."""

    username: str
    private_key_file: Path
    commands: tuple[str, ...]
    timeout: float
    connect_timeout: float
    guest_port: int
    network: str


@dataclass(frozen=True)
class Target:
    """A hardware plan to test on."""

    name: str
    cpi_config: Path
    console_dir: Path
    cloud_properties: dict[str, Any]
    networks: dict[str, Any]
    env: dict[str, Any]
    checks: tuple[Check, ...]
    smoke: tuple[Smoke, ...]
    cpi_timeout: float


@dataclass
class TargetResult:
    """How one target went: ``passed``, ``seconds`` and a one-line ``detail`` (why it failed, or what passed)."""

    name: str
    passed: bool = False
    seconds: float = 0.0
    detail: str = ""
    vm_cid: str = ""
    stemcell_cid: str = ""
    leaked: list[str] = field(default_factory=list)

    def to_state(self) -> dict[str, Any]:
        return {"passed": self.passed, "seconds": round(self.seconds, 3), "detail": self.detail}


class CpiTestFailed(BuildError):
    """At least one target failed; ``tests`` holds every target's result (the same shape as ``state["tests"]``)."""

    def __init__(self, message: str, tests: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.tests = dict(tests)


class TargetFailed(Exception):
    """A check or smoke command of a target failed; the message says which and why."""


class _Stopped(Exception):
    """The run was cancelled (or the waiting thread was interrupted) while a target was working."""


_CHECK_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "console": {"type": "string", "minLength": 1},
        "agent": {"enum": ["ready"]},
        "timeout": _DURATION,
    },
}
_SMOKE_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["username", "private_key_file", "commands"],
    "properties": {
        "username": {"type": "string", "minLength": 1},
        "private_key_file": {"type": "string", "minLength": 1},
        "commands": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
        "timeout": _DURATION,
        "connect_timeout": _DURATION,
        "guest_port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "network": {"type": "string", "minLength": 1},
    },
}
_TARGET_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "cpi_config", "cloud_properties", "checks"],
    "properties": {
        "name": {"type": "string", "pattern": _NAME_RE},
        "cpi_config": {"type": "string", "minLength": 1},
        "cloud_properties": {"type": "object"},
        "networks": {"type": "object", "minProperties": 1},
        "env": {"type": "object"},
        "checks": {"type": "array", "minItems": 1, "items": _CHECK_SCHEMA},
        "smoke": {"type": "array", "items": _SMOKE_SCHEMA},
        "timeout": _DURATION,
    },
}


def default_networks() -> dict[str, Any]:
    """One dynamic network on a restricted QEMU user-mode NIC (the guest reaches nothing but its port forwards)."""
    return {"default": {"type": "dynamic", "cloud_properties": {"type": "user", "restrict": True}}}


def console_dir_for(config_path: Path) -> Path:
    """Where the CPI configured by ``config_path`` keeps serial console logs (libvirt: ``console_dir``, else
    ``<state_dir>/consoles``). Raises ConfigError when the config cannot be loaded."""
    from cpi import config as cpi_config
    from cpi.errors import CpiError
    from cpi.providers import PROVIDERS

    try:
        loaded = cpi_config.load(str(config_path), PROVIDERS)
    except CpiError as exc:
        raise ConfigError(exc.message) from None
    properties = loaded.properties
    section = properties.get(loaded.plugin) if isinstance(properties.get(loaded.plugin), dict) else {}
    console = section.get("console_dir") if isinstance(section, dict) else None
    if isinstance(console, str) and console:
        return Path(console)
    return Path(str(properties.get("state_dir") or DEFAULT_STATE_DIR)) / "consoles"


def _duration(value: Any, where: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = parse_duration(value, mode="seconds", field_name=where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if seconds <= 0:
        raise ConfigError(f"{where}: must be a positive duration, got {value!r}")
    return seconds


def parse_targets(options: Mapping[str, Any], where: str) -> list[Target]:
    """Targets from validated options; ConfigError listing every problem (each naming ``targets[i]...``)."""
    problems: list[str] = []
    targets: list[Target] = []
    seen: set[str] = set()
    for index, raw in enumerate(options["targets"]):
        at = f"targets[{index}]"
        name = str(raw["name"])
        if name in seen:
            problems.append(f"{at}.name: target name '{name}' is used twice")
        seen.add(name)
        config_path = Path(os.path.abspath(str(raw["cpi_config"])))
        console_dir = Path("/nonexistent")
        try:
            console_dir = console_dir_for(config_path)
        except ConfigError as exc:
            problems.append(f"{at}.cpi_config: {exc}")
        checks: list[Check] = []
        for ci, check in enumerate(raw["checks"]):
            cat = f"{at}.checks[{ci}]"
            kinds = [k for k in ("console", "agent") if k in check]
            if len(kinds) != 1:
                problems.append(f"{cat}: needs exactly one of 'console' (a regular expression) or 'agent' "
                                f"(\"ready\"), got {', '.join(kinds) or 'neither'}")
                continue
            try:
                timeout = _duration(check.get("timeout"), f"{cat}.timeout", DEFAULT_CHECK_TIMEOUT)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            if kinds[0] == "console":
                try:
                    pattern = re.compile(str(check["console"]), re.MULTILINE)
                except re.error as exc:
                    problems.append(f"{cat}.console: not a valid regular expression: {exc}")
                    continue
                checks.append(Check("console", timeout, pattern=pattern))
            else:
                checks.append(Check("agent", timeout, agent_event=str(check["agent"])))
        networks = dict(raw.get("networks") or default_networks())
        smokes: list[Smoke] = []
        for si, smoke in enumerate(raw.get("smoke") or []):
            sat = f"{at}.smoke[{si}]"
            try:
                smokes.append(_parse_smoke(smoke, sat, networks))
            except ConfigError as exc:
                problems.append(str(exc))
        try:
            cpi_timeout = _duration(raw.get("timeout"), f"{at}.timeout", DEFAULT_CPI_TIMEOUT)
        except ConfigError as exc:
            problems.append(str(exc))
            cpi_timeout = DEFAULT_CPI_TIMEOUT
        targets.append(Target(name, config_path, console_dir, dict(raw["cloud_properties"]), networks,
                              dict(raw.get("env") or {}), tuple(checks), tuple(smokes), cpi_timeout))
    if problems:
        raise ConfigError("\n".join(f"{where}: {p}" for p in problems))
    return targets


def _parse_smoke(smoke: Mapping[str, Any], at: str, networks: Mapping[str, Any]) -> Smoke:
    key = Path(os.path.abspath(str(smoke["private_key_file"])))
    if not key.is_file():
        raise ConfigError(f"{at}.private_key_file: {key} does not exist")
    user_mode = sorted(n for n, net in networks.items()
                       if isinstance(net, Mapping) and net.get("type") != "vip"
                       and (not isinstance(net.get("cloud_properties"), Mapping)
                            or net["cloud_properties"].get("type", "user") == "user"))
    network = smoke.get("network")
    if network is None:
        if not user_mode:
            raise ConfigError(f"{at}: smoke commands need a network on a user-mode NIC (cloud_properties "
                              "{type: user}) to forward a loopback port through; the target has none")
        network = user_mode[0]
    elif network not in user_mode:
        raise ConfigError(f"{at}.network: '{network}' is not one of the target's user-mode networks "
                          f"({', '.join(user_mode) or 'none'})")
    return Smoke(
        username=str(smoke["username"]), private_key_file=key, commands=tuple(str(c) for c in smoke["commands"]),
        timeout=_duration(smoke.get("timeout"), f"{at}.timeout", DEFAULT_SMOKE_TIMEOUT),
        connect_timeout=_duration(smoke.get("connect_timeout"), f"{at}.connect_timeout", DEFAULT_CHECK_TIMEOUT),
        guest_port=int(smoke.get("guest_port", 22)), network=str(network))


# -- the post-processor -------------------------------------------------------------------------------------------


class CpiTestPostProcessor(PostProcessor):
    """Deploy the image through a real CPI on every target; fail (publishing nothing) unless every target passes."""

    type_name: ClassVar[str] = "cpi-test"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "targets": {"type": "array", "minItems": 1, "items": _TARGET_SCHEMA},
            "parallel": {"type": "boolean"},
            "stemcell": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "version": {"type": "string", "minLength": 1},
                    "os": {"type": "string", "minLength": 1},
                    "stemcell_formats": {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "minLength": 1}},
                    "cloud_properties": {"type": "object"},
                },
            },
            "source": {"type": "string", "minLength": 1},
            "console_log_directory": {"type": "string", "minLength": 1},
        }, required=["targets"])

    def prepare(self) -> list[str]:
        self.options = validated_options(self)
        self.targets = parse_targets(self.options, f"{self.ctx.build_name}: post-processor {self.type_name}")
        return []

    # -- run ------------------------------------------------------------------------------------------------
    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:

        if not hasattr(self, "targets"):
            self.prepare()
        ui = self.ctx.ui
        self._abort = threading.Event()
        source = self._source_file(artifact)
        sha256 = self._hash(source)
        work = Path(tempfile.mkdtemp(prefix="stemforge-cpi-test-"))
        results: list[TargetResult] = []
        try:
            image, cloud_properties = self._stemcell_image(source, work)
            names = ", ".join(t.name for t in self.targets)
            ui.say(f"Testing {source.name} on {len(self.targets)} target(s) through the CPI: {names}"
                   + (" (in parallel)" if self._parallel and len(self.targets) > 1 else ""))
            results = self._run_targets(image, cloud_properties, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._table(results)
        tests = {r.name: r.to_state() for r in results}
        leaked = [item for r in results for item in r.leaked]
        if leaked:
            ui.error("COULD NOT REMOVE (remove by hand): " + "; ".join(leaked))
        if self.ctx.cancel.is_set() or self._abort.is_set():
            outcome = ("LEFT: " + "; ".join(leaked)) if leaked else "every VM and stemcell it created was deleted"
            raise Cancelled(f"{self.ctx.build_name}: cpi-test cancelled; {outcome}")
        failed = [r for r in results if not r.passed]
        if failed:
            reasons = "; ".join(f"target '{r.name}' failed: {r.detail}" for r in failed)
            raise CpiTestFailed(f"image unreleased: {reasons}", tests)
        ui.say(f"Every target passed: {', '.join(r.name for r in results)}")
        state = artifact.carried_state(tests=tests, tested_sha256=sha256, tested_file=str(source))
        return dataclasses.replace(artifact, state=state), True

    @property
    def _parallel(self) -> bool:
        return bool(self.options.get("parallel", True))

    def _source_file(self, artifact: Artifact) -> Path:
        files = [Path(f) for f in artifact.files if Path(f).is_file()]
        if not files and artifact.state.get("stemcell") and Path(artifact.state["stemcell"]).is_file():
            files = [Path(artifact.state["stemcell"])]
        pattern = self.options.get("source")
        if pattern:
            files = [f for f in files if fnmatch.fnmatch(f.name, pattern) or str(f) == pattern]
        if len(files) != 1:
            raise BuildError(f"cpi-test: the artifact has {len(files)} matching image files "
                             f"({', '.join(f.name for f in files) or 'none'}); set 'source' to the one to test")
        return files[0]

    def _hash(self, path: Path) -> str:
        progress = Progress(self.ctx, f"hashing {path.name}", path.stat().st_size)

        def check() -> None:
            if self.ctx.cancel.is_set():
                raise Cancelled(f"{self.ctx.build_name}: cpi-test cancelled")

        return sha256_file(path, progress=lambda done, _total: progress(done), check=check)

    def _stemcell_image(self, source: Path, work: Path) -> tuple[Path, dict[str, Any]]:
        """The extracted stemcell ``image`` file and the MF cloud_properties the director would pass to
        ``create_stemcell``. A bare disk image is wrapped in a temporary heavy stemcell first."""
        from stemcells.errors import StemcellError
        from stemcells.tarball import detect_image_format, extract_stemcell, write_stemcell

        ui = self.ctx.ui
        tarball = source
        try:
            if not _is_gzip(source):
                fmt = detect_image_format(source)
                options = dict(self.options.get("stemcell") or {})
                cloud_properties = {"disk_format": fmt, **dict(options.get("cloud_properties") or {})}
                ui.message(f"Wrapping {source.name} ({human_size(source.stat().st_size)}, {fmt}) in a temporary "
                           "heavy stemcell")
                tarball = write_stemcell(
                    work / "stemcell.tgz",
                    name=str(options.get("name") or "bosh-stemforge-cpi-test"),
                    version=str(options.get("version") or "0.0.0-cpi-test"),
                    operating_system=str(options.get("os") or "unknown"),
                    stemcell_formats=list(options.get("stemcell_formats") or [f"libvirt-{fmt}"]),
                    cloud_properties=cloud_properties,
                    root_image=source)
            else:
                ui.message(f"Using the stemcell {source.name} as it is")
            extracted = extract_stemcell(tarball, work / "extracted")
        except StemcellError as exc:
            raise BuildError(f"cpi-test: {exc}") from exc
        if tarball != source:
            tarball.unlink(missing_ok=True)  # the extracted copy is all the CPI needs
        return extracted.image_path, dict(extracted.manifest.cloud_properties)

    def _run_targets(self, image: Path, cloud_properties: dict[str, Any], work: Path) -> list[TargetResult]:
        workers = len(self.targets) if self._parallel else 1
        results: dict[str, TargetResult] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cpi-test") as pool:
            futures: dict[Future[TargetResult], Target] = {
                pool.submit(self._run_target, target, image, cloud_properties, work / f"target-{i}"): target
                for i, target in enumerate(self.targets)}
            try:
                pending = set(futures)
                while pending:
                    if self.ctx.cancel.is_set():
                        self._abort.set()
                    _done, pending = wait(pending, timeout=0.2)
            except BaseException:  # KeyboardInterrupt in the waiting thread: every target cleans up first
                self._abort.set()
                wait(futures)
                raise
            for future, target in futures.items():
                try:
                    results[target.name] = future.result()
                except BaseException as exc:  # noqa: BLE001 - _run_target reports its own errors; be safe
                    results[target.name] = TargetResult(target.name, detail=f"{type(exc).__name__}: {exc}")
        return [results[t.name] for t in self.targets]

    # -- one target -----------------------------------------------------------------------------------------
    def _stopped(self) -> bool:
        return self.ctx.cancel.is_set() or self._abort.is_set()

    def _check_stop(self) -> None:
        if self._stopped():
            raise _Stopped()

    def _run_target(self, target: Target, image: Path, stemcell_properties: dict[str, Any],
                    work: Path) -> TargetResult:
        started = time.monotonic()
        result = TargetResult(target.name)

        def say(message: str) -> None:
            self.ctx.ui.message(f"{target.name} [{time.monotonic() - started:6.1f}s] {message}")

        client: CpiClient | None = None
        try:
            self._check_stop()
            client = CpiClient([str(write_wrapper(target.cpi_config, work))], timeout=target.cpi_timeout,
                               debug=lambda line: LOG.debug("%s: cpi %s", target.name, line))
            say(f"create_stemcell ({human_size(image.stat().st_size)} stemcell image)")
            result.stemcell_cid = client.create_stemcell(image, stemcell_properties,
                                                         {"stemforge-test": target.name})
            say(f"stemcell {result.stemcell_cid} created")
            self._check_stop()
            networks, forwards = self._networks(target)
            agent_id = f"cpi-test-{target.name}-{uuid.uuid4().hex[:8]}"
            say(f"create_vm {_plan_text(target.cloud_properties)}")
            result.vm_cid, _nets = client.create_vm(agent_id, result.stemcell_cid, target.cloud_properties,
                                                    networks, [], target.env)
            say(f"VM {result.vm_cid} started")
            console = target.console_dir / f"{result.vm_cid}.log"
            passed: list[str] = []
            for check in target.checks:
                seconds = self._wait_check(check, console, say)
                passed.append(f"{check.describe()} after {seconds:.1f}s")
            for smoke, port in zip(target.smoke, forwards, strict=True):
                passed.append(self._run_smoke(target, smoke, port, say))
            result.passed = True
            result.detail = "; ".join(passed)
        except _Stopped:
            result.detail = "cancelled"
        except TargetFailed as exc:
            result.detail = str(exc)
        except CpiCallError as exc:
            result.detail = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the target fails and cleans up
            result.detail = f"{type(exc).__name__}: {exc}"
        finally:
            self._cleanup(target, client, result, say)
            result.seconds = time.monotonic() - started
        say(("PASSED: " if result.passed else "FAILED: ") + result.detail)
        return result

    def _networks(self, target: Target) -> tuple[dict[str, Any], list[int]]:
        """The target's networks with a free loopback port forwarded to each smoke's guest port."""
        from builders.communicators.ssh import free_loopback_port

        networks = {name: dict(net) for name, net in target.networks.items()}
        ports: list[int] = []
        for smoke in target.smoke:
            port = free_loopback_port()
            net = networks[smoke.network]
            props = dict(net.get("cloud_properties") or {"type": "user"})
            props["port_forwards"] = [*props.get("port_forwards", []),
                                      {"host_port": port, "guest_port": smoke.guest_port,
                                       "host_address": "127.0.0.1"}]
            net["cloud_properties"] = props
            ports.append(port)
        return networks, ports

    def _wait_check(self, check: Check, console: Path, say: Callable[[str], None]) -> float:
        from stemcells.testimage.agent_events import read_events

        started = time.monotonic()
        deadline = started + check.timeout
        next_report = started + WAIT_REPORT_INTERVAL
        say(f"waiting for {check.describe()} (up to {check.timeout:g}s)")
        while True:
            self._check_stop()
            if check.kind == "console":
                assert check.pattern is not None
                if check.pattern.search(_read_text(console)):
                    break
            else:
                events = read_events(console)
                if any(e.get("event") == check.agent_event for e in events):
                    break
            now = time.monotonic()
            if now >= deadline:
                if check.kind == "console":
                    raise TargetFailed(f"no {check.describe()} within {check.timeout:g}s")
                events = read_events(console)
                last = ", ".join(str(e.get("event")) for e in events[-5:]) or "none"
                raise TargetFailed(f"{check.describe()} not seen within {check.timeout:g}s (last agent events: "
                                   f"{last})")
            if now >= next_report:
                say(f"still waiting for {check.describe()} ({now - started:.0f}s of {check.timeout:g}s)")
                next_report = now + WAIT_REPORT_INTERVAL
            self._sleep(min(POLL_INTERVAL, max(0.0, deadline - now)))
        seconds = time.monotonic() - started
        say(f"{check.describe()}: ok after {seconds:.1f}s")
        return seconds

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopped():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.ctx.cancel.wait(min(0.1, left))
        raise _Stopped()

    def _run_smoke(self, target: Target, smoke: Smoke, port: int, say: Callable[[str], None]) -> str:
        from builders.communicators.ssh import SSHCommunicator, SSHConfig

        stop = _EitherEvent(self.ctx.cancel, self._abort)
        config = SSHConfig(host="127.0.0.1", port=port, username=smoke.username,
                           private_key=smoke.private_key_file.read_text(), timeout=smoke.connect_timeout)
        ssh = SSHCommunicator(config, _PrefixedUi(self.ctx, f"{target.name} ssh: "), stop)
        say(f"connecting over SSH as {smoke.username} to 127.0.0.1:{port} -> guest port {smoke.guest_port}")
        try:
            try:
                ssh.connect()
            except BuildError as exc:
                raise TargetFailed(f"smoke: {exc}") from None
            for command in smoke.commands:
                say(f"smoke: {command}")
                try:
                    outcome = ssh.run(command, timeout=smoke.timeout, capture=True)
                except BuildError as exc:
                    raise TargetFailed(f"smoke command {command!r}: {exc}") from None
                if outcome.exit_status != 0:
                    tail = _tail(outcome.stderr or outcome.stdout, 3)
                    raise TargetFailed(f"smoke command {command!r} exited {outcome.exit_status}"
                                       + (f": {tail}" if tail else ""))
        except Cancelled:
            raise _Stopped() from None
        finally:
            ssh.close()
        return f"{len(smoke.commands)} smoke command(s) as {smoke.username} passed"

    def _cleanup(self, target: Target, client: CpiClient | None, result: TargetResult,
                 say: Callable[[str], None]) -> None:
        """delete_vm and delete_stemcell, whatever happened (retried; a failure is a leak the result names)."""
        if client is None:
            return
        if result.vm_cid:
            console = target.console_dir / f"{result.vm_cid}.log"
            self._keep_console(target, console)
            if not result.passed:
                tail = _tail(_read_text(console), 5)
                if tail:
                    say(f"console tail: {tail}")
            say(f"delete_vm {result.vm_cid}")
            try:
                client.delete_vm(result.vm_cid)
            except CpiCallError as exc:
                result.passed = False
                result.leaked.append(f"VM {result.vm_cid} ({target.name}): {exc}")
                result.detail += f"; could not delete VM {result.vm_cid}: {exc}"
        if result.stemcell_cid:
            say(f"delete_stemcell {result.stemcell_cid}")
            try:
                client.delete_stemcell(result.stemcell_cid)
            except CpiCallError as exc:
                result.passed = False
                result.leaked.append(f"stemcell {result.stemcell_cid} ({target.name}): {exc}")
                result.detail += f"; could not delete stemcell {result.stemcell_cid}: {exc}"

    def _keep_console(self, target: Target, console: Path) -> None:
        directory = self.options.get("console_log_directory")
        if not directory:
            return
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(console, Path(directory) / f"{target.name}.log")
        except OSError as exc:
            self.ctx.ui.error(f"{target.name}: could not keep the console log: {exc}")

    def _table(self, results: list[TargetResult]) -> None:
        rows = [("TARGET", "RESULT", "TIME", "DETAIL")]
        rows += [(r.name, "passed" if r.passed else "FAILED", f"{r.seconds:.1f}s", r.detail) for r in results]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            self.ctx.ui.message("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])


# -- helpers ------------------------------------------------------------------------------------------------------


class _EitherEvent(threading.Event):
    """Set when either of two events is set (what the SSH communicator polls as its cancel event)."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def is_set(self) -> bool:
        return self.first.is_set() or self.second.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                break
            self.first.wait(left)
        return self.is_set()


class _PrefixedUi:
    """The build UI with every detail line prefixed (smoke command output per target)."""

    def __init__(self, ctx: BuildContext, prefix: str) -> None:
        self.ui = ctx.ui
        self.prefix = prefix

    def say(self, message: str) -> None:
        self.ui.say(self.prefix + message)

    def message(self, message: str) -> None:
        self.ui.message(self.prefix + message)

    def error(self, message: str) -> None:
        self.ui.error(self.prefix + message)

    def progress(self, label: str, done: int, total: int | None) -> None:
        self.ui.progress(self.prefix + label, done, total)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int) -> str:
    cleaned = [_CONTROL.sub("", line).strip() for line in text.splitlines()]
    return " | ".join([line for line in cleaned if line][-lines:])[-400:]


def _plan_text(cloud_properties: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(cloud_properties.items())) or "(default plan)"


PLUGIN = CpiTestPostProcessor
