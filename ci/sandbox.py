"""The sandbox a task step runs in: what a Concourse container gives a task, and nothing else (see ci/README.md).

Built with bubblewrap (``bwrap``, run as root so it can bind any artifact; the task then drops to its user):

* **Image** — Concourse would fetch the task's ``image_resource``; here every task's image is this machine's OS,
  read-only: ``/usr`` (and the ``/bin``, ``/lib*`` links), ``/etc``, ``/opt``, apt's and dpkg's state under ``/var``
  and the Python installation the runner runs on (a virtualenv names its interpreter by absolute path, e.g. under
  pyenv's root). Every entry of ``/etc`` that is not world-readable (``shadow``, ``gshadow``, ssh host keys,
  ``ssl/private``, ``sudoers``...) is left out. The rest of the host's ``/root``, ``/home``, ``/var`` and ``/srv``
  is not there at all; the task's ``/etc/passwd`` and ``/etc/group`` add its user.
* **Working directory** — at the same path as on the host, writable, owned by the task's user. Each input is an
  overlay at the input's path: the artifact is its read-only lower layer and the task's changes go to an upper layer
  removed afterwards (Concourse's copy-on-write input volumes; see :meth:`Sandbox.add_input`); each output and cache
  is a directory bound at its path (the only writes that outlive the task).
  Each input artifact is also visible read-only at its own host path, so a virtualenv inside it, which names itself
  by absolute path, still runs.
* **Private /tmp** (``/tmp``, ``/var/tmp``, ``/run`` and ``/dev/shm`` are empty tmpfs), ``TMPDIR`` and ``HOME``
  private directories removed afterwards, new IPC, UTS and cgroup namespaces and (unprivileged) a new PID namespace:
  every process the task started ends with it; no new privileges (setuid binaries do not elevate).
* **User** — :data:`TASK_UID` (no host account uses it; no capabilities) unless the step says ``privileged: true``:
  then root with the host's devices (``/dev``), ``/run`` (libvirt's socket), ``/sys``, :data:`PRIVILEGED_HOST_DIRS`
  and stemforge's build cache (:func:`build_cache`, as ``$STEMFORGE_CACHE``) writable, like a privileged Concourse
  container, which is trusted with the host.
* **Network** — a new network namespace holding only ``lo`` unless the step is ``privileged`` or carries the worker
  tag :data:`NETWORK_TAG` (``tags: [network]``: the step needs a worker with network access); those share the
  host's network, as every Concourse container does.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

#: The unprivileged task user: Debian never allocates 65000-65533 (65534 is nobody), so no host file or process
#: belongs to it.
TASK_UID = 65533
TASK_GID = 65533
TASK_USER = "task"
#: The step tag that gives an unprivileged task the host's network (Concourse routes tagged steps to workers with
#: that tag; this machine is the worker with network access).
NETWORK_TAG = "network"
#: Host directories a privileged task may write besides its own: QEMU (run by libvirtd, outside the sandbox) reads
#: the images the libvirt and bare-metal tests keep there.
PRIVILEGED_HOST_DIRS: tuple[str, ...] = ("/var/lib/stemforge",)
#: Read-only parts of the host that make up every task's image.
IMAGE_DIRS: tuple[str, ...] = ("/usr", "/etc", "/opt", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt")
#: Top-level entries that are links into /usr on a merged-/usr system (or directories on an older one).
IMAGE_LINKS: tuple[str, ...] = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxError(Exception):
    """The sandbox cannot be set up (bubblewrap missing, a path that would leave the working directory...)."""


def bad_task_path(path: str) -> bool:
    """True when a task input/output/cache/``run.dir`` path is absolute or has a ``..`` part (it would leave the
    task's working directory)."""
    pure = PurePosixPath(path)
    return pure.is_absolute() or ".." in pure.parts


@dataclass
class Sandbox:
    """One task's sandbox: its working directory, scratch (``TMPDIR``/``HOME``), writable binds and modes."""

    workdir: Path
    scratch: Path
    privileged: bool = False
    network: bool = False
    #: (host directory, path relative to the working directory): outputs and caches
    binds: list[tuple[Path, str]] = field(default_factory=list)
    #: host paths of the input artifacts (visible read-only at their own path)
    artifacts: list[Path] = field(default_factory=list)
    #: inputs as overlays: (artifact, path relative to the working directory)
    layers: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def uid(self) -> int:
        return 0 if self.privileged else TASK_UID

    @property
    def gid(self) -> int:
        return 0 if self.privileged else TASK_GID

    @property
    def tmpdir(self) -> Path:
        return self.scratch / "tmp"

    @property
    def home(self) -> Path:
        return self.scratch / "home"

    @property
    def layers_dir(self) -> Path:
        """Where the inputs' upper layers are (a tmpfs, in the task's mount namespace only; not in the sandbox)."""
        return self.workdir.with_name(self.workdir.name + ".layers")

    # -- preparation on the host (as root, before the task runs) -------------------------------------------------------

    def inside(self, relative: str) -> Path:
        """``workdir/relative``, refused (SandboxError) when it is not a plain relative path or when it resolves
        outside the working directory (through a symlink an input holds)."""
        if bad_task_path(relative):
            raise SandboxError(f"path '{relative}' must be relative and must not contain '..'")
        target = self.workdir / relative
        root = os.path.realpath(self.workdir)
        real = os.path.realpath(target)
        if real != root and not real.startswith(root + os.sep):
            raise SandboxError(f"path '{relative}' resolves outside the task's working directory ({real})")
        return target

    def prepare(self) -> None:
        """Scratch directories and the task user's passwd/group; the working directory owned by the task user."""
        for directory in (self.tmpdir, self.home, self.scratch / "etc", self.layers_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # traversable (not listable) by libvirt's QEMU user: privileged tasks keep VM disks under their TMPDIR
        self.scratch.chmod(0o711)
        self.tmpdir.chmod(0o711)
        self.home.chmod(0o700)
        for path in (self.tmpdir, self.home):
            os.chown(path, self.uid, self.gid)
        passwd = Path("/etc/passwd").read_text(encoding="utf-8", errors="replace")
        group = Path("/etc/group").read_text(encoding="utf-8", errors="replace")
        if not self.privileged:
            passwd = passwd.rstrip("\n") + f"\n{TASK_USER}:x:{TASK_UID}:{TASK_GID}:pipeline task:{self.home}:/bin/sh\n"
            group = group.rstrip("\n") + f"\n{TASK_USER}:x:{TASK_GID}:\n"
        (self.scratch / "etc" / "passwd").write_text(passwd, encoding="utf-8")
        (self.scratch / "etc" / "group").write_text(group, encoding="utf-8")
        os.chown(self.workdir, self.uid, self.gid)

    def own(self, path: Path) -> None:
        """Give ``path`` (recursively, links themselves) to the task's user."""
        if self.privileged:
            return
        proc = subprocess.run(
            ["chown", "-R", "-h", f"{TASK_UID}:{TASK_GID}", str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SandboxError(f"cannot give {path} to the task user: {proc.stderr.strip()}")

    def add_input(self, artifact: Path, relative: str) -> None:
        """Make ``artifact`` the input at ``relative``: an overlay whose lower layer is the artifact (never written)
        and whose upper layer, on a tmpfs of the task's own mount namespace, takes the task's changes and is gone with
        it. For the unprivileged user the upper layer starts with the artifact's directories owned by it, so it may
        add, remove and replace files anywhere in its input (a file itself stays the artifact's: replaced, not
        rewritten in place). An artifact path an overlay option cannot carry (``,``, ``:``, ``\\``) is copied."""
        mount = self.inside(relative)
        if any(char in str(artifact) for char in ",:\\"):
            self.copy_in(artifact, mount)
            return
        mount.mkdir(parents=True, exist_ok=True)
        self.layers.append((artifact, relative))

    def copy_in(self, source: Path, target: Path) -> None:
        """Copy an artifact's tree (links as links, modes, times) into ``target`` and give it to the task user."""
        target.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{source}/.", str(target)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise SandboxError(f"cannot copy {source}: {proc.stderr.strip()}")
        self.own(target)

    # -- the command ---------------------------------------------------------------------------------------------------

    def argv(self, command: Sequence[str], cwd: Path) -> list[str]:
        """The bwrap command line running ``command`` in ``cwd`` inside the sandbox."""
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap): tasks only run sandboxed")
        # No --die-with-parent: ended early (abort, timeout), bwrap 0.8 then leaves the sandbox running. The runner
        # ends the task's process group, whose members include the PID namespace's init: everything the task
        # started ends with it. A privileged task keeps the host's PIDs: the bare-metal lab and its test harness
        # coordinate through PIDs recorded under /var/lib/stemforge (a lab whose owner PID is gone is reaped).
        args = [bwrap, "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.privileged:
            args.append("--unshare-pid")
        args += ["--hostname", "task"]
        if not (self.network or self.privileged):
            args.append("--unshare-net")
        args += _image_args()
        args += ["--ro-bind", str(self.scratch / "etc" / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(self.scratch / "etc" / "group"), "/etc/group"]
        args += ["--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
        args += ["--perms", "1777", "--tmpfs", "/var/tmp"]
        args += ["--symlink", "../run", "/var/run"]
        if self.privileged:
            args += ["--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm", "--bind", "/run", "/run"]
            args += ["--bind", "/sys", "/sys", "--tmpfs", "/root"]
        else:
            args += ["--dev", "/dev", "--tmpfs", "/run", "--ro-bind", "/sys", "/sys"]
            args += ["--perms", "0755", "--dir", "/root"]
        made = {"/tmp", "/var", "/var/lib", "/var/cache", "/var/tmp", "/run", "/root", "/dev", "/sys", "/proc"}

        def bind(flag: str, source: str | Path, dest: str | Path) -> None:
            # bwrap makes missing parents 0700 (root only): make them 0755 so the task user can traverse them
            for parent in reversed(Path(dest).parents):
                if str(parent) != "/" and str(parent) not in made:
                    made.add(str(parent))
                    args.extend(["--perms", "0755", "--dir", str(parent)])
            args.extend([flag, str(source), str(dest)])

        if self.privileged:
            for directory in [*PRIVILEGED_HOST_DIRS, str(build_cache())]:
                if os.path.isdir(directory):
                    bind("--bind", directory, directory)
        prefix = os.path.realpath(sys.base_prefix)  # the interpreter a task's virtualenv (like the runner's) runs on
        if not any(prefix == d or prefix.startswith(d + "/") for d in IMAGE_DIRS):
            bind("--ro-bind", prefix, prefix)
        for artifact in self.artifacts:
            if _may_show(artifact):
                bind("--ro-bind", artifact, artifact)
        bind("--bind", self.scratch, self.scratch)
        bind("--bind", self.workdir, self.workdir)
        for source, relative in self.binds:
            args += ["--bind", str(source), str(self.workdir / relative)]
        args += ["--chdir", str(cwd)]
        if not self.privileged:
            args += ["--", "setpriv", f"--reuid={TASK_UID}", f"--regid={TASK_GID}", "--clear-groups"]
            args += ["--inh-caps=-all", "--bounding-set=-all"]
        args += ["--", *command]
        if not self.layers:
            return args
        # the overlays are mounted in a mount namespace of their own (gone with the task), which bwrap inherits
        spec = {
            "layers_dir": str(self.layers_dir),
            "owner": None if self.privileged else [TASK_UID, TASK_GID],
            "layers": [[str(lower), str(self.workdir / relative)] for lower, relative in self.layers],
        }
        helper = [sys.executable, "-I", "-c", _HELPER, json.dumps(spec)]
        return ["unshare", "--mount", "--propagation", "private", "--", *helper, *args]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the task user's ``HOME``, ``TMPDIR``, ``USER`` and ``LOGNAME``."""
        env = dict(base)
        user = "root" if self.privileged else TASK_USER
        env.update(HOME=str(self.home), TMPDIR=str(self.tmpdir), USER=user, LOGNAME=user)
        if self.privileged:
            env["STEMFORGE_CACHE"] = str(build_cache())
        return env


#: Run by ``python -I -c`` as root in the task's new mount namespace: a tmpfs for the upper layers, each input's
#: overlay (for an unprivileged task, its upper layer holding the lower's directories owned by the task's user),
#: then ``exec`` of the rest of its arguments (bwrap). Self-contained: it imports nothing of stemforge.
_HELPER = """
import json, os, stat, subprocess, sys
spec = json.loads(sys.argv[1])
base = spec["layers_dir"]
def run(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"sandbox: {' '.join(argv)}: {proc.stderr.strip()}")
run("mount", "-t", "tmpfs", "-o", "mode=0700", "stemforge-layers", base)
for index, (lower, target) in enumerate(spec["layers"]):
    upper, work = f"{base}/{index}/upper", f"{base}/{index}/work"
    os.makedirs(upper)
    os.makedirs(work)
    if spec["owner"]:
        uid, gid = spec["owner"]
        for directory, dirs, _ in os.walk(lower):
            for name in [".", *dirs]:
                source = os.path.join(directory, name)
                if name != "." and os.path.islink(source):
                    continue
                made = os.path.normpath(os.path.join(upper, os.path.relpath(source, lower)))
                os.makedirs(made, exist_ok=True)
                os.chmod(made, stat.S_IMODE(os.lstat(source).st_mode))
                os.chown(made, uid, gid)
    run("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", target)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def build_cache() -> Path:
    """stemforge's build cache of this machine (``$STEMFORGE_CACHE`` or ``~/.cache/stemforge`` of the runner: the
    test image, the deploy ramdisk): privileged tasks share it, as the tests run outside a pipeline do."""
    env = os.environ.get("STEMFORGE_CACHE")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "stemforge"


def _image_args() -> list[str]:
    args: list[str] = []
    for name in IMAGE_LINKS:
        link = Path("/") / name
        if link.is_symlink():
            args += ["--symlink", os.readlink(link), str(link)]
        elif link.is_dir():
            args += ["--ro-bind", str(link), str(link)]
    args += ["--perms", "0755", "--dir", "/var", "--perms", "0755", "--dir", "/var/lib"]
    args += ["--perms", "0755", "--dir", "/var/cache"]
    for directory in IMAGE_DIRS:
        if directory == "/etc":
            args += etc_args(directory)
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    return args


def _readable(info: os.stat_result) -> bool:
    """World-readable (a directory: world-listable and traversable)."""
    wanted = 0o005 if stat.S_ISDIR(info.st_mode) else 0o004
    return info.st_mode & wanted == wanted


def etc_args(directory: str) -> list[str]:
    """bwrap arguments showing ``directory`` read-only without what is not world-readable (the host's secrets:
    ``shadow``, ``gshadow``, ssh host keys, ``ssl/private``, ``sudoers``, libvirt's domain and secret files...): a
    tree holding no such entry is bound whole; one that does is rebuilt entry by entry, leaving those out. Entries
    are bound with ``--ro-bind-try``: a file removed meanwhile (libvirt rewrites its own) is skipped, not an error."""
    if not _hides(directory):
        return ["--ro-bind-try", directory, directory]
    args = ["--perms", f"{stat.S_IMODE(os.lstat(directory).st_mode):04o}", "--dir", directory]
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return args
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            args += ["--symlink", os.readlink(entry.path), entry.path]
        elif not _readable(info):
            continue
        elif stat.S_ISDIR(info.st_mode):
            args += etc_args(entry.path)
        elif stat.S_ISREG(info.st_mode):
            args += ["--ro-bind-try", entry.path, entry.path]
    return args


def _hides(directory: str) -> bool:
    """Whether ``directory`` or anything under it is not world-readable."""
    try:
        if not _readable(os.lstat(directory)):
            return True
    except OSError:
        return False
    for parent, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            try:
                info = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            if (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)) and not _readable(info):
                return True
    return False


def hidden_entries(root: str) -> list[tuple[str, bool]]:
    """The entries under ``root`` that are not world-readable (a directory: not world-listable), as
    ``(path, is_dir)``; nothing below a hidden directory is listed. These are the host's secrets."""
    found: list[tuple[str, bool]] = []
    for directory, dirs, files in os.walk(root):
        for name in list(dirs):
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                dirs.remove(name)
                continue
            if stat.S_ISDIR(info.st_mode) and not _readable(info):
                found.append((path, True))
                dirs.remove(name)
        for name in files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and not _readable(info):
                found.append((path, False))
    return found


#: Host directories an artifact may not be shown at (they would cover the image or the host's secrets).
_NEVER_SHOWN = frozenset({"/", "/usr", "/etc", "/opt", "/run", "/tmp", "/var", "/root", "/home"})
_KERNEL_DIRS = ("/proc", "/dev", "/sys")


def _may_show(artifact: Path) -> bool:
    path = os.path.realpath(artifact)
    return path not in _NEVER_SHOWN and not any(path == d or path.startswith(d + "/") for d in _KERNEL_DIRS)


def needs_network(privileged: bool, tags: Iterable[object]) -> bool:
    """The network rule: privileged tasks and steps tagged :data:`NETWORK_TAG` share the host's network."""
    return privileged or NETWORK_TAG in {str(tag) for tag in tags}
