"""The qemu builder's options: schema, defaults and validation (Packer's ``Config.Prepare``).

Values arrive rendered by the template engine and already checked against ``OPTIONS_SCHEMA`` by
``builders.registry.validate_options`` (the one schema check: unknown keys, and values that do not convert under
Packer's weak decoding, are reported there in Packer's words; ``"2048"`` arrives as ``2048``). ``boot_command`` and
``qemuargs`` keep their ``{{ .HTTPIP }}``-style fields: they are rendered at the step that uses them (Packer
excludes them from config interpolation too).

``prepare_config`` composes the SDK's config parts (``builders.builder_types._sdk``: ISO, HTTP, boot command,
communicator, shutdown) with the qemu keys; every problem is collected and reported at once (one line each);
options Packer has but stemforge does not implement are either warnings (harmless, e.g. VNC settings: the boot
command is typed through the QEMU monitor) or errors naming the key and the reason (e.g. ``net_bridge``: guests
only get user-mode networking restricted to loopback).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.builder_types import _sdk_options as sdk
from builders.builder_types._sdk.boot import BootConfig
from builders.builder_types._sdk.communicator import CommConfig
from builders.builder_types._sdk.http import HTTPConfig
from builders.builder_types._sdk.iso import ISOConfig
from builders.builder_types._sdk.options import Options
from builders.builder_types._sdk.shutdown import ShutdownConfig
from builders.builder_types._sdk_options import IGNORED_COMMUNICATOR, REFUSED_COMMUNICATOR
from builders.builder_types.qemu.boot_command import parse_boot_command
from builders.core import ConfigError

#: Packer's builder id for qemu artifacts (keeps post-processors that check it working).
BUILDER_ID = "transcend.qemu"

ACCELERATORS = ("auto", "kvm", "tcg", "none")
DISK_INTERFACES = ("ide", "sata", "scsi", "virtio", "virtio-scsi")
DISK_CACHES = ("writethrough", "writeback", "none", "unsafe", "directsync")
DISK_DISCARDS = ("unmap", "ignore")
DETECT_ZEROES = ("unmap", "on", "off")
CDROM_INTERFACES = ("", "ide", "scsi", "virtio", "virtio-scsi")


#: Options stemforge implements. Values arrive weakly decoded by ``builders.registry.validate_options`` (Packer's
#: mapstructure rules), so ``"2048"`` is already ``2048`` and ``"a,b"`` for a list is already ``["a", "b"]``.
SUPPORTED: dict[str, dict[str, Any]] = {
    # Packer core keys some loaders pass through
    "type": sdk.STR, "name": sdk.STR,
    # ISO / source image
    "iso_url": sdk.STR, "iso_urls": sdk.STRLIST, "iso_checksum": sdk.STR, "iso_target_path": sdk.STR,
    "iso_target_extension": sdk.STR,
    # disks
    "disk_image": sdk.BOOL, "use_backing_file": sdk.BOOL, "disk_size": {"type": ["string", "integer"]},
    "skip_resize_disk": sdk.BOOL, "format": sdk.STR, "disk_interface": sdk.STR, "disk_cache": sdk.STR,
    "disk_discard": sdk.STR,
    "disk_detect_zeroes": sdk.STR, "disk_additional_size": sdk.STRLIST, "skip_compaction": sdk.BOOL,
    "disk_compression": sdk.BOOL,
    "qemu_img_args": {"type": "object", "additionalProperties": False,
                      "properties": {"convert": sdk.STRLIST, "create": sdk.STRLIST, "resize": sdk.STRLIST}},
    # machine
    "accelerator": sdk.STR, "output_directory": sdk.STR, "vm_name": sdk.STR, "headless": sdk.BOOL, "memory": sdk.INT,
    "cpus": sdk.INT, "net_device": sdk.STR, "machine_type": sdk.STR, "qemu_binary": sdk.STR, "firmware": sdk.STR,
    "cdrom_interface": sdk.STR, "qemuargs": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
    "qmp_enable": sdk.BOOL, "qmp_socket_path": sdk.STR,
    # CD
    "cd_files": sdk.STRLIST, "cd_content": sdk.STRMAP, "cd_label": sdk.STR,
    "floppy_files": sdk.STRLIST, "floppy_dirs": sdk.STRLIST, "floppy_content": sdk.STRMAP, "floppy_label": sdk.STR,
    # HTTP
    "http_directory": sdk.STR, "http_content": sdk.STRMAP, "http_port_min": sdk.INT, "http_port_max": sdk.INT,
    "http_bind_address": sdk.STR,
    # boot
    "boot_command": {"type": ["array", "string"], "items": {"type": "string"}}, "boot_wait": sdk.DUR,
    "boot_key_interval": sdk.DUR,
    "boot_steps": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
    # communicator
    "communicator": sdk.STR, "ssh_host": sdk.STR, "ssh_port": sdk.INT, "ssh_username": sdk.STR,
    "ssh_password": sdk.STR, "ssh_private_key_file": sdk.STR, "ssh_timeout": sdk.DUR, "ssh_wait_timeout": sdk.DUR,
    "ssh_handshake_attempts": sdk.INT,
    "ssh_pty": sdk.BOOL, "ssh_keep_alive_interval": sdk.DUR, "ssh_clear_authorized_keys": sdk.BOOL,
    "temporary_key_pair_type": sdk.STR, "temporary_key_pair_bits": sdk.INT, "pause_before_connecting": sdk.DUR,
    "host_port_min": sdk.INT, "host_port_max": sdk.INT, "ssh_host_port_min": sdk.INT, "ssh_host_port_max": sdk.INT,
    # shutdown
    "shutdown_command": sdk.STR, "shutdown_timeout": sdk.DUR,
}

_NO_VNC = "no VNC server is started (boot_command is typed through the QEMU monitor)"
_NO_DISPLAY = "guests always run without a display here"

#: Valid Packer options stemforge accepts but ignores (a warning when set), with the reason.
IGNORED: dict[str, str] = {
    **{k: v for k, v in IGNORED_COMMUNICATOR.items() if k not in SUPPORTED},
    "vnc_bind_address": _NO_VNC,
    "vnc_port_min": _NO_VNC,
    "vnc_port_max": _NO_VNC,
    "vnc_password": _NO_VNC,
    "vnc_use_password": _NO_VNC,
    "disable_vnc": _NO_VNC,
    "boot_keygroup_interval": "the QEMU monitor types key groups without an extra pause (boot_key_interval applies)",
    "display": _NO_DISPLAY,
    "use_default_display": _NO_DISPLAY,
    "vga": _NO_DISPLAY + "; QEMU's default display adapter for the machine type is used",
    "iso_skip_cache": "local sources are always used in place and downloads are always cached",
    "http_network_protocol": "the HTTP server always listens on TCP (on loopback)",
    "cpu_model": "QEMU's default CPU model for the accelerator is used",
    "sockets": "the CPU topology is QEMU's default for 'cpus' virtual CPUs",
    "cores": "the CPU topology is QEMU's default for 'cpus' virtual CPUs",
    "threads": "the CPU topology is QEMU's default for 'cpus' virtual CPUs",
    "efi_drop_efivars": "no efivars.fd is produced (EFI boot through efi_boot is not supported)",
    "ssh_keypair_name": "cloud key pairs do not apply to local VMs (give ssh_private_key_file)",
    "temporary_key_pair_name": "the temporary key pair is local; it has no cloud name",
}

#: Valid Packer options stemforge refuses when set to a non-zero value, with the reason.
REFUSED: dict[str, str] = {
    **REFUSED_COMMUNICATOR,
    "net_bridge": "only user-mode networking restricted to loopback host-forwards is supported",
    "skip_nat_mapping": "the communicator always goes through a loopback host-forward",
    "efi_boot": "UEFI boot with OVMF variables is not supported; use 'firmware' for a BIOS-style firmware file",
    "efi_firmware_code": "UEFI boot with OVMF variables is not supported",
    "efi_firmware_vars": "UEFI boot with OVMF variables is not supported",
    "use_pflash": "firmware is always loaded with -bios",
    "vtpm": "emulated TPM devices (swtpm) are not supported",
    "use_tpm1": "emulated TPM devices (swtpm) are not supported",
    "tpm_device_type": "emulated TPM devices (swtpm) are not supported",
}

#: The keys Packer's qemu builder documents (packer-plugin-qemu ``builder/qemu/config.go`` ``Config``,
#: ``QemuEFIBootConfig``, ``QemuSMPConfig`` and ``comm_config.go`` ``CommConfig``) besides the SDK's shared ones.
QEMU_DOCUMENTED: tuple[str, ...] = (
    "iso_skip_cache", "accelerator", "disk_additional_size", "firmware", "use_pflash", "disk_interface",
    "disk_size", "skip_resize_disk", "disk_cache", "disk_discard", "disk_detect_zeroes", "skip_compaction",
    "disk_compression", "format", "headless", "disk_image", "use_backing_file", "machine_type", "memory",
    "net_device", "net_bridge", "output_directory", "qemuargs", "qemu_img_args", "qemu_binary", "qmp_enable",
    "qmp_socket_path", "use_default_display", "vga", "display", "vnc_bind_address", "vnc_use_password",
    "vnc_password", "vnc_port_min", "vnc_port_max", "vm_name", "cdrom_interface", "vtpm", "use_tpm1",
    "tpm_device_type", "boot_steps", "cpu_model", "efi_boot", "efi_firmware_code", "efi_firmware_vars",
    "efi_drop_efivars", "cpus", "sockets", "cores", "threads", "host_port_min", "host_port_max",
    "skip_nat_mapping", "ssh_host_port_min", "ssh_host_port_max",
)
#: Every key Packer's qemu builder accepts: its own and the SDK configs it embeds.
PACKER_KEYS: tuple[str, ...] = (QEMU_DOCUMENTED + sdk.COMMUNICATOR + sdk.SSH + sdk.WINRM + sdk.BOOT + sdk.HTTP
                                + sdk.ISO + sdk.FLOPPY + sdk.CD + sdk.SHUTDOWN)

OPTIONS_SCHEMA: dict[str, Any] = sdk.options_schema(SUPPORTED, IGNORED, REFUSED)


@dataclass(kw_only=True)
class QemuConfig(ISOConfig, HTTPConfig, BootConfig, CommConfig, ShutdownConfig):
    """The validated, defaulted options (Packer's names in snake case; durations in seconds, sizes as strings):
    the SDK parts packer-plugin-qemu's ``Config`` embeds plus the qemu keys."""

    build_name: str
    disk_image: bool = False
    use_backing_file: bool = False
    disk_size: str = "40960M"
    skip_resize_disk: bool = False
    format: str = "qcow2"
    disk_interface: str = "virtio"
    disk_cache: str = "writeback"
    disk_discard: str = "ignore"
    disk_detect_zeroes: str = "off"
    disk_additional_size: list[str] = field(default_factory=list)
    skip_compaction: bool = False
    disk_compression: bool = False
    qemu_img_args: dict[str, list[str]] = field(default_factory=dict)
    accelerator: str = "auto"
    output_directory: Path = Path("output")
    vm_name: str = ""
    headless: bool = False
    memory: int = 512
    cpus: int = 1
    net_device: str = "virtio-net"
    machine_type: str = "pc"
    qemu_binary: str = "qemu-system-x86_64"
    firmware: str = ""
    cdrom_interface: str = ""
    qemuargs: list[list[str]] = field(default_factory=list)
    qmp_socket_path: str = ""
    cd_files: list[str] = field(default_factory=list)
    cd_content: dict[str, str] = field(default_factory=dict)
    cd_label: str = ""
    floppy_files: list[str] = field(default_factory=list)
    floppy_dirs: list[str] = field(default_factory=list)
    floppy_content: dict[str, str] = field(default_factory=dict)
    floppy_label: str = "packer"
    ssh_host: str = "127.0.0.1"
    host_port_min: int = 2222
    host_port_max: int = 4444

    @property
    def disk_path(self) -> Path:
        return self.output_directory / self.vm_name

    @property
    def temporary_key(self) -> bool:
        """Whether the build generates a temporary SSH key pair (no password and no key file given)."""
        return self.communicator == "ssh" and not self.ssh_password and not self.ssh_private_key_file


# ---------------------------------------------------------------- sizes

_SIZE = re.compile(r"^(\d+)([bkmgt]?)$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def normalize_disk_size(value: Any) -> str:
    """Packer's disk_size rule: digits with an optional b/k/m/g/t unit; a bare number means megabytes."""
    text = str(value).strip()
    if text in ("", "0"):
        return "40960M"
    m = _SIZE.match(text)
    if not m:
        raise ValueError("Invalid disk size.")
    return text if m.group(2) else f"{text}M"


def disk_size_bytes(size: str) -> int:
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"invalid size {size!r}")
    return int(m.group(1)) * _SIZE_FACTOR[m.group(2).lower()]


# ---------------------------------------------------------------- prepare


def prepare_config(raw: Mapping[str, Any], build_name: str, template_dir: Path, force: bool,
                   prefix: str) -> tuple[QemuConfig, list[str]]:
    """Packer's qemu ``Config.Prepare`` on options already checked and weakly decoded by
    ``builders.registry.validate_options``: each embedded part prepares its keys, then the qemu keys. Returns the
    config and warnings; raises ConfigError listing every problem (``<prefix>: <message>`` per line)."""
    opts = Options(raw, template_dir)
    opts.check_unsupported(REFUSED, IGNORED, "stemforge's qemu builder")
    cfg = QemuConfig(build_name=build_name)
    cfg.prepare_iso(opts)
    _prepare_disks(cfg, opts)
    _prepare_machine(cfg, opts)
    _prepare_cd(cfg, opts)
    cfg.prepare_http(opts)
    cfg.prepare_boot(opts, check=_check_typable)
    cfg.prepare_comm(opts, loopback_only=True)
    cfg.prepare_keep_alive_and_key_bits(opts)
    _prepare_host_ports(cfg, opts)
    cfg.prepare_shutdown(opts)
    if cfg.shutdown_command and cfg.communicator == "none":
        opts.warnings.append("shutdown_command is ignored with communicator 'none' (the VM gets an ACPI "
                             "power-button press instead)")
    # Packer checks the output directory at prepare time
    if not force and (cfg.output_directory.exists() or cfg.output_directory.is_symlink()):
        opts.errors.append(f"Output directory '{cfg.output_directory}' already exists. It must not exist.")
    if opts.errors:
        raise ConfigError("\n".join(f"{prefix}: {e}" for e in opts.errors))
    return cfg, opts.warnings


def _check_typable(text: str) -> None:
    """The boot command can be typed through the QEMU monitor (BootCommandError, a ValueError, if not)."""
    parse_boot_command(text, check_only=True)


def _disk_size(opts: Options, key: str, value: Any) -> str:
    try:
        return normalize_disk_size(value)
    except ValueError:
        opts.errors.append(f"{key}: Invalid disk size.")
        return "40960M"


def _prepare_disks(cfg: QemuConfig, opts: Options) -> None:
    cfg.disk_image = opts.flag("disk_image")
    cfg.use_backing_file = opts.flag("use_backing_file")
    cfg.disk_size = _disk_size(opts, "disk_size", opts.raw.get("disk_size", ""))
    cfg.skip_resize_disk = opts.flag("skip_resize_disk")
    cfg.format = opts.text("format", "qcow2")
    cfg.disk_interface = opts.text("disk_interface", "virtio")
    cfg.disk_cache = opts.text("disk_cache", "writeback")
    cfg.disk_discard = opts.text("disk_discard", "ignore")
    cfg.disk_detect_zeroes = opts.text("disk_detect_zeroes", "off")
    cfg.disk_additional_size = [_disk_size(opts, f"disk_additional_size[{i}]", size)
                                for i, size in enumerate(opts.raw.get("disk_additional_size") or [])]
    cfg.skip_compaction = opts.flag("skip_compaction")
    cfg.disk_compression = opts.flag("disk_compression")
    cfg.qemu_img_args = {k: [str(a) for a in v] for k, v in (opts.raw.get("qemu_img_args") or {}).items()}
    if cfg.format not in ("qcow2", "raw"):
        opts.errors.append("invalid format, only 'qcow2' or 'raw' are allowed")
    if cfg.format != "qcow2":
        cfg.skip_compaction = True
        cfg.disk_compression = False
    if cfg.use_backing_file:
        cfg.skip_compaction = True
        if not (cfg.disk_image and cfg.format == "qcow2"):
            opts.errors.append("use_backing_file can only be enabled for QCOW2 images and when disk_image is true")
    if cfg.skip_resize_disk and not cfg.disk_image:
        opts.errors.append("skip_resize_disk can only be used when disk_image is true")
    for key, allowed, words in (("disk_interface", DISK_INTERFACES, "unrecognized disk interface type"),
                                ("disk_cache", DISK_CACHES, "unrecognized disk cache type"),
                                ("disk_discard", DISK_DISCARDS, "unrecognized disk discard type"),
                                ("disk_detect_zeroes", DETECT_ZEROES, "unrecognized disk detect zeroes setting")):
        if getattr(cfg, key) not in allowed:
            opts.errors.append(f"{words}: {key} {getattr(cfg, key)!r} (one of {', '.join(allowed)})")


def _prepare_machine(cfg: QemuConfig, opts: Options) -> None:
    cfg.accelerator = opts.text("accelerator", "auto")
    if cfg.accelerator not in ACCELERATORS:
        opts.errors.append(f"invalid accelerator {cfg.accelerator!r}: stemforge supports 'kvm', 'tcg', 'none' or "
                           "'auto' (empty: KVM when a bounded probe proves it runs guests, else TCG)")
    cfg.output_directory = Path(opts.text("output_directory", f"output-{cfg.build_name}"))
    cfg.vm_name = opts.text("vm_name", f"packer-{cfg.build_name}")
    if "/" in cfg.vm_name or cfg.vm_name in (".", ".."):
        opts.errors.append(f"vm_name: {cfg.vm_name!r} must be a file name, not a path")
    cfg.headless = opts.flag("headless")
    cfg.memory = opts.value("memory", 512) if opts.value("memory", 512) >= 10 else 512
    cfg.cpus = max(1, opts.value("cpus", 1))
    cfg.net_device = opts.text("net_device", "virtio-net")
    cfg.machine_type = opts.text("machine_type", "pc")
    cfg.qemu_binary = opts.text("qemu_binary", "qemu-system-x86_64")
    cfg.firmware = opts.text("firmware")
    cfg.cdrom_interface = opts.text("cdrom_interface")
    if cfg.cdrom_interface not in CDROM_INTERFACES:
        opts.errors.append(f"cdrom_interface: {cfg.cdrom_interface!r} is not one of ide, scsi, virtio, "
                           "virtio-scsi")
    cfg.qemuargs = [list(map(str, row)) for row in opts.raw.get("qemuargs") or []]
    for i, row in enumerate(cfg.qemuargs):
        if not row or not row[0].startswith("-"):
            opts.errors.append(f"qemuargs[{i}]: each entry is [\"-switch\", \"value\", ...], got {row!r}")
    cfg.qmp_socket_path = opts.text("qmp_socket_path")


def _prepare_cd(cfg: QemuConfig, opts: Options) -> None:
    """packer-plugin-sdk ``CDConfig`` (stemforge writes the ISO with pycdlib; the label is a volume id) and
    ``FloppyConfig`` (see ``floppy.py``)."""
    cfg.cd_files = opts.strings("cd_files")
    cfg.cd_content = opts.mapping("cd_content")
    cfg.cd_label = opts.text("cd_label")
    if len(cfg.cd_label) > 32:
        opts.errors.append(f"cd_label: {cfg.cd_label!r} is longer than the 32 characters an ISO 9660 volume id "
                           "holds")
    # packer-plugin-sdk ``FloppyConfig.Prepare``: every plain entry must exist (globs are expanded at build time)
    cfg.floppy_files, cfg.floppy_dirs = opts.strings("floppy_files"), opts.strings("floppy_dirs")
    cfg.floppy_content = opts.mapping("floppy_content")
    cfg.floppy_label = opts.text("floppy_label", "packer")
    for key, kind in (("floppy_files", "file"), ("floppy_dirs", "directory")):
        for entry in getattr(cfg, key):
            if not any(c in entry for c in "*?[") and not Path(entry).exists() \
                    and not (opts.template_dir / entry).exists():
                opts.errors.append(f"Bad Floppy disk {kind} '{entry}': stat {entry}: no such file or directory")


def _prepare_host_ports(cfg: QemuConfig, opts: Options) -> None:
    """packer-plugin-qemu ``CommConfig``: the host-forward port range (``ssh_host_port_*`` deprecated)."""
    for old, new in (("ssh_host_port_min", "host_port_min"), ("ssh_host_port_max", "host_port_max")):
        if opts.raw.get(old):
            opts.warnings.append(f"{old} is deprecated and is being replaced by {new}. Please, update your "
                                 f"template to use {new}. In future versions of Packer, inclusion of {old} will "
                                 "error your builds.")
    cfg.host_port_min = opts.value("ssh_host_port_min", 0) or opts.value("host_port_min", 2222)
    cfg.host_port_max = opts.value("ssh_host_port_max", 0) or opts.value("host_port_max", 4444)
    if cfg.host_port_min > cfg.host_port_max:
        opts.errors.append("host_port_min must be less than host_port_max")
    if cfg.host_port_min < 0:
        opts.errors.append("host_port_min must be positive")
