"""``fanout``: publish ONE built image to N destinations in parallel, all or nothing, with proof of consistency.

Template usage::

    {"type": "fanout",
     "image_name": "{{.BuildName}}-{{timestamp}}.qcow2",
     "destinations": [
        {"type": "local", "name": "site-a", "path": "/srv/images"},
        {"type": "http",  "name": "site-b", "url": "http://10.0.0.5:8090/"},
        {"type": "s3",    "name": "us-east-1", "bucket": "images", "region": "us-east-1", "prefix": "stemcells/"}]}

The run, per destination in parallel (``parallel`` bounds it; 0 = all at once):

1. preflight: reachable, writable, enough space, the name is free (unless ``-force``);
2. stage: transfer to a name nobody consumes yet and verify the copy against the source's sha256 (local: re-read
   from the device; http: the repository's reported sha256 AND a streamed GET re-hash; s3: per-part MD5/SHA256 the
   service checks, then after commit the ETag, ChecksumSHA256 and a streamed GET re-hash);
3. only when EVERY destination staged and verified: commit each (atomic rename / MOVE / CompleteMultipartUpload).

Transient failures (timeouts, resets, 5xx, throttling, a checksum mismatch after a transfer) are retried with
exponential backoff and jitter (tenacity; ``max_attempts``, ``retry_initial_delay``, ``retry_max_delay``). When a
destination still fails, or the build is cancelled (the context's cancel event, or Ctrl-C in this thread), every
copy made so far is removed everywhere -- staged copies discarded, committed copies rolled back, replaced images
restored -- and the error names the failing destination and why (Packer's ``ami_regions`` leaves them behind).
Only ``-on-error=abort`` leaves copies in place, and says where.

The output artifact has no local files; its id is the sorted ``region:id`` pairs joined by commas (Packer's
multi-region id, as the ``manifest`` post-processor records it) and its state carries ``regions`` (``{name: id}``),
``sha256``, ``size``, ``image_name``, ``source_file`` and a per-destination report, on top of the input artifact's
state (carried forward, so ``cpi-test``'s ``tests`` and ``tested_sha256`` reach ``release``). ``verify_only:
true`` publishes nothing: it re-hashes the copies an earlier fan-out made (``verify_destinations``) and fails on any
difference.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from builders.core import Artifact, BuildContext, BuildError, ConfigError, PostProcessor
from builders.destinations import (
    Committed,
    CopyCheck,
    Destination,
    DestinationError,
    SourceImage,
    Staged,
    TransferCancelled,
    TransferIO,
    check_image_name,
    hash_file,
    load_destination,
)
from builders.postprocessors import Progress, human_size, render_output, validated_options
from builders.registry import closed_object
from stemforge_base.steps import Cancelled

BUILDER_ID = "stemforge.post-processor.fanout"
T = TypeVar("T")


# -- results --------------------------------------------------------------------------------------------------


@dataclass
class DestinationReport:
    """What happened at one destination."""

    name: str
    kind: str
    location: str
    status: str = "pending"  # published | failed | discarded | rolled back | left in place | cancelled | ...
    id: str = ""
    attempts: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    verified: bool = False
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "location": self.location, "status": self.status,
                "id": self.id, "attempts": self.attempts, "bytes_written": self.bytes_written,
                "seconds": round(self.seconds, 3), "verified": self.verified, "error": self.error}


@dataclass
class FanoutResult:
    """A successful fan-out: ``regions`` maps destination name to the copy's id."""

    image_name: str
    source: SourceImage
    regions: dict[str, str]
    reports: list[DestinationReport]
    seconds: float

    @property
    def artifact_id(self) -> str:
        return multi_region_id(self.regions)

    @property
    def bytes_copied(self) -> int:
        return sum(r.bytes_written for r in self.reports)


