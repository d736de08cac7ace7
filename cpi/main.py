"""``stemforge-cpi``: one BOSH CPI request on stdin, exactly one JSON response on stdout, exit status 0.

Usage (the config path as real CPIs take it)::

    stemforge-cpi CONFIG            stemforge-cpi --config CONFIG            stemforge-cpi -configPath CONFIG

Contract (see /work/shared/spec/cpi-protocol.md):

* stdin is read to EOF, at most :data:`MAX_REQUEST_BYTES` (+1 to detect excess, after which nothing more is read);
* stdout receives exactly one compact JSON object ``{"result", "error", "log"}`` and nothing else: file descriptor 1
  is pointed at stderr for the whole call (so stray prints from providers or C libraries cannot corrupt the
  response) and the response is written to a private duplicate of the original stdout;
* the exit status is 0 whatever happens: usage errors, a missing or invalid config, malformed requests, SIGTERM /
  SIGINT / SIGHUP (turned into a ``CloudError`` response), internal bugs (``BaseException`` is caught at the top and
  its traceback goes to stderr, redacted);
* ``log`` is always a string; everything written to stderr or ``log`` passes through the call's redactor.

Order of work: read stdin, parse JSON, register the request's secrets, validate the envelope, look the method up
(unknown -> ``NotImplemented``), validate the arguments, load the config and merge the request context over
``cloud.properties``, dispatch. Nothing reaches a provider before all validation has passed.

``info`` is the hot path (the director calls it before almost every other call): with a JSON config it imports
neither jsonschema, PyYAML, logging nor any provider module.
"""

from __future__ import annotations

import os
import sys
import time

from cpi import errors
from cpi.errors import CloudError, CpiError

TYPE_CHECKING = False  # the typing module stays off the info fast path
if TYPE_CHECKING:
    import logging
    import types
    from collections.abc import Sequence
    from typing import Any, TextIO

    from cpi.cpilog import CallLog
    from cpi.provider import Provider
    from stemforge_base.redaction import Redactor

MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: Deepest JSON nesting accepted in a request (real requests stay below 10).
MAX_DEPTH = 64
USAGE = "usage: stemforge-cpi CONFIG | --config CONFIG | -configPath CONFIG (one JSON request on stdin)"
#: The response written when even building an error response failed.
FALLBACK_RESPONSE = (
    b'{"result":null,"error":{"type":"Bosh::Clouds::CpiError","message":"stemforge-cpi: internal error '
    b'(see stderr)","ok_to_retry":false},"log":""}'
)
_SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 15: "SIGTERM"}
#: Seconds a call may take (config ``call_timeout``): the director sets no timeout, so the CPI bounds itself.
DEFAULT_CALL_TIMEOUT = 3600.0
#: The process's stdout guard, for the watchdog (set by ``main``).
_GUARD: _StdoutGuard | None = None


