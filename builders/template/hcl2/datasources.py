"""HCL2 ``data`` sources: ``null`` (Packer core), ``http`` (Packer core) and ``amazon-ami`` (the amazon plugin),
each returning the attributes Packer's data source documents. ``hcp-packer-*`` sources are configured (their
outputs unknown) when data sources are not evaluated, as Packer's validate does, and reported as not supported when a
value is needed. AWS calls use boto3 with the block's ``region``/credentials and honour ``custom_endpoint_ec2`` (or
``AWS_ENDPOINT_URL``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


class DataSourceError(Exception):
    """The data source failed; the message is the diagnostic detail."""


def _null(config: Mapping[str, Any]) -> dict[str, Any]:
    if "input" not in config:
        raise DataSourceError('The argument "input" is required, but no definition was found.')
    return {"input": config["input"], "output": config["input"]}


def _http(config: Mapping[str, Any]) -> dict[str, Any]:
    import requests  # lazy: loaded only when a template has an http data source

    url = config.get("url")
    if not url:
        raise DataSourceError("the `url` must be specified")
    method = str(config.get("method") or "GET").upper()
    headers = {str(k): str(v) for k, v in (config.get("request_headers") or {}).items()}
    try:
        resp = requests.request(method, str(url), headers=headers, data=config.get("request_body"), timeout=60)
    except requests.RequestException as e:
        raise DataSourceError(f"HTTP request error: {e}") from None
    if resp.status_code != 200 and not config.get("ignore_status_codes", False):
        raise DataSourceError(f"HTTP request error. Response code: {resp.status_code}")
    return {"url": url, "method": method, "request_headers": headers, "request_body": config.get("request_body"),
            "body": resp.text, "status_code": resp.status_code,
            "response_headers": {k: v for k, v in resp.headers.items()}}


def _amazon_ami(config: Mapping[str, Any]) -> dict[str, Any]:
    import boto3  # lazy: the aws extra, loaded only when a template has an amazon-ami data source
    import botocore.exceptions

    filters = config.get("filters") or {}
    owners = config.get("owners") or []
    if not filters and not owners:
        raise DataSourceError("For security reasons, you must declare an owner using the owners field. "
                              "Otherwise, you must declare at least one filter.")
    region = config.get("region") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if not region:
        raise DataSourceError("region: The region must be set (the `region` argument or AWS_DEFAULT_REGION).")
    endpoint = config.get("custom_endpoint_ec2") or os.environ.get("AWS_ENDPOINT_URL_EC2") \
        or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region_name": region, "endpoint_url": endpoint or None}
    if config.get("access_key") and config.get("secret_key"):
        kwargs.update(aws_access_key_id=config["access_key"], aws_secret_access_key=config["secret_key"],
                      aws_session_token=config.get("token") or None)
    try:
        client = boto3.client("ec2", **kwargs)
        params: dict[str, Any] = {"Filters": [{"Name": k, "Values": v if isinstance(v, list) else [str(v)]}
                                              for k, v in filters.items()]}
        if owners:
            params["Owners"] = [str(o) for o in owners]
        images = client.describe_images(**params)["Images"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        raise DataSourceError(f"Error querying AMI: {e}") from None
    if not images:
        raise DataSourceError("No AMI was found matching filters: " + str(params))
    if len(images) > 1 and not config.get("most_recent"):
        raise DataSourceError("Your query returned more than one result. Please try a more specific search, "
                              "or set most_recent to true.")
    image = sorted(images, key=lambda i: i.get("CreationDate", ""))[-1]
    return {"id": image["ImageId"], "name": image.get("Name", ""), "creation_date": image.get("CreationDate", ""),
            "owner": image.get("OwnerId", ""), "owner_name": image.get("ImageOwnerAlias", ""),
            "tags": {t["Key"]: t["Value"] for t in image.get("Tags", [])}}


def hcp_packer_config_errors(type_name: str, config: Mapping[str, Any]) -> list[str]:
    """What the ``Configure`` of Packer's ``hcp-packer-version`` / ``hcp-packer-artifact`` data sources rejects,
    and of the deprecated ``hcp-packer-iteration`` (packer ``datasource/hcp-packer-<type>/data.go``); validate runs it
    without reading the registry. The deprecated ``hcp-packer-image`` is not checked here."""
    def missing(key: str) -> bool:
        return not config.get(key)

    errors: list[str] = []
    if type_name == "hcp-packer-iteration":
        errors += ["The `bucket_name` must be specified"] if missing("bucket_name") else []
        errors += ["`channel` is currently a required field."] if missing("channel") else []
    if type_name in ("hcp-packer-version", "hcp-packer-artifact") and missing("bucket_name"):
        errors.append("the `bucket_name` must be specified")
    if type_name == "hcp-packer-version" and missing("channel_name"):
        errors.append("the `channel_name` must be specified")
    if type_name == "hcp-packer-artifact":
        if missing("channel_name") and missing("version_fingerprint"):
            errors.append("`version_fingerprint` or `channel_name` must be specified")
        if not missing("channel_name") and not missing("version_fingerprint"):
            errors.append("`version_fingerprint` and `channel_name` cannot be specified together")
        errors += [f"the `{k}` must be specified" for k in ("region", "platform") if missing(k)]
    return errors


DATA_SOURCES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "null": _null,
    "http": _http,
    "amazon-ami": _amazon_ami,
}
