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
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders.builder_types import _sdk_options as sdk
from builders.builder_types._sdk.communicator import CommConfig
from builders.builder_types._sdk.options import Options
from builders.builder_types._sdk_options import IGNORED_COMMUNICATOR, REFUSED_COMMUNICATOR
from builders.builder_types.amazon_ebs.ec2 import AwsAccess, Polling
from builders.core import ConfigError
from builders.template.functions import clean_ami_name

#: Packer's builder id for amazon-ebs artifacts.
BUILDER_ID = "mitchellh.amazonebs"

_KV_LIST = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["key", "value"],
        "properties": {"key": sdk.STR, "value": sdk.STR},
    },
}
_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "filters": sdk.STRMAP,
        "owners": sdk.STRLIST,
        "most_recent": sdk.BOOL,
        "include_deprecated": sdk.BOOL,
        "random": sdk.BOOL,
        "filter": {"type": "array"},
    },
}
_BLOCK_DEVICE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "device_name": sdk.STR,
        "delete_on_termination": sdk.BOOL,
        "encrypted": sdk.BOOL,
        "iops": sdk.INT,
        "no_device": sdk.BOOL,
        "snapshot_id": sdk.STR,
        "throughput": sdk.INT,
        "virtual_name": sdk.STR,
        "volume_type": sdk.STR,
        "volume_size": sdk.INT,
        "kms_key_id": sdk.STR,
    },
}
_BLOCK_DEVICES = {"type": "array", "items": _BLOCK_DEVICE}

#: packer-plugin-amazon ``AccessConfig`` keys stemforge implements (also the ``amazon-import`` post-processor's).
ACCESS_OPTIONS: dict[str, dict[str, Any]] = {
    "access_key": sdk.STR,
    "secret_key": sdk.STR,
    "token": sdk.STR,
    "region": sdk.STR,
    "profile": sdk.STR,
    "shared_credentials_file": sdk.STR,
    "custom_endpoint_ec2": sdk.STR,
    "insecure_skip_tls_verify": sdk.BOOL,
    "skip_region_validation": sdk.BOOL,
    "skip_credential_validation": sdk.BOOL,
    "skip_metadata_api_check": sdk.BOOL,
    "max_retries": sdk.INT,
    "aws_polling": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"delay_seconds": sdk.INT, "max_attempts": sdk.INT},
    },
}

