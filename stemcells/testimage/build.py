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
input (package versions, guest files, the builder's sources -- this module,
:mod:`~stemcells.testimage.debs` and :mod:`~stemcells.testimage.rootfs` --, layout constants).  The cache is
safe for concurrent callers: one build at a time under a file lock, each build in its own
temporary directory, published with one atomic ``rename``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stemcells.testimage import rootfs
from stemcells.testimage.debs import (
    BUILD_FORMAT_VERSION,
    BuildSteps,
    ImageBuildError,
    ImageInputs,
    build_once,
    cache_root,
    deb_field,
    fetch_deb,
    resolve_image_packages,
    run,
)
from stemcells.testimage.rootfs import (
    KernelIndex,
    busybox_links,
    copy_modules,
    extract_kernel,
    index_kernel_deb,
    install_busybox,
    module_closure,
    modules_dep,
    pack_initramfs,
)
from stemforge_base.hashing import sha256_file

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

_HERE = Path(__file__).resolve().parent
#: The sources whose text decides the build's output (part of the cache key).
_BUILDER_SOURCES = (Path(__file__), *rootfs.SHARED_SOURCES)


def _cache_key(inputs: ImageInputs) -> str:
    h = hashlib.sha256()
    doc = {
        "format": BUILD_FORMAT_VERSION,
        "packages": [[p.name, p.version, p.arch] for p in inputs.packages],
        "guest": {f: hashlib.sha256((_HERE / f).read_bytes()).hexdigest() for f in GUEST_FILES},
        "build_py": [hashlib.sha256(p.read_bytes()).hexdigest() for p in _BUILDER_SOURCES],
        "layout": [DISK_SIZE_MIB, BOOT_START_MIB, BOOT_SIZE_MIB, KERNEL_CMDLINE, ROOT_UUID, MBR_DISK_ID],
        "modules": [INITRAMFS_MODULES, ROOT_MODULES],
    }
    h.update(json.dumps(doc, sort_keys=True).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- build steps


def _guest_file(name: str, dest: Path, mode: int = 0o755) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_HERE / name, dest)
    os.chmod(dest, mode)


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


@dataclass(frozen=True)
class _Unpacked:
    """The extracted packages: the kernel (its index, modules dir and the chosen modules) and the tools."""

    vmlinuz: Path
    index: KernelIndex
    moddir: Path
    initrd_mods: list[str]
    root_mods: list[str]
    busybox: Path
    sl_common: Path  # syslinux-common's usr/lib/syslinux
    syslinux_bin: Path


def _build(root: Path, inputs: ImageInputs, work: Path, steps: BuildSteps, *, phone_home: bool = True) -> Path:
    """Build into ``work``; return the finished output directory (``work/image``). ``phone_home=False`` bakes
    ``/etc/stemforge/no-phone-home`` into the root: the agent then reads and prints the config drive only."""
    out = work / "image"
    (out / "qcow2").mkdir(parents=True)
    (out / "raw").mkdir(parents=True)

    with steps.step("check-tools"):
        missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
        if missing:
            raise ImageBuildError("check-tools", f"missing host tools: {', '.join(missing)}")

    fetched = {pkg.name: fetch_deb(root, pkg, steps) for pkg in inputs.packages}
    tree = _unpack(inputs, fetched, work / "x", steps)

    tree_dir = work / "rootfs"
    with steps.step("rootfs", f"{len(tree.root_mods)} modules"):
        links = busybox_links(tree.busybox)
        _make_rootfs(tree_dir, tree, links, inputs, phone_home)

    initrd = work / "initrd.img"
    with steps.step("initramfs", f"{len(tree.initrd_mods)} modules"):
        _make_initramfs(work / "initramfs", initrd, tree, links, inputs.kernel_release)

    root_part = work / "root.part"
    with steps.step("root-partition", f"ext4 {ROOT_SIZE_MIB} MiB"):
        _make_root_partition(tree_dir, root_part)

    boot_part = work / "boot.part"
    with steps.step("boot-partition", f"FAT16 {BOOT_SIZE_MIB} MiB + syslinux"):
        _make_boot_partition(boot_part, work / "syslinux.cfg", tree, initrd)

    disk = work / "disk.raw"
    with steps.step("disk", f"MBR, {DISK_SIZE_MIB} MiB"):
        _make_disk(disk, tree, boot_part, root_part)

    with steps.step("convert", "qcow2 (compressed) and raw"):
        run(
            "convert",
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", str(disk), str(out / "qcow2" / "root.img")],
        )
        os.replace(disk, out / "raw" / "root.img")

    with steps.step("manifest"):
        _write_manifest(out, inputs, fetched, tree)
    return out


