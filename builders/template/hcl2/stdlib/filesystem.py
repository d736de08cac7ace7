"""Packer's filesystem functions (abspath basename dirname pathexpand file filebase64 fileexists fileset templatefile
and the file digests filemd5 filesha1 filesha256 filesha512 filebase64sha256 filebase64sha512).

A relative path is read relative to the working directory, as Packer does (not the template's directory)."""

from __future__ import annotations

import base64
import glob
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from builders.template.hcl2.evaluator import Evaluator, FunctionArgumentError, parse_template_text
from builders.template.hcl2.stdlib.args import Function, as_map, as_string


def _resolve(p: str) -> Path:
    path = Path(os.path.expanduser(p))
    return path if path.is_absolute() else Path.cwd() / path


def f_file(p: Any) -> Any:
    path = _resolve(as_string(p))
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FunctionArgumentError(f"no file exists at {p}; this function works only with files that are "
                                    "distributed as part of the configuration source code, so if this file "
                                    "will be created by a resource in this configuration you must instead "
                                    "obtain this result from an attribute of that resource", 0) from None
    except UnicodeDecodeError:
        raise FunctionArgumentError(f"contents of {p} are not valid UTF-8; use the filebase64 function to "
                                    "obtain the Base64 encoded contents or the other file functions (e.g. "
                                    "filemd5, filesha256) to obtain file hashing results instead", 0) from None
    except OSError as e:
        raise FunctionArgumentError(f"failed to read {p}: {e.strerror}", 0) from None


def f_filebase64(p: Any) -> Any:
    try:
        return base64.b64encode(_resolve(as_string(p)).read_bytes()).decode()
    except OSError:
        raise FunctionArgumentError(f"no file exists at {p}", 0) from None


def _file_digest(algorithm: str, encode: Callable[[bytes], str]) -> Function:
    def digest(p: Any) -> Any:
        try:
            data = _resolve(as_string(p)).read_bytes()
        except OSError:
            raise FunctionArgumentError(f"no file exists at {p}", 0) from None
        return encode(hashlib.new(algorithm, data).digest())
    return digest


def _hex(raw: bytes) -> str:
    return raw.hex()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def f_fileexists(p: Any) -> Any:
    path = _resolve(as_string(p))
    if path.exists() and not path.is_file():
        raise FunctionArgumentError(f"{p} is not a regular file, but {'directory' if path.is_dir() else 'other'}", 0)
    return path.is_file()


def f_fileset(base: Any, pattern: Any) -> Any:
    root = _resolve(as_string(base))
    matches = glob.glob(as_string(pattern, 1), root_dir=root, recursive=True)
    return sorted(m for m in matches if (root / m).is_file())


def f_abspath(p: Any) -> Any:
    return str(Path(os.path.abspath(as_string(p))))


def f_basename(p: Any) -> Any:
    raw = as_string(p)
    text = raw.rstrip("/")
    if not text:
        return "/" if raw else "."
    return os.path.basename(text)


def f_dirname(p: Any) -> Any:
    text = as_string(p)
    return os.path.dirname(text.rstrip("/") if text.rstrip("/") else text) or "."


def f_pathexpand(p: Any) -> Any:
    return os.path.expanduser(as_string(p))


def templatefile(table: Mapping[str, Function]) -> Function:
    """``templatefile`` rendering with the functions of ``table`` (all of them but itself, as Packer's)."""
    def f_templatefile(p: Any, vars_: Any) -> Any:
        text = f_file(p)
        variables = as_map(vars_, 1)
        parts = parse_template_text(text, as_string(p))
        inner = {k: v for k, v in table.items() if k != "templatefile"}
        ev = Evaluator(as_string(p), inner, {as_string(p): text})
        return ev.render_parts(parts + [("lit", "")], dict(variables), None)
    return f_templatefile


FUNCTIONS: dict[str, Function] = {
    "file": f_file, "filebase64": f_filebase64, "fileexists": f_fileexists, "fileset": f_fileset,
    "abspath": f_abspath, "basename": f_basename, "dirname": f_dirname, "pathexpand": f_pathexpand,
    "filemd5": _file_digest("md5", _hex), "filesha1": _file_digest("sha1", _hex),
    "filesha256": _file_digest("sha256", _hex), "filesha512": _file_digest("sha512", _hex),
    "filebase64sha256": _file_digest("sha256", _b64), "filebase64sha512": _file_digest("sha512", _b64),
}
