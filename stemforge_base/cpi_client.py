"""The one director-style CPI client: drives a BOSH CPI the way the director does: one real ``stemforge-cpi`` (or a
director-style ``bin/cpi``) process per request, one JSON request on its stdin, one JSON response on its stdout.

Contract:

* :func:`build_request` makes the request document (``method``, ``arguments``, ``context`` with ``director_uuid``
  and a ``request_id``, ``api_version`` unless None).
* :func:`exchange` runs the CPI command once: in its own session (:func:`stemforge_base.processes.spawn`) -- so a
  Ctrl-C at the terminal never kills a CPI call half-way (a ``delete_vm`` interrupted by the signal that asked for
  cleanup would leak the VM) -- with the director's stripped environment (:data:`DIRECTOR_ENV`) by default, the
  request bytes on stdin, bounded by ``timeout`` (the whole process group is killed when it expires, and when the
  caller is interrupted). It returns the raw :class:`Exchange`; it raises :class:`CpiProcessError` only when the
  process cannot start or does not finish in time.
* :func:`parse_response` checks the response envelope strictly (exactly ``result``, ``error``, ``log``; an error
  has ``type``, ``message``, ``ok_to_retry``) and raises :class:`CpiProcessError` for anything else.
* :meth:`CpiClient.call` = request + exchange + parse: a CPI error becomes :class:`CpiCallError` whose text names
  the method and the error type (``create_vm: Bosh::Clouds::VMCreationFailed: ...``); a process that times out,
  exits non-zero or answers something that is not a CPI response becomes :class:`CpiProcessError` (a subclass)
  with the tail of its stderr. ``attempts`` retries errors the CPI marks ``ok_to_retry`` (and process failures)
  with a short backoff.
* Nothing here logs request arguments: ``env`` and cloud properties may carry secrets. The CPI redacts its own
  stderr and ``log``.

Writing a ``bin/cpi`` wrapper for a config is the CPI's business (``cpi.wrapper.write_wrapper``); pass the wrapper
as the command.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from stemforge_base.processes import spawn, stop_group

#: The environment the director gives a CPI process.
DIRECTOR_ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
#: Error type used for failures of the CPI process itself (not a CPI answer).
PROCESS_ERROR_TYPE: Final = "stemforge::CpiProcessError"
_STDERR_TAIL: Final = 2000
_REQUEST_IDS = itertools.count(1)


class CpiCallError(Exception):
    """A CPI call answered with an error. ``method``, ``error_type`` (``Bosh::Clouds::...``), ``message`` and
    ``ok_to_retry`` are the response's; ``str()`` is ``<method>: <error_type>: <message>``."""

    def __init__(self, method: str, error_type: str, message: str, *, ok_to_retry: bool = False,
                 log: str = "") -> None:
        super().__init__(f"{method}: {error_type}: {message}")
        self.method = method
        self.error_type = error_type
        self.message = message
        self.ok_to_retry = ok_to_retry
        self.log = log


class CpiProcessError(CpiCallError):
    """The CPI process failed to answer: timeout, non-zero exit status, or output that is not a CPI response."""

    def __init__(self, method: str, message: str, *, stderr: str = "") -> None:
        tail = stderr.strip()[-_STDERR_TAIL:]
        super().__init__(method, PROCESS_ERROR_TYPE, message + (f" (stderr: {tail})" if tail else ""),
                         ok_to_retry=True)
        self.stderr = stderr


@dataclass(frozen=True)
class CpiCall:
    """A successful call: the ``result``, the response's ``log`` and how long the process took."""

    method: str
    result: Any
    log: str
    seconds: float


@dataclass(frozen=True)
class Exchange:
    """One CPI process run as it happened: its stdout and stderr bytes (stderr empty when not captured), its exit
    status and how long it took."""

    stdout: bytes
    stderr: bytes
    returncode: int
    seconds: float

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace")


def cpi_command(config: str | os.PathLike[str] | None = None) -> list[str]:
    """``stemforge-cpi [--config <config>]``: the console script installed beside this interpreter, else
    ``<python> -m cpi.main`` (the same installation either way)."""
    script = Path(sys.executable).parent / "stemforge-cpi"
    command = [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "cpi.main"]
    return command if config is None else [*command, "--config", os.path.abspath(os.fspath(config))]