def _unpack(inputs: ImageInputs, fetched: dict[str, Path], x: Path, steps: BuildSteps) -> _Unpacked:
    """Index the kernel package, choose the modules, extract the kernel and unpack the other packages below ``x``."""
    kver = inputs.kernel_release
    kdeb = fetched[inputs.kernel.name]
    with steps.step("modules", f"index {kdeb.name}"):
        index = index_kernel_deb(kdeb, kver)
        initrd_mods = module_closure(index, INITRAMFS_MODULES)
        root_mods = module_closure(index, ROOT_MODULES)
    with steps.step("extract", ", ".join(p.name for p in fetched.values())):
        x.mkdir()
        kx = x / inputs.kernel.name
        vmlinuz = extract_kernel(kdeb, index, kver, root_mods, kx)
        for name, deb in fetched.items():
            if name != inputs.kernel.name:
                run("extract", ["dpkg-deb", "-x", str(deb), str(x / name)])
    return _Unpacked(
        vmlinuz=vmlinuz,
        index=index,
        moddir=kx / index.moddir,
        initrd_mods=initrd_mods,
        root_mods=root_mods,
        busybox=x / "busybox-static" / "bin" / "busybox",
        sl_common=x / "syslinux-common" / "usr/lib/syslinux",
        syslinux_bin=x / "syslinux" / "usr/bin/syslinux",
    )


#: The directories of the root filesystem (besides busybox's).
_ROOT_DIRS = (
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
)


def _make_rootfs(dest: Path, tree: _Unpacked, links: list[str], inputs: ImageInputs, phone_home: bool) -> None:
    """The root filesystem's tree: busybox, our guest files, ``/etc`` and the root's kernel modules."""
    install_busybox(tree.busybox, dest, links)
    for d in _ROOT_DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    _guest_file("rcS.sh", dest / "etc/init.d/rcS")
    _guest_file("inittab.cfg", dest / "etc/inittab", 0o644)
    _guest_file("agent.sh", dest / "stemforge/agent.sh")
    _guest_file("json.awk", dest / "stemforge/json.awk", 0o644)
    _guest_file("udhcpc.sh", dest / "stemforge/udhcpc.sh")
    _guest_file("diskresolve.sh", dest / "stemforge/diskresolve.sh", 0o644)
    # the stock OpenStack stemcell's agent.json: the test agent resolves disks by its Platform.Linux keys
    _guest_file("agent.json", dest / "var/vcap/bosh/agent.json", 0o644)
    for link in ("usr/share/udhcpc/default.script", "etc/udhcpc/default.script"):
        (dest / link).symlink_to("/stemforge/udhcpc.sh")
    power = dest / "etc/acpi/PWRF/00000080"  # busybox acpid: power button pressed
    power.parent.mkdir(parents=True)
    power.write_text("#!/bin/sh\nexec /sbin/poweroff\n")
    os.chmod(power, 0o755)
    _write_etc(dest / "etc", tree, inputs, phone_home)
    kver = inputs.kernel_release
    rmod = dest / "lib/modules" / kver
    copy_modules(tree.moddir, rmod, tree.root_mods)
    (rmod / "modules.dep").write_text(modules_dep(tree.index, tree.root_mods))


def _write_etc(etc: Path, tree: _Unpacked, inputs: ImageInputs, phone_home: bool) -> None:
    """The root's ``/etc`` files: identity, accounts, fstab, the module list and the image's description."""
    (etc / "hostname").write_text("stemforge\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o600)
    (etc / "group").write_text("root:x:0:\n")
    (etc / "resolv.conf").write_text("")
    (etc / "fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 rw 0 1\n")
    (etc / "stemforge/modules.load").write_text("".join(m + "\n" for m in tree.root_mods))
    if not phone_home:  # the agent.sh guard: behave like a stock agent that calls nothing of ours
        (etc / "stemforge/no-phone-home").write_text("built with phone_home=False: the agent never phones home\n")
    (etc / "stemforge/image.json").write_text(
        json.dumps(
            {
                "kernel_release": inputs.kernel_release,
                "packages": {p.name: p.version for p in inputs.packages},
                "build_format": BUILD_FORMAT_VERSION,
            },
            indent=1,
        )
        + "\n"
    )


def _make_initramfs(ird: Path, initrd: Path, tree: _Unpacked, links: list[str], kver: str) -> None:
    """The initramfs: busybox, ``/init`` (``init.sh``) and the storage/ext4 modules, packed to ``initrd``."""
    install_busybox(tree.busybox, ird, links)
    for d in ("proc", "sys", "dev", "run", "newroot", "etc"):
        (ird / d).mkdir(parents=True, exist_ok=True)
    _guest_file("init.sh", ird / "init")
    (ird / "etc/modules.load").write_text("".join(m + "\n" for m in tree.initrd_mods))
    copy_modules(tree.moddir, ird / "lib/modules" / kver, tree.initrd_mods)
    (ird / "lib/modules" / kver / "modules.dep").write_text(modules_dep(tree.index, tree.initrd_mods))
    pack_initramfs(ird, initrd)


def _make_root_partition(tree_dir: Path, root_part: Path) -> None:
    """The ext4 root partition image, filled from ``tree_dir`` (``mke2fs -d``; fixed UUID, hash seed and time)."""
    run(
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
            str(tree_dir),
            str(root_part),
            f"{ROOT_SIZE_MIB}M",
        ],
        env={"E2FSPROGS_FAKE_TIME": "1700000000"},
    )


