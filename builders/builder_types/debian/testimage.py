"""A cached, ready-made bootable Debian test image for other parts' tests (the qemu builder starts from it).

``build_test_debian_image()`` returns ``<cache>/testimage/<key>/debian.qcow2``: bookworm minbase, the Debian
kernel, GRUB (BIOS, serial console ``ttyS0``), openssh-server, cloud-init with ``datasource_list: [ConfigDrive,
NoCloud, None]``, host name ``stemforge-test``, and the test key pair's public key in root's authorized_keys.
The key pair is generated once and cached beside the image: ``test_debian_image_key(cache_dir)`` gives the private
key path (``<cache>/testimage/id_ed25519``; log in as ``root``). The image is built once per key of its inputs
under a file lock and published atomically; callers must copy it (or use it as a qcow2 backing file), never
write to it.

``build_test_debian_image(variant="metal")`` is the bare-metal lab's image: the same plus mdadm, lvm2,
grub-efi-amd64-bin and efibootmgr (installed on top of the same cached bootstrap tree), on a GPT disk that boots
whole-disk on BIOS (``bios_grub`` partition 1) and on UEFI (EFI system partition 2, FAT32, GRUB at
``\\EFI\\BOOT\\BOOTX64.EFI``), ext4 root last (partition 3, so a config-drive partition can follow it), cloud-init
with ``datasource_list: [ConfigDrive, None]``. ``test_debian_image_raw(variant="metal")`` gives it as a raw file
(``debian.raw`` beside the qcow2, made once): the bare-metal stemcell's image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from builders.core import BuildError

from . import chroot
from .config import default_cache_dir

#: Bump when the image's recipe changes in a way the options below do not show.
TESTIMAGE_VERSION = 1
TEST_HOSTNAME = "stemforge-test"
TEST_USER = "root"

_OPTIONS = {
    "suite": "bookworm",
    "variant": "minbase",
    "include_sshd": True,
    "include_cloud_init": True,
    "datasource": ["ConfigDrive", "NoCloud"],
    "hostname": TEST_HOSTNAME,
    "disk_size": "2G",
    "format": "qcow2",
}

#: The bare-metal variant: what differs from ``_OPTIONS`` (the default's recipe, and so its key, is untouched).
_METAL_OPTIONS = {
    **_OPTIONS,
    "datasource": ["ConfigDrive"],
    "partition_table": "gpt",
    "firmware": "hybrid",
    "extra_packages": ["efibootmgr", "lvm2", "mdadm"],
}
VARIANTS = ("default", "metal")


def _root(cache_dir: Path | None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "testimage"


def test_debian_image_key(cache_dir: Path | None = None) -> Path:
    """The test key pair's private key (created on first use; ``.pub`` beside it)."""
    root = _root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    key = root / "id_ed25519"
    with open(root / "keys.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (key.is_file() and key.with_suffix(".pub").is_file()):
            tmp = root / f".id_ed25519-{os.getpid()}"
            tmp_pub = root / f".id_ed25519-{os.getpid()}.pub"
            for p in (tmp, tmp_pub):
                p.unlink(missing_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stemforge-test", "-f", str(tmp)],
                           check=True, timeout=60)
            os.replace(tmp_pub, key.with_suffix(".pub"))
            os.replace(tmp, key)
    return key


def _recipe(variant: str, public: str) -> tuple[dict[str, object], str]:
    """The variant's builder options and its recipe (what its cache key hashes)."""
    if variant not in VARIANTS:
        raise ValueError(f"test image: unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    if variant == "default":
        return dict(_OPTIONS), json.dumps({"options": _OPTIONS, "key": public, "version": TESTIMAGE_VERSION},
                                          sort_keys=True)
    return dict(_METAL_OPTIONS), json.dumps({"options": _METAL_OPTIONS, "key": public, "variant": variant,
                                             "version": TESTIMAGE_VERSION}, sort_keys=True)


def build_test_debian_image(cache_dir: Path | None = None, variant: str = "default") -> Path:
    """The cached test image (qcow2) of ``variant`` (``default`` or ``metal``); built on first use (a few minutes
    cold, about a minute with a warm bootstrap). Raises ValueError for an unknown variant, BuildError if the
    build fails."""
    from .run import run_build

    root = _root(cache_dir)
    key = test_debian_image_key(cache_dir)
    public = key.with_suffix(".pub").read_text().strip()
    options, recipe = _recipe(variant, public)
    if cache_dir is not None:
        options["cache_dir"] = str(Path(cache_dir))
    ident = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    final_dir = root / ident
    image = final_dir / "debian.qcow2"
    if image.is_file():
        return image
    with open(root / "build.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.is_file():
            return image
        for stale in root.glob(".build-*"):
            chroot.remove_tree(stale)
        out = root / f".build-{ident}-{os.getpid()}"
        options["output_directory"] = str(out)
        options["vm_name"] = "debian"
        try:
            result = run_build(options, f"stemforge-testimage-{variant}" if variant != "default"
                               else "stemforge-testimage",
                               [("ssh-inject", {"user": TEST_USER, "public_key": public})], stream=sys.stderr)
            (out / "recipe.json").write_text(recipe + "\n")
            (out / "sha256").write_text(result.artifact.state["sha256"] + "  debian.qcow2\n")
            os.replace(out, final_dir)
        finally:
            if out.exists():
                chroot.remove_tree(out)
    if not image.is_file():
        raise BuildError(f"test image: {image} missing after the build")
    return image


def test_debian_image_raw(cache_dir: Path | None = None, variant: str = "metal") -> Path:
    """The test image of ``variant`` as a raw disk (``debian.raw`` beside its qcow2, sparse; converted once under
    the build lock and published atomically). Callers must not write to it."""
    image = build_test_debian_image(cache_dir, variant)
    raw = image.with_suffix(".raw")
    if raw.is_file():
        return raw
    with open(_root(cache_dir) / "build.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not raw.is_file():
            tmp = raw.with_name(f".{raw.name}.{os.getpid()}.partial")
            try:
                subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(image), str(tmp)],
                               check=True, timeout=1800, capture_output=True)
                os.replace(tmp, raw)
            except subprocess.CalledProcessError as exc:
                raise BuildError(f"test image: qemu-img convert to raw failed: {exc.stderr.decode().strip()}") \
                    from exc
            finally:
                tmp.unlink(missing_ok=True)
    return raw
