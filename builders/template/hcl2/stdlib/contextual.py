"""Packer's contextual functions: ``env`` (variable defaults only), ``aws_secretsmanager`` and
``aws_secretsmanager_raw`` (boto3's default credential chain; ``AWS_ENDPOINT_URL[_SECRETS_MANAGER]`` honoured),
and ``vault`` / ``consul_key``, which stemforge does not read: a clear error, naming the variable when the
server is not configured."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_string
from builders.template.hcl2.values import to_string


def _unconfigured(name: str) -> Any:
    variable = "VAULT_ADDR" if name == "vault" else "CONSUL_HTTP_ADDR"
    raise FunctionArgumentError(f"{name}: not configured: set {variable} to the server's address "
                                "(stemforge never guesses one)")


def f_vault(path: Any, key: Any) -> Any:
    if not os.environ.get("VAULT_ADDR"):
        return _unconfigured("vault")
    raise FunctionArgumentError("vault: reading secrets from Vault is not supported by stemforge")


def f_consul_key(key: Any) -> Any:
    if not os.environ.get("CONSUL_HTTP_ADDR"):
        return _unconfigured("consul_key")
    raise FunctionArgumentError("consul_key: reading keys from Consul is not supported by stemforge")


def f_aws_secretsmanager(name: Any, key: Any) -> Any:
    raw = f_aws_secretsmanager_raw(name)
    if key is None or as_string(key, 1) == "":
        return raw
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise FunctionArgumentError("secret is not a JSON object; use aws_secretsmanager_raw", 0) from None
    if not isinstance(data, dict) or as_string(key, 1) not in data:
        raise FunctionArgumentError(f"key {key} not found in secret {name}", 1)
    return to_string(data[as_string(key, 1)])


def f_aws_secretsmanager_raw(name: Any) -> Any:
    # lazy: boto3 is the `aws` extra and slow to import; only templates that call this function need it
    import boto3
    import botocore.exceptions

    endpoint = os.environ.get("AWS_ENDPOINT_URL_SECRETS_MANAGER") or os.environ.get("AWS_ENDPOINT_URL")
    try:
        client = boto3.client("secretsmanager", endpoint_url=endpoint or None)
        value = client.get_secret_value(SecretId=as_string(name))
    except botocore.exceptions.BotoCoreError as e:
        raise FunctionArgumentError(f"error initialising AWS session: {e}") from None
    except botocore.exceptions.ClientError as e:
        raise FunctionArgumentError(f"error retrieving secret {name}: {e}") from None
    return value.get("SecretString") or base64.b64decode(value.get("SecretBinary", b"")).decode()


def env(*, allowed: bool) -> Function:
    """``env``: the environment variable's value, or ``""``; an error unless ``allowed`` (variable defaults)."""
    def f_env(name: Any) -> Any:
        if not allowed:
            raise FunctionArgumentError("env vars are not allowed here; the env function is only available in "
                                        "variable default values")
        return os.environ.get(as_string(name), "")
    return f_env


FUNCTIONS: dict[str, Function] = {
    "vault": f_vault, "consul_key": f_consul_key, "aws_secretsmanager": f_aws_secretsmanager,
    "aws_secretsmanager_raw": f_aws_secretsmanager_raw,
}