class Terminated(BaseException):
    """Raised by the signal handler: the director (or an operator) asked the CPI to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.signame = _SIGNAL_NAMES.get(signum, f"signal {signum}")


# -- command line ----------------------------------------------------------------------------------------------------


def parse_argv(argv: Sequence[str]) -> str:
    """The config path from ``CONFIG``, ``--config CONFIG``, ``--config=CONFIG``, ``-configPath CONFIG`` or
    ``-configPath=CONFIG`` (also ``--configPath``); CpiError with the usage otherwise."""
    paths: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        name, eq, value = arg.partition("=")
        if name in ("--config", "-configPath", "--configPath"):
            if not eq:
                if index >= len(args):
                    raise CpiError(f"{name} needs a value; {USAGE}")
                value = args[index]
                index += 1
            paths.append(value)
        elif arg == "--":
            paths.extend(args[index:])
            break
        elif arg.startswith("-") and arg != "-":
            raise CpiError(f"unknown option {arg[:64]!r}; {USAGE}")
        else:
            paths.append(arg)
    if len(paths) != 1 or not paths[0]:
        raise CpiError(f"expected exactly one config path, got {len(paths)}; {USAGE}")
    return os.path.abspath(paths[0])


# -- reading and parsing ---------------------------------------------------------------------------------------------


def read_stdin(stream: Any = None, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """Up to ``limit + 1`` bytes from stdin (to EOF when smaller); b"" when there is no stdin."""
    stream = sys.stdin if stream is None else stream
    if stream is None:
        return b""
    raw = getattr(stream, "buffer", stream)
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = raw.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_request(data: bytes) -> dict[str, Any]:
    """The request object from the raw bytes; CpiError for anything but one JSON object of bounded size and depth,
    in UTF-8, without duplicate keys or NaN/Infinity."""
    from cpi.config import parse_json_strict
    from cpi.fastjson import depth_exceeds

    if len(data) > MAX_REQUEST_BYTES:
        raise CpiError(f"request: larger than the limit of {MAX_REQUEST_BYTES} bytes")
    if not data.strip():
        raise CpiError("request: empty input (expected one JSON object on stdin)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CpiError(f"request: not valid UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        request = parse_json_strict(text)
    except RecursionError:
        raise CpiError(f"request: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        from cpi.fastjson import DecodeError

        if isinstance(exc, DecodeError):
            raise CpiError(f"request: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        raise CpiError(f"request: not valid JSON: {str(exc)[:200]}") from None
    if depth_exceeds(request, MAX_DEPTH):
        raise CpiError(f"request: JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(request, dict):
        from cpi.schemas import json_type

        raise CpiError(f"request: expected a JSON object, got {json_type(request)}")
    return request


def collect_request_secrets(redactor: Redactor, request: object) -> None:
    """Register the secrets of a (not yet validated) request: values under secret keys and URL userinfo in the
    context and arguments, and every string of create_vm's env (argument 6)."""
    if not isinstance(request, dict):
        return
    redactor.collect(request.get("context"))
    arguments = request.get("arguments")
    if isinstance(arguments, list):
        redactor.collect(arguments)
        if request.get("method") == "create_vm" and len(arguments) >= 6:
            redactor.add_all_strings(arguments[5])


# -- one call ----------------------------------------------------------------------------------------------------------


class Call:
    """What one invocation accumulates: its redactor, its (lazily created) logging, the tag and method."""

    def __init__(self, start: float | None = None, stderr: TextIO | None = None) -> None:
        from stemforge_base.redaction import Redactor

        self.start = time.monotonic() if start is None else start
        self.redactor = Redactor()
        self.tag = str(os.getpid())
        self.method: str | None = None
        self.stderr = stderr
        self._config_level: object = None
        self._calllog: CallLog | None = None

    def logger(self) -> logging.Logger:
        """The call's logger, setting up the stderr and ``log`` handlers on first use."""
        if self._calllog is None:
            from cpi.cpilog import CallLog, resolve_level

            level, warning = resolve_level(self._config_level)
            self._calllog = CallLog(self.redactor, start=self.start, tag=self.tag, level=level, stream=self.stderr)
            if warning:
                self._calllog.logger.warning(warning)
        return self._calllog.logger

    def set_request_id(self, request_id: object) -> None:
        if isinstance(request_id, str) and request_id and request_id.isprintable() and " " not in request_id:
            self.tag = request_id
        elif isinstance(request_id, str) and request_id:
            self.tag = repr(request_id)[:80]
        if self._calllog is not None:
            self._calllog.tag = self.tag

    def set_config_level(self, level: object) -> None:
        self._config_level = level
        if self._calllog is not None:
            from cpi.cpilog import resolve_level

            self._calllog.set_level(resolve_level(level)[0])

    def log_text(self) -> str:
        return "" if self._calllog is None else self._calllog.text()

    def write_traceback(self, exc: BaseException) -> None:
        """The redacted traceback of ``exc`` on stderr only (never in the response)."""
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        stream = self.stderr or sys.__stderr__
        try:
            if stream is not None:
                stream.write(self.redactor.scrub(f"[stemforge-cpi] [{self.tag}] {text}"))
                stream.flush()
        except Exception:
            pass

    def close(self) -> None:
        if self._calllog is not None:
            self._calllog.close()