#: Options stemforge implements (Packer's names).
SUPPORTED: dict[str, dict[str, Any]] = {
    **ACCESS_OPTIONS,
    # AMI
    "ami_name": sdk.STR,
    "ami_description": sdk.STR,
    "ami_virtualization_type": sdk.STR,
    "ami_users": sdk.STRLIST,
    "ami_groups": sdk.STRLIST,
    "ami_org_arns": sdk.STRLIST,
    "ami_ou_arns": sdk.STRLIST,
    "ami_product_codes": sdk.STRLIST,
    "ami_regions": sdk.STRLIST,
    "tags": sdk.STRMAP,
    "tag": _KV_LIST,
    "force_deregister": sdk.BOOL,
    "force_delete_snapshot": sdk.BOOL,
    "encrypt_boot": sdk.BOOL,
    "kms_key_id": sdk.STR,
    "region_kms_key_ids": sdk.STRMAP,
    "skip_save_build_region": sdk.BOOL,
    "snapshot_tags": sdk.STRMAP,
    "snapshot_tag": _KV_LIST,
    "snapshot_users": sdk.STRLIST,
    "snapshot_groups": sdk.STRLIST,
    "ena_support": sdk.BOOL,
    "sriov_support": sdk.BOOL,
    "skip_create_ami": sdk.BOOL,
    "ami_block_device_mappings": _BLOCK_DEVICES,
    "launch_block_device_mappings": _BLOCK_DEVICES,
    # run
    "source_ami": sdk.STR,
    "source_ami_filter": _FILTER,
    "instance_type": sdk.STR,
    "availability_zone": sdk.STR,
    "subnet_id": sdk.STR,
    "vpc_id": sdk.STR,
    "security_group_id": sdk.STR,
    "security_group_ids": sdk.STRLIST,
    "temporary_security_group_source_cidrs": sdk.STRLIST,
    "associate_public_ip_address": sdk.BOOL,
    "iam_instance_profile": sdk.STR,
    "run_tags": sdk.STRMAP,
    "run_tag": _KV_LIST,
    "run_volume_tags": sdk.STRMAP,
    "run_volume_tag": {
        "type": "array",
        "items": {"type": "object", "additionalProperties": False, "required": ["name", "value"],
                  "properties": {"name": sdk.STR, "value": sdk.STR}},
    },
    "user_data": sdk.STR,
    "user_data_file": sdk.STR,
    "shutdown_behavior": sdk.STR,
    "disable_stop_instance": sdk.BOOL,
    "ebs_optimized": sdk.BOOL,
    "tenancy": sdk.STR,
    "ssh_interface": sdk.STR,
    "metadata_options": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"http_endpoint": sdk.STR, "http_tokens": sdk.STR, "http_put_response_hop_limit": sdk.INT,
                       "instance_metadata_tags": sdk.STR},
    },
    "temporary_key_pair_name": sdk.STR,
    "temporary_key_pair_type": sdk.STR,
    "temporary_key_pair_bits": sdk.INT,
    # communicator
    "communicator": sdk.STR,
    "ssh_username": sdk.STR,
    "ssh_password": sdk.STR,
    "ssh_private_key_file": sdk.STR,
    "ssh_keypair_name": sdk.STR,
    "ssh_host": sdk.STR,
    "ssh_port": sdk.INT,
    "ssh_timeout": sdk.DUR,
    "ssh_wait_timeout": sdk.DUR,
    "ssh_handshake_attempts": sdk.INT,
    "ssh_pty": sdk.BOOL,
    "pause_before_connecting": sdk.DUR,
    "ssh_clear_authorized_keys": sdk.BOOL,
    # stemforge: how many regions are copied/tagged at once (Packer starts them all at once)
    "ami_copy_parallelism": sdk.INT,
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

OPTIONS_SCHEMA: dict[str, Any] = sdk.options_schema(SUPPORTED, IGNORED, REFUSED)

_SSH_INTERFACES = ("public_ip", "private_ip", "public_dns", "private_dns")
_KMS_ID = r"[a-f0-9]+[a-f0-9-]+$"
_KMS_MRK = r"mrk-[a-f0-9]+[a-f0-9-]+$"
_KMS_ALIAS = r"alias/[a-zA-Z0-9:/_-]+$"
_KMS_ARN = r"^arn:aws(-us-gov)?:kms:([a-z]{2}-(gov-)?[a-z]+-\d{1})?:(\d{12}):"


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


@dataclass(kw_only=True)
class EbsConfig(CommConfig):
    """The validated, defaulted options: the SDK's communicator part plus packer-plugin-amazon's access, AMI,
    block device and run configs."""

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
    #: ``metadata_options`` as EC2's ``MetadataOptions`` (empty when not set: EC2's defaults apply).
    metadata_options: dict[str, Any] = field(default_factory=dict)
    temporary_key_pair_name: str = ""
    ssh_keypair_name: str = ""
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


def _kv(opts: Options, singular: str, plural: str) -> dict[str, str]:
    """Packer's ``KeyValues.CopyOn``: ``tag`` blocks merged into ``tags``; both set is an error."""
    out = opts.mapping(plural)
    blocks = opts.raw.get(singular) or []
    if blocks and out:
        opts.errors.append(f"{singular}: only one of {plural} or {singular} can be set")
    for block in blocks:
        out[str(block["key"])] = str(block["value"])
    return out


