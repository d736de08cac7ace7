"""Build the bare-metal deploy ramdisk (kernel + initramfs), offline, from Debian packages.

The ramdisk is what a server network-boots into to be deployed or cleaned (see ``init.sh``): the same Debian kernel
as the test stemcell (:mod:`stemcells.testimage.build`; package resolution, the download cache and build steps come
from :mod:`stemcells.testimage.debs`, the kernel module index, busybox and the cpio writer from
:mod:`stemcells.testimage.rootfs`) and an initramfs holding

* busybox-static (sh, wget with POST, udhcpc, sha256sum, dd, gunzip, tee, blockdev, ...);
* ``sfwrite`` (``sfwrite.c``, our image writer: stdin -> disk in 1 MiB blocks with SHA-256 on the stream and
  in-process gzip; compiled at build time with the host's ``gcc`` against ``libssl-dev``/``zlib1g-dev``);
* ``sfdisk`` (package ``fdisk``), ``wipefs``, ``partx``, ``blkdiscard`` and ``mkswap`` (``util-linux``; cleaning's
  zeroing and discard);
* for the file-based deploy (``layout.sh``) and multi-disk cleaning: ``mdadm``, ``lvm`` (``lvm2``; run without
  udev through ``/etc/lvm/lvm.conf``, :data:`LVM_CONF`), ``dmsetup``, ``mke2fs``/``e2fsck``/``resize2fs``
  (``e2fsprogs``, with its ``/etc/mke2fs.conf``), ``mkfs.fat`` (``dosfstools``), ``mkfs.xfs`` (``xfsprogs``) and
  ``efibootmgr``; all with the shared libraries they need,
  found by reading each binary's ``DT_NEEDED`` entries and copied from the Debian library packages (``libc6``,
  ``libfdisk1``, ...); a library that no listed package provides fails the build naming it;
* the kernel modules for virtio/SATA/SCSI/NVMe disks and virtio/e1000 NICs, software RAID (md raid0/1/10),
  device mapper, ext4, xfs, vfat (+ nls), efivarfs and loop (with their dependencies), loaded by ``/init`` at boot;
* our scripts: ``/init`` (``init.sh``), ``/sf/lib.sh``, ``/sf/deploy.sh``, ``/sf/clean.sh``, ``/sf/inspect.sh``,
  ``/sf/layout.sh`` and the udhcpc event script shared with the test stemcell (``stemcells/testimage/udhcpc.sh``).

Results are cached under ``<cache>/ramdisk/<key>/{vmlinuz,initrd.img,manifest.json}`` (``<cache>`` is
``$STEMFORGE_CACHE`` or ``~/.cache/stemforge``); ``<key>`` hashes every input (package versions, scripts, this
module's and the shared builder modules' sources, the module list).  Debian packages share the test image's download
cache.  Concurrent callers are safe: one build at a time under a file lock, each build in a private temporary
directory, published with one atomic ``rename``.  No CLI: the lab and the provisioning services call
:func:`ensure_ramdisk`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stemcells.testimage import debs, rootfs
from stemcells.testimage.debs import BuildSteps, ImageBuildError, Package, run
from stemforge_base.hashing import sha256_file

__all__ = ["RAMDISK_MODULES", "RamdiskArtifacts", "RamdiskBuildError", "ensure_ramdisk", "ramdisk_key"]

#: Bump when the output changes in a way the other inputs do not capture.
FORMAT_VERSION = "2"

#: Packages whose binaries go into the initramfs: package -> paths inside the package.
TOOL_PACKAGES: dict[str, tuple[str, ...]] = {
    "fdisk": ("sbin/sfdisk",),
    "util-linux": ("sbin/wipefs", "usr/bin/partx", "sbin/blkdiscard", "sbin/mkswap", "sbin/blkid"),
    # the file-based deploy (layout.sh) and multi-disk cleaning: RAID, LVM, filesystems, UEFI boot entries
    "mdadm": ("sbin/mdadm",),
    "lvm2": ("sbin/lvm",),
    "dmsetup": ("sbin/dmsetup",),
    "e2fsprogs": ("sbin/mke2fs", "sbin/e2fsck", "sbin/resize2fs"),
    "dosfstools": ("sbin/mkfs.fat",),
    "xfsprogs": ("sbin/mkfs.xfs",),
    "efibootmgr": ("bin/efibootmgr",),
}
#: Data files copied verbatim from the tool packages: package -> paths (same path in the initramfs).
DATA_FILES: dict[str, tuple[str, ...]] = {
    "e2fsprogs": ("etc/mke2fs.conf",),
}
#: Packages that provide the tools' shared libraries (and the dynamic loader).
LIB_PACKAGES = (
    "libc6",
    "libfdisk1",
    "libsmartcols1",
    "libblkid1",
    "libuuid1",
    "libreadline8",
    "libtinfo6",
    "libssl3",  # libcrypto.so.3 (SHA-256) for sfwrite
    "zlib1g",  # libz.so.1 (gzip images) for sfwrite
    # mdadm, lvm, dmsetup, e2fsprogs, xfsprogs, mkswap, efibootmgr
    "libudev1",
    "libaio1",
    "libdevmapper1.02.1",
    "libdevmapper-event1.02.1",
    "libedit2",
    "libbsd0",
    "libmd0",
    "libselinux1",
    "libpcre2-8-0",
    "libsystemd0",
    "liblzma5",
    "libzstd1",
    "liblz4-1",
    "libcap2",
    "libgcrypt20",
    "libgpg-error0",
    "libcom-err2",
    "libext2fs2",
    "libinih1",
    "liburcu8",
    "libefivar1",
    "libefiboot1",
)
#: Our image writer (C, compiled at build time with the host's gcc against libssl-dev/zlib1g-dev headers).
WRITER_SOURCE = "sfwrite.c"
WRITER_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
WRITER_LIBS = ("-lcrypto", "-lz")
#: Where shared libraries live inside Debian packages (and where the initramfs gets them).
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64")
LOADER = "lib64/ld-linux-x86-64.so.2"

#: Kernel modules loaded by /init (dependencies added; built-ins skipped).
RAMDISK_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "ahci",
    "ata_piix",
    "sd_mod",
    "nvme",
    "e1000",
    "e1000e",
    "af_packet",
    # file-based deploys and multi-disk cleaning (layout.sh, clean.sh): software RAID, LVM, the target's
    # filesystems (crc32c first: ext4/xfs ask the crypto API for it, and there is no modules.alias here), the ESP
    # (vfat with Debian's default codepage 437 / iocharset ascii and utf8), efivarfs for boot entries, loop
    "crc32c_generic",
    "md_mod",
    "raid0",
    "raid1",
    "raid10",
    "dm_mod",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "xfs",
    "efivarfs",
    "loop",
)

#: LVM without udev (the ramdisk has none): no udev sync or rules, the device list from /dev, no monitoring.
LVM_CONF = """\
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmetad = 0 }
"""

#: Our guest files (all part of the cache key): source name -> path in the initramfs.
SCRIPTS = {
    "init.sh": "init",
    "lib.sh": "sf/lib.sh",
    "deploy.sh": "sf/deploy.sh",
    "clean.sh": "sf/clean.sh",
    "inspect.sh": "sf/inspect.sh",
    "layout.sh": "sf/layout.sh",
}

_HERE = Path(__file__).resolve().parent
Progress = Callable[[str], None]


class RamdiskBuildError(ImageBuildError):
    """A build step failed.  ``step`` names it; the message says what went wrong."""

    BUILD = "deploy ramdisk build"


@dataclass(frozen=True)
class RamdiskArtifacts:
    """A built ramdisk: the kernel and initramfs to serve (treat them as read-only) and the cache key."""

    kernel: Path
    initrd: Path
    key: str

    @property
    def directory(self) -> Path:
        """The directory holding ``vmlinuz``, ``initrd.img`` and ``manifest.json``."""
        return self.kernel.parent


@dataclass(frozen=True)
class _Inputs:
    kernel: Package
    kernel_release: str
    packages: tuple[Package, ...]  # busybox-static, the tool and library packages


def _cache_dirs(cache_dir: Path | None) -> tuple[Path, Path]:
    """(test image cache root -- holds the shared ``debs/`` --, ramdisk cache root)."""
    ti_root = debs.cache_root(cache_dir)
    root = ti_root.parent / "ramdisk"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return ti_root, root


def _resolve(ti_root: Path) -> _Inputs:
    """The test image's kernel and busybox plus apt's candidates of the tool/library packages (the newest cached
    debs when apt cannot answer)."""
    base = debs.resolve_image_packages(ti_root)
    busybox = next(p for p in base.others if p.name == "busybox-static")
    names = [*TOOL_PACKAGES, *LIB_PACKAGES]
    memo = ti_root.parent / "ramdisk" / "resolved.json"
    fp = debs.apt_fingerprint()
    found: dict[str, Package] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(memo.read_text())
        if fp and doc["fingerprint"] == fp and doc["format"] == FORMAT_VERSION:
            found = {n: Package(*doc["packages"][n]) for n in names}
    if not found:
        try:
            cands = debs.apt_candidates(names)
            arch = debs.host_arch()
            missing = [n for n in names if n not in cands]
            if missing:
                raise RamdiskBuildError("resolve-packages", f"no apt candidate for {', '.join(missing)}")
            found = {n: Package(n, cands[n], arch) for n in names}
            if fp:
                tmp = memo.with_name(f".resolved.{os.getpid()}.tmp")
                doc = {
                    "fingerprint": fp,
                    "format": FORMAT_VERSION,
                    "packages": {n: list(p) for n, p in found.items()},
                }
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, memo)
        except ImageBuildError as exc:
            found = _resolve_from_debs(ti_root, names)
            if not found:
                raise RamdiskBuildError("resolve-packages", str(exc)) from exc
    return _Inputs(
        kernel=base.kernel,
        kernel_release=base.kernel_release,
        packages=(busybox, *(found[n] for n in names)),
    )


def _resolve_from_debs(ti_root: Path, names: list[str]) -> dict[str, Package]:
    """Offline fallback: the newest downloaded deb of every package, or {} when one is missing."""
    cached = debs.cached_debs(ti_root)
    return {n: cached[n] for n in names} if all(n in cached for n in names) else {}


def _key(inputs: _Inputs) -> str:
    doc = {
        "format": FORMAT_VERSION,
        "kernel": [inputs.kernel.name, inputs.kernel.version, inputs.kernel.arch],
        "packages": [[p.name, p.version, p.arch] for p in inputs.packages],
        "scripts": {f: hashlib.sha256((_HERE / f).read_bytes()).hexdigest() for f in SCRIPTS},
        "udhcpc": hashlib.sha256(rootfs.UDHCPC_SCRIPT.read_bytes()).hexdigest(),
        "writer": [hashlib.sha256((_HERE / WRITER_SOURCE).read_bytes()).hexdigest(), WRITER_CFLAGS, WRITER_LIBS],
        "build_py": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "testimage_py": [hashlib.sha256(p.read_bytes()).hexdigest() for p in rootfs.SHARED_SOURCES],
        "modules": list(RAMDISK_MODULES),
        "tools": TOOL_PACKAGES,
        "data": DATA_FILES,
        "lvm_conf": LVM_CONF,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def ramdisk_key(cache_dir: Path | None = None) -> str:
    """The cache key of the ramdisk the current inputs would build (resolves packages; does not build)."""
    ti_root, _ = _cache_dirs(cache_dir)
    return _key(_resolve(ti_root))


# ---------------------------------------------------------------- ELF


def elf_needed(data: bytes) -> list[str]:
    """The ``DT_NEEDED`` sonames of an ELF64 little-endian file ([] for anything else or a static binary)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []

    def u(off: int, n: int) -> int:
        return int.from_bytes(data[off : off + n], "little")

    shoff, shentsize, shnum = u(0x28, 8), u(0x3A, 2), u(0x3C, 2)
    sections = [
        (u(b + 4, 4), u(b + 0x18, 8), u(b + 0x20, 8), u(b + 0x28, 4))
        for b in (shoff + i * shentsize for i in range(shnum))
    ]
    out: list[str] = []
    for sh_type, off, size, link in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        str_off = sections[link][1]
        for e in range(off, off + size, 16):
            tag, val = u(e, 8), u(e + 8, 8)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_off + val)
                out.append(data[str_off + val : end].decode())
    return out