def error_response(call: Call, error: CpiError) -> dict[str, Any]:
    """The response for ``error``: message scrubbed, ``ok_to_retry`` a boolean, ``log`` the call's log so far."""
    message = error.message if isinstance(error.message, str) and error.message else type(error).__name__
    return {
        "result": None,
        "error": {
            "type": error.bosh_type,
            "message": errors.cap_message(call.redactor.scrub(message[: errors.MAX_KEPT_CHARS])),
            "ok_to_retry": bool(error.ok_to_retry),
        },
        "log": call.log_text(),
    }


def respond(
    data: bytes,
    argv: Sequence[str],
    call: Call,
    *,
    provider_class: type[Provider] | None = None,
) -> dict[str, Any]:
    """Handle one request (``data``: raw stdin; ``argv``: the command-line arguments) and return the response
    object. Never raises: every failure, including BaseException, becomes an error response."""
    try:
        return _respond(data, argv, call, provider_class)
    except CpiError as exc:  # raised by our own stages below; already logged where useful
        return error_response(call, exc)
    except Terminated as exc:
        return _interrupted(call, exc.signame)
    except KeyboardInterrupt:
        return _interrupted(call, "SIGINT")
    except BaseException as exc:
        call.write_traceback(exc)
        what = call.method or "request"
        error = CpiError(f"{what}: stemforge-cpi internal error: {type(exc).__name__}: {exc}")
        try:  # noqa: SIM105
            call.logger().error("%s (traceback above)", error.message)
        except BaseException:
            pass
        return error_response(call, error)


def _interrupted(call: Call, signame: str) -> dict[str, Any]:
    what = call.method or "request"
    error = CloudError(f"{what}: interrupted by {signame} before completing (the operation may be partly done)",
                       ok_to_retry=True)
    try:  # noqa: SIM105 - contextlib stays off the info fast path
        call.logger().error("%s", error.message)
    except BaseException:
        pass
    return error_response(call, error)


def _rejected(call: Call, exc: CpiError) -> CpiError:
    call.logger().error("request rejected: %s: %s", exc.bosh_type, exc.message)
    return exc


def _respond(data: bytes, argv: Sequence[str], call: Call, provider_class: type[Provider] | None) -> dict[str, Any]:
    from cpi import config as cpi_config
    from cpi import schemas
    from cpi.dispatcher import METHODS, Dispatcher, Request

    # 1. validate everything; errors here are the caller's (CpiError / NotImplemented), logged once
    try:
        config_path = parse_argv(argv)
        request = parse_request(data)
        collect_request_secrets(call.redactor, request)
        context = request.get("context")
        if isinstance(context, dict):
            call.set_request_id(context.get("request_id"))
        schemas.validate_envelope(request)
        method: str = request["method"]
        spec = METHODS.get(method)
        if spec is None:
            raise errors.NotImplemented(f"unknown method {_short(method)}")
        call.method = method
        arguments: list[Any] = request["arguments"]
        if arguments or spec.arguments:
            schemas.validate_arguments(method, arguments, spec.arguments, spec.least)
        from cpi.providers import PROVIDERS

        config = cpi_config.load(config_path, PROVIDERS, inspect=call.redactor.collect)
        properties = cpi_config.merge_context(config.properties, request["context"])
        cpi_config.validate_properties(properties, config)
        call.set_config_level(properties.get("log_level"))
    except CpiError as exc:
        raise _rejected(call, exc) from None

    # 2. dispatch; the dispatcher logs provider failures itself
    dispatcher = Dispatcher(
        config.plugin, properties, logger_factory=call.logger, redactor=call.redactor, provider_class=provider_class
    )
    if spec.local:  # info: answered from the config alone (no provider, nothing to time out, nothing to check)
        return {"result": spec.handler(dispatcher, Request.from_envelope(request)), "error": None,
                "log": call.log_text()}
    _arm_watchdog(call, method, properties.get("call_timeout", DEFAULT_CALL_TIMEOUT))
    result = dispatcher.dispatch(Request.from_envelope(request))
    try:
        _check_encodable(result, method)
    except CpiError as exc:
        call.logger().error("%s", exc.message)
        raise
    return {"result": result, "error": None, "log": call.log_text()}


