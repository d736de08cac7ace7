"""The ``amazon-ebs`` builder's options: schema, defaults and Packer's validation rules (packer-plugin-amazon's
``AccessConfig``, ``AMIConfig``, ``RunConfig``, ``BlockDevices`` and the communicator config), every problem
reported at once in Packer's words and naming the key.

Values arrive rendered by the template engine (``{{timestamp}}``, ``clean_resource_name``, user variables); dot
fields (``{{ .SourceAMIName }}``, ``{{ .BuildRegion }}``) in ``tags``, ``run_tags``, ``snapshot_tags`` and
``ami_description`` are kept and rendered at the step that uses them, as Packer does.

Options Packer has that make no sense here (spot instances, SSM tunnels, Windows passwords, assume-role) are
errors naming the key and the reason; harmless ones are warnings.
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
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Polling
from builders.core import ConfigError

#: Packer's builder id for amazon-ebs artifacts.
BUILDER_ID = "mitchellh.amazonebs"

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_DUR = {"type": ["string", "integer"]}
_STRLIST = {"type": "array", "items": {"type": "string"}}
_STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
_KV_LIST = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["key", "value"],
        "properties": {"key": _STR, "value": _STR},
    },
}
_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "filters": _STRMAP,
        "owners": _STRLIST,
        "most_recent": _BOOL,
        "include_deprecated": _BOOL,
        "random": _BOOL,
        "filter": {"type": "array"},
    },
}
_BLOCK_DEVICE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "device_name": _STR,
        "delete_on_termination": _BOOL,
        "encrypted": _BOOL,
        "iops": _INT,
        "no_device": _BOOL,
        "snapshot_id": _STR,
        "throughput": _INT,
        "virtual_name": _STR,
        "volume_type": _STR,
        "volume_size": _INT,
        "kms_key_id": _STR,
    },
}
_BLOCK_DEVICES = {"type": "array", "items": _BLOCK_DEVICE}

#: Options stemforge implements (Packer's names).
SUPPORTED: dict[str, dict[str, Any]] = {
    # access
    "access_key": _STR,
    "secret_key": _STR,
    "token": _STR,
    "region": _STR,
    "profile": _STR,
    "shared_credentials_file": _STR,
    "custom_endpoint_ec2": _STR,
    "insecure_skip_tls_verify": _BOOL,
    "skip_region_validation": _BOOL,
    "skip_credential_validation": _BOOL,
    "skip_metadata_api_check": _BOOL,
    "max_retries": _INT,
    "aws_polling": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"delay_seconds": _INT, "max_attempts": _INT},
    },
    # AMI
    "ami_name": _STR,
    "ami_description": _STR,
    "ami_virtualization_type": _STR,
    "ami_users": _STRLIST,
    "ami_groups": _STRLIST,
    "ami_org_arns": _STRLIST,
    "ami_ou_arns": _STRLIST,
    "ami_product_codes": _STRLIST,
    "ami_regions": _STRLIST,
    "tags": _STRMAP,
    "tag": _KV_LIST,
    "force_deregister": _BOOL,
    "force_delete_snapshot": _BOOL,
    "encrypt_boot": _BOOL,
    "kms_key_id": _STR,
    "region_kms_key_ids": _STRMAP,
    "skip_save_build_region": _BOOL,
    "snapshot_tags": _STRMAP,
    "snapshot_tag": _KV_LIST,
    "snapshot_users": _STRLIST,
    "snapshot_groups": _STRLIST,
    "ena_support": _BOOL,
    "sriov_support": _BOOL,
    "skip_create_ami": _BOOL,
    "ami_block_device_mappings": _BLOCK_DEVICES,
    "launch_block_device_mappings": _BLOCK_DEVICES,
    # run
    "source_ami": _STR,
    "source_ami_filter": _FILTER,
    "instance_type": _STR,
    "availability_zone": _STR,
    "subnet_id": _STR,
    "vpc_id": _STR,
    "security_group_id": _STR,
    "security_group_ids": _STRLIST,
    "temporary_security_group_source_cidrs": _STRLIST,
    "associate_public_ip_address": _BOOL,
    "iam_instance_profile": _STR,
    "run_tags": _STRMAP,
    "run_tag": _KV_LIST,
    "run_volume_tags": _STRMAP,
    "run_volume_tag": {
        "type": "array",
        "items": {"type": "object", "additionalProperties": False, "required": ["name", "value"],
                  "properties": {"name": _STR, "value": _STR}},
    },
    "user_data": _STR,
    "user_data_file": _STR,
    "shutdown_behavior": _STR,
    "disable_stop_instance": _BOOL,
    "ebs_optimized": _BOOL,
    "tenancy": _STR,
    "ssh_interface": _STR,
    "temporary_key_pair_name": _STR,
    "temporary_key_pair_type": _STR,
    "temporary_key_pair_bits": _INT,
    # communicator
    "communicator": _STR,
    "ssh_username": _STR,
    "ssh_password": _STR,
    "ssh_private_key_file": _STR,
    "ssh_keypair_name": _STR,
    "ssh_host": _STR,
    "ssh_port": _INT,
    "ssh_timeout": _DUR,
    "ssh_wait_timeout": _DUR,
    "ssh_handshake_attempts": _INT,
    "ssh_pty": _BOOL,
    "pause_before_connecting": _DUR,
    "ssh_clear_authorized_keys": _BOOL,
    # stemforge: how many regions are copied/tagged at once (Packer starts them all at once)
    "ami_copy_parallelism": _INT,
}

_SPOT = "spot instances are not supported"
_SSM = "the Session Manager tunnel is not supported"

#: Valid Packer options accepted and ignored, with the reason (a warning when set).
IGNORED: dict[str, str] = {
    **{k: v for k, v in IGNORED_COMMUNICATOR.items() if k not in SUPPORTED},
    "decode_authorization_messages": "authorization messages are shown as AWS returns them",
    "enable_t2_unlimited": "T2 Unlimited is not requested",
    "enable_unlimited_credits": "unlimited credits are not requested",
    "ssh_keep_alive_interval": "the SSH communicator uses its own keep-alive interval",
    "snapshot_copy_duration_minutes": "copies use the standard copy duration",
    "temporary_key_pair_bits": "EC2's CreateKeyPair makes 2048-bit RSA keys (or ed25519: temporary_key_pair_type)",
    "skip_profile_validation": "the IAM instance profile is not looked up before launch",
    "fleet_tags": "only used for the spot fleet request (" + _SPOT + ")",
    "fleet_tag": "only used for the spot fleet request (" + _SPOT + ")",
    "pause_before_ssm": "only used with ssh_interface 'session_manager' (" + _SSM + ")",
    "no_ephemeral": "only relevant to Windows guests (ephemeral drives hidden from the console)",
}

#: Valid Packer options refused when set to a non-zero value, with the reason.
REFUSED: dict[str, str] = {
    **REFUSED_COMMUNICATOR,
    "assume_role": "assume_role is not supported; give the role's credentials (access_key/secret_key/token)",
    "vault_aws_engine": "Vault-issued credentials are not supported",
    "mfa_code": "MFA codes are not supported",
    "spot_price": _SPOT,
    "spot_instance_types": _SPOT,
    "spot_tags": _SPOT,
    "spot_tag": _SPOT,
    "block_duration_minutes": _SPOT,
    "session_manager_port": _SSM,
    "temporary_iam_instance_profile_policy_document": "temporary IAM instance profiles are not supported",
    "temporary_security_group_source_public_ip": "discovering this host's public IP needs the internet",
    "windows_password_timeout": "Windows password retrieval is not supported",
    "subnet_filter": "give subnet_id",
    "vpc_filter": "give vpc_id",
    "security_group_filter": "give security_group_ids",
    "enable_nitro_enclave": "Nitro Enclaves are not requested at launch",
    "license_specifications": "license configurations are not attached at launch",
    "placement": "placement (host resource groups) is not supported; give tenancy",
    "metadata_options": "instance metadata options are not set at launch",
    "capacity_reservation_preference": "capacity reservations are not supported",
    "capacity_reservation_id": "capacity reservations are not supported",
    "capacity_reservation_group_arn": "capacity reservations are not supported",
    "imds_support": "the AMI's IMDS support attribute is not set",
    "deprecate_at": "AMI deprecation times are not set",
    "deregistration_protection": "AMI deregistration protection is not set",
    "boot_mode": "the AMI boot mode is not set (the source AMI's applies)",
    "uefi_data": "UEFI variable stores are not set on the AMI",
    "tpm_support": "NitroTPM support is not set on the AMI",
    "fast_launch": "Windows fast launch is not supported",
}

#: The keys Packer's amazon-ebs builder documents (packer-plugin-amazon ``builder/ebs/builder.go`` ``Config`` and
#: ``builder/common``: ``AccessConfig``, ``AMIConfig``, ``SnapshotConfig``, ``RunConfig``) besides the SDK's
#: communicator keys.
EBS_DOCUMENTED: tuple[str, ...] = (
    # AccessConfig
    "access_key", "secret_key", "region", "assume_role", "custom_endpoint_ec2", "shared_credentials_file",
    "decode_authorization_messages", "insecure_skip_tls_verify", "max_retries", "mfa_code", "profile",
    "skip_metadata_api_check", "skip_credential_validation", "token", "vault_aws_engine", "aws_polling",
    # AMIConfig + SnapshotConfig
    "ami_name", "ami_description", "ami_virtualization_type", "ami_users", "ami_groups", "ami_org_arns",
    "ami_ou_arns", "ami_product_codes", "ami_regions", "skip_region_validation", "tags", "tag", "ena_support",
    "sriov_support", "force_deregister", "force_delete_snapshot", "encrypt_boot", "kms_key_id",
    "region_kms_key_ids", "skip_save_build_region", "imds_support", "deprecate_at", "deregistration_protection",
    "snapshot_copy_duration_minutes", "boot_mode", "uefi_data", "tpm_support", "snapshot_tags", "snapshot_tag",
    "snapshot_users", "snapshot_groups",
    # RunConfig
    "associate_public_ip_address", "availability_zone", "block_duration_minutes", "disable_stop_instance",
    "ebs_optimized", "enable_nitro_enclave", "enable_t2_unlimited", "enable_unlimited_credits",
    "iam_instance_profile", "fleet_tags", "fleet_tag", "skip_profile_validation",
    "temporary_iam_instance_profile_policy_document", "shutdown_behavior", "security_group_filter", "run_tags",
    "run_tag", "security_group_id", "security_group_ids", "source_ami", "source_ami_filter", "instance_type",
    "spot_instance_types", "spot_price", "spot_tags", "spot_tag", "subnet_filter", "subnet_id",
    "license_specifications", "placement", "tenancy", "temporary_security_group_source_cidrs",
    "temporary_security_group_source_public_ip", "user_data", "user_data_file", "vpc_filter", "vpc_id",
    "windows_password_timeout", "metadata_options", "ssh_interface", "pause_before_ssm", "session_manager_port",
    "capacity_reservation_preference", "capacity_reservation_id", "capacity_reservation_group_arn",
    # ebs Config
    "skip_create_ami", "ami_block_device_mappings", "launch_block_device_mappings", "run_volume_tags",
    "run_volume_tag", "no_ephemeral", "fast_launch",
)
#: Every key Packer's amazon-ebs builder accepts (its own and the SDK communicator's).
PACKER_KEYS: tuple[str, ...] = EBS_DOCUMENTED + sdk.COMMUNICATOR + sdk.SSH + sdk.WINRM

OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {**SUPPORTED, **{k: {} for k in IGNORED}, **{k: {} for k in REFUSED}},
}

#: Packer's ``templateCleanAMIName``: characters an AMI name may not contain.
_AMI_NAME_BAD = re.compile(r"[^a-zA-Z0-9()\[\] ./\-'@_]")
_SSH_INTERFACES = ("public_ip", "private_ip", "public_dns", "private_dns")
_KMS_ID = r"[a-f0-9]+[a-f0-9-]+$"
_KMS_MRK = r"mrk-[a-f0-9]+[a-f0-9-]+$"
_KMS_ALIAS = r"alias/[a-zA-Z0-9:/_-]+$"
_KMS_ARN = r"^arn:aws(-us-gov)?:kms:([a-z]{2}-(gov-)?[a-z]+-\d{1})?:(\d{12}):"


def clean_ami_name(name: str) -> str:
    """Packer's amazon ``clean_resource_name``: every character an AMI name may not hold becomes ``-``."""
    return _AMI_NAME_BAD.sub("-", name)


