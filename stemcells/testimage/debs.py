"""Debian packages for offline image builds: resolution, the download cache, named build steps, one build at a time.

The test stemcell image (:mod:`stemcells.testimage.build`) and the bare-metal deploy ramdisk
(``cpi.providers.baremetal.ramdisk.build``) are both assembled from Debian packages of the host's apt sources,
without root rights. This module is what they share:

* :class:`BuildSteps` and :func:`run`: named steps with progress lines; every failure becomes an
  :class:`ImageBuildError` naming its step.
* :func:`cache_root`: the test image's cache (``<cache>/testimage/{debs,images,tmp}``); its ``debs/`` holds every
  downloaded package, shared by both builds.
* :func:`resolve_image_packages`: the test image's kernel and userland packages (apt's candidates, remembered while
  apt's lists are unchanged; the newest cached debs when apt cannot answer), with :func:`apt_candidates`,
  :func:`apt_fingerprint`, :func:`cached_debs` and :func:`host_arch` for other package sets.
* :func:`fetch_deb`: ``apt-get download`` into the cache, once per exact version.
* :func:`build_once`: publish a build into a cache directory once, safely under concurrent callers (a file lock,
  a private temporary directory, one atomic ``rename``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "BuildSteps",
    "ImageBuildError",
    "ImageInputs",
    "Package",
    "Progress",
    "apt_candidates",
    "apt_fingerprint",
    "build_lock",
    "build_once",
    "cache_root",
    "cached_debs",
    "deb_field",
    "fetch_deb",
    "host_arch",
    "resolve_image_packages",
    "run",
]

#: Bump when the test image's output changes in a way the other inputs do not capture (part of its cache key and
#: of the resolution memo).
BUILD_FORMAT_VERSION = "1"
#: Debian meta package whose dependency names the kernel image package.
KERNEL_META_PACKAGE = "linux-image-amd64"
#: Other Debian packages that go into the test image.
OTHER_PACKAGES = ("busybox-static", "syslinux", "syslinux-common")

#: Receives one human-readable line per build step.
Progress = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """A build step failed.  ``step`` names it; the message says what went wrong (and which build: ``BUILD``)."""

    BUILD = "test image build"

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{self.BUILD} step {step!r} failed: {message}")
        self.step = step


class Package(NamedTuple):
    """One Debian package of an image: name, exact version, architecture (as in ``name_version_arch.deb``)."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class ImageInputs:
    """The test image's packages, resolved before building (cheap to compute): the kernel image package, the
    others (:data:`OTHER_PACKAGES`) and the kernel's release (``uname -r``)."""

    kernel: Package
    others: tuple[Package, ...]
    kernel_release: str

    @property
    def packages(self) -> tuple[Package, ...]:
        return (self.kernel, *self.others)