def _arm_watchdog(call: Call, method: str, seconds: float) -> None:
    """If the call is still running after ``seconds`` (an IaaS call that hangs in C code cannot be interrupted
    from Python), answer CloudError (ok_to_retry) with the log so far and end the process: the director always
    gets one response, never waits forever."""
    import _thread

    guard = _GUARD
    if guard is None:
        return
    deadline = time.monotonic() + float(seconds)

    def watch() -> None:
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.01, deadline - time.monotonic())))
            if guard.written:
                return
        message = (f"{method} did not finish within {float(seconds):g}s (call_timeout): an IaaS call hung; "
                   f"the CPI process was ended and the operation may be incomplete")
        try:
            response = error_response(call, CloudError(message, ok_to_retry=True))
            payload = encode_response(response) + b"\n"
        except BaseException:
            payload = FALLBACK_RESPONSE + b"\n"
        if guard.write(payload):  # the main thread did not answer in the meantime
            from cpi.deadline import abandon

            abandon(log=_stderr_line)  # kill its children, remove its half-made volume and temporaries
            os._exit(0)

    _thread.start_new_thread(watch, ())


def _stderr_line(text: str) -> None:
    try:  # noqa: SIM105 - contextlib stays off the info fast path
        if sys.__stderr__ is not None:
            sys.__stderr__.write(f"[stemforge-cpi] {text}\n")
    except Exception:
        pass


def _check_encodable(result: object, method: str) -> None:
    from cpi.fastjson import dumps_compact

    try:
        dumps_compact(result)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CloudError(
            f"{method}: the provider's result cannot be encoded as JSON ({exc}) (a provider bug)"
        ) from None


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encode_response(response: dict[str, Any]) -> bytes:
    """Compact ASCII JSON; the fallback error response if ``response`` cannot be encoded."""
    from cpi.fastjson import dumps_compact

    try:
        return dumps_compact(response).encode("ascii")
    except Exception:
        return FALLBACK_RESPONSE


# -- process plumbing --------------------------------------------------------------------------------------------------