@dataclass
class ConsistencyReport:
    """The proof of consistency: every copy re-hashed. ``consistent`` only when every copy exists and all hash the
    same (and equal ``expected_sha256`` when one was given)."""

    image_name: str
    expected_sha256: str | None
    checks: list[CopyCheck] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        if not self.checks or not all(c.exists and c.sha256 for c in self.checks):
            return False
        digests = {c.sha256 for c in self.checks}
        if len(digests) != 1:
            return False
        return self.expected_sha256 is None or digests == {self.expected_sha256}

    @property
    def mismatches(self) -> list[CopyCheck]:
        """The copies that are missing, unreadable or differ (from ``expected_sha256``, or from the majority)."""
        reference = self.expected_sha256
        if reference is None:
            counts: dict[str, int] = {}
            for check in self.checks:
                if check.sha256:
                    counts[check.sha256] = counts.get(check.sha256, 0) + 1
            reference = max(counts, key=lambda k: counts[k]) if counts else None
        return [c for c in self.checks if not c.exists or not c.sha256 or c.sha256 != reference or not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"image_name": self.image_name, "expected_sha256": self.expected_sha256,
                "consistent": self.consistent, "copies": [c.to_dict() for c in self.checks]}


def multi_region_id(regions: Mapping[str, str]) -> str:
    """Packer's multi-region artifact id: ``region:id`` pairs sorted and joined by commas."""
    return ",".join(sorted(f"{name}:{ident}" for name, ident in regions.items()))


# -- the engine -----------------------------------------------------------------------------------------------


@dataclass
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter, for transient destination errors only."""

    max_attempts: int = 4
    initial_delay: float = 1.0
    max_delay: float = 30.0


class FanoutError(BuildError):
    """A fan-out failed; ``reports`` says what happened where (every copy removed unless -on-error=abort)."""

    def __init__(self, message: str, reports: Sequence[DestinationReport]) -> None:
        super().__init__(message)
        self.reports = list(reports)


class FanoutCancelled(Exception):
    """Internal: the fan-out stopped because of cancellation; converted to the caller's exception."""


def load_destinations(configs: Sequence[Mapping[str, Any]]) -> list[Destination]:
    """Destination plugins for ``configs``; ConfigError lists every problem (unknown type, bad or unknown option,
    duplicate names)."""
    problems: list[str] = []
    destinations: list[Destination] = []
    seen: set[str] = set()
    for index, config in enumerate(configs):
        try:
            destination = load_destination(config, index)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if destination.name in seen:
            problems.append(f"destinations[{index}]: name '{destination.name}' is used twice")
        seen.add(destination.name)
        problems.extend(f"destinations[{index}] ({destination.name}): {p}" for p in destination.validate())
        destinations.append(destination)
    if problems:
        raise ConfigError("\n".join(problems))
    return destinations


