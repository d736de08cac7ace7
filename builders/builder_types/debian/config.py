"""Options of the ``debian`` builder type: the JSON schema, defaults and the typed, validated configuration.

Disk and boot options (Packer's names where Packer has one):

- ``partition_table``: ``msdos`` (default; one ext4 partition from sector 2048, GRUB in the post-MBR gap) or
  ``gpt`` (partitions in this order: a 1 MiB ``bios_grub`` partition when the firmware includes BIOS, a 64 MiB
  EFI system partition (FAT32) when it includes UEFI, then the ext4 root filling the rest: the root partition is
  last, so a partition (a config drive) can be added after it once the image is written to a larger disk).
- ``firmware``: ``bios`` (default: GRUB i386-pc), ``uefi`` (GRUB x86_64-efi at ``\\EFI\\BOOT\\BOOTX64.EFI``, the
  removable-media path every UEFI firmware boots without NVRAM entries) or ``hybrid`` (both: one disk that boots
  whole-disk either way). ``uefi`` and ``hybrid`` need ``partition_table: gpt`` and ``bootloader: grub``.
- ``extra_packages``: packages apt installs at every build on top of the cached bootstrap tree (from the same
  mirror). Unlike ``packages`` they are not part of the bootstrap cache key, so images that differ only in them
  share one bootstrap (the EFI GRUB package of ``uefi``/``hybrid`` is installed the same way).

Every problem is collected and raised at once as a ``ConfigError`` whose lines name the build and the key
(``debian.base: unknown configuration key: 'sutie'``). Nothing here touches the network or the disk except reading
the machine's apt sources for the default mirror and checking that the output directory does not exist yet.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.core import ConfigError

TYPE_NAME = "debian"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
VARIANTS = ("minbase", "buildd", "standard")
FORMATS = ("raw", "qcow2")
PARTITION_TABLES = ("msdos", "gpt")
FIRMWARES = ("bios", "uefi", "hybrid")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.\-]*$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "suite": {"type": "string", "minLength": 1},
        "variant": {"enum": list(VARIANTS)},
        "mirror": {"type": "string", "pattern": "^(https?|file)://"},
        "components": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "packages": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "extra_packages": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "kernel": {"type": "string", "minLength": 1},
        "include_cloud_init": {"type": "boolean"},
        "datasource": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ]
        },
        "include_sshd": {"type": "boolean"},
        "hostname": {"type": "string"},
        "root_password": {"type": "string"},
        "disk_size": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
        "filesystem": {"enum": ["ext4"]},
        "partition_table": {"enum": list(PARTITION_TABLES)},
        "firmware": {"enum": list(FIRMWARES)},
        "bootloader": {"enum": ["grub", "none"]},
        "format": {
            "anyOf": [
                {"enum": list(FORMATS)},
                {"type": "array", "items": {"enum": list(FORMATS)}, "minItems": 1, "uniqueItems": True},
            ]
        },
        "disk_compression": {"type": "boolean"},
        "output_directory": {"type": "string", "minLength": 1},
        "vm_name": {"type": "string", "minLength": 1},
        "cache_dir": {"type": "string", "minLength": 1},
        "communicator": {"enum": ["chroot", "none"]},
        "tmpfs": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class DebianConfig:
    """The validated options. ``root_password`` never appears in ``repr`` (it is sensitive)."""

    build_name: str
    suite: str
    variant: str
    mirror: str
    components: tuple[str, ...]
    packages: tuple[str, ...]
    kernel: str | None
    include_cloud_init: bool
    datasources: tuple[str, ...]
    include_sshd: bool
    hostname: str | None
    disk_size_mb: int
    filesystem: str
    partition_table: str
    bootloader: str
    formats: tuple[str, ...]
    disk_compression: bool
    output_directory: Path
    vm_name: str
    cache_dir: Path
    communicator: str
    #: Build the tree in /dev/shm when memory allows (default on).
    tmpfs: bool = True
    #: ``bios``, ``uefi`` or ``hybrid`` (see the module docstring).
    firmware: str = "bios"
    #: Installed on top of the cached bootstrap tree at every build (not in the bootstrap key).
    extra_packages: tuple[str, ...] = ()
    root_password: str | None = field(default=None, repr=False)

    def output_file(self, fmt: str) -> Path:
        """The artifact path of one format: ``<output_directory>/<vm_name>.<fmt>`` (unless ``vm_name`` already
        ends with that extension)."""
        name = self.vm_name if self.vm_name.endswith(f".{fmt}") else f"{self.vm_name}.{fmt}"
        return self.output_directory / name


def default_cache_dir() -> Path:
    """``$STEMFORGE_CACHE/debian`` or ``~/.cache/stemforge/debian``."""
    env = os.environ.get("STEMFORGE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "stemforge"
    return base.expanduser() / "debian"


def default_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian archive URL apt uses on this machine (deb822 ``*.sources`` first, then ``sources.list``);
    the first ``deb`` source whose suites include a plain release (not ``-security``/``-updates``)."""
    candidates: list[str] = []
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            suites = fields.get("suites", "").split()
            uris = fields.get("uris", "").split()
            if uris and any("-" not in s for s in suites):
                candidates.append(uris[0])
    list_file = etc / "sources.list"
    if not candidates and list_file.is_file():
        for line in list_file.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = [w for w in words[1:] if not w.startswith("[")]
                if len(rest) >= 2 and "-" not in rest[1]:
                    candidates.append(rest[0])
    return candidates[0].rstrip("/") if candidates else FALLBACK_MIRROR


