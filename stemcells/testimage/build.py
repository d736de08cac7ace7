"""Build the tiny stemforge test stemcell image, offline, from Debian packages.

The image boots from its own disk exactly like a real stemcell (BIOS, MBR), so the same
``root.img`` can be run by the libvirt CPI or ``dd``-ed onto a server:

* MBR partition table (disk identifier ``0x5f0e5f0e``) with syslinux's ``mbr.bin``;
* partition 1 (active, type 0x0e, label ``SF-BOOT``, starts at 1 MiB): FAT16 holding
  syslinux (``ldlinux.sys``/``ldlinux.c32``), ``syslinux.cfg``, ``vmlinuz`` and ``initrd.img``;
* partition 2 (type 0x83, ext4, label ``sf-root``): busybox userland, the kernel modules
  the test VMs need and the test agent (``/stemforge/agent.sh``, ``json.awk``).

The initramfs loads the storage and filesystem modules, finds ``LABEL=sf-root`` and
``switch_root``-s into it; busybox init runs ``/etc/init.d/rcS`` and then respawns the agent.
The kernel console is ``ttyS0`` (115200 baud).

Everything is assembled without loop devices, mounts or root rights: ``mke2fs -d`` fills the
ext4 partition from a directory, ``mkfs.vfat``/``mcopy`` fill the FAT partition and the
mtools-based ``syslinux --install`` makes it bootable, ``sfdisk`` writes the partition table
into a plain file and the partitions are copied in at their offsets.  Packages come only
from the host's apt sources (``apt-get download``) and are unpacked with ``dpkg-deb -x``.

Results are cached under ``<cache>/testimage/images/<key>/`` where ``<key>`` hashes every
input (package versions, guest files, this module's source, layout constants).  The cache is
safe for concurrent callers: one build at a time under a file lock, each build in its own
temporary directory, published with one atomic ``rename``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BOOT_LABEL",
    "DISK_SIZE_MIB",
    "ImageBuildError",
    "KERNEL_CMDLINE",
    "ROOT_LABEL",
    "build_test_image",
    "image_manifest",
    "kernel_version",
    "packages_txt",
]

#: Bump when the build's output changes in a way the other inputs do not capture.
BUILD_FORMAT_VERSION = "1"

DISK_SIZE_MIB = 128
BOOT_START_MIB = 1
BOOT_SIZE_MIB = 24
ROOT_START_MIB = BOOT_START_MIB + BOOT_SIZE_MIB
ROOT_SIZE_MIB = DISK_SIZE_MIB - ROOT_START_MIB
SECTOR = 512
MIB = 1024 * 1024

MBR_DISK_ID = "0x5f0e5f0e"
BOOT_LABEL = "SF-BOOT"
BOOT_VOLUME_ID = "5F0E5F0E"
ROOT_LABEL = "sf-root"
ROOT_UUID = "5f0e5f0e-7e57-4a9e-9d1b-57e3f0a9e001"
#: ``loglevel=3`` keeps all but critical kernel messages off the console (they could split agent
#: lines); ``ipv6.disable=1`` keeps the guest from sending router solicitations and the like.
KERNEL_CMDLINE = f"root=LABEL={ROOT_LABEL} console=tty0 console=ttyS0,115200n8 quiet loglevel=3 ipv6.disable=1 panic=10"

#: Debian meta package whose dependency names the kernel image package.
KERNEL_META_PACKAGE = "linux-image-amd64"
#: Other Debian packages that go into the image.
OTHER_PACKAGES = ("busybox-static", "syslinux", "syslinux-common")

#: Modules loaded by the initramfs (storage for the root disk, ext4); dependencies added.
INITRAMFS_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "sd_mod",
    "nvme",
    "crc32c_generic",
    "ext4",
)
#: Modules loaded by the root's rcS on top of the initramfs ones.
ROOT_MODULES = INITRAMFS_MODULES + (
    "cdrom",
    "sr_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "virtio_net",
    "e1000",
    "e1000e",
    "evdev",
    "button",
)

#: Guest files shipped in this package directory (all part of the cache key).
GUEST_FILES = ("init.sh", "rcS.sh", "agent.sh", "diskresolve.sh", "agent.json", "json.awk", "udhcpc.sh", "inittab.cfg",
               "syslinux.cfg")

HOST_TOOLS = (
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "mke2fs",
    "mkfs.vfat",
    "mcopy",
    "mattrib",
    "sfdisk",
    "qemu-img",
)

Progress = Callable[[str], None]
_HERE = Path(__file__).resolve().parent


class ImageBuildError(RuntimeError):
    """A build step failed.  ``step`` names it; the message says what went wrong."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"test image build step {step!r} failed: {message}")
        self.step = step


