"""Taint tracking for sensitive values, shared by every template front end (the Go-template engine of JSON/YAML
templates in ``functions.py``/``variables.py`` and the HCL2 front end).

A value is *sensitive* when it is the value of a sensitive variable (``sensitive-variables`` in a JSON template,
``sensitive = true`` in HCL2) or was computed from one: ``{{user `secret` | upper}}``, ``split``, ``replace``,
``printf``, a variable whose default references a sensitive one, an HCL expression over ``var.secret``. As in
Terraform, sensitivity follows the data: whatever an expression produces from a sensitive input is sensitive.

Two pieces, usable separately:

``Tainted``
    A ``str`` subclass marking a string as derived from a sensitive value. It behaves as the plain string everywhere
    (comparison, JSON, hashing); Python operations on it return plain ``str``, so an engine re-marks its results
    with ``derive(result, *inputs)``. ``taint(v)`` marks a value (strings inside lists/dicts too),
    ``is_tainted(v)`` tells whether a value holds a tainted string anywhere.

``SensitiveValues``
    The set of strings output must never show. It grows with every derived value an engine renders (``record``), so
    ``mask`` hides ``SECRET`` and ``TERCES`` alike wherever they are printed: the terminal, ``-machine-readable``
    output, the debug log, error messages, a manifest. Thread-safe.

How an engine uses them (the Go engine does exactly this; an HCL2 evaluator does the same per expression)::

    values = SensitiveValues()
    values.add_literal(secret)                       # a sensitive variable's own value, at any length
    x = taint(secret)                                # what reading ``var.secret`` / ``user `secret``` returns
    y = derive(x.upper(), x)                         # every function result over tainted inputs is tainted
    values.record(y)                                 # at the end of each rendered expression/action
    values.mask(f"name is {y}")  ->  "name is <sensitive>"

Limits, stated: a derived value shorter than ``MIN_DERIVED_LENGTH`` characters (a length, a boolean, a one-letter
``split`` field) is not masked inside free text, because hiding every ``1`` or ``a`` would garble the output; the
whole rendered string containing it is recorded instead. Control flow is not tracked (the branch an ``if`` over a
sensitive value takes is not marked).

File and artifact names: a name derived from a sensitive value is **refused**, never masked (a file called
``<sensitive>`` would collide and hide nothing: ``ls`` shows the real name). ``sensitive_name_keys(config, mask)``
lists the configuration keys that name files, directories, images or artifacts and hold a sensitive value; the
build runner refuses such a build at prepare time with the key named and the value not shown.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from stemforge_base.redaction import literal_pattern

#: What ``mask`` prints instead of a sensitive value (Packer's word).
MASK: Final = "<sensitive>"
#: Derived values shorter than this are recorded only as part of a longer rendered string (see the module doc).
MIN_DERIVED_LENGTH: Final = 4
#: Configuration keys that name a file, directory, image or artifact (matched on every nested key).
NAME_KEY: Final = re.compile(
    r"^(output|output_directory|output_dir|vm_name|image_name|ami_name|name|filename|directory|path|target|"
    r"bucket|prefix|key)$|_(path|file|dir|directory|name|filename|prefix|output)$")


class Tainted(str):
    """A string derived from a sensitive value (see the module docstring)."""

    __slots__ = ()


def taint(value: Any) -> Any:
    """``value`` with every string in it (inside lists, tuples and dict values too) marked ``Tainted``."""
    if isinstance(value, Tainted):
        return value
    if isinstance(value, str):
        return Tainted(value)
    if isinstance(value, Mapping):
        return {k: taint(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [taint(v) for v in value]
    return value


def is_tainted(value: Any) -> bool:
    """Whether ``value`` is, or holds (in lists, tuples, dict keys or values), a ``Tainted`` string."""
    if isinstance(value, Tainted):
        return True
    if isinstance(value, Mapping):
        return any(is_tainted(k) or is_tainted(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(is_tainted(v) for v in value)
    return False


def derive(result: Any, *inputs: Any) -> Any:
    """``result`` tainted when any of ``inputs`` is: call it on every function/operator result of an engine."""
    return taint(result) if any(is_tainted(i) for i in inputs) else result


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


class SensitiveValues:
    """The growing set of sensitive strings, and the masking of text with it. Thread-safe."""

    def __init__(self, literals: Any = ()) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        for literal in literals:
            self.add_literal(literal)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def add_literal(self, value: str) -> None:
        """Mask ``value`` (a sensitive variable's own value) at any non-zero length."""
        if value:
            self._add(str(value))

    def record(self, value: Any) -> Any:
        """Mask every tainted string inside ``value`` from now on (those shorter than ``MIN_DERIVED_LENGTH`` are
        left to the longer string that contains them); returns ``value`` unchanged."""
        for text in _strings(value):
            if isinstance(text, Tainted) and len(text) >= MIN_DERIVED_LENGTH:
                self._add(str(text))
        return value

    def _add(self, value: str) -> None:
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                self._pattern = literal_pattern(self._values)  # the longest match wins
            return self._pattern

    def mask(self, text: str) -> str:
        """``text`` with every sensitive string replaced by ``<sensitive>``."""
        pattern = self._compiled()
        return pattern.sub(MASK, text) if pattern is not None and text else text

    def mask_value(self, value: Any) -> Any:
        """:meth:`mask` applied to every string inside ``value`` (dict keys included)."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {self.mask_value(k): self.mask_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value


def sensitive_name_keys(config: Any, mask: Callable[[str], str], path: str = "") -> list[tuple[str, str]]:
    """``(key path, masked value)`` for each key in ``config`` (``destinations[1].path``) that names a file,
    directory, image or artifact (``NAME_KEY``) and whose value is tainted (derived from a sensitive value; a name
    that merely contains a sensitive literal as text, e.g. ``ubuntu-22.04`` beside the password ``ubuntu``, is
    not). The value is returned only masked with ``mask`` (wholly ``<sensitive>`` when masking leaves it unchanged)."""
    found: list[tuple[str, str]] = []
    if isinstance(config, Mapping):
        for key, value in config.items():
            sub = f"{path}.{key}" if path else str(key)
            texts = list(_strings(value))
            masked = [mask(text) for text in texts]
            if isinstance(key, str) and NAME_KEY.search(key) and isinstance(value, str | list | tuple) and (
                    is_tainted(value)):
                shown = ", ".join(m if m != t else MASK for m, t in zip(masked, texts, strict=True))
                found.append((sub, shown))
            elif isinstance(value, Mapping | list | tuple):
                found += sensitive_name_keys(value, mask, sub)
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            found += sensitive_name_keys(value, mask, f"{path}[{index}]")
    return found