def _in_tree(tree: Path, rel: str) -> Path | None:
    """``rel`` inside the extracted package ``tree``, following symlinks (absolute ones re-rooted in the tree)."""
    p = tree / rel
    for _ in range(16):
        if p.is_symlink():
            target = os.readlink(p)
            p = tree / target.lstrip("/") if target.startswith("/") else p.parent / target
            continue
        return p if p.is_file() else None
    return None


def _find_lib(trees: list[Path], soname: str) -> Path | None:
    for tree in trees:
        for d in LIB_DIRS:
            found = _in_tree(tree, f"{d}/{soname}")
            if found is not None:
                return found
    return None


# ---------------------------------------------------------------- build


def _build(ti_root: Path, inputs: _Inputs, work: Path, steps: BuildSteps) -> Path:
    out = work / "out"
    out.mkdir()
    kpkg = inputs.kernel
    fetched = {p.name: debs.fetch_deb(ti_root, p, steps) for p in (kpkg, *inputs.packages)}
    kver = inputs.kernel_release
    with steps.step("modules", f"index {fetched[kpkg.name].name}"):
        index = rootfs.index_kernel_deb(fetched[kpkg.name], kver)
        mods = rootfs.module_closure(index, RAMDISK_MODULES)
    x = work / "x"
    with steps.step("extract", ", ".join(fetched)):
        kx = x / kpkg.name
        vmlinuz = rootfs.extract_kernel(fetched[kpkg.name], index, kver, mods, kx)
        for p in inputs.packages:
            run("extract", ["dpkg-deb", "-x", str(fetched[p.name]), str(x / p.name)])

    ird = work / "initramfs"
    with steps.step(
        "initramfs", f"{len(mods)} modules, tools {', '.join(t for ts in TOOL_PACKAGES.values() for t in ts)}"
    ):
        busybox = x / "busybox-static" / "bin" / "busybox"
        rootfs.install_busybox(busybox, ird, rootfs.busybox_links(busybox))
        for d in ("proc", "sys", "dev", "run", "tmp", "etc/lvm", "sf", "usr/share/udhcpc", "target"):
            (ird / d).mkdir(parents=True, exist_ok=True)
        (ird / "etc/lvm/lvm.conf").write_text(LVM_CONF)
        os.chmod(ird / "tmp", 0o1777)
        for script, target in SCRIPTS.items():
            _copy(_HERE / script, ird / target, 0o755)
        _copy(rootfs.UDHCPC_SCRIPT, ird / "sf/udhcpc.sh", 0o755)
        (ird / "usr/share/udhcpc/default.script").symlink_to("/sf/udhcpc.sh")
        (ird / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (ird / "etc/group").write_text("root:x:0:\n")
        libraries = _install_tools(x, ird)
        rootfs.copy_modules(kx / index.moddir, ird / "lib/modules" / kver, mods)
        (ird / "lib/modules" / kver / "modules.dep").write_text(rootfs.modules_dep(index, mods))
        (ird / "etc/modules.load").write_text("".join(m + "\n" for m in mods))
        (ird / "etc/ramdisk.json").write_text(
            json.dumps({"kernel_release": kver, "packages": {p.name: p.version for p in inputs.packages}}) + "\n"
        )
        rootfs.pack_initramfs(ird, out / "initrd.img")
        shutil.copyfile(vmlinuz, out / "vmlinuz")
    with steps.step("manifest"):
        manifest = {
            "format": FORMAT_VERSION,
            "kernel_release": kver,
            "packages": {p.name: p.version for p in (kpkg, *inputs.packages)},
            "modules": mods,
            "libraries": libraries,
            "files": {
                f: {"size": (out / f).stat().st_size, "sha256": sha256_file(out / f)} for f in ("vmlinuz", "initrd.img")
            },
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


def _install_tools(x: Path, ird: Path) -> list[str]:
    """Install the tools of :data:`TOOL_PACKAGES` (from the packages unpacked below ``x``), the compiled ``sfwrite``,
    the dynamic loader and the closure of their shared libraries into the initramfs tree ``ird``; return the
    libraries' sonames, sorted."""
    pending: list[Path] = []
    for pkg, paths in TOOL_PACKAGES.items():
        for rel in paths:
            src = _in_tree(x / pkg, rel)
            if src is None:
                raise RamdiskBuildError("initramfs", f"package {pkg} has no {rel}")
            dest = ird / "usr/sbin" / Path(rel).name
            if dest.is_symlink():
                dest.unlink()  # a busybox applet of the same name: the real tool wins
            _copy(src, dest, 0o755)
            pending.append(dest)
    writer = ird / "usr/sbin/sfwrite"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RamdiskBuildError(
            "initramfs", "no C compiler (gcc) to build sfwrite; install gcc, libssl-dev, zlib1g-dev"
        )
    run("initramfs", [cc, *WRITER_CFLAGS, "-o", str(writer), str(_HERE / WRITER_SOURCE), *WRITER_LIBS])
    if shutil.which("strip"):
        run("initramfs", ["strip", str(writer)])
    pending.append(writer)
    loader = _in_tree(x / "libc6", LOADER)
    if loader is None:
        raise RamdiskBuildError("initramfs", f"libc6 has no {LOADER}")
    _copy(loader, ird / LOADER, 0o755)
    lib_trees = [x / n for n in LIB_PACKAGES]
    done: set[str] = set()
    while pending:
        binary = pending.pop()
        for soname in elf_needed(binary.read_bytes()):
            if soname in done:
                continue
            lib = _find_lib(lib_trees, soname)
            if lib is None:
                raise RamdiskBuildError(
                    "initramfs", f"{binary.name} needs {soname}, which none of {', '.join(LIB_PACKAGES)} provides"
                )
            dest = ird / "lib/x86_64-linux-gnu" / soname
            _copy(lib, dest, 0o755)
            done.add(soname)
            pending.append(dest)
    (ird / "etc/ld.so.conf").write_text("/lib/x86_64-linux-gnu\n")
    for pkg, paths in DATA_FILES.items():
        for rel in paths:
            src = _in_tree(x / pkg, rel)
            if src is None:
                raise RamdiskBuildError("initramfs", f"package {pkg} has no {rel}")
            _copy(src, ird / rel, 0o644)
    return sorted(done)


def _copy(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, mode)


def ensure_ramdisk(cache_dir: Path | None = None, progress: Progress | None = None) -> RamdiskArtifacts:
    """Build (once) the deploy ramdisk and return its kernel and initramfs.

    A cached build of the same inputs is returned at once.  ``progress`` receives one line per step with the elapsed
    time.  Concurrent callers (several processes) are safe.  Any failure removes the build's temporary files and
    raises :class:`RamdiskBuildError` naming the step (a failed package download or resolution included).
    """
    steps = BuildSteps(progress)
    try:
        with steps.step("resolve-packages"):
            ti_root, root = _cache_dirs(cache_dir)
            inputs = _resolve(ti_root)
            key = _key(inputs)
        final = root / key
        debs.build_once(
            root / "tmp",
            final,
            (final / "manifest.json").is_file,
            lambda work: _build(ti_root, inputs, work, steps),
            steps,
            prefix=f"build-{key}-",
            shown=final,
        )
    except RamdiskBuildError:
        raise
    except ImageBuildError as exc:
        raise RamdiskBuildError(exc.step, str(exc)) from exc
    return RamdiskArtifacts(kernel=final / "vmlinuz", initrd=final / "initrd.img", key=key)
