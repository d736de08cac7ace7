"""The layout deploy's decisions, run as the ramdisk runs them: functions of ``ramdisk/layout.sh`` under busybox sh
(the ramdisk's shell, Debian's busybox-static) against a target tree made here.

``grub_cfg_current`` decides whether the image's grub.cfg is kept or update-grub runs, ``initramfs_current``
whether the image's initramfs is kept or update-initramfs runs: a wrong "kept" leaves a server that does not boot,
a wrong "rebuilt" costs ~35 s (update-grub) or ~20 min (update-initramfs) of emulated chroot work per deploy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

LAYOUT_SH = Path(__file__).resolve().parents[2] / "cpi" / "providers" / "baremetal" / "ramdisk" / "layout.sh"
UUID = "9dc1610f-3705-4757-a191-6e8886d2cc95"
#: What the debian builder writes (builders/builder_types/debian/grub.py grub_cfg).
BUILDER_CFG = f"""# Written by stemforge's debian builder. 'update-grub' on the booted system replaces it.
set timeout=1
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root {UUID}
menuentry 'Debian GNU/Linux' {{
    linux /boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro console=ttyS0,115200n8
    initrd /boot/initrd.img-6.1.0-50-amd64
}}
"""
#: The shape update-grub (grub-mkconfig 10_linux) writes, tabs and hints included.
UPDATE_GRUB_CFG = f"""menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-{UUID}' {{
\tinsmod part_gpt
\tinsmod ext2
\tsearch --no-floppy --fs-uuid --set=root --hint-bios=hd0,gpt3 --hint-efi=hd0,gpt3 {UUID}
\tlinux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro  quiet
\tinitrd\t/boot/initrd.img-6.1.0-50-amd64
}}
menuentry 'Debian GNU/Linux, recovery' {{
\tsearch --no-floppy --fs-uuid --set=root {UUID}
\tlinux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro single
\tinitrd\t/boot/initrd.img-6.1.0-50-amd64
}}
"""


def run_function(name: str, setup: str, report: str) -> str:
    """Define layout.sh's function ``name`` in busybox sh (its applets, as in the ramdisk), run ``setup``, then
    ``if name; then echo "kept..."; else echo "..."; fi`` as ``report`` says; its output."""
    found = shutil.which("busybox")
    if found is None:
        pytest.skip("busybox is not installed (scripts/apt-packages.txt installs busybox-static)")
    script = f"""
