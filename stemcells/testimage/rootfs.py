"""Root trees from Debian packages: kernel modules, busybox, newc cpio initramfs archives.

What the test image (:mod:`stemcells.testimage.build`) and the bare-metal deploy ramdisk
(``cpi.providers.baremetal.ramdisk.build``) both put into their initramfs, from packages fetched with
:mod:`stemcells.testimage.debs`:

* :func:`index_kernel_deb` reads a Debian kernel package once (streamed, nothing unpacked) into a
  :class:`KernelIndex`: every module's path and dependencies (from its ``.modinfo``) and the built-ins;
  :func:`module_closure` turns wanted module names into load-ordered paths with their dependencies,
  :func:`modules_dep` writes the subset's ``modules.dep``; :func:`extract_kernel` writes ``vmlinuz`` and the chosen
  modules, :func:`copy_modules` copies them into a tree.
* :func:`busybox_links` / :func:`install_busybox`: a busybox userland (one binary, its applets as symlinks).
* :func:`write_cpio_newc` / :func:`pack_initramfs`: a tree as a gzipped newc cpio that depends only on the tree's
  content (owner root, mtime 0, sorted entries), with ``/dev/console`` and ``/dev/null``.
* :data:`UDHCPC_SCRIPT`: the udhcpc event script both images use; :data:`SHARED_SOURCES`: the files of the shared
  builder modules, for the builds' cache keys.

A failure raises :class:`~stemcells.testimage.debs.ImageBuildError` naming the step (``modules``, ``extract``,
``rootfs``).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stemcells.testimage.debs import ImageBuildError, run

__all__ = [
    "SHARED_SOURCES",
    "UDHCPC_SCRIPT",
    "KernelIndex",
    "busybox_links",
    "copy_modules",
    "extract_kernel",
    "index_kernel_deb",
    "install_busybox",
    "module_closure",
    "modules_dep",
    "pack_initramfs",
    "write_cpio_newc",
]

#: The builder modules both images share (:mod:`~stemcells.testimage.debs` and this one): each build's cache key
#: hashes their text.
SHARED_SOURCES = (Path(__file__).resolve().with_name("debs.py"), Path(__file__).resolve())
#: The udhcpc event script (``udhcpc -s``) of the test image and the deploy ramdisk.
UDHCPC_SCRIPT = Path(__file__).resolve().parent / "udhcpc.sh"
#: The device nodes every initramfs gets: (name, mode, major, minor).
DEVICE_NODES = [("dev/console", stat.S_IFCHR | 0o600, 5, 1), ("dev/null", stat.S_IFCHR | 0o666, 1, 3)]


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
class KernelIndex:
    """What pass 1 over the kernel deb learnt: module paths/deps, builtins, file locations."""

    modules: dict[str, tuple[str, list[str]]]  # name -> (path relative to moddir, depends)
    builtin: set[str]
    moddir: str  # e.g. "lib/modules/6.1.0-56-amd64"


def index_kernel_deb(deb: Path, kver: str) -> KernelIndex:
    """Read the kernel package ``deb`` of release ``kver`` once (streamed): its modules, built-ins and modules dir."""
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
    return KernelIndex(modules=modules, builtin=builtin, moddir=moddir)


def module_closure(index: KernelIndex, wanted: tuple[str, ...]) -> list[str]:
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


def modules_dep(index: KernelIndex, mods: list[str]) -> str:
    """A ``modules.dep`` for the subset ``mods`` (each line lists all transitive deps)."""
    by_rel = {rel: deps for rel, deps in index.modules.values()}
    lines = []
    for rel in mods:
        closure = module_closure(index, tuple(by_rel[rel]))
        lines.append(f"{rel}: {' '.join(reversed(closure))}".rstrip() + "\n")
    return "".join(lines)


def extract_kernel(deb: Path, index: KernelIndex, kver: str, mods: list[str], dest: Path) -> Path:
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


def busybox_links(busybox: Path) -> list[str]:
    """The applet paths (``bin/sh``, ``sbin/udhcpc``, ...) of the ``busybox`` binary, relative to ``/``."""
    out = run("rootfs", [str(busybox), "--list-full"])
    return [x.strip().lstrip("/") for x in out.splitlines() if x.strip() and "/" in x.strip()]


def install_busybox(busybox: Path, dest: Path, links: list[str]) -> None:
    """Install ``busybox`` as ``dest/bin/busybox`` and each of ``links`` as a symlink to it (existing paths win)."""
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for rel in links:
        target = dest / rel
        if rel == "bin/busybox" or target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to("/bin/busybox")


def copy_modules(src_moddir: Path, dst_moddir: Path, mods: list[str]) -> None:
    """Copy the modules ``mods`` (paths relative to the modules dir) and the ``modules.builtin*``/``modules.order``
    files from the extracted ``src_moddir`` to ``dst_moddir``."""
    for m in mods:
        d = dst_moddir / m
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src_moddir / m, d)
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src_moddir / f).exists():
            shutil.copy2(src_moddir / f, dst_moddir / f)


def write_cpio_newc(src: Path, extra_nodes: list[tuple[str, int, int, int]], out: io.BufferedIOBase) -> None:
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


def pack_initramfs(tree: Path, dest: Path) -> None:
    """Write ``tree`` plus :data:`DEVICE_NODES` to ``dest`` as a gzipped newc cpio (gzip level 9, no name, mtime 0):
    equal trees give byte-identical files."""
    buf = io.BytesIO()
    write_cpio_newc(tree, DEVICE_NODES, buf)
    with open(dest, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue())