def valid_kms_key(key: str) -> bool:
    """Packer's ``ValidateKmsKey``: a key id, a multi-region key id, an alias or a key/alias ARN."""
    for pattern in (_KMS_ID, _KMS_MRK, _KMS_ALIAS):
        if re.match("^" + pattern, key):
            return True
    return any(re.match(_KMS_ARN + tail, key) for tail in (f"key/{_KMS_ID}", f"key/{_KMS_MRK}", _KMS_ALIAS))


def known_regions() -> set[str]:
    """Every EC2 region botocore knows (all partitions), offline."""
    import boto3

    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return regions


@dataclass
class BlockDevice:
    """One of Packer's block device mappings."""

    device_name: str
    delete_on_termination: bool = False
    encrypted: bool | None = None
    iops: int = 0
    no_device: bool = False
    snapshot_id: str = ""
    throughput: int = 0
    virtual_name: str = ""
    volume_type: str = ""
    volume_size: int = 0
    kms_key_id: str = ""

    def to_ec2(self) -> dict[str, Any]:
        """The EC2 ``BlockDeviceMapping`` structure (Packer's ``BlockDevice.BuildEC2BlockDeviceMapping``)."""
        mapping: dict[str, Any] = {"DeviceName": self.device_name}
        if self.no_device:
            mapping["NoDevice"] = ""
            return mapping
        if self.virtual_name:
            mapping["VirtualName"] = self.virtual_name
            return mapping
        ebs: dict[str, Any] = {"DeleteOnTermination": self.delete_on_termination}
        if self.volume_type:
            ebs["VolumeType"] = self.volume_type
        if self.volume_size:
            ebs["VolumeSize"] = self.volume_size
        if self.iops:
            ebs["Iops"] = self.iops
        if self.throughput:
            ebs["Throughput"] = self.throughput
        if self.snapshot_id:
            ebs["SnapshotId"] = self.snapshot_id
        if self.encrypted is not None:
            ebs["Encrypted"] = self.encrypted
        if self.kms_key_id:
            ebs["KmsKeyId"] = self.kms_key_id
        mapping["Ebs"] = ebs
        return mapping