eval "$(sed -n '/^{name}()/,/^}}/p' '{LAYOUT_SH}')"
{setup}
{report}
"""
    proc = subprocess.run([found, "sh", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip()


def grub_cfg_current(tmp_path: Path, cfg: str | None, fs_lines: str = "r ext4 /\ne vfat /boot/efi\n",
                     files: tuple[str, ...] = ("vmlinuz-6.1.0-50-amd64", "initrd.img-6.1.0-50-amd64")) -> str:
    """Run grub_cfg_current on a target holding ``cfg`` and ``files`` in /boot; 'kept' or 'regenerated: why'."""
    target, lay = tmp_path / "target", tmp_path / "lay"
    (target / "boot" / "grub").mkdir(parents=True)
    lay.mkdir()
    for name in files:
        (target / "boot" / name).write_bytes(b"x")
    if cfg is not None:
        (target / "boot" / "grub" / "grub.cfg").write_text(cfg)
    (lay / "fs").write_text(fs_lines)
    return run_function("grub_cfg_current", f"fs_uuid() {{ echo {UUID}; }}\nTARGET='{target}' LAY='{lay}' "
                        "ROOT_DEV=/dev/vg0/root",
                        'if grub_cfg_current; then echo "kept $ROOT_UUID"; else echo "regenerated: $GRUB_CFG_WHY"; fi')


def test_the_builders_and_update_grubs_configurations_are_kept(tmp_path: Path) -> None:
    assert grub_cfg_current(tmp_path / "a", BUILDER_CFG) == f"kept {UUID}"
    assert grub_cfg_current(tmp_path / "b", UPDATE_GRUB_CFG) == f"kept {UUID}"


@pytest.mark.parametrize(
    ("cfg", "why"),
    [
        (BUILDER_CFG.replace(f"root=UUID={UUID}", "root=/dev/vda3"),
         f"a grub.cfg entry does not boot root=UUID={UUID}"),
        (UPDATE_GRUB_CFG.replace(f"root=UUID={UUID} ro single", "root=PARTUUID=5e0c0946 ro single"),
         f"a grub.cfg entry does not boot root=UUID={UUID}"),
        (BUILDER_CFG.replace(f"--set=root {UUID}", "--set=root 0000-1111"), f"does not search for / by UUID {UUID}"),
        (BUILDER_CFG.replace("search --no-floppy --fs-uuid --set=root", "set root=(hd0,gpt3) #"),
         f"does not search for / by UUID {UUID}"),
        ("set timeout=1\nsearch --fs-uuid --set=root " + UUID + "\n", "has no linux entry"),
        (None, "the image has no /boot/grub/grub.cfg"),
    ],
)
def test_a_configuration_that_would_not_boot_the_layout_is_regenerated(tmp_path: Path, cfg: str | None,
                                                                        why: str) -> None:
    out = grub_cfg_current(tmp_path, cfg)
    assert out.startswith("regenerated: ") and why in out, out


def test_a_missing_kernel_or_a_separate_boot_is_regenerated(tmp_path: Path) -> None:
    out = grub_cfg_current(tmp_path / "a", BUILDER_CFG, files=("vmlinuz-6.1.0-50-amd64",))
    assert out == "regenerated: its grub.cfg names /boot/initrd.img-6.1.0-50-amd64, which the image lacks"
    out = grub_cfg_current(tmp_path / "b", BUILDER_CFG, fs_lines="r ext4 /\nb ext4 /boot\ne vfat /boot/efi\n")
    assert out == "regenerated: the layout has a separate /boot"


def initramfs_current(tmp_path: Path, raids: str, vgs: str, initrd_age: int | None, packages: tuple[str, ...]) -> str:
    """Run initramfs_current on a target whose dpkg lists of ``packages`` are 100, 90, ... s old and whose initrd is
    ``initrd_age`` s old (None: no initrd); 'kept: why' or 'rebuilt: why'."""
    target, lay = tmp_path / "target", tmp_path / "lay"
    (target / "var" / "lib" / "dpkg" / "info").mkdir(parents=True)
    (target / "boot").mkdir()
    lay.mkdir()
    now = time.time()
    for i, pkg in enumerate(packages):
        listing = target / "var" / "lib" / "dpkg" / "info" / f"{pkg}.list"
        listing.write_text("/.\n")
        os.utime(listing, (now - 100 + 10 * i, now - 100 + 10 * i))
    if initrd_age is not None:
        initrd = target / "boot" / "initrd.img-6.1.0-50-amd64"
        initrd.write_bytes(b"x")
        os.utime(initrd, (now - initrd_age, now - initrd_age))
    (lay / "raids").write_text(raids)
    (lay / "vgs").write_text(vgs)
    return run_function("initramfs_current", f"TARGET='{target}' LAY='{lay}'",
                        'if initramfs_current; then echo "kept: $INITRAMFS_KEPT"; '
                        'else echo "rebuilt: $INITRAMFS_WHY"; fi')


def test_the_initramfs_is_kept_when_built_after_mdadm_and_lvm2_else_rebuilt(tmp_path: Path) -> None:
    raid, vg = "md0 1 p0 p1\n", "vg0 md0\n"
    assert initramfs_current(tmp_path / "a", raid, vg, 10, ("mdadm", "lvm2")) == (
        "kept: built after mdadm and lvm2 were installed")
    assert initramfs_current(tmp_path / "b", raid, vg, 95, ("mdadm", "lvm2")) == (
        "rebuilt: /boot/initrd.img-6.1.0-50-amd64 is older than /var/lib/dpkg/info/lvm2.list")
    assert initramfs_current(tmp_path / "c", raid, "", 10, ("lvm2",)) == "rebuilt: no dpkg record of mdadm"
    assert initramfs_current(tmp_path / "d", raid, "", None, ("mdadm",)) == (
        "rebuilt: the image has no /boot/initrd.img-*")


def test_a_layout_of_plain_partitions_keeps_the_images_initramfs(tmp_path: Path) -> None:
    assert initramfs_current(tmp_path, "", "", 500, ()) == (
        "kept: the layout has neither arrays nor volume groups")