def _optional_bool(opts: Options, key: str) -> bool | None:
    """A tri-state option (Packer's ``config.Trilean``): None when the template does not set it."""
    value = opts.raw.get(key)
    return value if isinstance(value, bool) else None


def prepare_config(
    raw: Mapping[str, Any], build_name: str, template_dir: Path, force: bool, prefix: str
) -> tuple[EbsConfig, list[str]]:
    """Packer's amazon-ebs ``Config.Prepare`` on options already checked and weakly decoded by
    ``builders.registry.validate_options``; ConfigError with every problem, one per line, each prefixed with
    ``prefix``. Returns the config and Packer's warnings."""
    opts = Options(raw, template_dir)
    opts.check_unsupported(REFUSED, IGNORED, "stemforge")
    cfg = EbsConfig(build_name=build_name, access=_prepare_access(opts))
    regions = _RegionCheck(opts)
    if cfg.access.region:
        regions.check(cfg.access.region, "region")
    _prepare_ami(cfg, opts, force, regions)
    _check_ami_encryption(cfg, opts)
    for key in ("ami_block_device_mappings", "launch_block_device_mappings"):
        setattr(cfg, key, _block_devices(opts, key))
    _prepare_run(cfg, opts)
    _prepare_metadata(cfg, opts)
    _prepare_user_data(cfg, opts)
    cfg.prepare_comm(opts)
    _prepare_key_pair(cfg, opts)
    if opts.errors:
        raise ConfigError("\n".join(f"{prefix}: {e}" for e in opts.errors))
    return cfg, opts.warnings


def _prepare_access(opts: Options) -> AwsAccess:
    """Packer's ``AccessConfig.Prepare``."""
    access = AwsAccess(
        region=opts.text("region"),
        access_key=opts.text("access_key"),
        secret_key=opts.text("secret_key"),
        token=opts.text("token"),
        profile=opts.text("profile"),
        shared_credentials_file=opts.text("shared_credentials_file"),
        custom_endpoint_ec2=opts.text("custom_endpoint_ec2"),
        insecure_skip_tls_verify=opts.flag("insecure_skip_tls_verify"),
        max_retries=int(opts.raw["max_retries"]) if opts.raw.get("max_retries") is not None else 8,
        polling=polling_config(opts.raw.get("aws_polling") or {}, opts.errors),
    )
    if not access.region:
        opts.errors.append("region is required")
    if bool(access.access_key) != bool(access.secret_key):
        opts.errors.append("`access_key` and `secret_key` must both be either set or not set.")
    if access.custom_endpoint_ec2 and not re.match(r"^https?://", access.custom_endpoint_ec2):
        opts.errors.append(f"custom_endpoint_ec2: {access.custom_endpoint_ec2!r} must be an http:// or https:// URL")
    if access.max_retries < 0:
        opts.errors.append("max_retries must be 0 or more")
    return access


