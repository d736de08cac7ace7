"""The qemu builder's options: schema, defaults and validation (Packer's ``Config.Prepare``).

Values arrive rendered by the template engine, so numbers and booleans often come as strings
(``"memory": "{{user `memory`}}"``); like Packer's weakly typed decoding they are converted, and a value that does
not convert is an error naming the key. ``boot_command`` and ``qemuargs`` keep their ``{{ .HTTPIP }}``-style
fields: they are rendered at the step that uses them (Packer excludes them from config interpolation too).

Every problem is collected and reported at once (one line each); options Packer has but stemforge does not
implement are either warnings (harmless, e.g. VNC settings: the boot command is typed through the QEMU monitor) or
errors naming the key and the reason (e.g. ``net_bridge``: guests only get user-mode networking restricted to
loopback).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.builder_types import _sdk_options as sdk
from builders.builder_types._sdk_options import IGNORED_COMMUNICATOR, REFUSED_COMMUNICATOR, zero
from builders.core import ConfigError

#: Packer's builder id for qemu artifacts (keeps post-processors that check it working).
BUILDER_ID = "transcend.qemu"

ACCELERATORS = ("auto", "kvm", "tcg", "none")
DISK_INTERFACES = ("ide", "sata", "scsi", "virtio", "virtio-scsi")
DISK_CACHES = ("writethrough", "writeback", "none", "unsafe", "directsync")
DISK_DISCARDS = ("unmap", "ignore")
DETECT_ZEROES = ("unmap", "on", "off")
CDROM_INTERFACES = ("", "ide", "scsi", "virtio", "virtio-scsi")

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_DUR = {"type": ["string", "integer"]}
_STRLIST = {"type": "array", "items": {"type": "string"}}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}

#: Options stemforge implements. Values arrive weakly decoded by ``builders.registry.validate_options`` (Packer's
#: mapstructure rules), so ``"2048"`` is already ``2048`` and ``"a,b"`` for a list is already ``["a", "b"]``.
SUPPORTED: dict[str, dict[str, Any]] = {
    # Packer core keys some loaders pass through
    "type": _STR, "name": _STR,
    # ISO / source image
    "iso_url": _STR, "iso_urls": _STRLIST, "iso_checksum": _STR, "iso_target_path": _STR,
    "iso_target_extension": _STR,
    # disks
    "disk_image": _BOOL, "use_backing_file": _BOOL, "disk_size": {"type": ["string", "integer"]},
    "skip_resize_disk": _BOOL, "format": _STR, "disk_interface": _STR, "disk_cache": _STR, "disk_discard": _STR,
    "disk_detect_zeroes": _STR, "disk_additional_size": _STRLIST, "skip_compaction": _BOOL,
    "disk_compression": _BOOL,
    "qemu_img_args": {"type": "object", "additionalProperties": False,
                      "properties": {"convert": _STRLIST, "create": _STRLIST, "resize": _STRLIST}},
    # machine
    "accelerator": _STR, "output_directory": _STR, "vm_name": _STR, "headless": _BOOL, "memory": _INT,
    "cpus": _INT, "net_device": _STR, "machine_type": _STR, "qemu_binary": _STR, "firmware": _STR,
    "cdrom_interface": _STR, "qemuargs": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
    "qmp_enable": _BOOL, "qmp_socket_path": _STR,
    # CD
    "cd_files": _STRLIST, "cd_content": _STRMAP, "cd_label": _STR,
    # HTTP
    "http_directory": _STR, "http_content": _STRMAP, "http_port_min": _INT, "http_port_max": _INT,
    "http_bind_address": _STR,
    # boot
    "boot_command": {"type": ["array", "string"], "items": {"type": "string"}}, "boot_wait": _DUR,
    "boot_key_interval": _DUR,
    "boot_steps": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
    # communicator
    "communicator": _STR, "ssh_host": _STR, "ssh_port": _INT, "ssh_username": _STR, "ssh_password": _STR,
    "ssh_private_key_file": _STR, "ssh_timeout": _DUR, "ssh_wait_timeout": _DUR, "ssh_handshake_attempts": _INT,
    "ssh_pty": _BOOL, "ssh_keep_alive_interval": _DUR, "ssh_clear_authorized_keys": _BOOL,
    "temporary_key_pair_type": _STR, "temporary_key_pair_bits": _INT, "pause_before_connecting": _DUR,
    "host_port_min": _INT, "host_port_max": _INT, "ssh_host_port_min": _INT, "ssh_host_port_max": _INT,
    # shutdown
    "shutdown_command": _STR, "shutdown_timeout": _DUR,
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
    "vnc_use_password": _NO_VNC,
    "floppy_files": "floppy disks are not supported; use cd_files",
    "floppy_dirs": "floppy disks are not supported; use cd_files",
    "floppy_content": "floppy disks are not supported; use cd_content",
    "floppy_label": "floppy disks are not supported; use cd_label",
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

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {**SUPPORTED, **{k: {} for k in IGNORED}, **{k: {} for k in REFUSED}},
}


@dataclass
class QemuConfig:
    """The validated, defaulted options (Packer's names in snake case; durations in seconds, sizes as strings)."""

    build_name: str
    iso_urls: list[str] = field(default_factory=list)
    iso_checksum: str = ""
    iso_target_path: str = ""
    iso_target_extension: str = "iso"
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
    http_directory: str = ""
    http_content: dict[str, str] = field(default_factory=dict)
    http_port_min: int = 8000
    http_port_max: int = 9000
    boot_command: list[str] = field(default_factory=list)
    boot_wait: float = 10.0
    boot_key_interval: float = 0.1
    communicator: str = "ssh"
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    ssh_username: str = ""
    ssh_password: str = field(default="", repr=False)
    ssh_private_key_file: str = ""
    ssh_timeout: float = 300.0
    ssh_handshake_attempts: int = 10
    ssh_pty: bool = False
    ssh_keep_alive_interval: float = 5.0
    ssh_clear_authorized_keys: bool = False
    temporary_key_pair_type: str = "rsa"
    temporary_key_pair_bits: int = 0
    pause_before_connecting: float = 0.0
    host_port_min: int = 2222
    host_port_max: int = 4444
    shutdown_command: str = ""
    shutdown_timeout: float = 300.0

    @property
    def disk_path(self) -> Path:
        return self.output_directory / self.vm_name

    @property
    def temporary_key(self) -> bool:
        """Whether the build generates a temporary SSH key pair (no password and no key file given)."""
        return self.communicator == "ssh" and not self.ssh_password and not self.ssh_private_key_file


# ---------------------------------------------------------------- value conversion (Packer's weak decoding)

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """A Go duration (``"1h2m3.5s"``, ``"300ms"``, ``"0"``) in seconds; ValueError if it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{value!r} is not a duration (write it with a unit, e.g. \"{value}s\")")
    text = str(value).strip()
    if text in ("", "0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos = 0
    total = 0.0
    for m in _GO_DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        raise ValueError(f"{text!r} is not a duration (like \"5m\", \"1h30m\" or \"500ms\")")
    return sign * total


def parse_bool(value: Any) -> bool:
    """Go's strconv.ParseBool plus mapstructure's weak rules (numbers, empty string)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value).strip()
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text == "":
        return 0
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- prepare