@dataclass
class EbsConfig:
    """The validated, defaulted options."""

    build_name: str
    access: AwsAccess
    ami_name: str = ""
    ami_description: str = ""
    ami_virtualization_type: str = ""
    ami_users: list[str] = field(default_factory=list)
    ami_groups: list[str] = field(default_factory=list)
    ami_org_arns: list[str] = field(default_factory=list)
    ami_ou_arns: list[str] = field(default_factory=list)
    ami_product_codes: list[str] = field(default_factory=list)
    ami_regions: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    snapshot_tags: dict[str, str] = field(default_factory=dict)
    snapshot_users: list[str] = field(default_factory=list)
    snapshot_groups: list[str] = field(default_factory=list)
    force_deregister: bool = False
    force_delete_snapshot: bool = False
    encrypt_boot: bool | None = None
    kms_key_id: str = ""
    region_kms_key_ids: dict[str, str] = field(default_factory=dict)
    skip_save_build_region: bool = False
    skip_create_ami: bool = False
    ena_support: bool | None = None
    sriov_support: bool = False
    ami_block_device_mappings: list[BlockDevice] = field(default_factory=list)
    launch_block_device_mappings: list[BlockDevice] = field(default_factory=list)
    source_ami: str = ""
    source_ami_filter: dict[str, Any] = field(default_factory=dict)
    instance_type: str = ""
    availability_zone: str = ""
    subnet_id: str = ""
    vpc_id: str = ""
    security_group_ids: list[str] = field(default_factory=list)
    temporary_security_group_source_cidrs: list[str] = field(default_factory=list)
    associate_public_ip_address: bool | None = None
    iam_instance_profile: str = ""
    run_tags: dict[str, str] = field(default_factory=dict)
    run_volume_tags: dict[str, str] = field(default_factory=dict)
    user_data: str = ""
    shutdown_behavior: str = "stop"
    disable_stop_instance: bool = False
    ebs_optimized: bool = False
    tenancy: str = ""
    ssh_interface: str = ""
    temporary_key_pair_name: str = ""
    temporary_key_pair_type: str = "rsa"
    communicator: str = "ssh"
    ssh_username: str = ""
    ssh_password: str = field(default="", repr=False)
    ssh_private_key_file: str = ""
    ssh_keypair_name: str = ""
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_timeout: float = 300.0
    ssh_handshake_attempts: int = 10
    ssh_pty: bool = False
    pause_before_connecting: float = 0.0
    ami_copy_parallelism: int = 16

    @property
    def region(self) -> str:
        return self.access.region

    @property
    def intermediary(self) -> bool:
        """Packer makes an intermediary AMI (copied, then deleted) when encrypting or not keeping the build
        region's AMI."""
        return bool(self.encrypt_boot) or self.skip_save_build_region


