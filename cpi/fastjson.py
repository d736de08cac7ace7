"""JSON for the CPI's hot path, straight on CPython's ``_json`` accelerator.

``import json`` pulls in ``re`` and ``enum`` (about 10 ms, most of the ``info`` round trip's budget over a bare
interpreter start). The standard library's own decoder and encoder are thin wrappers around ``_json``'s
``make_scanner`` and ``make_encoder``; this module calls those two directly with the same semantics, and falls back
to ``json`` where ``_json`` is missing. ``tests/cpi/test_cpi_fastjson.py`` checks it against ``json`` on generated
documents.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds on the info path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    import _json as _c_json
except ImportError:  # pragma: no cover - other interpreters
    _c_json = None  # type: ignore[assignment]

_json: Any = _c_json

_WHITESPACE = " \t\n\r"


class DecodeError(ValueError):
    """Like ``json.JSONDecodeError``: ``msg``, ``pos``, ``lineno`` and ``colno`` (1-based) of the problem."""

    def __init__(self, msg: str, doc: str, pos: int) -> None:
        lineno = doc.count("\n", 0, pos) + 1
        colno = pos - doc.rfind("\n", 0, pos)
        super().__init__(f"{msg}: line {lineno} column {colno} (char {pos})")
        self.msg = msg
        self.pos = pos
        self.lineno = lineno
        self.colno = colno


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    __slots__ = ("strict", "object_hook", "object_pairs_hook", "parse_float", "parse_int", "parse_constant", "memo")

    def __init__(self, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None,
                 parse_constant: Callable[[str], Any] | None) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = object_pairs_hook
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = parse_constant or _CONSTANTS.__getitem__
        self.memo: dict[str, str] = {}


_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


def loads(text: str, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
          parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads(text, object_pairs_hook=..., parse_constant=...)``; DecodeError where json raises
    JSONDecodeError, and whatever the hooks raise."""
    if _json is None:  # pragma: no cover
        import json

        try:
            return json.loads(text, object_pairs_hook=object_pairs_hook, parse_constant=parse_constant)
        except json.JSONDecodeError as exc:
            raise DecodeError(exc.msg, exc.doc, exc.pos) from None
    if text.startswith("\ufeff"):
        raise DecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    scan = _json.make_scanner(_ScannerContext(object_pairs_hook, parse_constant))
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except StopIteration as stop:
        raise DecodeError("Expecting value", text, stop.value) from None
    except SystemError:
        # The C scanner raises syntax errors as json.decoder.JSONDecodeError, which it looks up in sys.modules
        # only: without json.decoder imported it fails like this. Import it (error path only) and scan again.
        import json.decoder  # noqa: F401

        return loads(text, object_pairs_hook=object_pairs_hook, parse_constant=parse_constant)
    except ValueError as exc:  # json.JSONDecodeError raised from inside the C scanner
        if hasattr(exc, "pos") and hasattr(exc, "msg"):
            raise DecodeError(exc.msg, text, exc.pos) from None
        raise
    rest = text[end:]
    stripped = rest.lstrip(_WHITESPACE)
    if stripped:
        raise DecodeError("Extra data", text, end + len(rest) - len(stripped))
    return value


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps_compact(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))``: ValueError for NaN or
    Infinity and circular references, TypeError for unserialisable objects."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    encode = _json.make_encoder({}, _no_default, _json.encode_basestring_ascii, None, ":", ",", False, False, False)
    return "".join(encode(value, 0))


def depth_exceeds(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels deep in ``value`` (a scalar nests 0 levels),
    found without recursion and without walking past the first container that is too deep."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