class _ScrubbingStream:
    """A text stream that scrubs secrets from what Python code writes (line-buffered so that a secret is not split
    across writes). Bytes written to ``.buffer`` or by C code to the file descriptor are not scrubbed."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor
        self._pending = ""

    def write(self, text: str) -> int:
        text = text if isinstance(text, str) else str(text)
        self._pending += text
        if "\n" in self._pending:
            head, _, self._pending = self._pending.rpartition("\n")
            self._emit(head + "\n")
        elif len(self._pending) > 65536:
            self._emit(self._pending)
            self._pending = ""
        return len(text)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._emit(pending)
        try:  # noqa: SIM105
            self._stream.flush()
        except Exception:
            pass

    def _emit(self, text: str) -> None:
        try:  # noqa: SIM105
            self._stream.write(self._redactor.scrub(text))
        except Exception:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _StdoutGuard:
    """Keeps the real stdout for the response: duplicates fd 1 privately, then points fd 1 at stderr."""

    def __init__(self) -> None:
        import _thread

        self.written = False
        self._once = _thread.allocate_lock()  # the watchdog thread may race the main thread to answer
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except Exception:
            pass
        try:
            self.fd: int | None = os.dup(1)
        except OSError:
            self.fd = None
        try:
            os.dup2(2, 1)
        except OSError:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
            except OSError:
                pass

    def write(self, data: bytes) -> bool:
        """Write the response (once; later calls are ignored and return False)."""
        with self._once:
            if self.fd is None or self.written:
                return False
            self.written = True
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError:  # EPIPE: nobody reads the response any more; nothing else to do
            pass
        return True

    def restore(self) -> None:
        if self.fd is None:
            return
        try:
            os.dup2(self.fd, 1)
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


#: ``armed``: signals raise Terminated; before that (while the response plumbing is being set up) the first signal
#: is only recorded in ``pending`` and raised by :func:`_arm_signals`.
_SIGNALS: dict[str, int] = {"armed": 0, "pending": 0}
_HANDLED_SIGNALS = (15, 2, 1)  # SIGTERM, SIGINT, SIGHUP


def _install_signal_handlers() -> dict[int, Any]:
    """Install the SIGTERM/SIGINT/SIGHUP handler (the first thing ``main`` does), then unblock those signals: the
    generated ``bin/cpi`` starts Python with them blocked (``env --block-signal``), so one sent during interpreter
    start-up stays pending and is delivered here instead of killing the process without a response."""
    import _signal as signal  # the C module: ``signal`` would import enum (~5 ms on info's path)

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        for other in previous:  # a second signal must not interrupt writing the response
            try:  # noqa: SIM105
                signal.signal(other, signal.SIG_IGN)
            except (OSError, ValueError):
                pass
        if not _SIGNALS["armed"]:
            _SIGNALS["pending"] = _SIGNALS["pending"] or signum
            return
        raise Terminated(signum)

    _SIGNALS.update(armed=0, pending=0)
    previous: dict[int, Any] = {}
    for signum in _HANDLED_SIGNALS:
        try:  # noqa: SIM105
            previous[signum] = signal.signal(signum, on_signal)
        except (OSError, ValueError):  # not the main thread
            pass
    if previous:
        try:  # noqa: SIM105
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        except (OSError, ValueError):
            pass
    return previous


def _arm_signals() -> None:
    """From now on a signal raises Terminated; one that arrived earlier is raised now."""
    _SIGNALS["armed"] = 1
    if _SIGNALS["pending"]:
        raise Terminated(_SIGNALS["pending"])


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    import _signal as signal

    for signum, handler in previous.items():
        try:  # noqa: SIM105
            signal.signal(signum, handler)
        except (OSError, ValueError, TypeError):
            pass


def _ignore_signals(previous: dict[int, Any]) -> None:
    import _signal as signal

    for signum in previous:
        try:  # noqa: SIM105
            signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """The ``stemforge-cpi`` console script (see the module docstring). Always returns 0, having written exactly one
    response (the fallback error response if everything else failed)."""
    global _GUARD
    previous_handlers = _install_signal_handlers()  # before anything else: a signal from here on gets an answer
    guard = _GUARD = _StdoutGuard()
    try:  # noqa: SIM105
        _main(argv, guard, previous_handlers)
    except BaseException:  # a signal landing in the plumbing itself: the response below still goes out
        pass
    if not guard.written:
        guard.write(FALLBACK_RESPONSE + b"\n")
    guard.restore()
    return 0


def _main(argv: Sequence[str] | None, guard: _StdoutGuard, previous_handlers: dict[int, Any]) -> None:
    start = time.monotonic()
    real_stdout, real_stderr = sys.stdout, sys.stderr
    call: Call | None = None
    payload = FALLBACK_RESPONSE
    try:
        call = Call(start, stderr=real_stderr)
        scrubbed = _ScrubbingStream(real_stderr, call.redactor) if real_stderr is not None else None
        sys.stdout = sys.stderr = scrubbed
        _arm_signals()
        try:
            data = read_stdin()
        except OSError as exc:
            data = b""
            call.logger().error("cannot read stdin: %s", exc)
        payload = encode_response(respond(data, sys.argv[1:] if argv is None else argv, call))
    except Terminated as exc:
        if call is not None:
            payload = encode_response(_interrupted(call, exc.signame))
    except BaseException as exc:  # a bug in the plumbing above: still answer, trace on stderr
        if call is not None:
            call.write_traceback(exc)
    finally:
        _ignore_signals(previous_handlers)
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except BaseException:
            pass
        sys.stdout, sys.stderr = real_stdout, real_stderr
        guard.write(payload + b"\n")
        if call is not None:
            call.close()
        _restore_signal_handlers(previous_handlers)


if __name__ == "__main__":
    sys.exit(main())