@dataclass(frozen=True)
class Package:
    """One Debian package of the image: name, exact version, architecture."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Inputs:
    """Everything a build depends on, resolved before building (cheap to compute)."""

    kernel: Package
    others: tuple[Package, ...]
    kernel_release: str

    @property
    def packages(self) -> tuple[Package, ...]:
        return (self.kernel, *self.others)


# ---------------------------------------------------------------- helpers


class _Steps:
    """Progress reporting and error wrapping for named build steps."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._t0 = time.monotonic()

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(f"[{time.monotonic() - self._t0:7.1f}s] {message}")

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        t = time.monotonic()
        self.say(f"{name}: {detail or 'start'}")
        try:
            yield
        except ImageBuildError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its step
            raise ImageBuildError(name, f"{type(exc).__name__}: {exc}") from exc
        self.say(f"{name}: done in {time.monotonic() - t:.1f}s")


def _run(
    step: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> str:
    """Run ``cmd``; return its stdout; raise ImageBuildError(step) with stderr on failure."""
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


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        env = os.environ.get("STEMFORGE_CACHE")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "stemforge"
    root = Path(cache_dir).expanduser().resolve() / "testimage"
    for sub in ("debs", "images", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _deb_file_version(path: Path) -> tuple[str, str, str] | None:
    """(name, version, arch) from an apt-style ``name_version_arch.deb`` file name."""
    m = re.fullmatch(r"([^_]+)_([^_]+)_([^_]+)\.deb", path.name)
    if not m:
        return None
    return m.group(1), urllib.parse.unquote(m.group(2)), m.group(3)


# ---------------------------------------------------------------- inputs


def _apt_candidates(names: list[str]) -> dict[str, str]:
    out = _run("resolve-packages", ["apt-cache", "policy", *names])
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


def _resolve_from_apt() -> Inputs:
    deps = _run("resolve-packages", ["apt-cache", "depends", KERNEL_META_PACKAGE])
    kernel_name = None
    for line in deps.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m and m.group(1) != KERNEL_META_PACKAGE:
            kernel_name = m.group(1)
            break
    if kernel_name is None:
        raise ImageBuildError("resolve-packages", f"no kernel image dependency of {KERNEL_META_PACKAGE}")
    names = [kernel_name, *OTHER_PACKAGES]
    cands = _apt_candidates(names)
    missing = [n for n in names if n not in cands]
    if missing:
        raise ImageBuildError("resolve-packages", f"no apt candidate for {', '.join(missing)} (run apt-get update)")
    arch = _run("resolve-packages", ["dpkg", "--print-architecture"]).strip() or "amd64"
    pk = [Package(n, cands[n], "all" if n == "syslinux-common" else arch) for n in names]
    return Inputs(kernel=pk[0], others=tuple(pk[1:]), kernel_release=kernel_name[len("linux-image-") :])


def _resolve_from_cache(root: Path) -> Inputs:
    """Offline fallback: the newest downloaded deb of each package (by file mtime)."""
    debs = sorted((root / "debs").glob("*.deb"), key=lambda p: p.stat().st_mtime, reverse=True)
    by_name: dict[str, Package] = {}
    for p in debs:
        parsed = _deb_file_version(p)
        if parsed and parsed[0] not in by_name:
            by_name[parsed[0]] = Package(*parsed)
    kernels = [pk for n, pk in by_name.items() if re.fullmatch(r"linux-image-\d.*", n) and "unsigned" not in n]
    if not kernels or any(n not in by_name for n in OTHER_PACKAGES):
        raise ImageBuildError(
            "resolve-packages", "apt-cache is unavailable and the cache holds no complete set of debs"
        )
    kernel = kernels[0]
    return Inputs(
        kernel=kernel,
        others=tuple(by_name[n] for n in OTHER_PACKAGES),
        kernel_release=kernel.name[len("linux-image-") :],
    )


def _apt_fingerprint() -> str:
    """Cheap fingerprint of apt's view (package lists, sources, preferences), or ""."""
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


def _inputs_to_json(inputs: Inputs) -> dict[str, object]:
    return {
        "kernel": [inputs.kernel.name, inputs.kernel.version, inputs.kernel.arch],
        "others": [[p.name, p.version, p.arch] for p in inputs.others],
        "kernel_release": inputs.kernel_release,
    }


def _inputs_from_json(doc: dict[str, object]) -> Inputs:
    k = doc["kernel"]
    o = doc["others"]
    assert isinstance(k, list) and isinstance(o, list)
    return Inputs(kernel=Package(*k), others=tuple(Package(*x) for x in o), kernel_release=str(doc["kernel_release"]))


def _resolve_inputs(root: Path) -> Inputs:
    """Resolve the package set: apt's candidates (remembered while apt's lists are unchanged,
    since apt-cache takes seconds), else the debs already in the cache (offline)."""
    fp = _apt_fingerprint()
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


def _cache_key(inputs: Inputs) -> str:
    h = hashlib.sha256()
    doc = {
        "format": BUILD_FORMAT_VERSION,
        "packages": [[p.name, p.version, p.arch] for p in inputs.packages],
        "guest": {f: hashlib.sha256((_HERE / f).read_bytes()).hexdigest() for f in GUEST_FILES},
        "build_py": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "layout": [DISK_SIZE_MIB, BOOT_START_MIB, BOOT_SIZE_MIB, KERNEL_CMDLINE, ROOT_UUID, MBR_DISK_ID],
        "modules": [INITRAMFS_MODULES, ROOT_MODULES],
    }
    h.update(json.dumps(doc, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- build steps


def _fetch(root: Path, pkg: Package, steps: _Steps) -> Path:
    debs = root / "debs"
    for p in debs.glob(f"{pkg.name}_*.deb"):
        if _deb_file_version(p) == (pkg.name, pkg.version, pkg.arch):
            return p
    with steps.step("fetch", f"apt-get download {pkg.name}={pkg.version}"):
        tmp = Path(tempfile.mkdtemp(prefix="dl-", dir=root / "tmp"))
        try:
            _run("fetch", ["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"], cwd=tmp)
            got = list(tmp.glob("*.deb"))
            if len(got) != 1:
                raise ImageBuildError("fetch", f"apt-get download {pkg.name} produced {len(got)} files")
            dest = debs / got[0].name
            os.replace(got[0], dest)
            return dest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _deb_field(deb: Path, field: str) -> str:
    return _run("packages", ["dpkg-deb", "-f", str(deb), field]).strip()


def _modinfo(data: bytes) -> dict[str, str]:
    """The ``.modinfo`` key=value strings of a kernel module (ELF64 little-endian)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}

    def u(off: int, n: int) -> int:
        return int.from_bytes(data[off : off + n], "little")

    shoff, shentsize, shnum, shstrndx = u(0x28, 8), u(0x3A, 2), u(0x3C, 2), u(0x3E, 2)

    def section(i: int) -> tuple[int, int, int]:
        b = shoff + i * shentsize
        return u(b, 4), u(b + 0x18, 8), u(b + 0x20, 8)

    _, str_off, str_size = section(shstrndx)
    names = data[str_off : str_off + str_size]
    for i in range(shnum):
        name_off, off, size = section(i)
        if names[name_off : names.index(b"\0", name_off)] == b".modinfo":
            info: dict[str, str] = {}
            for item in data[off : off + size].split(b"\0"):
                k, sep, v = item.partition(b"=")
                if sep:
                    info.setdefault(k.decode(errors="replace"), v.decode(errors="replace"))
            return info
    return {}


def _modname(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")


@contextlib.contextmanager
def _deb_tar(deb: Path) -> Iterator[tarfile.TarFile]:
    """Stream the data tar of ``deb`` (``dpkg-deb --fsys-tarfile``) without unpacking it."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            yield tf
        proc.stdout.read()
    finally:
        proc.stdout.close()
        rc = proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    if rc != 0:
        raise ImageBuildError("extract", f"dpkg-deb --fsys-tarfile {deb.name} exited {rc}: {err.strip()}")


@dataclass
class _KernelIndex:
    """What pass 1 over the kernel deb learnt: module paths/deps, builtins, file locations."""

    modules: dict[str, tuple[str, list[str]]]  # name -> (path relative to moddir, depends)
    builtin: set[str]
    moddir: str  # e.g. "lib/modules/6.1.0-56-amd64"


def _index_kernel_deb(deb: Path, kver: str) -> _KernelIndex:
    modules: dict[str, tuple[str, list[str]]] = {}
    builtin: set[str] = set()
    moddir = ""
    with _deb_tar(deb) as tf:
        for m in tf:
            name = m.name.removeprefix("./")
            if not m.isfile():
                continue
            for prefix in (f"lib/modules/{kver}/", f"usr/lib/modules/{kver}/"):
                if name.startswith(prefix):
                    moddir = prefix.rstrip("/")
                    rel = name[len(prefix) :]
                    fh = tf.extractfile(m)
                    assert fh is not None
                    if rel.endswith(".ko"):
                        info = _modinfo(fh.read())
                        deps = [d for d in info.get("depends", "").split(",") if d]
                        modules[_modname(rel)] = (rel, [d.replace("-", "_") for d in deps])
                    elif rel == "modules.builtin":
                        builtin = {_modname(x) for x in fh.read().decode().split()}
    if not moddir:
        raise ImageBuildError("modules", f"kernel package has no lib/modules/{kver}")
    return _KernelIndex(modules=modules, builtin=builtin, moddir=moddir)


def _module_closure(index: _KernelIndex, wanted: tuple[str, ...]) -> list[str]:
    """Module paths (relative to the modules dir) for ``wanted`` plus dependencies, load order."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name not in index.modules:
            if name in index.builtin:
                return
            raise ImageBuildError("modules", f"kernel module {name} not found (needed by {' -> '.join(chain)})")
        seen.add(name)
        rel, deps = index.modules[name]
        for d in deps:
            visit(d, (*chain, name))
        order.append(rel)

    for w in wanted:
        visit(w.replace("-", "_"), ())
    return order


def _modules_dep(index: _KernelIndex, mods: list[str]) -> str:
    """A ``modules.dep`` for the subset ``mods`` (each line lists all transitive deps)."""
    by_rel = {rel: deps for rel, deps in index.modules.values()}
    lines = []
    for rel in mods:
        closure = _module_closure(index, tuple(by_rel[rel]))
        lines.append(f"{rel}: {' '.join(reversed(closure))}".rstrip() + "\n")
    return "".join(lines)


def _extract_kernel(deb: Path, index: _KernelIndex, kver: str, mods: list[str], dest: Path) -> Path:
    """Write vmlinuz and the modules ``mods`` of ``deb`` below ``dest``; return vmlinuz's path."""
    want = {f"{index.moddir}/{m}" for m in mods}
    want |= {f"{index.moddir}/{f}" for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order")}
    vmlinuz_name = f"boot/vmlinuz-{kver}"
    want.add(vmlinuz_name)
    got: set[str] = set()
    with _deb_tar(deb) as tf:
        for m in tf:
            name = m.name.removeprefix("./")
            if name in want and m.isfile():
                fh = tf.extractfile(m)
                assert fh is not None
                out = dest / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(fh.read())
                got.add(name)
    missing = want - got - {f"{index.moddir}/modules.builtin.modinfo", f"{index.moddir}/modules.order"}
    if missing:
        raise ImageBuildError("extract", f"kernel package lacks {', '.join(sorted(missing))}")
    return dest / vmlinuz_name


def _busybox_links(busybox: Path) -> list[str]:
    out = _run("rootfs", [str(busybox), "--list-full"])
    return [x.strip().lstrip("/") for x in out.splitlines() if x.strip() and "/" in x.strip()]


def _install_busybox(busybox: Path, dest: Path, links: list[str]) -> None:
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for rel in links:
        target = dest / rel
        if rel == "bin/busybox" or target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to("/bin/busybox")


def _copy_modules(src_moddir: Path, dst_moddir: Path, mods: list[str]) -> None:
    for m in mods:
        d = dst_moddir / m
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_moddir / m, d)
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src_moddir / f).exists():
            shutil.copy2(src_moddir / f, dst_moddir / f)


def _guest_file(name: str, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_HERE / name, dest)
    os.chmod(dest, mode)


def _write_cpio_newc(src: Path, extra_nodes: list[tuple[str, int, int, int]], out: io.BufferedIOBase) -> None:
    """Write ``src``'s tree plus char/block nodes ``(name, mode, major, minor)`` as a newc cpio.

    Owner root, mtime 0, entries sorted: the archive depends only on the tree's content.
    """
    ino = 1

    def entry(name: str, mode: int, data: bytes = b"", rmaj: int = 0, rmin: int = 0, nlink: int = 1) -> None:
        nonlocal ino
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08x}" for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(nb), 0)
        )
        ino += 1
        out.write(hdr.encode() + nb)
        out.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))

    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            paths.append(Path(dirpath) / n)
    for p in sorted(paths, key=lambda x: x.relative_to(src).as_posix()):
        rel = p.relative_to(src).as_posix()
        st = p.lstat()
        perm = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entry(rel, stat.S_IFDIR | perm, nlink=2)
        elif stat.S_ISLNK(st.st_mode):
            entry(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            entry(rel, stat.S_IFREG | perm, p.read_bytes())
    for name, mode, major, minor in extra_nodes:
        entry(name, mode, b"", major, minor)
    entry("TRAILER!!!", 0)


def _place(src: Path, dst: Path, offset: int) -> None:
    """Copy ``src`` into ``dst`` at byte ``offset``, skipping all-zero MiB chunks (sparse)."""
    zero = bytes(MIB)
    with open(src, "rb") as fi, open(dst, "r+b") as fo:
        pos = 0
        while True:
            chunk = fi.read(MIB)
            if not chunk:
                break
            if chunk != zero[: len(chunk)]:
                fo.seek(offset + pos)
                fo.write(chunk)
            pos += len(chunk)


def _packages_txt(rows: list[tuple[str, str, str, str]]) -> str:
    w1 = max([len(r[0]) for r in rows] + [4])
    w2 = max([len(r[1]) for r in rows] + [7])
    w3 = max([len(r[2]) for r in rows] + [12])
    lines = [
        "Desired=Unknown/Install/Remove/Purge/Hold",
        "| Status=Not/Inst/Conf-files/Unpacked/halF-conf/Half-inst/trig-aWait/Trig-pend",
        "|/ Err?=(none)/Reinst-required (Status,Err: uppercase=bad)",
        f"||/ {'Name':<{w1}} {'Version':<{w2}} {'Architecture':<{w3}} Description",
        f"+++-{'=' * w1}-{'=' * w2}-{'=' * w3}-{'=' * 40}",
    ]
    for name, ver, arch, desc in sorted(rows):
        lines.append(f"ii  {name:<{w1}} {ver:<{w2}} {arch:<{w3}} {desc}")
    return "\n".join(lines) + "\n"


def _build(root: Path, inputs: Inputs, work: Path, steps: _Steps, *, phone_home: bool = True) -> Path:
    """Build into ``work``; return the finished output directory (``work/image``). ``phone_home=False`` bakes
    ``/etc/stemforge/no-phone-home`` into the root: the agent then reads and prints the config drive only."""
    out = work / "image"
    (out / "qcow2").mkdir(parents=True)
    (out / "raw").mkdir(parents=True)

    with steps.step("check-tools"):
        missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
        if missing:
            raise ImageBuildError("check-tools", f"missing host tools: {', '.join(missing)}")

    debs = {pkg.name: _fetch(root, pkg, steps) for pkg in inputs.packages}

    x = work / "x"
    kver = inputs.kernel_release
    kdeb = debs[inputs.kernel.name]
    with steps.step("modules", f"index {kdeb.name}"):
        index = _index_kernel_deb(kdeb, kver)
        initrd_mods = _module_closure(index, INITRAMFS_MODULES)
        root_mods = _module_closure(index, ROOT_MODULES)
    with steps.step("extract", ", ".join(p.name for p in debs.values())):
        x.mkdir()
        kx = x / inputs.kernel.name
        vmlinuz = _extract_kernel(kdeb, index, kver, root_mods, kx)
        moddir = kx / index.moddir
        for name, deb in debs.items():
            if name != inputs.kernel.name:
                _run("extract", ["dpkg-deb", "-x", str(deb), str(x / name)])

    bb_dir = x / "busybox-static"
    busybox = bb_dir / "bin" / "busybox"
    sl_common = x / "syslinux-common" / "usr/lib/syslinux"
    syslinux_bin = x / "syslinux" / "usr/bin/syslinux"

    rootfs = work / "rootfs"
    with steps.step("rootfs", f"{len(root_mods)} modules"):
        links = _busybox_links(busybox)
        _install_busybox(busybox, rootfs, links)
        for d in (
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "root",
            "mnt",
            "etc/init.d",
            "etc/stemforge",
            "var/vcap/store",
            "var/vcap/data",
            "var/vcap/bosh",
            "var/lib/stemforge",
            "var/log",
            "usr/share/udhcpc",
            "etc/udhcpc",
        ):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        os.chmod(rootfs / "tmp", 0o1777)
        os.chmod(rootfs / "root", 0o700)
        _guest_file("rcS.sh", rootfs / "etc/init.d/rcS")
        _guest_file("inittab.cfg", rootfs / "etc/inittab", 0o644)
        _guest_file("agent.sh", rootfs / "stemforge/agent.sh")
        _guest_file("json.awk", rootfs / "stemforge/json.awk", 0o644)
        _guest_file("udhcpc.sh", rootfs / "stemforge/udhcpc.sh")
        _guest_file("diskresolve.sh", rootfs / "stemforge/diskresolve.sh", 0o644)
        # the stock OpenStack stemcell's agent.json: the test agent resolves disks by its Platform.Linux keys
        _guest_file("agent.json", rootfs / "var/vcap/bosh/agent.json", 0o644)
        for link in ("usr/share/udhcpc/default.script", "etc/udhcpc/default.script"):
            (rootfs / link).symlink_to("/stemforge/udhcpc.sh")
        power = rootfs / "etc/acpi/PWRF/00000080"  # busybox acpid: power button pressed
        power.parent.mkdir(parents=True)
        power.write_text("#!/bin/sh\nexec /sbin/poweroff\n")
        os.chmod(power, 0o755)
        etc = rootfs / "etc"
        (etc / "hostname").write_text("stemforge\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
        os.chmod(etc / "shadow", 0o600)
        (etc / "group").write_text("root:x:0:\n")
        (etc / "resolv.conf").write_text("")
        (etc / "fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 rw 0 1\n")
        (etc / "stemforge/modules.load").write_text("".join(m + "\n" for m in root_mods))
        if not phone_home:  # the agent.sh guard: behave like a stock agent that calls nothing of ours
            (etc / "stemforge/no-phone-home").write_text("built with phone_home=False: the agent never phones home\n")
        (etc / "stemforge/image.json").write_text(
            json.dumps(
                {
                    "kernel_release": kver,
                    "packages": {p.name: p.version for p in inputs.packages},
                    "build_format": BUILD_FORMAT_VERSION,
                },
                indent=1,
            )
            + "\n"
        )
        rmod = rootfs / "lib/modules" / kver
        _copy_modules(moddir, rmod, root_mods)
        (rmod / "modules.dep").write_text(_modules_dep(index, root_mods))

    initrd = work / "initrd.img"
    with steps.step("initramfs", f"{len(initrd_mods)} modules"):
        ird = work / "initramfs"
        _install_busybox(busybox, ird, links)
        for d in ("proc", "sys", "dev", "run", "newroot", "etc"):
            (ird / d).mkdir(parents=True, exist_ok=True)
        _guest_file("init.sh", ird / "init")
        (ird / "etc/modules.load").write_text("".join(m + "\n" for m in initrd_mods))
        _copy_modules(moddir, ird / "lib/modules" / kver, initrd_mods)
        (ird / "lib/modules" / kver / "modules.dep").write_text(_modules_dep(index, initrd_mods))
        buf = io.BytesIO()
        _write_cpio_newc(
            ird, [("dev/console", stat.S_IFCHR | 0o600, 5, 1), ("dev/null", stat.S_IFCHR | 0o666, 1, 3)], buf
        )
        with (
            open(initrd, "wb") as fh,
            gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz,
        ):
            gz.write(buf.getvalue())

    root_part = work / "root.part"
    with steps.step("root-partition", f"ext4 {ROOT_SIZE_MIB} MiB"):
        _run(
            "root-partition",
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                ROOT_LABEL,
                "-U",
                ROOT_UUID,
                "-m",
                "0",
                "-E",
                f"root_owner=0:0,hash_seed={ROOT_UUID}",
                "-d",
                str(rootfs),
                str(root_part),
                f"{ROOT_SIZE_MIB}M",
            ],
            env={"E2FSPROGS_FAKE_TIME": "1700000000"},
        )

    boot_part = work / "boot.part"
    with steps.step("boot-partition", f"FAT16 {BOOT_SIZE_MIB} MiB + syslinux"):
        hidden = BOOT_START_MIB * MIB // SECTOR
        _run(
            "boot-partition",
            [
                "mkfs.vfat",
                "-F",
                "16",
                "-n",
                BOOT_LABEL,
                "-i",
                BOOT_VOLUME_ID,
                "-h",
                str(hidden),
                "-S",
                str(SECTOR),
                "-C",
                str(boot_part),
                str(BOOT_SIZE_MIB * 1024),
            ],
        )
        cfg = (_HERE / "syslinux.cfg").read_text().replace("@APPEND@", KERNEL_CMDLINE)
        (work / "syslinux.cfg").write_text(cfg)
        ldlinux_c32 = sl_common / "modules/bios/ldlinux.c32"
        env = {"MTOOLS_SKIP_CHECK": "1"}
        for src, name in (
            (vmlinuz, "vmlinuz"),
            (initrd, "initrd.img"),
            (work / "syslinux.cfg", "syslinux.cfg"),
            (ldlinux_c32, "ldlinux.c32"),
        ):
            _run("boot-partition", ["mcopy", "-o", "-i", str(boot_part), str(src), f"::/{name}"], env=env)
        _run("boot-partition", [str(syslinux_bin), "--install", str(boot_part)], env=env)
        listing = _run("boot-partition", ["mdir", "-a", "-b", "-i", str(boot_part), "::/"], env=env)
        if "ldlinux.sys" not in listing.lower():
            raise ImageBuildError("boot-partition", f"syslinux did not install ldlinux.sys: {listing}")

    disk = work / "disk.raw"
    with steps.step("disk", f"MBR, {DISK_SIZE_MIB} MiB"):
        with open(disk, "wb") as fh:
            fh.truncate(DISK_SIZE_MIB * MIB)
        spt = MIB // SECTOR
        script = (
            f"label: dos\nlabel-id: {MBR_DISK_ID}\nunit: sectors\n\n"
            f"start={BOOT_START_MIB * spt}, size={BOOT_SIZE_MIB * spt}, type=e, bootable\n"
            f"start={ROOT_START_MIB * spt}, size={ROOT_SIZE_MIB * spt}, type=83\n"
        )
        _run("disk", ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk)], stdin=script.encode())
        mbr = (sl_common / "mbr/mbr.bin").read_bytes()
        if len(mbr) > 440:
            raise ImageBuildError("disk", "mbr.bin is larger than 440 bytes")
        with open(disk, "r+b") as dfh:
            dfh.write(mbr)
        _place(boot_part, disk, BOOT_START_MIB * MIB)
        _place(root_part, disk, ROOT_START_MIB * MIB)

    with steps.step("convert", "qcow2 (compressed) and raw"):
        _run(
            "convert",
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(disk), str(out / "qcow2" / "root.img")],
        )
        os.replace(disk, out / "raw" / "root.img")

    with steps.step("manifest"):
        rows = []
        for pkg in inputs.packages:
            desc = _deb_field(debs[pkg.name], "Description").splitlines()[0]
            rows.append((pkg.name, pkg.version, pkg.arch, desc))
        (out / "packages.txt").write_text(_packages_txt(rows))
        # the bare kernel beside the image: what the CPI's KVM probe boots (cpi.providers.libvirt.accel)
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        manifest = {
            "build_format": BUILD_FORMAT_VERSION,
            "kernel_release": kver,
            "kernel_cmdline": KERNEL_CMDLINE,
            "packages": {p.name: p.version for p in inputs.packages},
            "disk_size_mib": DISK_SIZE_MIB,
            "partitions": [
                {
                    "number": 1,
                    "start_mib": BOOT_START_MIB,
                    "size_mib": BOOT_SIZE_MIB,
                    "type": "0e",
                    "fs": "vfat",
                    "label": BOOT_LABEL,
                    "bootable": True,
                },
                {
                    "number": 2,
                    "start_mib": ROOT_START_MIB,
                    "size_mib": ROOT_SIZE_MIB,
                    "type": "83",
                    "fs": "ext4",
                    "label": ROOT_LABEL,
                    "uuid": ROOT_UUID,
                    "partuuid": f"{MBR_DISK_ID[2:]}-02",
                },
            ],
            "mbr_disk_id": MBR_DISK_ID,
            "modules": {"initramfs": initrd_mods, "root": root_mods},
            "files": {
                fmt: {"size": (out / fmt / "root.img").stat().st_size, "sha256": _sha256_file(out / fmt / "root.img")}
                for fmt in ("qcow2", "raw")
            },
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def _clean_stale(root: Path) -> None:
    """Remove leftovers of killed builds.  Only call while holding the build lock."""
    for p in (root / "tmp").iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ---------------------------------------------------------------- public API


def build_test_image(
    cache_dir: Path | None = None,
    *,
    fmt: str = "qcow2",
    progress: Callable[[str], None] | None = None,
    phone_home: bool = True,
) -> Path:
    """Build (once) the test stemcell disk image and return the path of its ``root.img``.

    ``fmt`` is ``"qcow2"`` (compressed qcow2) or ``"raw"`` (sparse raw MBR disk); both have a
    virtual size of ``DISK_SIZE_MIB`` MiB.  The result lives under
    ``<cache_dir>/testimage/images/<key>/<fmt>/root.img`` (``cache_dir`` defaults to
    ``$STEMFORGE_CACHE`` or ``~/.cache/stemforge``); ``<key>`` hashes all inputs, so a call
    with an existing image returns at once.  Treat the file as read-only (boot it through a
    qcow2 overlay or a copy).  Concurrent callers are safe.  ``progress`` receives one line
    per step with the elapsed time.  Any failure removes the build's temporary files and
    raises :class:`ImageBuildError` naming the step.  ``phone_home=False`` builds the variant whose
    agent never phones home (cached under ``<key>-no-phone-home``): a stand-in for a stock stemcell
    on bare metal, whose agent only reads the config drive.
    """
    if fmt not in ("qcow2", "raw"):
        raise ValueError(f"fmt must be 'qcow2' or 'raw', not {fmt!r}")
    steps = _Steps(progress)
    with steps.step("resolve-packages"):
        root = _cache_root(cache_dir)
        inputs = _resolve_inputs(root)
        key = _cache_key(inputs)
    final = root / "images" / (key if phone_home else f"{key}-no-phone-home")
    result = final / fmt / "root.img"
    if result.is_file():
        steps.say(f"cached: {result}")
        return result
    with _locked(root / ".lock"):
        if result.is_file():
            steps.say(f"cached (built concurrently): {result}")
            return result
        _clean_stale(root)
        work = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=root / "tmp"))
        try:
            if final.exists():  # incomplete or damaged: move it out of the way, then rebuild
                os.replace(final, work / "damaged")
            built = _build(root, inputs, work, steps, phone_home=phone_home)
            with steps.step("publish", str(final)):
                os.replace(built, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    steps.say(f"built: {result}")
    return result


def image_manifest(cache_dir: Path | None = None) -> dict[str, object]:
    """The manifest of the (cached, built on demand) image: packages, layout, modules, files."""
    img = build_test_image(cache_dir)
    data: dict[str, object] = json.loads((img.parent.parent / "manifest.json").read_text())
    return data


def packages_txt(cache_dir: Path | None = None) -> str:
    """``dpkg -l``-style listing of the Debian packages that went into the image.

    Builds the image first when needed (cached).
    """
    img = build_test_image(cache_dir)
    return (img.parent.parent / "packages.txt").read_text()


def kernel_version(cache_dir: Path | None = None) -> str:
    """The image kernel's release (``uname -r``, e.g. ``6.1.0-56-amd64``); does not build."""
    return _resolve_inputs(_cache_root(cache_dir)).kernel_release


def main(argv: list[str] | None = None) -> int:
    """CLI: build (or find cached) and print the image path; ``--out DIR`` copies it there."""
    ap = argparse.ArgumentParser(prog="python -m stemcells.testimage.build", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="copy root.img and packages.txt into this directory")
    ap.add_argument("--format", choices=("qcow2", "raw"), default="qcow2")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--no-phone-home", action="store_true", help="the variant whose agent never phones home")
    args = ap.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        path = build_test_image(
            args.cache_dir, fmt=args.format, progress=None if args.quiet else say, phone_home=not args.no_phone_home
        )
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        dest = args.out / "root.img"
        tmp = args.out / ".root.img.tmp"
        subprocess.run(["cp", "--sparse=always", str(path), str(tmp)], check=True)
        os.replace(tmp, dest)
        shutil.copyfile(path.parent.parent / "packages.txt", args.out / "packages.txt")
        path = dest
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