def polling_config(raw: Mapping[str, Any], errors: list[str]) -> Polling:
    """Packer's ``aws_polling`` block; ``AWS_POLL_DELAY_SECONDS`` / ``AWS_MAX_ATTEMPTS`` in the environment are
    used when the template sets no value (as Packer does)."""
    import os

    polling = Polling()
    for key, env, kind in (
        ("delay_seconds", "AWS_POLL_DELAY_SECONDS", float),
        ("max_attempts", "AWS_MAX_ATTEMPTS", int),
    ):
        value = raw.get(key) or os.environ.get(env) or None
        if value is None:
            continue
        try:
            number = kind(value)
        except ValueError:
            errors.append(f"aws_polling.{key}: {value!r} is not a number (from {env})")
            continue
        if number <= 0:
            errors.append(f"aws_polling.{key} must be positive")
            continue
        setattr(polling, key, number)
    return polling


def _kv(raw: Mapping[str, Any], singular: str, plural: str, errors: list[str]) -> dict[str, str]:
    """Packer's ``KeyValues.CopyOn``: ``tag`` blocks merged into ``tags``; both set is an error."""
    out = {str(k): str(v) for k, v in (raw.get(plural) or {}).items()}
    blocks = raw.get(singular) or []
    if blocks and out:
        errors.append(f"{singular}: only one of {plural} or {singular} can be set")
    for block in blocks:
        out[str(block["key"])] = str(block["value"])
    return out