class _RegionCheck:
    """Region names against botocore's offline list, unless ``skip_region_validation``."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.known = known_regions() if not opts.flag("skip_region_validation") else set()

    def check(self, region: str, where: str) -> None:
        if self.known and region not in self.known:
            self.opts.errors.append(f"error validating region: {where}: Invalid region: {region}")


def _prepare_ami(cfg: EbsConfig, opts: Options, force: bool, regions: _RegionCheck) -> None:
    """Packer's ``AMIConfig.Prepare``: names, sharing, tags and the copy regions (the build region dropped)."""
    cfg.ami_name = opts.text("ami_name")
    cfg.ami_description = opts.text("ami_description")
    cfg.ami_virtualization_type = opts.text("ami_virtualization_type")
    if cfg.ami_virtualization_type not in ("", "hvm", "paravirtual"):
        opts.errors.append(f"ami_virtualization_type: {cfg.ami_virtualization_type!r} must be 'hvm' or "
                           "'paravirtual'")
    cfg.ami_users, cfg.ami_groups = opts.strings("ami_users"), opts.strings("ami_groups")
    cfg.ami_org_arns, cfg.ami_ou_arns = opts.strings("ami_org_arns"), opts.strings("ami_ou_arns")
    cfg.ami_product_codes = opts.strings("ami_product_codes")
    cfg.snapshot_users, cfg.snapshot_groups = opts.strings("snapshot_users"), opts.strings("snapshot_groups")
    cfg.tags = _kv(opts, "tag", "tags")
    cfg.snapshot_tags = _kv(opts, "snapshot_tag", "snapshot_tags")
    cfg.force_deregister = opts.flag("force_deregister") or force
    cfg.force_delete_snapshot = opts.flag("force_delete_snapshot")
    cfg.encrypt_boot = _optional_bool(opts, "encrypt_boot")
    cfg.kms_key_id = opts.text("kms_key_id")
    cfg.region_kms_key_ids = opts.mapping("region_kms_key_ids")
    cfg.skip_save_build_region = opts.flag("skip_save_build_region")
    cfg.skip_create_ami = opts.flag("skip_create_ami")
    cfg.ena_support = _optional_bool(opts, "ena_support")
    cfg.sriov_support = opts.flag("sriov_support")
    cfg.ami_copy_parallelism = int(opts.raw.get("ami_copy_parallelism") or 16)
    if cfg.ami_copy_parallelism < 1:
        opts.errors.append("ami_copy_parallelism must be at least 1")
    if not cfg.ami_name:
        opts.errors.append("ami_name must be specified")
    requested = opts.strings("ami_regions")
    for region in cfg.region_kms_key_ids:
        if region not in requested:
            opts.errors.append(f"Region {region} is in region_kms_key_ids but not in ami_regions")
    for i, region in enumerate(requested):
        if requested.index(region) != i:
            continue
        regions.check(region, f"ami_regions[{i}]")
        if cfg.region_kms_key_ids and region not in cfg.region_kms_key_ids:
            opts.errors.append(f"Region {region} is in ami_regions but not in region_kms_key_ids")
        if region != cfg.access.region:  # Packer: "Cannot copy AMI to AWS session region ..., deleting it"
            cfg.ami_regions.append(region)
    if cfg.ami_name and not 3 <= len(cfg.ami_name) <= 128:
        opts.errors.append("ami_name must be between 3 and 128 characters long")
    if cfg.ami_name and cfg.ami_name != clean_ami_name(cfg.ami_name):
        opts.errors.append(
            "AMIName should only contain alphanumeric characters, parentheses (()), square brackets ([]), "
            "spaces ( ), periods (.), slashes (/), dashes (-), single quotes ('), at-signs (@), or "
            "underscores(_). You can use the `clean_resource_name` template filter to automatically clean "
            "your ami name."
        )
    if cfg.skip_save_build_region and not cfg.ami_regions:
        opts.errors.append("skip_save_build_region needs at least one region in ami_regions (the AMI would be kept "
                           "nowhere)")


def _check_ami_encryption(cfg: EbsConfig, opts: Options) -> None:
    """Packer's ``AMIConfig.Prepare`` rules between sharing and KMS keys."""
    errors = opts.errors
    default_key_only = not cfg.kms_key_id and not cfg.region_kms_key_ids and cfg.encrypt_boot is True
    default_region_key = any(not key for key in cfg.region_kms_key_ids.values())
    if cfg.ami_users or cfg.ami_org_arns or cfg.ami_ou_arns:
        if default_key_only:
            errors.append("Cannot share AMI encrypted with default KMS key")
        if default_region_key:
            errors.append("Cannot share AMI encrypted with default KMS key for other regions")
    kms_keys = ([cfg.kms_key_id] if cfg.kms_key_id else []) + [k for k in cfg.region_kms_key_ids.values() if k]
    if kms_keys and cfg.encrypt_boot is not True:
        errors.append("If you have set either region_kms_key_ids or kms_key_id, encrypt_boot must also be true.")
    errors.extend(f'"{key}" is not a valid KMS Key Id.' for key in kms_keys if not valid_kms_key(key))
    if cfg.snapshot_users:
        if default_key_only:
            errors.append(
                "Cannot share snapshot encrypted with default KMS key, see "
                "https://www.packer.io/docs/builders/amazon-ebs#region_kms_key_ids for more information"
            )
        if default_region_key:
            errors.append("Cannot share snapshot encrypted with default KMS key")


