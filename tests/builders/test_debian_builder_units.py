"""The ``debian`` builder's parts that need no bootstrap: option validation (unknown keys in Packer's words),
defaults, the mirror read from apt's sources, the cache key, GRUB's MBR patching (msdos gap and GPT bios_grub),
the GPT disk with its ESP (made without mounting), firmware/partition-table validation, the chroot communicator's path
resolution and trailing-slash rules, and the offline provisioners' option checks."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from builders.builder_types.debian import PLUGIN, disk, grub
from builders.builder_types.debian.bootstrap import BootstrapInputs, base_packages, extra_packages
from builders.builder_types.debian.communicator import ChrootCommunicator, resolve_in_root
from builders.builder_types.debian.config import default_mirror, parse_config, parse_disk_size
from builders.builder_types.debian.run import PlainUi, load_provisioner
from builders.core import BuildContext, ConfigError


def _ctx(tmp_path: Path, force: bool = False) -> BuildContext:
    return BuildContext(build_name="base", build_type="debian", ui=PlainUi("base"), cancel=threading.Event(),
                        template_dir=tmp_path, run_uuid=str(uuid.uuid4()), force=force)


def test_plugin_convention() -> None:
    assert PLUGIN.type_name == "debian"
    assert PLUGIN.options_schema["additionalProperties"] is False


def test_unknown_option_is_an_error_naming_the_key(tmp_path: Path) -> None:
    builder = PLUGIN({"suite": "bookworm", "sutie": "x", "output_directory": str(tmp_path / "o")}, _ctx(tmp_path))
    with pytest.raises(ConfigError, match=r"debian.base: unknown configuration key: 'sutie'"):
        builder.prepare()


def test_every_bad_value_is_reported_with_its_key(tmp_path: Path) -> None:
    raw = {"variant": "tiny", "disk_size": "lots", "hostname": "-bad-", "output_directory": str(tmp_path / "o"),
           "root_password": "a:b", "vm_name": "a/b"}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "base")
    text = str(err.value)
    assert "variant" in text and "tiny" in text
    raw.pop("variant")
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "base")
    text = str(err.value)
    for key in ("disk_size", "hostname", "root_password", "vm_name"):
        assert key in text, (key, text)
    assert "a:b" not in text  # the password value itself is never echoed


def test_weak_typing_and_defaults(tmp_path: Path) -> None:
    cfg = parse_config({"include_sshd": "true", "disk_size": "1536", "output_directory": str(tmp_path / "o")},
                       "base")
    assert cfg.include_sshd is True and cfg.disk_size_mb == 1536
    assert cfg.suite == "bookworm" and cfg.variant == "minbase" and cfg.kernel == "linux-image-amd64"
    assert cfg.formats == ("qcow2",) and cfg.bootloader == "grub" and cfg.components == ("main",)
    assert cfg.output_file("qcow2") == tmp_path / "o" / "base.qcow2"
    assert "root_password" not in repr(parse_config({"root_password": "s3cret", "output_directory": "x"}, "b"))
    chroot_only = parse_config({"kernel": "none", "output_directory": "x"}, "b")
    assert chroot_only.kernel is None and chroot_only.bootloader == "none"
    assert "linux-image-amd64" not in base_packages(chroot_only)


def test_output_directory_must_not_exist_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "output-base"
    out.mkdir()
    with pytest.raises(ConfigError, match="Output directory exists: .*\n\nUse the force flag to delete it"):
        PLUGIN({"output_directory": str(out)}, _ctx(tmp_path)).prepare()
    PLUGIN({"output_directory": str(out)}, _ctx(tmp_path, force=True)).prepare()


@pytest.mark.parametrize(("value", "mib"), [(2048, 2048), ("2G", 2048), ("2048M", 2048), ("1.5G", 1536),
                                             ("1048576K", 1024), ("2GiB", 2048)])
def test_disk_size(value: object, mib: int) -> None:
    assert parse_disk_size(value) == mib


def test_default_mirror_from_apt_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb deb-src\n# comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n")
    assert default_mirror(tmp_path) == "http://mirror.example/debian"
    other = tmp_path / "other"
    other.mkdir()
    (other / "sources.list").write_text("# x\ndeb [arch=amd64] http://list.example/debian bookworm main\n")
    assert default_mirror(other) == "http://list.example/debian"
    assert default_mirror(tmp_path / "none") == "http://deb.debian.org/debian"
    assert default_mirror().startswith("http")  # this machine's (the Debian package registry)


def test_cache_key_follows_every_input(tmp_path: Path) -> None:
    cfg = parse_config({"output_directory": "x"}, "b")
    key = BootstrapInputs.from_config(cfg).key
    assert key == BootstrapInputs.from_config(cfg).key
    for change in ({"suite": "trixie"}, {"variant": "buildd"}, {"mirror": "http://m.example/debian"},
                   {"components": ["main", "contrib"]}, {"packages": ["less"]}, {"include_sshd": True}):
        assert BootstrapInputs.from_config(parse_config({"output_directory": "x", **change}, "b")).key != key


def test_install_mbr_patches_like_grub_bios_setup(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    mbr = bytearray(512)
    mbr[0x1BE:0x1CE] = bytes(range(16))  # a partition entry that must survive
    mbr[0x1B8:0x1BC] = b"SIGN"
    mbr[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(mbr) + bytes(4 * 1024 * 1024))
    boot = tmp_path / "boot.img"
    boot.write_bytes(b"\xeb\x63\x90" + bytes(509))
    core = tmp_path / "core.img"
    core.write_bytes(b"C" * (512 * 60 + 100))
    grub.install_mbr(image, boot, core, 2048)
    data = image.read_bytes()
    assert data[0:3] == b"\xeb\x63\x90"
    assert struct.unpack_from("<Q", data, grub.KERNEL_SECTOR)[0] == 1
    assert data[grub.DRIVE_CHECK:grub.DRIVE_CHECK + 2] == b"\x90\x90"
    assert data[0x1B8:0x1BC] == b"SIGN" and data[0x1BE:0x1CE] == bytes(range(16)) and data[510:512] == b"\x55\xaa"
    start, length, seg = struct.unpack_from("<QHH", data, 512 + grub.BLOCKLIST)
    assert (start, length, seg) == (2, 60, 0x820)  # 61 sectors: the first one is diskboot
    assert data[1024:1030] == b"CCCCCC"
    with pytest.raises(Exception, match="does not fit"):
        grub.install_mbr(image, boot, core, 32)


def test_firmware_and_partition_table_options(tmp_path: Path) -> None:
    errors = {
        "firmware": ({"firmware": "uefi"}, "needs partition_table: gpt"),
        "bootloader": ({"firmware": "hybrid", "partition_table": "gpt", "bootloader": "none"},
                       "needs bootloader: grub"),
        "enum": ({"firmware": "efi", "partition_table": "gpt"}, "must be one of: bios, uefi, hybrid"),
        "extra": ({"extra_packages": ["Bad!"]}, "extra_packages: 'Bad!' is not a Debian package name"),
    }
    for raw, message in errors.values():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config({"output_directory": "x", **raw}, "b")
    bios = parse_config({"output_directory": "x"}, "b")
    hybrid = parse_config({"output_directory": "x", "partition_table": "gpt", "firmware": "hybrid",
                           "extra_packages": ["mdadm"]}, "b")
    uefi = parse_config({"output_directory": "x", "partition_table": "gpt", "firmware": "uefi"}, "b")
    assert bios.firmware == "bios" and bios.partition_table == "msdos" and extra_packages(bios) == []
    # hybrid shares the BIOS image's bootstrap tree: EFI GRUB and extra_packages come on top of it
    assert BootstrapInputs.from_config(hybrid).key == BootstrapInputs.from_config(bios).key
    assert extra_packages(hybrid) == ["grub-efi-amd64-bin", "mdadm"]
    assert "grub-pc" not in base_packages(uefi) and extra_packages(uefi) == ["grub-efi-amd64-bin"]


def test_boot_code_in_a_bios_grub_partition(tmp_path: Path) -> None:
    """GPT: core.img in the bios_grub partition, boot.img pointing at it, the protective MBR entry kept."""
    image = tmp_path / "disk.raw"
    mbr = bytearray(512)
    mbr[0x1BE:0x1CE] = b"\x00\x00\x02\x00\xee" + bytes(11)
    mbr[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(mbr) + bytes(4 * 1024 * 1024))
    boot = tmp_path / "boot.img"
    boot.write_bytes(b"\xeb\x63\x90" + bytes(509))
    core = tmp_path / "core.img"
    core.write_bytes(b"C" * (512 * 40))
    grub.install_boot_code(image, boot, core, 2048, 4096)
    data = image.read_bytes()
    assert struct.unpack_from("<Q", data, grub.KERNEL_SECTOR)[0] == 2048 and data[0x1C2] == 0xEE
    assert struct.unpack_from("<QHH", data, 2048 * 512 + grub.BLOCKLIST) == (2049, 39, 0x820)
    assert data[512:1024] == bytes(512)  # nothing in the post-MBR gap (GPT's header lives there)
    with pytest.raises(Exception, match="does not fit"):
        grub.install_boot_code(image, boot, core, 2048, 2060)


def test_gpt_disk_with_esp_is_made_without_mounting(tmp_path: Path) -> None:
    """sfdisk's GPT (bios_grub, ESP, root last), ext4 by mke2fs -d, FAT32 ESP by mkfs.fat + mcopy."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hello").write_text("hi\n")
    image = tmp_path / "disk.raw"
    root_uuid = str(uuid.uuid4())
    layout = disk.create_disk(image, src, 200, root_uuid, "root", None, lambda _: None, table="gpt",
                              roles=disk.gpt_roles("hybrid"))
    assert [p.role for p in layout.partitions] == ["bios_grub", "esp", "root"]
    esp, root = layout.part("esp"), layout.part("root")
    assert esp is not None and root is not None and esp.start_sector == 4096 and esp.size_bytes == 64 * disk.MIB
    assert root.offset + root.size_bytes <= 200 * disk.MIB - 33 * 512  # the backup GPT stays intact
    disk.make_esp(image, esp, "0123ABCD", {grub.EFI_CONFIG: "text\n", grub.EFI_LOADER: src / "etc" / "hello"},
                  None)
    listing = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True).stdout
    assert disk.GPT_TYPES["esp"] in listing.upper()
    probe = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(esp.offset), str(image)], capture_output=True,
                           text=True, check=True).stdout
    assert "UUID=0123-ABCD" in probe and "VERSION=FAT32" in probe
    got = subprocess.run(["mtype", "-i", f"{image}@@{esp.offset}", f"::/{grub.EFI_LOADER}"], capture_output=True,
                         text=True, check=True).stdout
    assert got == "hi\n"
    probe = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(root.offset), str(image)], capture_output=True,
                           text=True, check=True).stdout
    assert f"UUID={root_uuid}" in probe and "TYPE=ext4" in probe
    with pytest.raises(Exception, match="only the root partition"):
        disk.create_disk(image, src, 200, root_uuid, "root", None, lambda _: None, table="msdos",
                         roles=disk.gpt_roles("bios"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("bin", "etc", "usr/share", "tmp", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")  # busybox-static: a shell that runs in the chroot
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc" / "alt").symlink_to("/usr/share")  # absolute link: must stay inside the tree
    (root / "etc" / "up").symlink_to("../../../../../../..")
    return root


def test_guest_paths_resolve_inside_the_tree(tree: Path) -> None:
    assert resolve_in_root(tree, "/etc/alt/x") == tree / "usr" / "share" / "x"
    assert resolve_in_root(tree, "/etc/up/etc/passwd") == tree / "etc" / "passwd"
    assert resolve_in_root(tree, "/../../etc") == tree / "etc"
    assert resolve_in_root(tree, "relative.txt") == tree / "root" / "relative.txt"


def test_upload_and_download_follow_packers_slash_rules(tree: Path, tmp_path: Path) -> None:
    comm = ChrootCommunicator(tree)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    comm.upload(src / "a.txt", "/etc/alt/")  # into the directory (via the in-tree absolute link)
    assert (tree / "usr" / "share" / "a.txt").read_text() == "a"
    comm.upload(src / "a.txt", "/opt/new/name.txt")  # a file path; parents created
    assert (tree / "opt" / "new" / "name.txt").read_text() == "a"
    comm.upload(src, "/srv")  # no slash: the directory itself
    assert (tree / "srv" / "src" / "sub" / "b.txt").read_text() == "b"
    comm.upload(str(src) + "/", "/data")  # slash: its contents
    assert (tree / "data" / "sub" / "b.txt").read_text() == "b" and (tree / "data" / "a.txt").exists()
    out = tmp_path / "out"
    comm.download("/srv/src", out)
    assert (out / "src" / "a.txt").read_text() == "a"
    comm.download("/srv/src/", tmp_path / "flat")
    assert (tmp_path / "flat" / "sub" / "b.txt").read_text() == "b"
    comm.download("/etc/alt/a.txt", tmp_path / "single.txt")
    assert (tmp_path / "single.txt").read_text() == "a"
    assert not Path("/usr/share/a.txt").exists()  # the host was never touched


def test_chroot_run_streams_and_returns_status(tree: Path) -> None:
    lines: list[str] = []
    comm = ChrootCommunicator(tree, say=lines.append)
    # The fake tree holds only a static busybox as /bin/sh.
    res = comm.run("echo hello; echo oops >&2; exit 3", capture=True, timeout=30)
    assert res.exit_status == 3 and res.stdout == "hello" and res.stderr == "oops"
    assert "hello" in lines and "oops" in lines


def test_provisioner_options(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    with pytest.raises(ConfigError, match="unknown configuration key: 'hostnme'"):
        load_provisioner("hostname", {"hostnme": "x"}, ctx)
    with pytest.raises(ConfigError, match="not a valid host name"):
        load_provisioner("hostname", {"hostname": "bad_name!"}, ctx)
    with pytest.raises(ConfigError, match="exactly one of public_key or public_key_file"):
        load_provisioner("ssh-inject", {"user": "root"}, ctx)
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        load_provisioner("ssh-inject", {"public_key": "hello"}, ctx)
    with pytest.raises(ConfigError, match="private key"):
        load_provisioner("ssh-inject", {"public_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}, ctx)
    (tmp_path / "k.pub").write_text("# mine\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake me@host\n")
    load_provisioner("ssh-inject", {"public_key_file": "k.pub"}, ctx)  # relative to the template dir
    with pytest.raises(ConfigError, match="exactly one of inline or script"):
        load_provisioner("firstboot", {}, ctx)
    with pytest.raises(ConfigError, match="cannot read"):
        load_provisioner("firstboot", {"script": "missing.sh"}, ctx)


def test_bootstrap_cache_lock_and_atomic_publish(tmp_path: Path) -> None:
    """Two builders of one key: the second waits for the first's lock, then finds the published entry."""
    from builders.builder_types.debian.bootstrap import BootstrapCache

    cache = BootstrapCache(tmp_path / "cache")
    inputs = BootstrapInputs("bookworm", "minbase", "http://m", ("main",), ("a",), "debootstrap 1", "amd64")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("x\n")
    order: list[str] = []
    first_has_lock = threading.Event()

    def first() -> None:
        with cache.locked(inputs.key, None):
            first_has_lock.set()
            order.append("first-locked")
            assert not cache.has(inputs.key)
            time.sleep(0.8)
            cache.publish(tree, inputs, None, seconds=1.5)
            order.append("first-published")

    def second() -> None:
        first_has_lock.wait(5)
        with cache.locked(inputs.key, None, on_wait=lambda: order.append("second-waiting")):
            order.append("second-locked")
            assert cache.has(inputs.key)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert order == ["first-locked", "second-waiting", "first-published", "second-locked"]
    assert cache.meta(inputs.key)["seconds"] == 1.5
    assert sorted(p.name for p in cache.root.iterdir()) == sorted(
        [f"{inputs.key}.tar.zst", f"{inputs.key}.json", f"{inputs.key}.lock"])
    out = tmp_path / "out"
    cache.extract(inputs.key, out, None)
    assert (out / "etc" / "hostname").read_text() == "x\n"
    cancel = threading.Event()
    cancel.set()
    with cache.locked(inputs.key, None), pytest.raises(Exception, match="cancelled"):  # noqa: SIM117
        with cache.locked(inputs.key, cancel):  # held by ourselves via another fd: waits, sees the cancel
            pass


def test_chroot_dev_is_private(tmp_path: Path) -> None:
    """Package scripts in the chroot must not reach the host's device nodes (systemd-tmpfiles once re-grouped the
    host's /dev/kvm with the chroot's group ids)."""
    import os as _os

    from builders.builder_types.debian import chroot

    root = tmp_path / "tree"
    root.mkdir()
    mounted: list[str] = []
    try:
        chroot.bind_mounts(root, mounted.append)
        dev = root / "dev"
        assert not (dev / "kvm").exists() and not (dev / "vda").exists()
        with open(dev / "null", "wb") as null:
            null.write(b"x")
        with open(dev / "urandom", "rb") as urandom:
            assert len(urandom.read(16)) == 16
        assert (dev / "pts" / "ptmx").exists()
        assert _os.stat(dev / "null").st_rdev != 0
    finally:
        chroot.unmount_all(root)
    assert chroot.mounts_under(root) == []