class BuildSteps:
    """Progress reporting and error wrapping for named build steps."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._t0 = time.monotonic()

    def say(self, message: str) -> None:
        """One progress line, prefixed with the seconds since the build started."""
        if self._progress is not None:
            self._progress(f"[{time.monotonic() - self._t0:7.1f}s] {message}")

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        """Run the block as step ``name``: progress lines at start and end; any exception other than an
        :class:`ImageBuildError` is raised as one naming ``name``."""
        t = time.monotonic()
        self.say(f"{name}: {detail or 'start'}")
        try:
            yield
        except ImageBuildError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its step
            raise ImageBuildError(name, f"{type(exc).__name__}: {exc}") from exc
        self.say(f"{name}: done in {time.monotonic() - t:.1f}s")


def run(
    step: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> str:
    """Run ``cmd`` (``env`` added to the environment; 600 s at most); return its stdout; raise
    :class:`ImageBuildError` (``step``) with the end of its stderr on failure."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        res = subprocess.run(cmd, cwd=cwd, env=full_env, input=stdin, capture_output=True, timeout=600, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(step, f"command not found: {cmd[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(step, f"timed out: {' '.join(cmd)}") from exc
    if res.returncode != 0:
        err = (res.stderr or res.stdout).decode(errors="replace").strip()[-2000:]
        raise ImageBuildError(step, f"{' '.join(cmd)} exited {res.returncode}: {err}")
    return res.stdout.decode(errors="replace")


def cache_root(cache_dir: Path | None) -> Path:
    """The test image cache ``<cache_dir>/testimage`` (``cache_dir`` defaults to ``$STEMFORGE_CACHE`` or
    ``~/.cache/stemforge``) with its ``debs/``, ``images/`` and ``tmp/`` created."""
    if cache_dir is None:
        env = os.environ.get("STEMFORGE_CACHE")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "stemforge"
    root = Path(cache_dir).expanduser().resolve() / "testimage"
    for sub in ("debs", "images", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing) for the block."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(
    tmp_dir: Path, final: Path, ready: Callable[[], bool], build: Callable[[Path], Path], steps: BuildSteps,
    *, prefix: str, shown: Path,
) -> None:
    """Publish ``build(work)``'s output directory as ``final`` unless ``ready()`` already holds.

    One build at a time under the lock ``tmp_dir/../.lock``: leftovers of killed builds in ``tmp_dir`` are removed
    first, the build runs in a private ``tmp_dir/<prefix>*`` directory (removed afterwards, whatever happens), an
    incomplete ``final`` is moved aside and the result is published with one atomic ``rename``. ``shown`` is the path
    the progress lines name."""
    if ready():
        steps.say(f"cached: {shown}")
        return
    with build_lock(tmp_dir.parent / ".lock"):
        if ready():
            steps.say(f"cached (built concurrently): {shown}")
            return
        for stale in tmp_dir.iterdir():
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
        try:
            if final.exists():  # incomplete or damaged: move it out of the way, then rebuild
                os.replace(final, work / "damaged")
            built = build(work)
            with steps.step("publish", str(final)):
                os.replace(built, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    steps.say(f"built: {shown}")


# ---------------------------------------------------------------- package resolution


def _deb_file_version(path: Path) -> tuple[str, str, str] | None:
    """(name, version, arch) from an apt-style ``name_version_arch.deb`` file name."""
    m = re.fullmatch(r"([^_]+)_([^_]+)_([^_]+)\.deb", path.name)
    if not m:
        return None
    return m.group(1), urllib.parse.unquote(m.group(2)), m.group(3)


def cached_debs(root: Path) -> dict[str, Package]:
    """The newest (by file mtime) downloaded deb of each package in ``root/debs``: the offline fallback when apt
    cannot answer."""
    debs = sorted((root / "debs").glob("*.deb"), key=lambda p: p.stat().st_mtime, reverse=True)
    by_name: dict[str, Package] = {}
    for p in debs:
        parsed = _deb_file_version(p)
        if parsed and parsed[0] not in by_name:
            by_name[parsed[0]] = Package(*parsed)
    return by_name


def apt_candidates(names: list[str]) -> dict[str, str]:
    """apt's candidate version of each of ``names`` (``apt-cache policy``); a name without one is left out."""
    out = run("resolve-packages", ["apt-cache", "policy", *names])
    found: dict[str, str] = {}
    current: str | None = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            cand = line.split(":", 1)[1].strip()
            if cand and cand != "(none)":
                found[current] = cand
    return found


def host_arch() -> str:
    """The host's Debian architecture (``dpkg --print-architecture``; ``amd64`` when it prints nothing)."""
    return run("resolve-packages", ["dpkg", "--print-architecture"]).strip() or "amd64"


def _resolve_from_apt() -> ImageInputs:
    deps = run("resolve-packages", ["apt-cache", "depends", KERNEL_META_PACKAGE])
    kernel_name = None
    for line in deps.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m and m.group(1) != KERNEL_META_PACKAGE:
            kernel_name = m.group(1)
            break
    if kernel_name is None:
        raise ImageBuildError("resolve-packages", f"no kernel image dependency of {KERNEL_META_PACKAGE}")
    names = [kernel_name, *OTHER_PACKAGES]
    cands = apt_candidates(names)
    missing = [n for n in names if n not in cands]
    if missing:
        raise ImageBuildError("resolve-packages", f"no apt candidate for {', '.join(missing)} (run apt-get update)")
    arch = host_arch()
    pk = [Package(n, cands[n], "all" if n == "syslinux-common" else arch) for n in names]
    return ImageInputs(kernel=pk[0], others=tuple(pk[1:]), kernel_release=kernel_name[len("linux-image-") :])


def _resolve_from_cache(root: Path) -> ImageInputs:
    """Offline fallback: the newest downloaded deb of each package (by file mtime)."""
    by_name = cached_debs(root)
    kernels = [pk for n, pk in by_name.items() if re.fullmatch(r"linux-image-\d.*", n) and "unsigned" not in n]
    if not kernels or any(n not in by_name for n in OTHER_PACKAGES):
        raise ImageBuildError(
            "resolve-packages", "apt-cache is unavailable and the cache holds no complete set of debs"
        )
    kernel = kernels[0]
    return ImageInputs(
        kernel=kernel,
        others=tuple(by_name[n] for n in OTHER_PACKAGES),
        kernel_release=kernel.name[len("linux-image-") :],
    )


def apt_fingerprint() -> str:
    """Cheap fingerprint of apt's view (package lists, sources, preferences), or "" when there is none: a memo of
    apt's answers stays valid while it is unchanged."""
    h = hashlib.sha256()
    seen = False
    for top in ("/var/lib/apt/lists", "/etc/apt"):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for n in sorted(filenames):
                p = os.path.join(dirpath, n)
                with contextlib.suppress(OSError):
                    st = os.stat(p)
                    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                    seen = True
    return h.hexdigest() if seen else ""


def _inputs_to_json(inputs: ImageInputs) -> dict[str, object]:
    return {
        "kernel": [inputs.kernel.name, inputs.kernel.version, inputs.kernel.arch],
        "others": [[p.name, p.version, p.arch] for p in inputs.others],
        "kernel_release": inputs.kernel_release,
    }


def _inputs_from_json(doc: dict[str, object]) -> ImageInputs:
    k = doc["kernel"]
    o = doc["others"]
    assert isinstance(k, list) and isinstance(o, list)
    return ImageInputs(
        kernel=Package(*k), others=tuple(Package(*x) for x in o), kernel_release=str(doc["kernel_release"])
    )


def resolve_image_packages(root: Path) -> ImageInputs:
    """Resolve the test image's package set: apt's candidates (remembered in ``root/resolved.json`` while apt's
    lists are unchanged, since apt-cache takes seconds), else the debs already in the cache (offline)."""
    fp = apt_fingerprint()
    memo_file = root / "resolved.json"
    if fp:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AssertionError):
            doc = json.loads(memo_file.read_text())
            if doc.get("fingerprint") == fp and doc.get("format") == BUILD_FORMAT_VERSION:
                return _inputs_from_json(doc["inputs"])
    try:
        inputs = _resolve_from_apt()
    except ImageBuildError as exc:
        try:
            return _resolve_from_cache(root)
        except ImageBuildError:
            raise exc from None
    if fp:
        tmp = memo_file.with_name(f".resolved.{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"fingerprint": fp, "format": BUILD_FORMAT_VERSION, "inputs": _inputs_to_json(inputs)})
        )
        os.replace(tmp, memo_file)
    return inputs


# ---------------------------------------------------------------- downloads


def fetch_deb(root: Path, pkg: Package, steps: BuildSteps) -> Path:
    """The path of ``pkg``'s deb in ``root/debs``, downloaded there first (``apt-get download``) when missing."""
    debs = root / "debs"
    for p in debs.glob(f"{pkg.name}_*.deb"):
        if _deb_file_version(p) == pkg:
            return p
    with steps.step("fetch", f"apt-get download {pkg.name}={pkg.version}"):
        tmp = Path(tempfile.mkdtemp(prefix="dl-", dir=root / "tmp"))
        try:
            run("fetch", ["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"], cwd=tmp)
            got = list(tmp.glob("*.deb"))
            if len(got) != 1:
                raise ImageBuildError("fetch", f"apt-get download {pkg.name} produced {len(got)} files")
            dest = debs / got[0].name
            os.replace(got[0], dest)
            return dest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def deb_field(deb: Path, field: str) -> str:
    """One control field of a deb (``dpkg-deb -f``)."""
    return run("packages", ["dpkg-deb", "-f", str(deb), field]).strip()