def prepare_config(
    raw: Mapping[str, Any], build_name: str, template_dir: Path, force: bool, prefix: str
) -> tuple[EbsConfig, list[str]]:
    """Validate ``raw`` (already schema-checked and weakly typed by the registry); ConfigError with every problem,
    one per line, each prefixed with ``prefix``. Returns the config and Packer's warnings."""
    from builders.builder_types.qemu.config import parse_duration

    errors: list[str] = []
    warnings: list[str] = []
    for key, reason in REFUSED.items():
        if not zero(raw.get(key)):
            errors.append(f"{key}: not supported by stemforge: {reason}")
    for key, reason in IGNORED.items():
        if not zero(raw.get(key)):
            warnings.append(f"{key} is ignored: {reason}")

    def s(key: str, default: str = "") -> str:
        value = raw.get(key)
        return default if value is None else str(value)

    def lst(key: str) -> list[str]:
        return [str(v) for v in raw.get(key) or []]

    # --- access (Packer's AccessConfig.Prepare)
    polling = polling_config(raw.get("aws_polling") or {}, errors)
    access = AwsAccess(
        region=s("region"),
        access_key=s("access_key"),
        secret_key=s("secret_key"),
        token=s("token"),
        profile=s("profile"),
        shared_credentials_file=s("shared_credentials_file"),
        custom_endpoint_ec2=s("custom_endpoint_ec2"),
        insecure_skip_tls_verify=bool(raw.get("insecure_skip_tls_verify")),
        max_retries=int(raw["max_retries"]) if raw.get("max_retries") is not None else 8,
        polling=polling,
    )
    if not access.region:
        errors.append("region is required")
    if bool(access.access_key) != bool(access.secret_key):
        errors.append("`access_key` and `secret_key` must both be either set or not set.")
    if access.custom_endpoint_ec2 and not re.match(r"^https?://", access.custom_endpoint_ec2):
        errors.append(f"custom_endpoint_ec2: {access.custom_endpoint_ec2!r} must be an http:// or https:// URL")
    if access.max_retries < 0:
        errors.append("max_retries must be 0 or more")
    skip_region_validation = bool(raw.get("skip_region_validation"))
    regions_known = known_regions() if not skip_region_validation else set()

    def check_region(region: str, where: str) -> None:
        if regions_known and region not in regions_known:
            errors.append(f"error validating region: {where}: Invalid region: {region}")

    if access.region:
        check_region(access.region, "region")

    cfg = EbsConfig(build_name=build_name, access=access)

    # --- AMI (Packer's AMIConfig.Prepare)
    cfg.ami_name = s("ami_name")
    cfg.ami_description = s("ami_description")
    cfg.ami_virtualization_type = s("ami_virtualization_type")
    if cfg.ami_virtualization_type not in ("", "hvm", "paravirtual"):
        errors.append(f"ami_virtualization_type: {cfg.ami_virtualization_type!r} must be 'hvm' or 'paravirtual'")
    cfg.ami_users, cfg.ami_groups = lst("ami_users"), lst("ami_groups")
    cfg.ami_org_arns, cfg.ami_ou_arns = lst("ami_org_arns"), lst("ami_ou_arns")
    cfg.ami_product_codes = lst("ami_product_codes")
    cfg.snapshot_users, cfg.snapshot_groups = lst("snapshot_users"), lst("snapshot_groups")
    cfg.tags = _kv(raw, "tag", "tags", errors)
    cfg.snapshot_tags = _kv(raw, "snapshot_tag", "snapshot_tags", errors)
    cfg.force_deregister = bool(raw.get("force_deregister")) or force
    cfg.force_delete_snapshot = bool(raw.get("force_delete_snapshot"))
    cfg.encrypt_boot = raw.get("encrypt_boot") if isinstance(raw.get("encrypt_boot"), bool) else None
    cfg.kms_key_id = s("kms_key_id")
    cfg.region_kms_key_ids = {str(k): str(v) for k, v in (raw.get("region_kms_key_ids") or {}).items()}
    cfg.skip_save_build_region = bool(raw.get("skip_save_build_region"))
    cfg.skip_create_ami = bool(raw.get("skip_create_ami"))
    cfg.ena_support = raw.get("ena_support") if isinstance(raw.get("ena_support"), bool) else None
    cfg.sriov_support = bool(raw.get("sriov_support"))
    cfg.ami_copy_parallelism = int(raw.get("ami_copy_parallelism") or 16)
    if cfg.ami_copy_parallelism < 1:
        errors.append("ami_copy_parallelism must be at least 1")

    if not cfg.ami_name:
        errors.append("ami_name must be specified")
    for region in cfg.region_kms_key_ids:
        if region not in lst("ami_regions"):
            errors.append(f"Region {region} is in region_kms_key_ids but not in ami_regions")
    seen: set[str] = set()
    for i, region in enumerate(lst("ami_regions")):
        if region in seen:
            continue
        seen.add(region)
        check_region(region, f"ami_regions[{i}]")
        if cfg.region_kms_key_ids and region not in cfg.region_kms_key_ids:
            errors.append(f"Region {region} is in ami_regions but not in region_kms_key_ids")
        if region == access.region:
            continue  # Packer: "Cannot copy AMI to AWS session region ..., deleting it from `ami_regions`."
        cfg.ami_regions.append(region)
    if cfg.ami_users or cfg.ami_org_arns or cfg.ami_ou_arns:
        if not cfg.kms_key_id and not cfg.region_kms_key_ids and cfg.encrypt_boot is True:
            errors.append("Cannot share AMI encrypted with default KMS key")
        if any(not key for key in cfg.region_kms_key_ids.values()):
            errors.append("Cannot share AMI encrypted with default KMS key for other regions")
    kms_keys = ([cfg.kms_key_id] if cfg.kms_key_id else []) + [k for k in cfg.region_kms_key_ids.values() if k]
    if kms_keys and cfg.encrypt_boot is not True:
        errors.append("If you have set either region_kms_key_ids or kms_key_id, encrypt_boot must also be true.")
    for key in kms_keys:
        if not valid_kms_key(key):
            errors.append(f'"{key}" is not a valid KMS Key Id.')
    if cfg.snapshot_users:
        if not cfg.kms_key_id and not cfg.region_kms_key_ids and cfg.encrypt_boot is True:
            errors.append(
                "Cannot share snapshot encrypted with default KMS key, see "
                "https://www.packer.io/docs/builders/amazon-ebs#region_kms_key_ids for more information"
            )
        if any(not key for key in cfg.region_kms_key_ids.values()):
            errors.append("Cannot share snapshot encrypted with default KMS key")
    if cfg.ami_name and not 3 <= len(cfg.ami_name) <= 128:
        errors.append("ami_name must be between 3 and 128 characters long")
    if cfg.ami_name and cfg.ami_name != clean_ami_name(cfg.ami_name):
        errors.append(
            "AMIName should only contain alphanumeric characters, parentheses (()), square brackets ([]), "
            "spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or "
            "underscores(_). You can use the `clean_resource_name` template filter to automatically clean "
            "your ami name."
        )
    if cfg.skip_save_build_region and not cfg.ami_regions:
        errors.append("skip_save_build_region needs at least one region in ami_regions (the AMI would be kept nowhere)")

    # --- block devices
    for key in ("ami_block_device_mappings", "launch_block_device_mappings"):
        devices: list[BlockDevice] = []
        for i, item in enumerate(raw.get(key) or []):
            device = BlockDevice(**{k: v for k, v in item.items()})
            where = f"{key}[{i}]"
            if not device.device_name:
                errors.append(
                    f"{where}: The `device_name` must be specified for every device in the block device mapping."
                )
            if device.kms_key_id and device.encrypted is not True:
                errors.append(
                    f"{where}: The device {device.device_name} has a kms_key_id but is not encrypted: "
                    "set encrypted to true"
                )
            if device.kms_key_id and not valid_kms_key(device.kms_key_id):
                errors.append(f'{where}: "{device.kms_key_id}" is not a valid KMS Key Id.')
            if device.iops and device.volume_type not in ("io1", "io2", "gp3"):
                errors.append(f"{where}: iops is only valid for volume_type io1, io2 or gp3")
            if device.throughput and device.volume_type != "gp3":
                errors.append(f"{where}: throughput is only valid for volume_type gp3")
            devices.append(device)
        setattr(cfg, key, devices)

    # --- run (Packer's RunConfig.Prepare)
    cfg.source_ami = s("source_ami")
    cfg.source_ami_filter = dict(raw.get("source_ami_filter") or {})
    if not cfg.source_ami and not cfg.source_ami_filter:
        errors.append("A source_ami or source_ami_filter must be specified")
    if cfg.source_ami_filter:
        if not cfg.source_ami_filter.get("owners"):
            errors.append("For security reasons, you must declare an owner.")
        if not cfg.source_ami_filter.get("filters") and not cfg.source_ami_filter.get("owners"):
            errors.append("source_ami_filter: give filters and owners")
        if cfg.source_ami_filter.get("filter"):
            errors.append(
                "source_ami_filter.filter: HCL filter blocks are not supported in JSON templates; use filters"
            )
    cfg.instance_type = s("instance_type")
    if not cfg.instance_type:
        errors.append("An instance_type must be specified")
    cfg.availability_zone = s("availability_zone")
    cfg.subnet_id, cfg.vpc_id = s("subnet_id"), s("vpc_id")
    group_ids = lst("security_group_ids")
    if s("security_group_id"):
        group_ids = [s("security_group_id"), *group_ids]
    cfg.security_group_ids = list(dict.fromkeys(group_ids))
    cfg.temporary_security_group_source_cidrs = lst("temporary_security_group_source_cidrs") or ["0.0.0.0/0"]
    for cidr in cfg.temporary_security_group_source_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            errors.append(f"Error parsing temporary_security_group_source_cidrs: {exc}")
    if isinstance(raw.get("associate_public_ip_address"), bool):
        cfg.associate_public_ip_address = bool(raw["associate_public_ip_address"])
    cfg.iam_instance_profile = s("iam_instance_profile")
    cfg.run_tags = _kv(raw, "run_tag", "run_tags", errors)
    cfg.run_volume_tags = {str(k): str(v) for k, v in (raw.get("run_volume_tags") or {}).items()}
    # packer-plugin-amazon builder/ebs/builder.go: ``run_volume_tag`` is a NameValues list copied onto the map
    volume_blocks = raw.get("run_volume_tag") or []
    if volume_blocks and cfg.run_volume_tags:
        errors.append("run_volume_tag: only one of run_volume_tags or run_volume_tag can be set")
    for block in volume_blocks:
        cfg.run_volume_tags[str(block["name"])] = str(block["value"])
    user_data, user_data_file = s("user_data"), s("user_data_file")
    if user_data and user_data_file:
        errors.append("Only one of user_data or user_data_file can be specified.")
    elif user_data_file:
        path = Path(user_data_file)
        if not path.is_absolute() and not path.exists():
            path = template_dir / path
        if not path.is_file():
            errors.append(f"user_data_file not found: {user_data_file}")
        else:
            cfg.user_data = path.read_text(errors="replace")
    else:
        cfg.user_data = user_data
    cfg.shutdown_behavior = s("shutdown_behavior") or "stop"
    if cfg.shutdown_behavior not in ("stop", "terminate"):
        errors.append("shutdown_behavior only accepts 'stop' or 'terminate' values.")
    cfg.disable_stop_instance = bool(raw.get("disable_stop_instance"))
    cfg.ebs_optimized = bool(raw.get("ebs_optimized"))
    cfg.tenancy = s("tenancy")
    if cfg.tenancy and cfg.tenancy not in ("default", "dedicated", "host"):
        errors.append(f"tenancy: {cfg.tenancy!r} must be one of default, dedicated, host")
    cfg.ssh_interface = s("ssh_interface")
    if cfg.ssh_interface == "session_manager":
        errors.append(
            "ssh_interface: session_manager is not supported by stemforge (the Session Manager tunnel "
            "needs the AWS session-manager-plugin)"
        )
    elif cfg.ssh_interface and cfg.ssh_interface not in _SSH_INTERFACES:
        errors.append(f"Unknown interface type: {cfg.ssh_interface}")

    # --- communicator
    cfg.communicator = s("communicator") or "ssh"
    if cfg.communicator not in ("ssh", "none"):
        errors.append(f"communicator: {cfg.communicator!r} is not supported (use 'ssh' or 'none')")
    cfg.ssh_username = s("ssh_username")
    cfg.ssh_password = s("ssh_password")
    cfg.ssh_private_key_file = s("ssh_private_key_file")
    cfg.ssh_keypair_name = s("ssh_keypair_name")
    cfg.ssh_host = s("ssh_host")
    cfg.ssh_port = int(raw.get("ssh_port") or 22)
    cfg.ssh_handshake_attempts = int(raw.get("ssh_handshake_attempts") or 10)
    cfg.ssh_pty = bool(raw.get("ssh_pty"))
    for key, default, target in (
        ("ssh_timeout", 300.0, "ssh_timeout"),
        ("pause_before_connecting", 0.0, "pause_before_connecting"),
    ):
        source = key if key in raw or key != "ssh_timeout" else "ssh_wait_timeout"
        try:
            value = parse_duration(raw[source]) if raw.get(source) not in (None, "") else default
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
            value = default
        setattr(cfg, target, value or default)
    cfg.temporary_key_pair_type = s("temporary_key_pair_type") or "rsa"
    if cfg.temporary_key_pair_type not in ("rsa", "ed25519"):
        errors.append(f"temporary_key_pair_type: {cfg.temporary_key_pair_type!r} must be 'rsa' or 'ed25519'")
    if cfg.communicator == "ssh":
        if not cfg.ssh_username:
            errors.append(
                'An ssh_username must be specified\n  Note: some builders used to default ssh_username to "root".'
            )
        if cfg.ssh_private_key_file:
            key_path = Path(cfg.ssh_private_key_file).expanduser()
            if not key_path.is_absolute() and not key_path.exists():
                key_path = template_dir / key_path
            if not key_path.is_file():
                errors.append(f"ssh_private_key_file is invalid: {cfg.ssh_private_key_file} does not exist")
            else:
                cfg.ssh_private_key_file = str(key_path)
        if cfg.ssh_keypair_name and not cfg.ssh_private_key_file:
            errors.append("ssh_private_key_file must be provided to retrieve the private key of ssh_keypair_name")
    # Packer: a temporary key pair unless the user brings a key pair, a key or a password
    if not (cfg.ssh_keypair_name or cfg.ssh_private_key_file or cfg.ssh_password):
        import uuid

        cfg.temporary_key_pair_name = s("temporary_key_pair_name") or f"packer_{uuid.uuid4()}"

    if errors:
        raise ConfigError("\n".join(f"{prefix}: {e}" for e in errors))
    return cfg, warnings