def build_request(method: str, arguments: Sequence[Any], *, director_uuid: str, request_id: str | None = None,
                  api_version: int | None = None, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request document the director sends for ``method(*arguments)``; ``context`` adds to the request's
    context (a director's cpi-config properties); no ``api_version`` key when it is None."""
    request: dict[str, Any] = {
        "method": method,
        "arguments": list(arguments),
        "context": {**(context or {}), "director_uuid": director_uuid,
                    "request_id": request_id or f"stemforge-{os.getpid()}-{next(_REQUEST_IDS)}"},
    }
    if api_version is not None:
        request["api_version"] = api_version
    return request


def exchange(command: Sequence[str], request: Mapping[str, Any] | bytes, *, timeout: float, method: str = "",
             env: Mapping[str, str] | None = DIRECTOR_ENV, cwd: str | None = "/",
             capture_stderr: bool = True) -> Exchange:
    """Run ``command`` once with ``request`` (a document, or raw bytes) on stdin (see the module docstring).
    ``env=None`` inherits this process's environment; ``capture_stderr=False`` lets the CPI's stderr through."""
    method = method or (str(request.get("method", "")) if isinstance(request, Mapping) else "")
    data = request if isinstance(request, bytes) else json.dumps(request).encode()
    started = time.monotonic()
    try:
        proc = spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE if capture_stderr else None,
                     env=None if env is None else dict(env), cwd=cwd)
    except OSError as exc:
        raise CpiProcessError(method, f"cannot run {command[0]}: {exc.strerror or exc}") from None
    try:
        stdout, stderr = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, first=signal.SIGKILL)
        _out, err = proc.communicate()
        raise CpiProcessError(method, f"no response within {timeout:g}s (the CPI process was killed)",
                              stderr=(err or b"").decode(errors="replace")) from None
    except BaseException:
        stop_group(proc, first=signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)
        raise
    return Exchange(stdout, stderr or b"", proc.returncode, time.monotonic() - started)


def parse_response(method: str, stdout: bytes, stderr: str = "") -> dict[str, Any]:
    """The response object, checked: exactly result/error/log; error null or {type, message, ok_to_retry}."""
    try:
        response = json.loads(stdout)
    except ValueError as exc:
        raise CpiProcessError(method, f"the CPI's stdout is not JSON ({exc}); it began {stdout[:80]!r}",
                              stderr=stderr) from None
    if not isinstance(response, dict) or set(response) != {"result", "error", "log"}:
        keys = sorted(response) if isinstance(response, dict) else type(response).__name__
        raise CpiProcessError(method, f"not a CPI response: expected exactly result, error and log, got {keys}",
                              stderr=stderr)
    if not isinstance(response["log"], str):
        raise CpiProcessError(method, "not a CPI response: 'log' is not a string", stderr=stderr)
    error = response["error"]
    if error is not None:
        if (not isinstance(error, dict) or not isinstance(error.get("type"), str)
                or not isinstance(error.get("message"), str) or not isinstance(error.get("ok_to_retry"), bool)):
            raise CpiProcessError(method, f"not a CPI response: malformed error {str(error)[:200]}", stderr=stderr)
        if response["result"] is not None:
            raise CpiProcessError(method, "not a CPI response: both result and error are set", stderr=stderr)
    return response