def _make_boot_partition(boot_part: Path, cfg_file: Path, tree: _Unpacked, initrd: Path) -> None:
    """The FAT16 boot partition image: kernel, initramfs, ``syslinux.cfg`` (written to ``cfg_file`` first) and
    syslinux installed into it (mtools, no mounts)."""
    hidden = BOOT_START_MIB * MIB // SECTOR
    run(
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
    cfg_file.write_text((_HERE / "syslinux.cfg").read_text().replace("@APPEND@", KERNEL_CMDLINE))
    ldlinux_c32 = tree.sl_common / "modules/bios/ldlinux.c32"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    for src, name in (
        (tree.vmlinuz, "vmlinuz"),
        (initrd, "initrd.img"),
        (cfg_file, "syslinux.cfg"),
        (ldlinux_c32, "ldlinux.c32"),
    ):
        run("boot-partition", ["mcopy", "-o", "-i", str(boot_part), str(src), f"::/{name}"], env=env)
    run("boot-partition", [str(tree.syslinux_bin), "--install", str(boot_part)], env=env)
    listing = run("boot-partition", ["mdir", "-a", "-b", "-i", str(boot_part), "::/"], env=env)
    if "ldlinux.sys" not in listing.lower():
        raise ImageBuildError("boot-partition", f"syslinux did not install ldlinux.sys: {listing}")


def _make_disk(disk: Path, tree: _Unpacked, boot_part: Path, root_part: Path) -> None:
    """The whole disk: MBR partition table (``sfdisk``), syslinux's ``mbr.bin`` and both partitions in place."""
    with open(disk, "wb") as fh:
        fh.truncate(DISK_SIZE_MIB * MIB)
    spt = MIB // SECTOR
    script = (
        f"label: dos\nlabel-id: {MBR_DISK_ID}\nunit: sectors\n\n"
        f"start={BOOT_START_MIB * spt}, size={BOOT_SIZE_MIB * spt}, type=e, bootable\n"
        f"start={ROOT_START_MIB * spt}, size={ROOT_SIZE_MIB * spt}, type=83\n"
    )
    run("disk", ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk)], stdin=script.encode())
    mbr = (tree.sl_common / "mbr/mbr.bin").read_bytes()
    if len(mbr) > 440:
        raise ImageBuildError("disk", "mbr.bin is larger than 440 bytes")
    with open(disk, "r+b") as dfh:
        dfh.write(mbr)
    _place(boot_part, disk, BOOT_START_MIB * MIB)
    _place(root_part, disk, ROOT_START_MIB * MIB)


def _write_manifest(out: Path, inputs: ImageInputs, fetched: dict[str, Path], tree: _Unpacked) -> None:
    """``packages.txt``, the bare kernel and ``manifest.json`` beside the images in ``out``."""
    rows = []
    for pkg in inputs.packages:
        desc = deb_field(fetched[pkg.name], "Description").splitlines()[0]
        rows.append((pkg.name, pkg.version, pkg.arch, desc))
    (out / "packages.txt").write_text(_packages_txt(rows))
    # the bare kernel beside the image: what the CPI's KVM probe boots (cpi.providers.libvirt.accel)
    shutil.copyfile(tree.vmlinuz, out / "vmlinuz")
    manifest = {
        "build_format": BUILD_FORMAT_VERSION,
        "kernel_release": inputs.kernel_release,
        "kernel_cmdline": KERNEL_CMDLINE,
        "packages": {p.name: p.version for p in inputs.packages},
        "disk_size_mib": DISK_SIZE_MIB,
        "partitions": _PARTITIONS,
        "mbr_disk_id": MBR_DISK_ID,
        "modules": {"initramfs": tree.initrd_mods, "root": tree.root_mods},
        "files": {
            fmt: {"size": (out / fmt / "root.img").stat().st_size, "sha256": sha256_file(out / fmt / "root.img")}
            for fmt in ("qcow2", "raw")
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


#: The partition table as the manifest describes it.
_PARTITIONS = [
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
]

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
    steps = BuildSteps(progress)
    with steps.step("resolve-packages"):
        root = cache_root(cache_dir)
        inputs = resolve_image_packages(root)
        key = _cache_key(inputs)
    final = root / "images" / (key if phone_home else f"{key}-no-phone-home")
    result = final / fmt / "root.img"
    build_once(
        root / "tmp", final, result.is_file, lambda work: _build(root, inputs, work, steps, phone_home=phone_home),
        steps, prefix=f"build-{key}-", shown=result,
    )
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
    return resolve_image_packages(cache_root(cache_dir)).kernel_release


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
