"""The ``debian`` builder type: offline Debian images (diskimage-builder / virt-customize style).

A root tree is bootstrapped with ``debootstrap`` (cached as a tarball keyed by its inputs, so rebuilds skip it),
customised in a chroot by the template's provisioners (``shell``, ``file``, ``hostname``, ``ssh-inject``,
``firstboot``) through its chroot communicator (:class:`.communicator.ChrootCommunicator`), finalised (fstab by
UUID, machine-id, initramfs, GRUB for BIOS and/or UEFI), laid onto an msdos- or GPT-partitioned disk (ext4 root;
GPT: bios_grub and EFI system partitions as ``firmware`` needs) without mounting anything and written as raw and/or
qcow2. See :mod:`.steps` for the step list and :mod:`.config` for the options (``partition_table``, ``firmware``,
``extra_packages``).

Public API:
- ``PLUGIN`` (:class:`.builder.DebianBuilder`), the plugin the runner loads for ``"type": "debian"``.
- ``build_test_debian_image(cache_dir=None, variant="default") -> Path`` and
  ``test_debian_image_key(cache_dir=None) -> Path``: the cached bootable test image (sshd, cloud-init
  ConfigDrive/NoCloud, root login with the test key); ``variant="metal"``: GPT, boots on BIOS and UEFI, mdadm,
  lvm2, EFI GRUB. ``test_debian_image_raw(cache_dir=None, variant="metal") -> Path``: the same image as raw.
- ``measure(...)``: cold/warm build and bare-debootstrap timings for the benchmark.
- ``run_build(options, name, provisioners)``: one build without a template (tests, tools).
"""

from __future__ import annotations

from typing import Any

from .builder import DebianBuilder

PLUGIN = DebianBuilder

__all__ = ["PLUGIN", "DebianBuilder", "build_test_debian_image", "measure", "run_build", "test_debian_image_key",
           "test_debian_image_raw"]

_LAZY = {
    "build_test_debian_image": "testimage",
    "test_debian_image_key": "testimage",
    "test_debian_image_raw": "testimage",
    "measure": "measure",
    "run_build": "run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