class CpiClient:
    """Runs CPI requests through ``command`` (e.g. ``[".../bin/cpi"]`` or ``cpi_command(config)``).

    ``api_version`` is sent with every request (2 by default: ``create_vm`` answers ``[vm_cid, networks]``);
    ``context`` is merged into every request's context (a director's cpi-config properties); ``timeout`` bounds
    each call in seconds. Thread-safe: every call is its own process.
    """

    def __init__(self, command: Sequence[str], *, api_version: int = 2, director_uuid: str | None = None,
                 context: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 timeout: float = 600.0, debug: Callable[[str], None] | None = None) -> None:
        if not command:
            raise ValueError("CpiClient: command must not be empty")
        self.command = [str(part) for part in command]
        self.api_version = api_version
        self.director_uuid = director_uuid or str(uuid.uuid4())
        self.context = dict(context or {})
        self.env = dict(DIRECTOR_ENV if env is None else env)
        self.timeout = timeout
        self.debug = debug or (lambda _line: None)

    def request(self, method: str, *arguments: Any, api_version: int | None = None) -> dict[str, Any]:
        """The request document for ``method(*arguments)``."""
        return build_request(method, arguments, director_uuid=self.director_uuid, context=self.context,
                             api_version=self.api_version if api_version is None else api_version)

    def call(self, method: str, *arguments: Any, api_version: int | None = None, timeout: float | None = None,
             attempts: int = 1, stop: threading.Event | None = None) -> CpiCall:
        """Run one request; retry up to ``attempts`` times when the error is ``ok_to_retry`` (not once ``stop``
        is set). Raises CpiCallError / CpiProcessError."""
        last: CpiCallError | None = None
        for attempt in range(max(1, attempts)):
            if attempt:
                delay = min(5.0, 0.5 * 2 ** (attempt - 1))
                self.debug(f"{method}: retrying in {delay:.1f}s after: {last}")
                if stop is not None and stop.wait(delay):
                    break
                if stop is None:
                    time.sleep(delay)
            try:
                return self._call_once(method, arguments, api_version, timeout)
            except CpiCallError as exc:
                last = exc
                if not exc.ok_to_retry:
                    raise
        assert last is not None
        raise last

    def _call_once(self, method: str, arguments: Sequence[Any], api_version: int | None,
                   timeout: float | None) -> CpiCall:
        run = exchange(self.command, self.request(method, *arguments, api_version=api_version), method=method,
                       timeout=self.timeout if timeout is None else timeout, env=self.env)
        err_text = run.stderr_text
        if run.returncode != 0:
            raise CpiProcessError(method, f"the CPI exited with status {run.returncode}", stderr=err_text)
        response = parse_response(method, run.stdout, err_text)
        error = response["error"]
        self.debug(f"{method}: {'error' if error else 'ok'} in {run.seconds:.2f}s")
        if error is not None:
            raise CpiCallError(method, error["type"], error["message"], ok_to_retry=error["ok_to_retry"],
                               log=response["log"])
        return CpiCall(method, response["result"], response["log"], run.seconds)

    # -- typed helpers ----------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        result = self.call("info").result
        if not isinstance(result, dict):
            raise CpiProcessError("info", f"expected an object, got {type(result).__name__}")
        return result

    def create_stemcell(self, image_path: str | os.PathLike[str], cloud_properties: Mapping[str, Any],
                        tags: Mapping[str, str] | None = None, *, timeout: float | None = None) -> str:
        """Import the stemcell ``image`` file (as extracted from a stemcell tarball); the stemcell CID.
        ``tags`` are sent as API v3 ``env.tags``."""
        if tags:
            call = self.call("create_stemcell", os.fspath(image_path), dict(cloud_properties), {"tags": dict(tags)},
                             api_version=max(3, self.api_version), timeout=timeout)
        else:
            call = self.call("create_stemcell", os.fspath(image_path), dict(cloud_properties), timeout=timeout)
        return _cid("create_stemcell", call.result)

    def delete_stemcell(self, stemcell_cid: str, *, attempts: int = 3) -> None:
        self.call("delete_stemcell", stemcell_cid, attempts=attempts)

    def create_vm(self, agent_id: str, stemcell_cid: str, cloud_properties: Mapping[str, Any],
                  networks: Mapping[str, Any], disk_cids: Sequence[str] = (), env: Mapping[str, Any] | None = None,
                  *, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        """Create and start a VM; ``(vm_cid, networks)`` (the networks as the CPI configured them; for API v1
        the networks passed in)."""
        result = self.call("create_vm", agent_id, stemcell_cid, dict(cloud_properties), dict(networks),
                           list(disk_cids), dict(env or {}), timeout=timeout).result
        if isinstance(result, list) and len(result) == 2 and isinstance(result[1], dict):
            return _cid("create_vm", result[0]), result[1]
        return _cid("create_vm", result), dict(networks)

    def delete_vm(self, vm_cid: str, *, attempts: int = 3) -> None:
        self.call("delete_vm", vm_cid, attempts=attempts)

    def has_vm(self, vm_cid: str) -> bool:
        return bool(self.call("has_vm", vm_cid, attempts=2).result)


def _cid(method: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CpiProcessError(method, f"expected a CID (a non-empty string), got {value!r}")
    return value