class Fanout:
    """One publication of ``source`` as ``image_name`` to ``destinations``; ``run`` returns a FanoutResult or
    raises FanoutError / ``stemforge_base.steps.Cancelled`` / KeyboardInterrupt after cleaning up."""

    def __init__(self, ctx: BuildContext, destinations: Sequence[Destination], source: SourceImage, image_name: str,
                 *, parallel: int = 0, retry: RetryPolicy | None = None) -> None:
        self.ctx = ctx
        self.destinations = list(destinations)
        self.source = source
        self.image_name = image_name
        self.parallel = parallel if parallel > 0 else len(self.destinations)
        self.retry = retry or RetryPolicy()
        self.abort = threading.Event()
        self.reports = {d.name: DestinationReport(d.name, d.type_name, d.describe()) for d in self.destinations}
        self.staged: dict[str, Staged] = {}
        self.committed: dict[str, Committed] = {}
        self._lock = threading.Lock()
        self._failure: tuple[str, str] | None = None  # (destination, reason) of the first failure

    # -- helpers ------------------------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self.abort.is_set() or self.ctx.cancel.is_set()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.cancelled():
                raise TransferCancelled("cancelled while waiting to retry")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(0.05, remaining))

    def _io(self, destination: Destination) -> TransferIO:
        progress = Progress(self.ctx, f"{destination.name}", self.source.size)

        def phase(label: str) -> None:
            progress.relabel(f"{destination.name} {label}")

        return TransferIO(progress=progress, cancelled=self.cancelled, phase=phase)

    def _with_retries(self, destination: Destination, what: str, action: Callable[[], T]) -> T:
        report = self.reports[destination.name]

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, DestinationError) and exc.transient and not self.cancelled()

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            self.ctx.ui.message(f"{destination.name}: {what} attempt {state.attempt_number} of "
                                f"{self.retry.max_attempts} failed: {exc}; retrying in {delay:.1f}s")

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=(wait_exponential(multiplier=self.retry.initial_delay, max=self.retry.max_delay)
                  + wait_random(0, self.retry.initial_delay)),
            retry=retry_if_exception(transient),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                report.attempts = attempt.retry_state.attempt_number
                return action()
        raise AssertionError("unreachable")  # pragma: no cover

    def _fail(self, destination: Destination, exc: BaseException) -> None:
        with self._lock:
            report = self.reports[destination.name]
            if isinstance(exc, TransferCancelled):
                report.status = "cancelled"
                report.error = "stopped: " + ("the build was cancelled" if self.ctx.cancel.is_set()
                                              else "another destination failed")
            else:
                report.status = "failed"
                report.error = str(exc)
                if self._failure is None:
                    self._failure = (destination.name, str(exc))
        self.abort.set()

    # -- phases -------------------------------------------------------------------------------------------
    def _preflight(self, destination: Destination) -> None:
        try:
            self._with_retries(destination, "preflight",
                               lambda: destination.preflight(self.source, self.image_name, self.ctx.force))
        except BaseException as exc:
            self._fail(destination, exc)
            raise

    def _stage(self, destination: Destination) -> None:
        report = self.reports[destination.name]
        started = time.monotonic()
        io = self._io(destination)
        try:
            staged = self._with_retries(destination, "upload",
                                        lambda: destination.stage(self.source, self.image_name, io))
        except BaseException as exc:
            report.seconds += time.monotonic() - started
            self._fail(destination, exc)
            raise
        with self._lock:
            self.staged[destination.name] = staged
            report.bytes_written = staged.bytes_written
            report.verified = staged.verified
            report.status = "staged"
            report.seconds += time.monotonic() - started

    def _commit(self, destination: Destination) -> None:
        report = self.reports[destination.name]
        started = time.monotonic()
        try:
            if self.cancelled():
                raise TransferCancelled("cancelled before commit")
            committed = destination.commit(self.staged[destination.name], self.ctx.force)
            with self._lock:
                self.staged.pop(destination.name, None)
                self.committed[destination.name] = committed
                report.id = committed.id
            if not report.verified:
                io = self._io(destination)
                io.phase("verify")
                check = destination.check(self.image_name, self.source.sha256, io)
                if not check.ok:
                    raise DestinationError(f"published copy {check.id} failed verification: {check.detail}")
                report.verified = True
        except BaseException as exc:
            report.seconds += time.monotonic() - started
            self._fail(destination, exc)
            raise
        report.status = "committed"
        report.seconds += time.monotonic() - started

    def _run_phase(self, pool: ThreadPoolExecutor, work: Callable[[Destination], None],
                   destinations: Sequence[Destination]) -> None:
        """Run ``work`` for every destination; stop early (setting ``abort``) on the first failure or on
        cancellation, but always wait for every started task to finish cleaning up."""
        futures: list[Future[None]] = [pool.submit(work, d) for d in destinations]
        pending = set(futures)
        try:
            while pending:
                if self.ctx.cancel.is_set():
                    self.abort.set()
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    self.abort.set()
        except BaseException:  # KeyboardInterrupt in the waiting thread
            self.abort.set()
            wait(futures)
            raise
        if self._failure is not None:
            raise DestinationError(self._failure[1])
        if self.abort.is_set() or self.ctx.cancel.is_set():
            raise FanoutCancelled()

    def run(self) -> FanoutResult:
        started = time.monotonic()
        ui = self.ctx.ui
        ui.say(f"Publishing {self.source.path.name} ({human_size(self.source.size)}, sha256 "
               f"{self.source.sha256[:16]}...) as {self.image_name} to {len(self.destinations)} destination(s)")
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(self.destinations))),
                                    thread_name_prefix="fanout") as pool:
                self._run_phase(pool, self._preflight, self.destinations)
                self._run_phase(pool, self._stage, self.destinations)
                self._run_phase(pool, self._commit, self.destinations)
            self._finalize()
        except BaseException as exc:
            self._unwind(exc)
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from (None if isinstance(exc, FanoutCancelled) else exc)
        for report in self.reports.values():
            report.status = "published"
        result = FanoutResult(self.image_name, self.source, {n: c.id for n, c in self.committed.items()},
                              list(self.reports.values()), time.monotonic() - started)
        self._table()
        ui.say(f"Published {self.image_name} to {len(result.regions)} destination(s) in {result.seconds:.1f}s; "
               f"every copy has sha256 {self.source.sha256}")
        return result

    def _finalize(self) -> None:
        for name, committed in self.committed.items():
            destination = self._destination(name)
            try:
                destination.finalize(committed)
            except (DestinationError, OSError) as exc:  # the new image is published; only a backup is left
                self.ctx.ui.error(f"{name}: could not delete the replaced image {committed.backup}: {exc}")

    def _destination(self, name: str) -> Destination:
        return next(d for d in self.destinations if d.name == name)

    # -- failure ------------------------------------------------------------------------------------------
    def _unwind(self, exc: BaseException) -> None:
        """Remove every copy (or leave them under -on-error=abort)."""
        ui = self.ctx.ui
        self.abort.set()
        if self.ctx.on_error == "abort":
            for name in sorted(self.staged):
                self.reports[name].status = "left in place"
                self.reports[name].id = f"(staged) {self.staged[name].handle}"
            for name in sorted(self.committed):
                self.reports[name].status = "left in place"
            if self.staged or self.committed:
                ui.error("Leaving the copies made so far in place (-on-error=abort): "
                         + ", ".join(sorted([*self.staged, *self.committed])))
            self._table()
            return
        if self.staged or self.committed:
            ui.say(f"Removing the {len(self.staged) + len(self.committed)} copies made so far...")
        for name, staged in sorted(self.staged.items()):
            self._undo(name, "discarded", lambda d, s=staged: d.discard(s))  # type: ignore[misc]
        for name, committed in sorted(self.committed.items()):
            self._undo(name, "rolled back", lambda d, c=committed: d.rollback(c))  # type: ignore[misc]
        self._table()

    def _undo(self, name: str, status: str, action: Callable[[Destination], None]) -> None:
        destination = self._destination(name)
        report = self.reports[name]
        last: BaseException | None = None
        for attempt in range(3):
            try:
                action(destination)
                report.status = status
                return
            except Exception as exc:  # noqa: BLE001 - every copy gets its chance
                last = exc
                time.sleep(0.2 * (attempt + 1))
        report.status = "LEAKED"
        report.error = f"could not remove the copy: {last}"
        self.ctx.ui.error(f"{name}: could not remove the copy at {destination.describe()}: {last} "
                          "-- remove it by hand")

    def _translate(self, exc: BaseException) -> BaseException:

        leaked = [r for r in self.reports.values() if r.status == "LEAKED"]
        removed = sorted(r.name for r in self.reports.values() if r.status in ("discarded", "rolled back"))
        left = sorted(r.name for r in self.reports.values() if r.status == "left in place")
        tail = ""
        if removed:
            tail += f"; removed the copies already made at {', '.join(removed)}"
        if left:
            tail += f"; left the copies at {', '.join(left)} in place (-on-error=abort)"
        if leaked:
            tail += "; COULD NOT REMOVE " + "; ".join(f"{r.name}: {r.error}" for r in leaked)
        if isinstance(exc, KeyboardInterrupt):
            return exc
        if isinstance(exc, FanoutCancelled | TransferCancelled | Cancelled) and self._failure is None:
            return Cancelled(f"{self.ctx.build_name}: fanout cancelled{tail}")
        if self._failure is not None:
            name, reason = self._failure
            where = self._destination(name).describe()
            return FanoutError(f"fanout: destination '{name}' ({where}) failed: {reason}{tail}",
                               list(self.reports.values()))
        return FanoutError(f"fanout failed: {exc}{tail}", list(self.reports.values()))

    def _table(self) -> None:
        rows = [("DESTINATION", "TYPE", "STATUS", "BYTES", "TIME", "VERIFIED", "ID / ERROR")]
        for r in self.reports.values():
            rows.append((r.name, r.kind, r.status, human_size(r.bytes_written), f"{r.seconds:.1f}s",
                         "sha256 ok" if r.verified else "-", r.id or r.error or r.location))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            self.ctx.ui.message("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1])


def verify_destinations(destinations: Sequence[Destination], image_name: str, expected_sha256: str | None = None,
                        *, parallel: int = 0, cancel: threading.Event | None = None,
                        progress: Callable[[str, int], None] | None = None) -> ConsistencyReport:
    """Re-hash the copy of ``image_name`` at every destination (in parallel) and report: the proof that a fan-out
    is consistent. ``progress(destination, bytes)`` is called as copies are read. Raises only
    ``TransferCancelled`` (when ``cancel`` is set)."""
    stop = cancel or threading.Event()

    def one(destination: Destination) -> CopyCheck:
        io = TransferIO(progress=lambda done: progress(destination.name, done) if progress else None,
                        cancelled=stop.is_set)
        return destination.check(image_name, expected_sha256, io)

    workers = max(1, min(parallel if parallel > 0 else len(destinations), len(destinations)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        checks = list(pool.map(one, destinations))
    return ConsistencyReport(image_name, expected_sha256, checks)


# -- the post-processor ---------------------------------------------------------------------------------------


class FanoutPostProcessor(PostProcessor):
    """Packer-style post-processor around ``Fanout`` / ``verify_destinations``."""

    type_name: ClassVar[str] = "fanout"
    options_schema: ClassVar[dict[str, Any]] = closed_object(
        {
            "destinations": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            "image_name": {"type": "string", "minLength": 1},
            "source": {"type": "string", "minLength": 1},
            "parallel": {"type": "integer", "minimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 50},
            "retry_initial_delay": {"type": "number", "minimum": 0},
            "retry_max_delay": {"type": "number", "minimum": 0},
            "verify_only": {"type": "boolean"},
            "report": {"type": "string", "minLength": 1},
        }, required=["destinations"])

    def prepare(self) -> list[str]:
        options = validated_options(self)
        where = f"{self.ctx.build_name}: post-processor {self.type_name}"
        try:
            self.destinations = load_destinations(options["destinations"])
        except ConfigError as exc:
            raise ConfigError("\n".join(f"{where}: {line}" for line in str(exc).splitlines())) from None
        self.options = options
        return []

    def _source_file(self, artifact: Artifact) -> Path:
        pattern = self.options.get("source")
        files = [Path(f) for f in artifact.files if Path(f).is_file()]
        if not files and artifact.state.get("source_file"):
            files = [Path(artifact.state["source_file"])]
        if pattern:
            matches = [f for f in files if fnmatch.fnmatch(f.name, pattern) or str(f) == pattern]
            if len(matches) != 1:
                raise BuildError(f"fanout: 'source' {pattern!r} matches {len(matches)} of the artifact's files "
                                 f"({', '.join(f.name for f in files) or 'none'}); it must match exactly one")
            return matches[0]
        if len(files) != 1:
            raise BuildError(f"fanout: the artifact has {len(files)} files "
                             f"({', '.join(f.name for f in files) or 'none'}); set 'source' to the one to publish")
        return files[0]

    def post_process(self, artifact: Artifact) -> tuple[Artifact, bool]:
        if not hasattr(self, "destinations"):
            self.prepare()
        options = self.options
        path = self._source_file(artifact) if not options.get("verify_only") or artifact.files else None
        image_name = self._image_name(artifact, path)
        if options.get("verify_only"):
            return self._verify_only(artifact, path, image_name), True
        assert path is not None
        progress = Progress(self.ctx, f"hashing {path.name}", path.stat().st_size)
        try:
            sha, size = hash_file(path, TransferIO(progress=progress, cancelled=self.ctx.cancel.is_set))
        except TransferCancelled:

            raise Cancelled(f"{self.ctx.build_name}: fanout cancelled") from None
        if size == 0:
            raise BuildError(f"fanout: {path} is empty; refusing to publish an empty image")
        retry = RetryPolicy(int(options.get("max_attempts", 4)), float(options.get("retry_initial_delay", 1.0)),
                            float(options.get("retry_max_delay", 30.0)))
        fanout = Fanout(self.ctx, self.destinations, SourceImage(path, size, sha), image_name,
                        parallel=int(options.get("parallel", 0)), retry=retry)
        try:
            result = fanout.run()
        finally:
            self._write_report({"image_name": image_name, "sha256": sha, "size": size,
                                "destinations": [r.to_dict() for r in fanout.reports.values()]})
        state = artifact.carried_state(
            regions=dict(sorted(result.regions.items())),
            sha256=sha,
            size=size,
            image_name=image_name,
            source_file=str(path),
            bytes_copied=result.bytes_copied,
            destinations=[r.to_dict() for r in result.reports],
        )
        out = Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, [], result.artifact_id, state)
        return out, False

    def _image_name(self, artifact: Artifact, path: Path | None) -> str:
        template = self.options.get("image_name")
        if template is None:
            if path is None:
                raise BuildError("fanout: verify_only without artifact files needs 'image_name'")
            return path.name
        data = {"SourceName": path.name if path else "", "ArtifactId": artifact.artifact_id}
        name = render_output(self.ctx, str(template), data, key="image_name")
        problem = check_image_name(name)
        if problem:
            raise ConfigError(f"{self.ctx.build_name}: post-processor fanout: 'image_name': {problem}")
        return name

    def _verify_only(self, artifact: Artifact, path: Path | None, image_name: str) -> Artifact:
        expected = artifact.state.get("sha256")
        if expected is None and path is not None:
            expected, _ = hash_file(path)
        self.ctx.ui.say(f"Verifying {image_name} at {len(self.destinations)} destination(s)")
        report = verify_destinations(self.destinations, image_name, expected, cancel=self.ctx.cancel,
                                     progress=lambda name, done: self.ctx.ui.progress(f"{name} verify", done, None))
        for check in report.checks:
            self.ctx.ui.message(f"{check.destination}: {'OK' if check.ok else 'MISMATCH'} {check.id} "
                                f"sha256={check.sha256 or '-'} ({check.detail})")
        self._write_report(report.to_dict())
        if not report.consistent:
            bad = ", ".join(f"{c.destination} ({c.detail})" for c in report.mismatches)
            raise BuildError(f"fanout: copies of {image_name} are not consistent: {bad}")
        regions = {c.destination: c.id for c in report.checks}
        state = artifact.carried_state(regions=regions, sha256=report.checks[0].sha256, image_name=image_name,
                                       consistency=report.to_dict())
        return Artifact(BUILDER_ID, artifact.build_name, artifact.builder_type, [], multi_region_id(regions), state)

    def _write_report(self, data: Mapping[str, Any]) -> None:
        target = self.options.get("report")
        if not target:
            return
        path = Path(render_output(self.ctx, str(target), {}, key="report"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


PLUGIN = FanoutPostProcessor