def parse_disk_size(value: Any) -> int:
    """Packer's ``disk_size``: a number is MiB; a string may carry K/M/G/T (``"2G"``, ``"2048M"``). Returns MiB."""
    if isinstance(value, bool):
        raise ValueError(f"disk_size must be a number of MiB or a size like '2G', not {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"disk_size {value!r} is not a size (a number of MiB, or like '2048M', '2G')")
    number, unit = float(match.group(1)), match.group(2).upper() or "M"
    mib = number * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
    return int(mib)


def valid_hostname(name: str) -> bool:
    """RFC 1123 host name (labels of letters, digits and hyphens; at most 253 characters)."""
    return 0 < len(name) <= 253 and all(_HOST_LABEL_RE.match(label) for label in name.split("."))


def validated(schema: Mapping[str, Any], raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``raw`` against ``schema`` with the registry's Packer-style decoder (weak typing: ``"true"`` is a
    boolean, ``"2048"`` a number; unknown keys reported as ``unknown configuration key: '<key>'``).
    Returns the coerced options; raises ConfigError listing every problem prefixed with ``where``."""
    from builders.core import Plugin
    from builders.registry import validate_options

    shim = type("_Options", (Plugin,), {"options_schema": dict(schema)})
    return validate_options(shim, raw, where)


def _boot_errors(prefix: str, raw: Mapping[str, Any], partition_table: str, firmware: str,
                 bootloader: str) -> list[str]:
    """What is wrong with the combination of ``firmware``, ``partition_table`` and ``bootloader``."""
    errors = []
    if firmware != "bios" and partition_table != "gpt":
        errors.append(f"{prefix}: firmware: {firmware!r} needs partition_table: gpt (the EFI system partition is "
                      f"made on a GPT disk; partition_table is {partition_table!r})")
    if "firmware" in raw and bootloader != "grub":
        errors.append(f"{prefix}: firmware: needs bootloader: grub (bootloader is {bootloader!r}; without a "
                      "bootloader the image boots only by an external kernel)")
    return errors


def _as_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def parse_config(raw: Mapping[str, Any], build_name: str, *, force: bool = False) -> DebianConfig:
    """Validate ``raw`` options (already rendered) and apply defaults; raise ConfigError listing every problem."""
    prefix = f"{TYPE_NAME}.{build_name}"
    raw = validated(OPTIONS_SCHEMA, raw, prefix)
    errors: list[str] = []

    suite = raw.get("suite", "bookworm")
    if not _NAME_RE.match(suite):
        errors.append(f"{prefix}: suite: {suite!r} is not a Debian suite name")
    packages = tuple(raw.get("packages", ()))
    for pkg in packages:
        if not _NAME_RE.match(pkg):
            errors.append(f"{prefix}: packages: {pkg!r} is not a Debian package name")
    extra_packages = tuple(raw.get("extra_packages", ()))
    for pkg in extra_packages:
        if not _NAME_RE.match(pkg):
            errors.append(f"{prefix}: extra_packages: {pkg!r} is not a Debian package name")
    kernel_opt = raw.get("kernel", "linux-image-amd64")
    kernel = None if kernel_opt == "none" else kernel_opt
    if kernel is not None and not _NAME_RE.match(kernel):
        errors.append(f"{prefix}: kernel: {kernel!r} is not a Debian package name (or 'none')")
    bootloader = raw.get("bootloader", "grub")
    if kernel is None and "bootloader" in raw and bootloader != "none":
        errors.append(f"{prefix}: bootloader: a bootloader needs a kernel (kernel is 'none')")
    if kernel is None:
        bootloader = "none"
    partition_table = raw.get("partition_table", "msdos")
    firmware = raw.get("firmware", "bios")
    errors += _boot_errors(prefix, raw, partition_table, firmware, bootloader)
    datasources = _as_tuple(raw.get("datasource", "ConfigDrive"))
    for ds in datasources:
        if not re.match(r"^[A-Za-z][A-Za-z0-9]*$", ds):
            errors.append(f"{prefix}: datasource: {ds!r} is not a cloud-init datasource name")
    if "datasource" in raw and not raw.get("include_cloud_init", False):
        errors.append(f"{prefix}: datasource: needs include_cloud_init: true")
    hostname = raw.get("hostname")
    if hostname is not None and not valid_hostname(hostname):
        errors.append(f"{prefix}: hostname: {hostname!r} is not a valid host name")
    disk_size_mb = 2048
    if "disk_size" in raw:
        try:
            disk_size_mb = parse_disk_size(raw["disk_size"])
        except ValueError as exc:
            errors.append(f"{prefix}: {exc}")
        else:
            if disk_size_mb < 64:
                errors.append(f"{prefix}: disk_size: {disk_size_mb} MiB is too small (at least 64M)")
    root_password = raw.get("root_password")
    if root_password is not None and ("\n" in root_password or ":" in root_password or not root_password):
        errors.append(f"{prefix}: root_password: must be non-empty and contain no ':' or newline")
    vm_name = raw.get("vm_name", build_name)
    if "/" in vm_name or vm_name in (".", ".."):
        errors.append(f"{prefix}: vm_name: {vm_name!r} must be a file name, not a path")
    output_directory = Path(raw.get("output_directory", f"output-{build_name}"))
    if output_directory.exists() and not force:
        errors.append(f"{prefix}: Output directory exists: {output_directory}\n\n"
                      "Use the force flag to delete it prior to building.")
    if errors:
        raise ConfigError("\n".join(errors))

    return DebianConfig(
        build_name=build_name,
        suite=suite,
        variant=raw.get("variant", "minbase"),
        mirror=raw.get("mirror", "").rstrip("/") or default_mirror(),
        components=tuple(raw.get("components", ("main",))),
        packages=packages,
        kernel=kernel,
        include_cloud_init=bool(raw.get("include_cloud_init", False)),
        datasources=datasources,
        include_sshd=bool(raw.get("include_sshd", False)),
        hostname=hostname,
        disk_size_mb=disk_size_mb,
        filesystem=raw.get("filesystem", "ext4"),
        partition_table=partition_table,
        bootloader=bootloader,
        formats=_as_tuple(raw.get("format", "qcow2")),
        disk_compression=bool(raw.get("disk_compression", False)),
        output_directory=output_directory,
        vm_name=vm_name,
        cache_dir=Path(raw["cache_dir"]).expanduser() if "cache_dir" in raw else default_cache_dir(),
        communicator=raw.get("communicator", "chroot"),
        tmpfs=bool(raw.get("tmpfs", True)),
        firmware=firmware,
        extra_packages=extra_packages,
        root_password=root_password,
    )
