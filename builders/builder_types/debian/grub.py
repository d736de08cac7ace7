"""GRUB without a loop device, for BIOS and UEFI.

BIOS (i386-pc): the tree's own ``grub-mkimage`` makes ``core.img`` (inside the chroot, so core and modules are the
same GRUB version), and :func:`install_boot_code` does what ``grub-bios-setup`` does: ``boot.img`` into the MBR
(keeping the partition table, or GPT's protective MBR), ``core.img`` embedded in the post-MBR gap (msdos) or in the
``bios_grub`` partition (GPT), the two patched to find each other.

UEFI (x86_64-efi): ``grub-mkimage -O x86_64-efi`` makes a ``core.efi`` whose prefix is ``/EFI/BOOT`` on the device
it was loaded from; it is copied to the EFI system partition as ``\\EFI\\BOOT\\BOOTX64.EFI`` (the removable-media
path, booted without NVRAM entries) beside a ``grub.cfg`` that finds the root filesystem by UUID and reads its
``/boot/grub/grub.cfg`` -- the layout of Debian's ``grub-install --removable`` (grub-core/kern/efi/init.c sets the
prefix's device from the loaded image). Both platforms share ``/boot/grub/grub.cfg`` and load further modules
from ``/boot/grub/<platform>/``.

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
#: core.img's modules on a GPT disk (the msdos list stays as it was: its images do not change).
GRUB_MODULES_GPT = ("biosdisk", "part_gpt", "part_msdos", "ext2", "search_fs_uuid", "normal", "linux", "serial",
                    "terminal")
#: core.efi's modules: enough to read the ESP's grub.cfg and find the root; the rest is loaded from the root.
EFI_MODULES = ("part_gpt", "part_msdos", "fat", "ext2", "search_fs_uuid", "configfile", "normal", "linux",
               "serial", "terminal", "efi_gop")
#: The ESP paths (relative to its root) of the UEFI loader and its config.
EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"
EFI_CONFIG = "EFI/BOOT/grub.cfg"


def grub_cfg(root_uuid: str, kernel: str, initrd: str | None, cmdline: str, table: str = "msdos") -> str:
    """A static grub.cfg booting the one kernel with the serial console (update-grub needs a real device)."""
    lines = [
        "# Written by stemforge's debian builder. 'update-grub' on the booted system replaces it.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set default=0",
        "set timeout=1",
        f"insmod part_{table}",
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


def mkimage_argv(table: str = "msdos") -> list[str]:
    """The ``grub-mkimage`` command run inside the chroot (paths are the chroot's)."""
    modules = GRUB_MODULES_GPT if table == "gpt" else GRUB_MODULES
    return ["grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc", "-c", "/boot/grub/i386-pc/load.cfg",
            "-p", "/boot/grub", "-o", "/boot/grub/i386-pc/core.img", *modules]


def prepare_efi_dir(tree: Path) -> Path:
    """Copy the x86_64-efi modules to /boot/grub/x86_64-efi (what the root's grub.cfg loads on UEFI); returns
    where :func:`efi_mkimage_argv` writes core.efi (a host path)."""
    src = tree / "usr" / "lib" / "grub" / "x86_64-efi"
    if not (src / "kernel.img").is_file():
        raise BuildError("finalise: GRUB's x86_64-efi files are missing from the tree (is grub-efi-amd64-bin "
                         "installed?)")
    dest = tree / "boot" / "grub" / "x86_64-efi"
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix in (".mod", ".lst") or item.name == "modinfo.sh":
            shutil.copy2(item, dest / item.name)
    return dest / "core.efi"


def efi_mkimage_argv() -> list[str]:
    """The ``grub-mkimage`` command (inside the chroot) making the UEFI loader: prefix ``/EFI/BOOT`` on the device
    it is loaded from, where :func:`efi_stub_cfg` is."""
    return ["grub-mkimage", "-O", "x86_64-efi", "-d", "/usr/lib/grub/x86_64-efi", "-p", "/EFI/BOOT",
            "-o", "/boot/grub/x86_64-efi/core.efi", *EFI_MODULES]


def efi_stub_cfg(root_uuid: str) -> str:
    """The ESP's ``EFI/BOOT/grub.cfg``: find the root filesystem and hand over to its grub.cfg (as Debian's
    ``grub-install`` writes for a separate /boot, util/grub-install.c ``load.cfg``/``grub.cfg`` stub)."""
    return (f"search.fs_uuid {root_uuid} root\n"
            "set prefix=($root)/boot/grub\n"
            "configfile $prefix/grub.cfg\n")


def install_mbr(image: Path, boot_img: Path, core_img: Path, first_partition_sector: int) -> None:
    """Write GRUB's boot.img into the MBR of ``image`` and embed core.img from sector 1 (grub-bios-setup's work
    for an msdos disk). Raises BuildError if core.img does not fit before the first partition."""
    install_boot_code(image, boot_img, core_img, 1, first_partition_sector)


def install_boot_code(image: Path, boot_img: Path, core_img: Path, core_sector: int, end_sector: int) -> None:
    """Write GRUB's boot.img into the MBR of ``image`` (keeping its partition table, or GPT's protective MBR) and
    core.img at ``core_sector``, which must end before ``end_sector``: sector 1 up to the first partition on an
    msdos disk, the ``bios_grub`` partition on a GPT disk (util/setup.c's two embedding cases)."""
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != SECTOR:
        raise BuildError(f"disk: {boot_img} is {len(boot)} bytes, expected {SECTOR}")
    if len(core) % SECTOR:
        core += b"\0" * (SECTOR - len(core) % SECTOR)
    sectors = len(core) // SECTOR
    if core_sector < 1 or core_sector + sectors > end_sector:
        raise BuildError(f"disk: core.img ({sectors} sectors) does not fit between sector {core_sector} and the "
                         f"sector {end_sector}")
    with open(image, "r+b") as fh:
        mbr = bytearray(fh.read(SECTOR))
        if mbr[510:512] != b"\x55\xaa":
            raise BuildError(f"disk: {image} has no partition table to keep")
        boot[BPB_START:BPB_END] = mbr[BPB_START:BPB_END]
        struct.pack_into("<Q", boot, KERNEL_SECTOR, core_sector)
        boot[BOOT_DRIVE] = 0xFF
        boot[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
        mbr[:PART_START] = boot[:PART_START]
        struct.pack_into("<QHH", core, BLOCKLIST, core_sector + 1, sectors - 1, KERNEL_SEG)
        fh.seek(0)
        fh.write(mbr)
        fh.seek(core_sector * SECTOR)
        fh.write(core)
