"""Packer's hash and crypto functions (md5 sha1 sha256 sha512 base64sha256 base64sha512 bcrypt uuidv4 uuidv5
rsadecrypt).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_int, as_string


def f_md5(s: Any) -> Any:
    return hashlib.md5(as_string(s).encode()).hexdigest()  # noqa: S324 - the documented function


def f_sha1(s: Any) -> Any:
    return hashlib.sha1(as_string(s).encode()).hexdigest()  # noqa: S324


def f_sha256(s: Any) -> Any:
    return hashlib.sha256(as_string(s).encode()).hexdigest()


def f_sha512(s: Any) -> Any:
    return hashlib.sha512(as_string(s).encode()).hexdigest()


def f_bcrypt(s: Any, *cost: Any) -> Any:
    import bcrypt  # lazy: a C extension loaded only when a template calls bcrypt

    rounds = as_int(cost[0], 1) if cost else 10
    if rounds < 4 or rounds > 31:
        raise FunctionArgumentError(f"crypto/bcrypt: cost {rounds} is outside allowed range (4,31)", 1)
    return bcrypt.hashpw(as_string(s).encode(), bcrypt.gensalt(rounds, prefix=b"2a")).decode()


def f_uuidv4() -> Any:
    return str(uuid.uuid4())


def f_uuidv5(namespace: Any, name: Any) -> Any:
    ns = as_string(namespace)
    known = {"dns": uuid.NAMESPACE_DNS, "url": uuid.NAMESPACE_URL, "oid": uuid.NAMESPACE_OID,
             "x500": uuid.NAMESPACE_X500}
    try:
        space = known[ns] if ns in known else uuid.UUID(ns)
    except ValueError:
        raise FunctionArgumentError(f"uuidv5() doesn't support namespace {ns}", 0) from None
    return str(uuid.uuid5(space, as_string(name, 1)))


def f_rsadecrypt(ciphertext: Any, privatekey: Any) -> Any:
    # lazy: cryptography loads only when a template calls rsadecrypt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        raw = base64.b64decode(as_string(ciphertext))
    except ValueError:
        raise FunctionArgumentError("failed to decode input: illegal base64 data", 0) from None
    try:
        key = serialization.load_pem_private_key(as_string(privatekey, 1).encode(), password=None)
    except ValueError:
        raise FunctionArgumentError("invalid private key: failed to parse the PEM block", 1) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FunctionArgumentError("invalid private key: not an RSA key", 1)
    try:
        return key.decrypt(raw, padding.PKCS1v15()).decode()
    except ValueError:
        raise FunctionArgumentError("failed to decrypt: crypto/rsa: decryption error", 0) from None


def f_base64sha256(s: Any) -> Any:
    return base64.b64encode(hashlib.sha256(as_string(s).encode()).digest()).decode()


def f_base64sha512(s: Any) -> Any:
    return base64.b64encode(hashlib.sha512(as_string(s).encode()).digest()).decode()


FUNCTIONS: dict[str, Function] = {
    "md5": f_md5, "sha1": f_sha1, "sha256": f_sha256, "sha512": f_sha512, "bcrypt": f_bcrypt, "uuidv4": f_uuidv4,
    "uuidv5": f_uuidv5, "rsadecrypt": f_rsadecrypt, "base64sha256": f_base64sha256, "base64sha512": f_base64sha512,
}