def prepare_config(raw: Mapping[str, Any], build_name: str, template_dir: Path, force: bool,
                   prefix: str) -> tuple[QemuConfig, list[str]]:
    """Validate ``raw`` and apply Packer's defaults. Returns the config and warnings; raises ConfigError listing
    every problem (``<prefix>: <message>`` per line)."""
    from builders.registry import coerce

    raw = coerce(dict(raw), OPTIONS_SCHEMA)  # Packer's weak decoding (idempotent after validate_options)
    errors: list[str] = []
    warnings: list[str] = []
    cfg = QemuConfig(build_name=build_name)

    for key in raw:
        if key not in OPTIONS_SCHEMA["properties"]:
            errors.append(f"unknown configuration key: '{key}'")
        elif key in REFUSED and not zero(raw[key]):
            errors.append(f"{key}: not supported by stemforge's qemu builder: {REFUSED[key]}")
        elif key in IGNORED and not zero(raw[key]):
            warnings.append(f"{key} is ignored: {IGNORED[key]}")
    _check_shapes(raw, errors)

    def get(key: str, conv: Any, default: Any) -> Any:
        if key not in raw or raw[key] is None:
            return default
        try:
            return conv(raw[key])
        except (ValueError, TypeError) as exc:
            errors.append(f"{key}: {exc}")
            return default

    def get_str(key: str, default: str = "") -> str:
        value = raw.get(key)
        return default if value is None else str(value)

    # --- source
    iso_url = get_str("iso_url")
    iso_urls = [str(u) for u in raw.get("iso_urls") or [] if isinstance(raw.get("iso_urls"), list)]
    if iso_url and iso_urls:
        errors.append("Only one of iso_url or iso_urls must be specified")
    cfg.iso_urls = [iso_url] if iso_url else iso_urls
    if not cfg.iso_urls:
        errors.append("One of iso_url or iso_urls must be specified")
    cfg.iso_checksum = get_str("iso_checksum").strip()
    if cfg.iso_checksum == "none":
        warnings.append("A checksum of 'none' was specified. Since ISO files are so big,\n"
                        "a checksum is highly recommended.")
    elif not cfg.iso_checksum:
        errors.append("A checksum must be specified")
    elif cfg.iso_checksum.lower().endswith(".iso"):
        errors.append("Error parsing checksum: .iso is not a valid checksum ending")
    else:
        from builders.builder_types.qemu.iso import ChecksumError, parse_checksum

        try:
            parse_checksum(cfg.iso_checksum)
        except ChecksumError as exc:
            errors.append(f"iso_checksum: {exc}")
    cfg.iso_target_path = get_str("iso_target_path")
    cfg.iso_target_extension = get_str("iso_target_extension", "iso").lower() or "iso"

    # --- disks
    cfg.disk_image = get("disk_image", parse_bool, False)
    cfg.use_backing_file = get("use_backing_file", parse_bool, False)
    cfg.disk_size = get("disk_size", normalize_disk_size, "40960M")
    cfg.skip_resize_disk = get("skip_resize_disk", parse_bool, False)
    cfg.format = get_str("format", "qcow2") or "qcow2"
    cfg.disk_interface = get_str("disk_interface", "virtio") or "virtio"
    cfg.disk_cache = get_str("disk_cache", "writeback") or "writeback"
    cfg.disk_discard = get_str("disk_discard", "ignore") or "ignore"
    cfg.disk_detect_zeroes = get_str("disk_detect_zeroes", "off") or "off"
    cfg.disk_additional_size = []
    for i, size in enumerate(raw.get("disk_additional_size") or []):
        try:
            cfg.disk_additional_size.append(normalize_disk_size(size))
        except ValueError:
            errors.append(f"disk_additional_size[{i}]: Invalid disk size.")
    cfg.skip_compaction = get("skip_compaction", parse_bool, False)
    cfg.disk_compression = get("disk_compression", parse_bool, False)
    img_args = raw.get("qemu_img_args") or {}
    cfg.qemu_img_args = {k: [str(a) for a in v] for k, v in img_args.items()} if isinstance(img_args, dict) else {}

    if cfg.format not in ("qcow2", "raw"):
        errors.append("invalid format, only 'qcow2' or 'raw' are allowed")
    if cfg.format != "qcow2":
        cfg.skip_compaction = True
        cfg.disk_compression = False
    if cfg.use_backing_file:
        cfg.skip_compaction = True
        if not (cfg.disk_image and cfg.format == "qcow2"):
            errors.append("use_backing_file can only be enabled for QCOW2 images and when disk_image is true")
    if cfg.skip_resize_disk and not cfg.disk_image:
        errors.append("skip_resize_disk can only be used when disk_image is true")
    for key, allowed, words in (("disk_interface", DISK_INTERFACES, "unrecognized disk interface type"),
                                ("disk_cache", DISK_CACHES, "unrecognized disk cache type"),
                                ("disk_discard", DISK_DISCARDS, "unrecognized disk discard type"),
                                ("disk_detect_zeroes", DETECT_ZEROES, "unrecognized disk detect zeroes setting")):
        if getattr(cfg, key) not in allowed:
            errors.append(f"{words}: {key} {getattr(cfg, key)!r} (one of {', '.join(allowed)})")

    # --- machine
    cfg.accelerator = get_str("accelerator", "auto") or "auto"
    if cfg.accelerator not in ACCELERATORS:
        errors.append(f"invalid accelerator {cfg.accelerator!r}: stemforge supports 'kvm', 'tcg', 'none' or "
                      "'auto' (empty: KVM when a bounded probe proves it runs guests, else TCG)")
    out = get_str("output_directory") or f"output-{build_name}"
    cfg.output_directory = Path(out)
    cfg.vm_name = get_str("vm_name") or f"packer-{build_name}"
    if "/" in cfg.vm_name or cfg.vm_name in (".", ".."):
        errors.append(f"vm_name: {cfg.vm_name!r} must be a file name, not a path")
    cfg.headless = get("headless", parse_bool, False)
    cfg.memory = get("memory", parse_int, 512)
    if cfg.memory < 10:
        cfg.memory = 512
    cfg.cpus = get("cpus", parse_int, 1)
    if cfg.cpus < 1:
        cfg.cpus = 1
    cfg.net_device = get_str("net_device", "virtio-net") or "virtio-net"
    cfg.machine_type = get_str("machine_type", "pc") or "pc"
    cfg.qemu_binary = get_str("qemu_binary", "qemu-system-x86_64") or "qemu-system-x86_64"
    cfg.firmware = get_str("firmware")
    cfg.cdrom_interface = get_str("cdrom_interface")
    if cfg.cdrom_interface not in CDROM_INTERFACES:
        errors.append(f"cdrom_interface: {cfg.cdrom_interface!r} is not one of ide, scsi, virtio, virtio-scsi")
    qemuargs = raw.get("qemuargs") or []
    cfg.qemuargs = [list(map(str, row)) for row in qemuargs if isinstance(row, list)]
    for i, row in enumerate(cfg.qemuargs):
        if not row or not row[0].startswith("-"):
            errors.append(f"qemuargs[{i}]: each entry is [\"-switch\", \"value\", ...], got {row!r}")
    cfg.qmp_socket_path = get_str("qmp_socket_path")

    # --- CD and HTTP
    cfg.cd_files = [str(f) for f in raw.get("cd_files") or []]
    cfg.cd_content = {str(k): str(v) for k, v in (raw.get("cd_content") or {}).items()}
    cfg.cd_label = get_str("cd_label")
    if len(cfg.cd_label) > 32:
        errors.append(f"cd_label: {cfg.cd_label!r} is longer than the 32 characters an ISO 9660 volume id holds")
    cfg.http_directory = get_str("http_directory")
    cfg.http_content = {str(k): str(v) for k, v in (raw.get("http_content") or {}).items()}
    if cfg.http_directory and cfg.http_content:
        errors.append("http_directory and http_content cannot both be set")
    cfg.http_port_min = get("http_port_min", parse_int, 8000) or 8000
    cfg.http_port_max = get("http_port_max", parse_int, 9000) or 9000
    if cfg.http_port_min > cfg.http_port_max:
        errors.append("http_port_min must be less than http_port_max")
    bind = get_str("http_bind_address")
    if bind and not _is_loopback(bind):
        errors.append(f"http_bind_address: {bind!r} is not a loopback address (the HTTP server only listens on "
                      "127.0.0.1)")
    if cfg.http_directory and not (template_dir / cfg.http_directory).is_dir() \
            and not Path(cfg.http_directory).is_dir():
        errors.append(f"http_directory: {cfg.http_directory!r} is not a directory")

    # --- boot
    bc = raw.get("boot_command")
    cfg.boot_command = [bc] if isinstance(bc, str) else [str(s) for s in bc or []]
    steps = raw.get("boot_steps") or []
    if steps and cfg.boot_command:
        errors.append("boot_command and boot_steps are mutually exclusive: give one of them")
    elif steps:
        # Packer's qemu builder types each step's command (the optional second element only describes it)
        cfg.boot_command = [str(step[0]) for step in steps if isinstance(step, list) and step]
    cfg.boot_wait = get("boot_wait", parse_duration, 10.0)
    cfg.boot_key_interval = get("boot_key_interval", parse_duration, 0.1) or 0.1
    if cfg.boot_command:
        from builders.builder_types.qemu.boot_command import BootCommandError, parse_boot_command

        try:
            parse_boot_command("".join(cfg.boot_command), check_only=True)
        except BootCommandError as exc:
            errors.append(f"boot_command: {exc}")

    # --- communicator
    cfg.communicator = get_str("communicator", "ssh") or "ssh"
    if cfg.communicator not in ("ssh", "none"):
        errors.append(f"communicator: {cfg.communicator!r} is not supported (use 'ssh' or 'none')")
    cfg.ssh_host = get_str("ssh_host", "127.0.0.1") or "127.0.0.1"
    if not _is_loopback(cfg.ssh_host):
        errors.append(f"ssh_host: {cfg.ssh_host!r} is not a loopback address (the VM is reached through a "
                      "host-forward on 127.0.0.1)")
    cfg.ssh_port = get("ssh_port", parse_int, 22) or 22
    cfg.ssh_username = get_str("ssh_username")
    cfg.ssh_password = get_str("ssh_password")
    cfg.ssh_private_key_file = get_str("ssh_private_key_file")
    timeout_key = "ssh_timeout" if "ssh_timeout" in raw else "ssh_wait_timeout"
    cfg.ssh_timeout = get(timeout_key, parse_duration, 300.0) or 300.0
    cfg.ssh_handshake_attempts = get("ssh_handshake_attempts", parse_int, 10) or 10
    cfg.ssh_pty = get("ssh_pty", parse_bool, False)
    cfg.ssh_keep_alive_interval = get("ssh_keep_alive_interval", parse_duration, 5.0)
    cfg.ssh_clear_authorized_keys = get("ssh_clear_authorized_keys", parse_bool, False)
    cfg.temporary_key_pair_type = get_str("temporary_key_pair_type", "rsa") or "rsa"
    if cfg.temporary_key_pair_type not in ("rsa", "ed25519"):
        errors.append(f"temporary_key_pair_type: {cfg.temporary_key_pair_type!r} must be 'rsa' or 'ed25519'")
    cfg.temporary_key_pair_bits = get("temporary_key_pair_bits", parse_int, 0)
    if cfg.temporary_key_pair_type == "rsa" and cfg.temporary_key_pair_bits not in (0, 2048, 3072, 4096):
        errors.append("temporary_key_pair_bits: RSA keys must be 2048, 3072 or 4096 bits")
    cfg.pause_before_connecting = get("pause_before_connecting", parse_duration, 0.0)
    if cfg.communicator == "ssh":
        if not cfg.ssh_username:
            errors.append("An ssh_username must be specified\n  Note: some builders used to default "
                          "ssh_username to \"root\".")
        if cfg.ssh_private_key_file:
            key_path = Path(cfg.ssh_private_key_file).expanduser()
            if not key_path.is_absolute() and not key_path.exists() and (template_dir / key_path).exists():
                key_path = template_dir / key_path
            if not key_path.is_file():
                errors.append(f"ssh_private_key_file is invalid: {cfg.ssh_private_key_file} does not exist")
            else:
                cfg.ssh_private_key_file = str(key_path)
    for old, new in (("ssh_host_port_min", "host_port_min"), ("ssh_host_port_max", "host_port_max")):
        if raw.get(old):
            warnings.append(f"{old} is deprecated and is being replaced by {new}. Please, update your template "
                            f"to use {new}. In future versions of Packer, inclusion of {old} will error your "
                            "builds.")
    cfg.host_port_min = get("ssh_host_port_min", parse_int, 0) or get("host_port_min", parse_int, 0) or 2222
    cfg.host_port_max = get("ssh_host_port_max", parse_int, 0) or get("host_port_max", parse_int, 0) or 4444
    if cfg.host_port_min > cfg.host_port_max:
        errors.append("host_port_min must be less than host_port_max")
    if cfg.host_port_min < 0:
        errors.append("host_port_min must be positive")

    # --- shutdown
    cfg.shutdown_command = get_str("shutdown_command")
    cfg.shutdown_timeout = get("shutdown_timeout", parse_duration, 300.0) or 300.0
    if cfg.shutdown_command and cfg.communicator == "none":
        warnings.append("shutdown_command is ignored with communicator 'none' (the VM gets an ACPI power-button "
                        "press instead)")

    # --- output directory (Packer checks it at prepare time)
    if not force and (cfg.output_directory.exists() or cfg.output_directory.is_symlink()):
        errors.append(f"Output directory '{cfg.output_directory}' already exists. It must not exist.")

    if errors:
        raise ConfigError("\n".join(f"{prefix}: {e}" for e in errors))
    return cfg, warnings


def _check_shapes(raw: Mapping[str, Any], errors: list[str]) -> None:
    """JSON-schema type checks of the known keys (messages name the key)."""
    import jsonschema

    for key, schema in SUPPORTED.items():
        if key not in raw or raw[key] is None:
            continue
        try:
            jsonschema.validate(raw[key], schema)
        except jsonschema.ValidationError as exc:
            where = "".join(f"[{p!r}]" for p in exc.absolute_path)
            errors.append(f"{key}{where}: {exc.message}")

