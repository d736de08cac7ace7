"""Packer's encoding functions (base64*, textencodebase64, csvdecode, json*, urlencode, yaml*, base64gzip).

Semantics and error words follow go-cty's stdlib / Terraform's functions, as Packer uses them."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import urllib.parse
from typing import Any

import yaml

from builders.template.hcl2.evaluator import FunctionArgumentError
from builders.template.hcl2.stdlib.args import Function, as_string
from builders.template.hcl2.values import normalize_number


def f_base64encode(s: Any) -> Any:
    return base64.b64encode(as_string(s).encode()).decode()


def f_base64decode(s: Any) -> Any:
    try:
        raw = base64.b64decode(as_string(s), validate=True)
    except ValueError:
        raise FunctionArgumentError("failed to decode base64 data", 0) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionArgumentError("the result of decoding the provided string is not valid UTF-8", 0) from None


def f_textencodebase64(s: Any, encoding: Any) -> Any:
    try:
        return base64.b64encode(as_string(s).encode(as_string(encoding, 1))).decode()
    except LookupError:
        raise FunctionArgumentError(f'"{encoding}" is not a supported IANA encoding name or alias', 1) from None


def f_textdecodebase64(s: Any, encoding: Any) -> Any:
    try:
        return base64.b64decode(as_string(s)).decode(as_string(encoding, 1))
    except LookupError:
        raise FunctionArgumentError(f'"{encoding}" is not a supported IANA encoding name or alias', 1) from None


def f_csvdecode(s: Any) -> Any:
    rows = list(csv.reader(io.StringIO(as_string(s))))
    if not rows:
        return []
    header, out = rows[0], []
    for r in rows[1:]:
        if len(r) != len(header):
            raise FunctionArgumentError("wrong number of fields in line", 0)
        out.append(dict(zip(header, r, strict=True)))
    return out


def f_jsondecode(s: Any) -> Any:
    try:
        return _jsonable(json.loads(as_string(s)))
    except json.JSONDecodeError as e:
        raise FunctionArgumentError(f"invalid JSON: {e.msg}", 0) from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return normalize_number(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def f_jsonencode(v: Any) -> Any:
    return json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False).replace("<", "\\u003c") \
        .replace(">", "\\u003e").replace("&", "\\u0026")


def f_urlencode(s: Any) -> Any:
    return urllib.parse.quote_plus(as_string(s), safe="")


def f_yamldecode(s: Any) -> Any:
    try:
        return _jsonable(yaml.safe_load(as_string(s)))
    except yaml.YAMLError as e:
        raise FunctionArgumentError(f"on line {getattr(getattr(e, 'problem_mark', None), 'line', 0) + 1}: {e}", 0) \
            from None


class _QuotedDumper(yaml.SafeDumper):
    """Strings always double-quoted, as go-yaml's encoder in Terraform's ``yamlencode`` writes them."""


_QuotedDumper.add_representer(str, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                                                               style='"'))


def f_yamlencode(v: Any) -> Any:
    return yaml.dump(v, Dumper=_QuotedDumper, default_flow_style=False, sort_keys=True, allow_unicode=True,
                     width=2**31)


def f_base64gzip(s: Any) -> Any:
    return base64.b64encode(gzip.compress(as_string(s).encode(), mtime=0)).decode()


FUNCTIONS: dict[str, Function] = {
    "base64encode": f_base64encode, "base64decode": f_base64decode, "textencodebase64": f_textencodebase64,
    "textdecodebase64": f_textdecodebase64, "csvdecode": f_csvdecode, "jsondecode": f_jsondecode,
    "jsonencode": f_jsonencode, "urlencode": f_urlencode, "yamldecode": f_yamldecode, "yamlencode": f_yamlencode,
    "base64gzip": f_base64gzip,
}
