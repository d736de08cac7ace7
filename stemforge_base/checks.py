"""The check framework ``stemforge doctor`` runs: findings (:class:`Check`), what to check (:class:`Options`), the
probes checks share (:class:`Context`) and the bounded helpers every package's ``checks()`` module uses.

Each package that needs something of the machine exposes ``checks()`` in its ``checks`` module (``cpi.checks``,
``builders.checks``, ``stemcells.checks``, ``terraform.checks``): a tuple of check functions ``(Context) ->
list[Check]``. ``stemforge.doctor`` gathers them, runs them concurrently and prints. Contracts shared by all checks:

* A check never changes the machine (the fixes it prints are for the user to run) and never sends network traffic
  other than to local sockets: libvirt is reached over its unix socket, Terraform runs with
  ``CHECKPOINT_DISABLE=1`` and only ``terraform version``.
* Every external command runs with a timeout (:attr:`Options.timeout`, the KVM boot probe
  :attr:`Options.probe_timeout`); a command that does not finish in time is killed and the check fails with
  that as its detail. Python imports are tried in a subprocess of :attr:`Options.python` (:func:`probe_imports`) so
  doctor's own process stays light and a broken module cannot take it down.
* Binaries are looked up in ``Options.path`` when given (exactly that search path, so tests can hide a binary),
  otherwise in ``$PATH`` plus the sbin directories, where Debian puts ``dnsmasq``, ``mke2fs`` and ``debootstrap``.

A failing check whose ``required_for`` is :data:`LIBVIRT_CPI` and that is not ``optional`` makes ``doctor`` exit
1; gaps for bare metal, image builds and AWS/Terraform are listed as warnings.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``Check.required_for`` values, in report order, with the heading each group gets.
LIBVIRT_CPI = "libvirt CPI"
BARE_METAL = "bare metal"
IMAGES = "image builds"
AWS_TERRAFORM = "AWS/Terraform"
AREA_TITLES: dict[str, str] = {
    LIBVIRT_CPI: "CPI/libvirt",
    BARE_METAL: "bare metal",
    IMAGES: "images",
    AWS_TERRAFORM: "AWS/Terraform",
}

#: Directories searched after ``$PATH`` when no explicit search path is given.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: The libvirt CPI's defaults (``cpi.providers.libvirt.config``), used when doctor is given no CPI config.
DEFAULT_POOL_PATH = Path("/var/lib/stemforge/pool")
DEFAULT_URI = "qemu:///system"


@dataclass(frozen=True)
class Check:
    """One finding. ``fix`` is the exact command (or edit) that closes the gap; None when ``ok`` or when no
    command can (the detail then says why). ``required_for`` is one of the :data:`AREA_TITLES` keys.
    ``optional`` marks a gap its area works without (KVM: guests run under TCG, slower)."""

    name: str
    ok: bool
    detail: str
    fix: str | None
    required_for: str
    optional: bool = False

    @property
    def blocking(self) -> bool:
        """True when this failure means the libvirt CPI cannot work here (doctor then exits 1)."""
        return not self.ok and not self.optional and self.required_for == LIBVIRT_CPI


@dataclass(frozen=True)
class Options:
    """What to check and how long to wait. ``path`` None: ``$PATH`` plus :data:`SBIN_DIRS`."""

    uri: str = DEFAULT_URI
    pool_path: Path = DEFAULT_POOL_PATH
    probe_kernel: str | None = None
    probe_timeout: float = 15.0
    quick: bool = False
    timeout: float = 10.0
    min_free_gib: float = 5.0
    python: str = sys.executable
    path: str | None = None
    home: Path = field(default_factory=Path.home)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = field(default_factory=Path.cwd)


#: A check: the findings about one component (several when they share one probe).
CheckFn = Callable[["Context"], "list[Check]"]


# -- helpers --------------------------------------------------------------------------------------------------


def sudo() -> str:
    """``"sudo "`` unless we are root: the prefix for fixes that need root."""
    return "" if os.geteuid() == 0 else "sudo "


def apt_fix(*packages: str) -> str:
    """The exact command that installs Debian ``packages``."""
    return f"{sudo()}apt-get install -y --no-install-recommends {' '.join(packages)}"


def search_path(path: str | None) -> str:
    """The search path binaries are looked up in: ``path`` itself when given, else ``$PATH`` plus sbin dirs."""
    if path is not None:
        return path
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return os.pathsep.join(dirs + [d for d in SBIN_DIRS if d not in dirs])


def find_binary(name: str, path: str | None = None) -> str | None:
    """Absolute path of executable ``name`` in :func:`search_path` ``(path)``, or None."""
    return shutil.which(name, path=search_path(path))


def run(cmd: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` (stdin closed) for at most ``timeout`` s. Returns (exit status, stdout+stderr as text);
    the status is None when the command could not start or was killed at the timeout (the text says which)."""
    try:
        proc = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              env=dict(env) if env is not None else None, check=False)
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]} did not finish within {timeout:g}s"
    except OSError as exc:
        return None, f"cannot run {cmd[0]}: {exc.strerror or exc}"
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def first_line(text: str, limit: int = 100) -> str:
    """The first non-blank line of ``text``, stripped and cut at ``limit`` characters."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def running(names: Iterable[str]) -> dict[str, list[int]]:
    """PIDs of processes whose command name (``/proc/PID/comm``) is one of ``names``."""
    wanted = set(names)
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        if comm in wanted:
            found.setdefault(comm, []).append(int(entry.name))
    return found


def has_systemd() -> bool:
    """True when systemd is the init system (the test ``sd_booted()`` uses)."""
    return os.path.isdir("/run/systemd/system")




class Once:
    """A value computed on first use, at most once, shared by the checks running in parallel threads."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None

    def get(self) -> Any:
        with self._lock:
            if not self._done:
                self._value = self._compute()
                self._done = True
            return self._value