def _block_devices(opts: Options, key: str) -> list[BlockDevice]:
    """Packer's ``BlockDevices.Prepare`` for one of the two mapping lists."""
    devices: list[BlockDevice] = []
    for i, item in enumerate(opts.raw.get(key) or []):
        device = BlockDevice(**dict(item))
        where = f"{key}[{i}]"
        if not device.device_name:
            opts.errors.append(
                f"{where}: The `device_name` must be specified for every device in the block device mapping."
            )
        if device.kms_key_id and device.encrypted is not True:
            opts.errors.append(
                f"{where}: The device {device.device_name} has a kms_key_id but is not encrypted: "
                "set encrypted to true"
            )
        if device.kms_key_id and not valid_kms_key(device.kms_key_id):
            opts.errors.append(f'{where}: "{device.kms_key_id}" is not a valid KMS Key Id.')
        if device.iops and device.volume_type not in ("io1", "io2", "gp3"):
            opts.errors.append(f"{where}: iops is only valid for volume_type io1, io2 or gp3")
        if device.throughput and device.volume_type != "gp3":
            opts.errors.append(f"{where}: throughput is only valid for volume_type gp3")
        devices.append(device)
    return devices


def _prepare_run(cfg: EbsConfig, opts: Options) -> None:
    """Packer's ``RunConfig.Prepare``: the source AMI, the instance and its network."""
    errors = opts.errors
    cfg.source_ami = opts.text("source_ami")
    cfg.source_ami_filter = dict(opts.raw.get("source_ami_filter") or {})
    if not cfg.source_ami and not cfg.source_ami_filter:
        errors.append("A source_ami or source_ami_filter must be specified")
    if cfg.source_ami_filter:
        if not cfg.source_ami_filter.get("owners"):
            errors.append("For security reasons, you must declare an owner.")
        if not cfg.source_ami_filter.get("filters") and not cfg.source_ami_filter.get("owners"):
            errors.append("source_ami_filter: give filters and owners")
        if cfg.source_ami_filter.get("filter"):
            errors.append("source_ami_filter.filter: HCL filter blocks are not supported in JSON templates; use "
                          "filters")
    cfg.instance_type = opts.text("instance_type")
    if not cfg.instance_type:
        errors.append("An instance_type must be specified")
    cfg.availability_zone = opts.text("availability_zone")
    cfg.subnet_id, cfg.vpc_id = opts.text("subnet_id"), opts.text("vpc_id")
    group_ids = opts.strings("security_group_ids")
    if opts.text("security_group_id"):
        group_ids = [opts.text("security_group_id"), *group_ids]
    cfg.security_group_ids = list(dict.fromkeys(group_ids))
    cfg.temporary_security_group_source_cidrs = opts.strings("temporary_security_group_source_cidrs") or [
        "0.0.0.0/0"]
    for cidr in cfg.temporary_security_group_source_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            errors.append(f"Error parsing temporary_security_group_source_cidrs: {exc}")
    cfg.associate_public_ip_address = _optional_bool(opts, "associate_public_ip_address")
    cfg.iam_instance_profile = opts.text("iam_instance_profile")
    cfg.run_tags = _kv(opts, "run_tag", "run_tags")
    cfg.run_volume_tags = opts.mapping("run_volume_tags")
    # packer-plugin-amazon builder/ebs/builder.go: ``run_volume_tag`` is a NameValues list copied onto the map
    volume_blocks = opts.raw.get("run_volume_tag") or []
    if volume_blocks and cfg.run_volume_tags:
        errors.append("run_volume_tag: only one of run_volume_tags or run_volume_tag can be set")
    for block in volume_blocks:
        cfg.run_volume_tags[str(block["name"])] = str(block["value"])
    cfg.shutdown_behavior = opts.text("shutdown_behavior", "stop")
    if cfg.shutdown_behavior not in ("stop", "terminate"):
        errors.append("shutdown_behavior only accepts 'stop' or 'terminate' values.")
    cfg.disable_stop_instance = opts.flag("disable_stop_instance")
    cfg.ebs_optimized = opts.flag("ebs_optimized")
    cfg.tenancy = opts.text("tenancy")
    if cfg.tenancy and cfg.tenancy not in ("default", "dedicated", "host"):
        errors.append(f"tenancy: {cfg.tenancy!r} must be one of default, dedicated, host")
    cfg.ssh_interface = opts.text("ssh_interface")
    if cfg.ssh_interface == "session_manager":
        errors.append("ssh_interface: session_manager is not supported by stemforge (the Session Manager tunnel "
                      "needs the AWS session-manager-plugin)")
    elif cfg.ssh_interface and cfg.ssh_interface not in _SSH_INTERFACES:
        errors.append(f"Unknown interface type: {cfg.ssh_interface}")


