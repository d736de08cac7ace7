"""Work across AWS regions in parallel, all or nothing.

* :func:`run_in_regions` runs ``work(region, abort)`` for every region in a bounded thread pool. The first
  failure, or the build's cancellation, sets ``abort`` (workers poll it and stop waiting); every started task is
  always waited for (an HTTP call in flight finishes or times out; nothing is left running behind the caller),
  then :class:`RegionsFailed` (every region's error) or ``Cancelled`` is raised.
* :class:`AmiCopies` copies one AMI to many regions with that pool and records, as it goes and under a lock, every
  copy made (``amis``/``snapshots``, shared with the build's state) and every region where a CopyImage request was
  sent (``attempted``), so that :meth:`AmiCopies.remove_all` can remove everything -- AMIs *and* their snapshots
  -- including a copy whose CopyImage answer never arrived (found by its name). Packer leaves such copies behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Ec2Error, image_snapshots
from builders.core import BuildError, Ui
from stemforge_base.steps import Cancelled

T = TypeVar("T")


class RegionsFailed(BuildError):
    """Work failed in one or more regions; ``errors`` maps region -> message (the first failure first)."""

    def __init__(self, what: str, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        lines = [f"{what} failed in {len(self.errors)} region(s):"] + [f"  {r}: {e}" for r, e in self.errors.items()]
        super().__init__("\n".join(lines))


class _Aborted(Exception):
    """Internal: a worker stopped because another region failed or the build was cancelled."""


def run_in_regions(
    access: AwsAccess, regions: Sequence[str], work: Callable[[str, threading.Event], T], *, parallel: int, what: str
) -> dict[str, T]:
    """``{region: work(region, abort)}`` for every region, at most ``parallel`` at once (0 = all)."""
    if not regions:
        return {}
    abort = threading.Event()
    errors: dict[str, str] = {}
    results: dict[str, T] = {}
    lock = threading.Lock()

    def task(region: str) -> None:
        if abort.is_set() or access.cancel.is_set():
            raise _Aborted()
        try:
            value = work(region, abort)
        except (_Aborted, Cancelled):
            raise
        except Exception as exc:
            with lock:
                errors.setdefault(region, str(exc) or type(exc).__name__)
            abort.set()
            raise
        with lock:
            results[region] = value

    workers = max(1, min(parallel if parallel > 0 else len(regions), len(regions)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="region") as pool:
        futures: list[Future[None]] = [pool.submit(task, r) for r in regions]
        pending = set(futures)
        try:
            while pending:
                if access.cancel.is_set():
                    abort.set()
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                if any(f.exception() is not None for f in done):
                    abort.set()
        except BaseException:
            abort.set()
            wait(futures)
            raise
    if errors:
        raise RegionsFailed(what, errors)
    if access.cancel.is_set():
        raise Cancelled(f"cancelled during {what}")
    return results


@dataclass
class CopyTarget:
    """One region to copy to, with Packer's encryption settings (``encrypted`` None = keep the source's)."""

    region: str
    encrypted: bool | None = None
    kms_key_id: str = ""


@dataclass
class AmiCopies:
    """Copies of ``source_image`` (in ``source_region``) named ``name``; ``amis``/``snapshots`` are updated as
    copies complete (pass the build's state dicts to share them)."""

    access: AwsAccess
    ui: Ui
    source_image: str
    source_region: str
    name: str
    description: str = ""
    amis: MutableMapping[str, str] = field(default_factory=dict)
    snapshots: MutableMapping[str, list[str]] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    parallel: int = 16
    lock: threading.Lock = field(default_factory=threading.Lock)

    def copy(self, targets: Sequence[CopyTarget]) -> dict[str, str]:
        """Copy to every target region in parallel and wait until each copy is available. Regions that already
        have a copy (a retried step) are skipped. Raises RegionsFailed / Cancelled; what was made stays recorded
        for :meth:`remove_all`."""
        todo = [t for t in targets if t.region not in self.amis or t.region == self.source_region]
        by_region = {t.region: t for t in todo}
        started = time.monotonic()
        for target in todo:
            self.ui.message(f"Copying to: {target.region}")
        self.ui.say("Waiting for all copies to complete...")

        finished: list[str] = []

        def one(region: str, abort: threading.Event) -> str:
            target = by_region[region]
            params: dict[str, Any] = {
                "SourceImageId": self.source_image,
                "SourceRegion": self.source_region,
                "Name": self.name,
            }
            if self.description:
                params["Description"] = self.description
            if target.encrypted is not None:
                params["Encrypted"] = target.encrypted
                if target.encrypted and target.kms_key_id:
                    params["KmsKeyId"] = target.kms_key_id
            t0 = time.monotonic()
            with self.lock:
                self.attempted.add(region)
            try:
                answer = self.access.call("copy_image", region, **params)
            except Ec2Error as exc:
                raise Ec2Error(
                    f"Error Copying AMI ({self.source_image}) to region ({region}): {exc}", exc.code
                ) from None
            image_id = str(answer["ImageId"])
            with self.lock:
                self.amis[region] = image_id
                self.snapshots.setdefault(region, [])
            image = self.access.wait_image_available(image_id, region, cancel=_Either(abort, self.access.cancel))
            with self.lock:
                self.snapshots[region] = image_snapshots(image)
                finished.append(region)
                count = len(finished)
            self.ui.message(f"{region}: {image_id} available after {time.monotonic() - t0:.1f}s")
            self.ui.progress("AMI copies", count, len(todo))
            return image_id

        results = run_in_regions(
            self.access, [t.region for t in todo], one, parallel=self.parallel, what=f"copying AMI {self.source_image}"
        )
        self.ui.say(f"Copied {self.source_image} to {len(results)} region(s) in {time.monotonic() - started:.1f}s")
        return results

    def remove_all(self, *, keep: Sequence[str] = ()) -> list[str]:
        """Deregister every copy recorded (except regions in ``keep``) and delete its snapshots, in parallel;
        regions where a CopyImage was sent but no id came back are searched by name. Returns one line per
        region (what was removed, or why it could not be). Never raises for a single region's failure."""
        with self.lock:
            known = {r: i for r, i in self.amis.items() if r not in keep}
            unknown = sorted(r for r in self.attempted if r not in self.amis and r not in keep)
        regions = sorted({*known, *unknown})
        if not regions:
            return []
        self.ui.say(f"Deregistering the AMI copies and deleting their snapshots in {len(regions)} region(s)...")
        lines: dict[str, str] = {}
        lines_lock = threading.Lock()
        # the cleanup must run even though the build was cancelled: an access view that is never cancelled
        access = uncancelled(self.access)

        def one(region: str, _abort: threading.Event) -> None:
            if region in known:
                ids = [known[region]]
            else:
                ids = [str(i["ImageId"]) for i in access.find_images(self.name, region)]
            removed = []
            for image_id in ids:
                snaps = access.destroy_image(image_id, region, self.snapshots.get(region))
                removed.append(f"{image_id} (snapshots: {', '.join(snaps) or 'none'})")
            with self.lock:
                self.amis.pop(region, None)
                self.snapshots.pop(region, None)
                self.attempted.discard(region)
            with lines_lock:
                lines[region] = f"{region}: removed {', '.join(removed) or 'nothing (no copy was made)'}"

        errors: dict[str, str] = {}
        try:
            run_in_regions(access, regions, one, parallel=self.parallel, what="removing AMI copies")
        except RegionsFailed as exc:
            errors = exc.errors
        # a failure stops the pool early: the rest are tried one by one so that every region gets its chance
        for region in regions:
            if region in lines:
                continue
            try:
                one(region, access.cancel)
            except Exception as exc:  # noqa: BLE001
                lines[region] = f"{region}: FAILED to remove: {errors.get(region) or exc}"
        for region in regions:
            self.ui.message(lines.get(region, f"{region}: unknown"))
        return [lines.get(r, "") for r in regions]


class _Either(threading.Event):
    """An event that reads as set when either of two events is set (for waits that stop on abort or cancel)."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        super().__init__()
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.05 if end is None else min(0.05, end - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self.is_set()


def uncancelled(access: AwsAccess) -> AwsAccess:
    """A view of ``access`` sharing its clients and credentials but with a cancel event nobody sets: cleanups
    keep retrying and waiting after the build was cancelled."""
    view = AwsAccess.__new__(AwsAccess)
    view.__dict__.update(access.__dict__)
    view.cancel = threading.Event()
    return view
