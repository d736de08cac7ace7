"""Provisioners (``builders.core.Provisioner`` plugins): ``shell``, ``file``, ``shell-local`` here; builder-specific
ones (``hostname``, ``ssh-inject``, ``firstboot``) live next to them under the same convention.

Conventions the build runner honours (optional class attributes, all with safe defaults):

* ``needs_communicator`` (default True): False for provisioners that run on the build host (``shell-local``); the
  others are skipped, with a message, when the builder has no machine to talk to (the ``file`` builder, as Packer's
  mock communicator does).
* ``render_at_runtime`` (default empty): option keys the runner must leave unrendered because the provisioner
  renders them itself with runtime data (``execute_command`` and its ``{{.Vars}}``/``{{.Path}}``); use
  :func:`render_runtime` for that.

Helpers shared by the shell-family provisioners are below: Packer's environment-variable flattening, exit-code
checks with Packer's words, and the per-command timeout derived from a provisioner's ``timeout``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from builders.core import BuildContext, BuildError

#: Exit status a communicator reports when the connection dropped during a command (Packer's CmdDisconnect).
CMD_DISCONNECT = 2300218
#: Values of Packer's HTTP generated data when the builder has no HTTP server.
_HTTP_NOT_IMPLEMENTED = {"ERR_HTTP_ADDR_NOT_IMPLEMENTED_BY_BUILDER", "ERR_HTTP_IP_NOT_IMPLEMENTED_BY_BUILDER",
                         "ERR_HTTP_PORT_NOT_IMPLEMENTED_BY_BUILDER"}
_DOT_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def command_timeout(ctx: BuildContext) -> float | None:
    """Seconds left before the provisioner's ``timeout`` (None when it has none). The runner gives a
    provisioner with a ``timeout`` a cancel event carrying a ``deadline`` (``time.monotonic()`` value)."""
    deadline = getattr(ctx.cancel, "deadline", None)
    if deadline is None:
        return None
    return max(0.1, float(deadline) - time.monotonic())


def render_runtime(text: str, data: Mapping[str, Any], ctx: BuildContext) -> str:
    """Render a runtime template such as ``execute_command``: ``{{.Vars}}``, ``{{.Path}}``, ... come from ``data``;
    anything else (``{{user `x`}}``, ``{{build_name}}``) goes through the template engine (``ctx.render``)."""
    tokens: dict[str, str] = {}

    def protect(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in data:
            return match.group(0)
        token = f"\x00STEMFORGE{len(tokens)}\x00"
        tokens[token] = str(data[key])
        return token

    protected = _DOT_FIELD.sub(protect, text)
    if "{{" in protected:
        rendered = ctx.render(protected)
        protected = rendered if isinstance(rendered, str) else str(rendered)
    for token, value in tokens.items():
        protected = protected.replace(token, value)
    return protected


def env_var_errors(pairs: Iterable[Any]) -> list[str]:
    """Packer's check of ``environment_vars`` entries."""
    errors = []
    for kv in pairs:
        key, sep, _ = str(kv).partition("=")
        if not sep or not key:
            errors.append(f"Environment variable not in format 'key=value': {kv}")
    return errors


def flatten_env_vars(ctx: BuildContext, environment_vars: Sequence[str], env: Mapping[str, Any] | None,
                     env_var_format: str) -> str:
    """Packer's ``createFlattenedEnvVars``: PACKER_BUILD_NAME, PACKER_BUILDER_TYPE, the HTTP server variables when
    the builder has one, then ``environment_vars`` and ``env`` (which wins), single quotes escaped, sorted by name,
    each formatted with ``env_var_format`` (default ``"%s='%s' "``)."""
    values: dict[str, str] = {
        "PACKER_BUILD_NAME": ctx.build_name,
        "PACKER_BUILDER_TYPE": ctx.build_type,
    }
    for key, name in (("PackerHTTPAddr", "PACKER_HTTP_ADDR"), ("PackerHTTPIP", "PACKER_HTTP_IP"),
                      ("PackerHTTPPort", "PACKER_HTTP_PORT")):
        value = ctx.generated.get(key)
        if value not in (None, "") and str(value) not in _HTTP_NOT_IMPLEMENTED:
            values[name] = str(value)
    for kv in environment_vars:
        key, _, value = str(kv).partition("=")
        values[key] = value.replace("'", "'\"'\"'")
    for key, value in (env or {}).items():
        values[str(key)] = str(value).replace("'", "'\"'\"'")
    return "".join(go_sprintf(env_var_format, key, values[key]) for key in sorted(values))


def go_sprintf(fmt: str, *args: str) -> str:
    """The subset of Go's ``fmt.Sprintf`` used by ``env_var_format``: ``%s`` and ``%%``."""
    out: list[str] = []
    items = iter(args)
    i = 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            nxt = fmt[i + 1]
            if nxt == "%":
                out.append("%")
            elif nxt in "sqv":
                value = next(items, "")
                out.append(f'"{value}"' if nxt == "q" else value)
            else:
                out.append(c + nxt)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def check_exit_code(code: int, valid: Sequence[int] | None) -> None:
    """Packer's ``ValidExitCode``: BuildError ``Script exited with non-zero exit status: N. Allowed exit codes are:
    [0]`` unless ``code`` is allowed (default: only 0)."""
    allowed = list(valid) if valid else [0]
    if code not in allowed:
        raise BuildError(
            f"Script exited with non-zero exit status: {code}. Allowed exit codes are: "
            f"[{' '.join(str(c) for c in allowed)}]"
        )


def wait_or_cancel(ctx: BuildContext, seconds: float) -> None:
    """Sleep ``seconds`` unless the run is cancelled first (then ``Cancelled``)."""
    if seconds > 0 and ctx.cancel.wait(seconds):
        ctx.check_cancelled()
    ctx.check_cancelled()


SHELL_COMMON_PROPERTIES: dict[str, Any] = {
    "inline": {"type": "array", "items": {"type": "string"}},
    "script": {"type": "string"},
    "scripts": {"type": "array", "items": {"type": "string"}},
    "environment_vars": {"type": "array", "items": {"type": "string"}},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "env_var_format": {"type": "string"},
    "valid_exit_codes": {"type": "array", "items": {"type": "integer"}},
    "inline_shebang": {"type": "string"},
}