def _prepare_metadata(cfg: EbsConfig, opts: Options) -> None:
    """Packer's ``RunConfig.Prepare`` for ``metadata_options`` (its defaults and messages); the launch passes
    them as EC2's ``MetadataOptions`` when the block is set."""
    raw = opts.raw.get("metadata_options")
    if not raw:
        return
    endpoint = str(raw.get("http_endpoint") or "enabled")
    tokens = str(raw.get("http_tokens") or "optional")
    hops = int(raw.get("http_put_response_hop_limit") or 1)
    tags = str(raw.get("instance_metadata_tags") or "disabled")
    if endpoint not in ("enabled", "disabled"):
        opts.errors.append("http_endpoint requires either disabled or enabled as its value")
    if tokens not in ("optional", "required"):
        opts.errors.append("http_tokens requires either optional or required as its value")
    if not 1 <= hops <= 64:
        opts.errors.append("http_put_response_hop_limit requires a number between 1 and 64")
    if tags not in ("enabled", "disabled"):
        opts.errors.append("instance_metadata_tags requires either disabled or enabled as its value")
    cfg.metadata_options = {"HttpEndpoint": endpoint, "HttpTokens": tokens, "HttpPutResponseHopLimit": hops,
                            "InstanceMetadataTags": tags}


def _prepare_user_data(cfg: EbsConfig, opts: Options) -> None:
    user_data, user_data_file = opts.text("user_data"), opts.text("user_data_file")
    if user_data and user_data_file:
        opts.errors.append("Only one of user_data or user_data_file can be specified.")
    elif user_data_file:
        path = opts.template_file(user_data_file)
        if not path.is_file():
            opts.errors.append(f"user_data_file not found: {user_data_file}")
        else:
            cfg.user_data = path.read_text(errors="replace")
    else:
        cfg.user_data = user_data


def _prepare_key_pair(cfg: EbsConfig, opts: Options) -> None:
    """``ssh_keypair_name`` needs the private key; Packer makes a temporary key pair unless the user brings a key
    pair, a key or a password."""
    cfg.ssh_keypair_name = opts.text("ssh_keypair_name")
    if cfg.communicator == "ssh" and cfg.ssh_keypair_name and not cfg.ssh_private_key_file:
        opts.errors.append("ssh_private_key_file must be provided to retrieve the private key of ssh_keypair_name")
    if not (cfg.ssh_keypair_name or cfg.ssh_private_key_file or cfg.ssh_password):
        cfg.temporary_key_pair_name = opts.text("temporary_key_pair_name") or f"packer_{uuid.uuid4()}"