_IMPORT_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
out = {}
for spec in sys.argv[1:]:
    module, _, dist = spec.partition("=")
    try:
        importlib.import_module(module)
    except BaseException as exc:
        out[module] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        continue
    try:
        version = md.version(dist) if dist else ""
    except md.PackageNotFoundError:
        version = ""
    out[module] = {"ok": True, "version": version}
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""


def probe_imports(python: str, modules: Iterable[tuple[str, str]], timeout: float) -> dict[str, dict[str, Any]]:
    """Import each ``(module, distribution)`` in a fresh ``python`` process. Returns module ->
    ``{"ok": bool, "version": str}`` or ``{"ok": False, "error": str}``; every module gets an entry."""
    pairs = list(modules)
    status, out = run([python, "-c", _IMPORT_PROBE, *(f"{m}={d}" for m, d in pairs)], timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if status == 0 and lines:
        with contextlib.suppress(ValueError):
            result: dict[str, dict[str, Any]] = json.loads(lines[-1])
            return result
    why = first_line(out, 300) or f"{python} exited {status}"
    return {m: {"ok": False, "error": why} for m, _ in pairs}



class Context:
    """Options plus the probes several checks share: each computed once, on first use, by whichever check (thread)
    asks first; the others wait for that result."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._probes: dict[Any, Once] = {}

    def shared(self, key: Any, compute: Callable[[], Any]) -> Any:
        """The value of the probe named ``key``: ``compute()`` on the first call for ``key``, that value after."""
        with self._lock:
            once = self._probes.setdefault(key, Once(compute))
        return once.get()

    def imports(self, modules: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """:func:`probe_imports` of ``modules`` (``(module, distribution)`` pairs) in ``options.python``, once per
        distinct list, bounded by ``options.timeout`` (at least 30 s: a cold import of boto3 or moto is slow)."""
        pairs = tuple(modules)
        return self.shared(("imports", pairs), lambda: probe_imports(
            self.options.python, pairs, max(self.options.timeout, 30.0)))


def pip_fix(python: str, requirement: str) -> str:
    """The command that installs ``requirement`` into the environment of ``python``."""
    return f"{python} -m pip install '{requirement}'"


def user_name() -> str:
    """The effective user's login name (its uid when it has none)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# -- generic checks ---------------------------------------------------------------------------------------------


def check_binary(name: str, *, package: str, required_for: str, binary: str | None = None,
                 version_args: Sequence[str] | None = ("--version",), path: str | None = None,
                 timeout: float = 10.0, optional: bool = False) -> Check:
    """Is ``binary`` (default ``name``) on :func:`search_path` ``(path)``? Detail: where, and the first line of
    ``binary version_args`` (None: skip). The fix installs Debian ``package``."""
    exe = find_binary(binary or name, path)
    if exe is None:
        return Check(name, False, f"{binary or name} not found in {search_path(path) or '(empty PATH)'}",
                     apt_fix(package), required_for, optional)
    detail = exe
    if version_args is not None:
        status, out = run([exe, *version_args], timeout)
        line = first_line(out)
        if status is None:
            detail = f"{exe} ({line})"
        elif line:
            detail = f"{line} at {exe}"
    return Check(name, True, detail, None, required_for, optional)


def check_file(name: str, paths: Sequence[str], *, package: str, required_for: str) -> Check:
    """Does one of ``paths`` exist as a file? The fix installs Debian ``package``."""
    for p in paths:
        if os.path.isfile(p):
            return Check(name, True, p, None, required_for)
    return Check(name, False, f"missing: {', '.join(paths)}", apt_fix(package), required_for)
