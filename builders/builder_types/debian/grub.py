"""GRUB for BIOS without a loop device: the tree's own ``grub-mkimage`` makes ``core.img`` (inside the chroot, so
core and modules are the same GRUB version), and :func:`install_mbr` does what ``grub-bios-setup`` does for an
msdos disk with a post-MBR gap: ``boot.img`` into the MBR (keeping the partition table), ``core.img`` embedded
from sector 1, the two patched to find each other.

The patch offsets are GRUB's i386-pc ABI (``include/grub/i386/pc/boot.h``), stable since GRUB 2.00.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from builders.core import BuildError

SECTOR = 512
#: ``GRUB_BOOT_MACHINE_BPB_START/END``: the (possible) BIOS parameter block kept from the disk.
BPB_START, BPB_END = 0x03, 0x5A
#: ``GRUB_BOOT_MACHINE_KERNEL_SECTOR``: u64 LBA of core.img's first sector.
KERNEL_SECTOR = 0x5C
#: ``GRUB_BOOT_MACHINE_BOOT_DRIVE``: 0xff = use the drive the BIOS booted from.
BOOT_DRIVE = 0x64
#: ``GRUB_BOOT_MACHINE_DRIVE_CHECK``: a 2-byte jmp that grub-bios-setup NOPs for hard disks.
DRIVE_CHECK = 0x66
#: ``GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC``: from here on the MBR (disk signature, partition table) is kept.
PART_START = 0x1B8
#: diskboot.img's first blocklist entry sits at the end of core.img's first sector: u64 start, u16 len, u16 seg.
BLOCKLIST = SECTOR - 12
#: Segment the rest of core.img is loaded to (``GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20``).
KERNEL_SEG = 0x820

GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "search_fs_uuid", "normal", "linux", "serial", "terminal")


def grub_cfg(root_uuid: str, kernel: str, initrd: str | None, cmdline: str) -> str:
    """A static grub.cfg booting the one kernel with the serial console (update-grub needs a real device)."""
    lines = [
        "# Written by stemforge's debian builder. 'update-grub' on the booted system replaces it.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set default=0",
        "set timeout=1",
        "insmod part_msdos",
        "insmod ext2",
        f"search --no-floppy --fs-uuid --set=root {root_uuid}",
        "menuentry 'Debian GNU/Linux' {",
        f"    linux {kernel} root=UUID={root_uuid} ro {cmdline}",
    ]
    if initrd:
        lines.append(f"    initrd {initrd}")
    lines += ["}", ""]
    return "\n".join(lines)


DEFAULT_GRUB = """# stemforge: serial console so the image is usable headless (kept by update-grub)
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{cmdline}"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""


def prepare_boot_dir(tree: Path, root_uuid: str) -> tuple[Path, Path]:
    """Copy the i386-pc modules to /boot/grub/i386-pc and write the early config that finds the root by UUID.
    Returns (boot.img, early config path inside the tree as a host path)."""
    src = tree / "usr" / "lib" / "grub" / "i386-pc"
    if not (src / "boot.img").is_file():
        raise BuildError("finalise: grub-pc's i386-pc files are missing from the tree (is grub-pc installed?)")
    dest = tree / "boot" / "grub" / "i386-pc"
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix in (".mod", ".lst", ".img") or item.name == "modinfo.sh":
            shutil.copy2(item, dest / item.name)
    early = dest / "load.cfg"
    early.write_text(f"search.fs_uuid {root_uuid} root\nset prefix=($root)/boot/grub\n")
    return src / "boot.img", early


def mkimage_argv() -> list[str]:
    """The ``grub-mkimage`` command run inside the chroot (paths are the chroot's)."""
    return ["grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc", "-c", "/boot/grub/i386-pc/load.cfg",
            "-p", "/boot/grub", "-o", "/boot/grub/i386-pc/core.img", *GRUB_MODULES]


def install_mbr(image: Path, boot_img: Path, core_img: Path, first_partition_sector: int) -> None:
    """Write GRUB's boot.img into the MBR of ``image`` and embed core.img from sector 1 (grub-bios-setup's work
    for an msdos disk). Raises BuildError if core.img does not fit before the first partition."""
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != SECTOR:
        raise BuildError(f"disk: {boot_img} is {len(boot)} bytes, expected {SECTOR}")
    if len(core) % SECTOR:
        core += b"\0" * (SECTOR - len(core) % SECTOR)
    sectors = len(core) // SECTOR
    if 1 + sectors > first_partition_sector:
        raise BuildError(f"disk: core.img ({sectors} sectors) does not fit before the first partition "
                         f"(sector {first_partition_sector})")
    with open(image, "r+b") as fh:
        mbr = bytearray(fh.read(SECTOR))
        if mbr[510:512] != b"\x55\xaa":
            raise BuildError(f"disk: {image} has no partition table to keep")
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        struct.pack_into("<Q", boot, KERNEL_SECTOR, 1)
        boot[BOOT_DRIVE] = 0xFF
        boot[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
        mbr[:PART_START] = boot[:PART_START]
        struct.pack_into("<QHH", core, BLOCKLIST, 2, sectors - 1, KERNEL_SEG)
        fh.seek(0)
        fh.write(mbr)
        fh.seek(SECTOR)
        fh.write(core)
