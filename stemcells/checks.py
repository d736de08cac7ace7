"""``stemforge doctor``'s checks for stemcell images: what the test image build (:mod:`stemcells.testimage.build`)
and bootable disk images need on the host: mke2fs, mtools, syslinux's MBR, a statically linked busybox and the
build's host tools (warnings only).

The framework and its contracts (bounded, no network, nothing changed) are :mod:`stemforge_base.checks`.
"""

from __future__ import annotations

import struct

from stemcells.testimage.build import HOST_TOOLS
from stemforge_base.checks import (
    IMAGES,
    Check,
    CheckFn,
    Context,
    apt_fix,
    check_binary,
    check_file,
    find_binary,
    first_line,
    run,
)

#: syslinux's MBR boot code (Debian's syslinux-common), written into the test image's partition table.
SYSLINUX_MBR = "/usr/lib/syslinux/mbr/mbr.bin"
#: Debian package providing each host tool the test image build runs (for the fix line).
TOOL_PACKAGES = {
    "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "mke2fs": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "mcopy": "mtools", "mattrib": "mtools", "sfdisk": "fdisk", "qemu-img": "qemu-utils",
}


def check_image_tools(ctx: Context) -> list[Check]:
    """mke2fs, mtools, syslinux's MBR, a static busybox, and the test image build's host tools."""
    opts = ctx.options
    found = [
        check_binary("mke2fs", package="e2fsprogs", required_for=IMAGES, version_args=("-V",), path=opts.path,
                     timeout=opts.timeout),
        check_binary("mtools", binary="mcopy", package="mtools", required_for=IMAGES, path=opts.path,
                     timeout=opts.timeout),
        check_file("syslinux", (SYSLINUX_MBR,), package="syslinux-common", required_for=IMAGES),
        check_busybox_static(opts.path, opts.timeout),
    ]
    missing = [t for t in HOST_TOOLS if find_binary(t, opts.path) is None]
    if missing:
        packages = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
        found.append(Check("test image tools", False, f"missing {', '.join(missing)}", apt_fix(*packages), IMAGES))
    else:
        found.append(Check("test image tools", True, " ".join(HOST_TOOLS), None, IMAGES))
    return found


def check_busybox_static(path: str | None = None, timeout: float = 10.0) -> Check:
    """A statically linked ``busybox`` (Debian's busybox-static) on the search path."""
    exe = find_binary("busybox", path)
    if exe is None:
        return Check("busybox-static", False, "busybox not found", apt_fix("busybox-static"), IMAGES)
    static = elf_is_static(exe)
    _, out = run([exe, "--help"], timeout)
    version = first_line(out).removesuffix(" multi-call binary.")
    if static is False:
        return Check("busybox-static", False, f"{exe} is dynamically linked ({version})", apt_fix("busybox-static"),
                     IMAGES)
    return Check("busybox-static", True, f"{version} at {exe}, statically linked", None, IMAGES)


def elf_is_static(path: str) -> bool | None:
    """Whether the ELF file at ``path`` has no program interpreter (statically linked); None if not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                return None
            is64, little = head[4] == 2, head[5] == 1
            order = "<" if little else ">"
            if is64:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return None
    for i in range(phnum):
        p_type, = struct.unpack_from(order + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def checks() -> tuple[CheckFn, ...]:
    """This package's checks, in report order."""
    return (check_image_tools,)
