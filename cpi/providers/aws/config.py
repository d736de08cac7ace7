"""The AWS provider's configuration (``cloud.properties.aws``) and the cloud_properties schemas it accepts.

Property names follow bosh-aws-cpi where it has them (``region``, ``default_key_name``, ``default_security_groups``,
``default_iam_instance_profile``, ``access_key_id``, ``secret_access_key``, ``session_token``,
``credentials_source``, ``max_retries``, ``ec2_endpoint``, ``encrypted``, ``kms_key_arn``; VM cloud_properties
``instance_type``, ``availability_zone``, ``security_groups``, ``key_name``, ``ephemeral_disk``, ``root_disk``, ...;
network cloud_properties ``subnet``, ``security_groups``; disk cloud_properties ``type``, ``iops``, ``encrypted``,
``kms_key_arn``). Additions of ours: ``endpoint`` (one URL for every service: the moto server in tests),
``s3_endpoint``, the retry/timeout bounds, and ``images_bucket``/``images_prefix``/``import_role_name`` for heavy
stemcells (S3 upload + ImportSnapshot).

Importing this module is cheap (no boto3). Every schema rejects unknown keys, so a typo is an error naming the key
rather than a silent default. Secrets (``secret_access_key``, ``session_token``, ``access_key_id``) are recognised
by :func:`stemforge_base.redaction.is_secret_key` and never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cpi.validation import validate

_URL = {"type": "string", "pattern": "^https?://[^\\s]+$"}
_TAG_MAP = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
VOLUME_TYPES = ("gp3", "gp2", "io1", "io2", "st1", "sc1", "standard")

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["region"],
    "properties": {
        "region": {"type": "string", "pattern": "^[a-z]{2}(-[a-z]+)+-[0-9]+$"},
        "endpoint": _URL,
        "ec2_endpoint": _URL,
        "s3_endpoint": _URL,
        "credentials_source": {"enum": ["static", "env_or_profile"]},
        "access_key_id": {"type": "string", "minLength": 1},
        "secret_access_key": {"type": "string", "minLength": 1},
        "session_token": {"type": "string", "minLength": 1},
        "default_key_name": {"type": "string", "minLength": 1},
        "default_security_groups": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "default_iam_instance_profile": {"type": "string", "minLength": 1},
        "default_availability_zone": {"type": "string", "minLength": 1},
        "encrypted": {"type": "boolean"},
        "kms_key_arn": {"type": "string", "minLength": 1},
        # bounded calls: botocore's own retries are off; tenacity retries throttling/5xx/connection errors
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 30},
        "retry_base_delay": {"type": "number", "minimum": 0, "maximum": 60},
        "retry_max_delay": {"type": "number", "minimum": 0, "maximum": 300},
        "retry_total_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "read_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        # waits for a resource state (instance running/terminated, volume available/attached, snapshot completed)
        "wait_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
        "poll_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
        # heavy stemcells: the image is uploaded here, imported as a snapshot, registered as an AMI
        "images_bucket": {"type": "string", "minLength": 3, "maxLength": 63},
        "images_prefix": {"type": "string"},
        "import_role_name": {"type": "string", "minLength": 1},
        "import_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
    },
}

_DISK_SPEC: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 64 * 1024 * 1024},  # MiB
        "type": {"enum": list(VOLUME_TYPES)},
        "iops": {"type": "integer", "minimum": 100, "maximum": 256000},
        "throughput": {"type": "integer", "minimum": 125, "maximum": 2000},
        "encrypted": {"type": "boolean"},
        "kms_key_arn": {"type": "string", "minLength": 1},
    },
}

VM_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["instance_type"],
    "properties": {
        "instance_type": {"type": "string", "pattern": "^[a-z][a-z0-9-]*\\.[a-z0-9]+$"},
        "availability_zone": {"type": "string", "minLength": 1},
        "security_groups": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "key_name": {"type": "string", "minLength": 1},
        "iam_instance_profile": {"type": "string", "minLength": 1},
        "placement_group": {"type": "string", "minLength": 1},
        "tenancy": {"enum": ["default", "dedicated"]},
        "auto_assign_public_ip": {"type": "boolean"},
        "root_disk": _DISK_SPEC,
        "ephemeral_disk": {
            **_DISK_SPEC,
            "properties": {**_DISK_SPEC["properties"], "use_instance_storage": {"type": "boolean"}},
        },
    },
}

NETWORK_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "subnet": {"type": "string", "pattern": "^subnet-[0-9a-zA-Z]+$"},
        "security_groups": {"type": "array", "items": {"type": "string", "minLength": 1}},
    },
}

DISK_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "type": {"enum": list(VOLUME_TYPES)},
        "iops": {"type": "integer", "minimum": 100, "maximum": 256000},
        "throughput": {"type": "integer", "minimum": 125, "maximum": 2000},
        "encrypted": {"type": "boolean"},
        "kms_key_arn": {"type": "string", "minLength": 1},
    },
}

#: stemcell.MF cloud_properties: the MF carries many descriptive keys (name, version, os, ...), so unknown keys
#: are allowed here; the ones the CPI uses are checked.
STEMCELL_CLOUD_PROPERTIES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ami": {
            "type": "object",
            "additionalProperties": {"type": "string", "pattern": "^ami-[0-9a-zA-Z]+$"},
        },
        "name": {"type": "string"},
        "version": {"type": ["string", "number"]},
        "architecture": {"enum": ["x86_64", "amd64", "arm64", "aarch64", "i386"]},
        "root_device_name": {"type": "string", "pattern": "^/dev/[a-z0-9]+$"},
        "virtualization_type": {"enum": ["hvm"]},
        "disk": {"type": "integer", "minimum": 1},
        "boot_mode": {"enum": ["legacy-bios", "uefi", "uefi-preferred"]},
        "encrypted": {"type": "boolean"},
        "kms_key_arn": {"type": "string", "minLength": 1},
        "tags": _TAG_MAP,
    },
}


@dataclass(frozen=True)
class AwsConfig:
    """Validated ``aws`` section with defaults filled in (see the module docstring for the names)."""

    region: str
    endpoint: str | None = None
    ec2_endpoint: str | None = None
    s3_endpoint: str | None = None
    credentials_source: str = "static"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    default_key_name: str | None = None
    default_security_groups: tuple[str, ...] = ()
    default_iam_instance_profile: str | None = None
    default_availability_zone: str | None = None
    encrypted: bool = False
    kms_key_arn: str | None = None
    max_retries: int = 8
    retry_base_delay: float = 0.5
    retry_max_delay: float = 20.0
    retry_total_seconds: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    wait_timeout: float = 900.0
    poll_interval: float = 2.0
    images_bucket: str | None = None
    images_prefix: str = "stemcells/"
    import_role_name: str | None = None
    import_timeout: float = 3300.0  # below the CPI's default call_timeout (3600 s): raise both for big images

    @classmethod
    def from_properties(cls, section: Mapping[str, Any] | None) -> AwsConfig:
        """Build from the ``aws`` section; CpiError naming the offending field (``aws.<field>``)."""
        from cpi.errors import CpiError

        if section is None:
            raise CpiError("aws config: the 'aws' section of cloud.properties is missing (it needs at least 'region')")
        data = dict(section)
        validate("aws config", CONFIG_SCHEMA, data)
        source = data.get("credentials_source", "static")
        has_keys = "access_key_id" in data or "secret_access_key" in data
        if source == "static" and not ("access_key_id" in data and "secret_access_key" in data):
            raise CpiError(
                "aws config: credentials_source 'static' needs both 'access_key_id' and "
                "'secret_access_key' (or set credentials_source: env_or_profile)"
            )
        if source == "env_or_profile" and (has_keys or "session_token" in data):
            raise CpiError(
                "aws config: credentials_source 'env_or_profile' cannot be combined with "
                "'access_key_id'/'secret_access_key'/'session_token'"
            )
        if "default_security_groups" in data:
            data["default_security_groups"] = tuple(data["default_security_groups"])
        if "images_prefix" in data:
            prefix = str(data["images_prefix"]).lstrip("/")
            data["images_prefix"] = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        return cls(**data)

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint URL for ``ec2`` or ``s3``: the service's own setting, else ``endpoint``, else AWS's."""
        specific = {"ec2": self.ec2_endpoint, "s3": self.s3_endpoint}.get(service)
        return specific or self.endpoint

