"""Secret scrubbing: for everything stemforge-cpi writes to stderr or to the response's ``log``, and for every
line Terraform prints through ``stemforge env``; and the literal matching the builders' sensitive-value masking
shares.

Contract:

* ``Redactor.collect_*`` register secret VALUES: every string leaf of ``create_vm``'s ``env`` (it carries the agent's
  password hash, mbus certificates and blobstore credentials), every value under a key that looks secret (see
  :func:`is_secret_key`) in the config, the request context and cloud_properties, and the userinfo of every URL that
  has one (``nats://user:pass@host``) anywhere in those documents.
* ``Redactor.scrub(text)`` replaces each registered value of at least :data:`MIN_SECRET_LEN` characters with
  :data:`REDACTED` (longest first, in one pass, so a secret that contains another is replaced whole), including the
  JSON- and repr-escaped spellings of the value, and the userinfo of any URL (``nats://<redacted>@host``).
* ``Redactor.redact(obj)`` returns a copy of a JSON-like structure in which values under secret-looking keys are
  replaced with :data:`REDACTED` and every other string is scrubbed.

Shorter values are still redacted by key in structures but not searched for in free text (too many false hits).

:func:`literal_pattern` is the matching both this module and the builders' ``SensitiveValues`` (which masks with
``<sensitive>``) use: one regular expression of escaped literals, the longest first.

The module imports nothing heavy: ``re`` is imported on first use, so the ``info`` fast path stays cheap.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Iterable

REDACTED = "<redacted>"
MIN_SECRET_LEN = 4

#: Substrings that make a key secret wherever they appear in its normalised (snake_case) form.
_STRONG_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "pass_phrase",
    "passcode",
    "bearer",
    "secret",
    "token",
    "credential",
    "private_key",
    "privatekey",
    "access_key",
    "api_key",
    "apikey",
)
#: Words that make a key secret when they are the whole key or its last word (``ca_cert``, ``client_key``,
#: ``auth``), but not elsewhere (``key_name``, ``auth_url``, ``cert_id`` are not secrets).
_LAST_WORDS = frozenset(
    {
        "key",
        "keys",
        "cert",
        "certs",
        "certificate",
        "certificates",
        "ca",
        "cas",
        "pem",
        "auth",
        "authorization",
        "pass",
        "pwd",
    }
)
#: A URL with userinfo that has a password part: scheme://user:password@
_URL_USERINFO = r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@:'\"<>]*:[^\s/@'\"<>]*@"


def _words(key: str) -> list[str]:
    """Split ``secretAccessKey``, ``SECRET_ACCESS_KEY``, ``secret-access.key`` into lower-case words."""
    words: list[str] = []
    current: list[str] = []
    prev = ""
    for ch in key:
        if not ch.isalnum():
            if current:
                words.append("".join(current))
                current = []
        else:
            if current and ch.isupper() and prev.islower():
                words.append("".join(current))
                current = []
            current.append(ch.lower())
        prev = ch
    if current:
        words.append("".join(current))
    return words


def is_secret_key(key: object) -> bool:
    """True when a mapping key names a secret: it contains password/passphrase/pass_phrase/passcode/bearer/secret/
    token/credential/private_key/access_key/api_key, or its last word is key/cert/certificate/ca/pem/auth/...
    (``ssh_key``, ``ca_cert``, ``json_key``, ``auth``). ``key_name``, ``auth_url`` or a network called ``private``
    are not secrets. The list covers the secret-bearing keys of BOSH manifests and CPI configs (the director's and
    CPIs' ``password``, ``secret_access_key``, ``session_token``, ``json_key``, ``client_secret``, TLS ``ca`` /
    ``certificate`` / ``private_key``, vault-style ``pass_phrase`` and ``bearer`` tokens); see
    tests/cpi/test_cpi_hardening.py for the table."""
    if not isinstance(key, str) or not key:
        return False
    words = _words(key)
    if not words:
        return False
    joined = "_".join(words)
    if any(part in joined for part in _STRONG_PARTS):
        return True
    return words[-1] in _LAST_WORDS


def _url_userinfo_secrets(text: str) -> list[str]:
    """The ``user:password`` and ``password`` parts of every URL with userinfo in ``text``."""
    found: list[str] = []
    start = 0
    while True:
        scheme_end = text.find("://", start)
        if scheme_end < 0:
            return found
        rest_start = scheme_end + 3
        end = rest_start
        while end < len(text) and text[end] not in "/ \t\r\n\"'<>?#":
            end += 1
        authority = text[rest_start:end]
        at = authority.rfind("@")
        if at > 0:
            userinfo = authority[:at]
            found.append(userinfo)
            _, colon, password = userinfo.partition(":")
            if colon and password:
                found.append(password)
                if "%" in password:
                    from urllib.parse import unquote

                    found.append(unquote(password))
        start = end if end > rest_start else rest_start


class Redactor:
    """Collects secret values for one CPI call and scrubs text and structures of them (see the module docstring)."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._url_pattern: re.Pattern[str] | None = None

    # -- collecting -------------------------------------------------------------------------------------------------

    def add(self, value: object) -> None:
        """Register one secret value (strings, and integers by their decimal spelling) and its escaped forms."""
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str) or not value:
            return
        variants = {value, _json_escaped(value), repr(value)[1:-1]}
        new = {v for v in variants if v and v not in self._secrets}
        if new:
            self._secrets.update(new)
            self._pattern = None

    def add_all_strings(self, obj: object) -> None:
        """Register every string leaf of ``obj`` (used for ``create_vm``'s ``env``, which is secret as a whole)."""
        for leaf in _leaves(obj):
            if isinstance(leaf, str):
                self.add(leaf)

    def collect(self, obj: object) -> None:
        """Register the values under secret-looking keys of ``obj`` and the userinfo of every URL in its strings."""
        stack: list[tuple[object, bool]] = [(obj, False)]
        while stack:
            node, secret = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    stack.append((value, secret or is_secret_key(key)))
            elif isinstance(node, list | tuple):
                stack.extend((item, secret) for item in node)
            elif secret:
                self.add(node)
                if isinstance(node, str) and "://" in node:
                    for part in _url_userinfo_secrets(node):
                        self.add(part)
            elif isinstance(node, str) and "://" in node and "@" in node:
                for part in _url_userinfo_secrets(node):
                    self.add(part)

    def secrets(self) -> frozenset[str]:
        """The registered values (for tests and diagnostics; never log this)."""
        return frozenset(self._secrets)

    # -- scrubbing --------------------------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret (>= MIN_SECRET_LEN chars) and every URL password replaced."""
        if not isinstance(text, str):
            text = str(text)
        if not text:
            return text
        if self._secrets:
            pattern = self._pattern
            if pattern is None:
                pattern = self._pattern = self._compile()
            if pattern is not None:
                text = pattern.sub(REDACTED, text)
        if "://" in text and "@" in text:
            if self._url_pattern is None:
                import re

                self._url_pattern = re.compile(_URL_USERINFO)
            text = self._url_pattern.sub(r"\1" + REDACTED + "@", text)
        return text

    def _compile(self) -> re.Pattern[str] | None:
        return literal_pattern(s for s in self._secrets if len(s) >= MIN_SECRET_LEN)

    def redact(self, obj: object) -> object:
        """A copy of ``obj`` with values under secret keys replaced by REDACTED and all strings scrubbed."""
        if isinstance(obj, dict):
            return {
                key: (REDACTED if is_secret_key(key) and value not in (None, "") else self.redact(value))
                for key, value in obj.items()
            }
        if isinstance(obj, list | tuple):
            return [self.redact(item) for item in obj]
        if isinstance(obj, str):
            return self.scrub(obj)
        return obj


def literal_pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One regular expression matching any of ``values`` literally, the longest first (so a value that contains
    another is matched whole); None when there are none."""
    import re

    alternatives = sorted(set(values), key=lambda v: (-len(v), v))
    return re.compile("|".join(re.escape(v) for v in alternatives)) if alternatives else None


def _json_escaped(value: str) -> str:
    """``value`` as it appears inside a JSON string (``json.dumps(value)`` without the quotes, ASCII-only), without
    importing ``json`` (the ``info`` path)."""
    try:
        from _json import encode_basestring_ascii
    except ImportError:  # pragma: no cover - other interpreters
        from json.encoder import py_encode_basestring_ascii as encode_basestring_ascii
    return str(encode_basestring_ascii(value))[1:-1]


def _leaves(obj: object) -> Iterable[object]:
    """Every scalar leaf of a JSON-like structure, iteratively (no recursion limit concerns)."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
        else:
            yield node
