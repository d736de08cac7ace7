"""The error types the BOSH director understands, and nothing else.

Every failure a CPI call can report is one of the ten ``Bosh::Clouds::*`` types below. Providers raise these; the
dispatcher turns any other exception into ``CloudError`` so the director never sees "Unknown CPI error".
"""

from __future__ import annotations

#: Longest ``error.message`` a response carries (characters); longer ones are cut with ``TRUNCATED_NOTE``.
MAX_MESSAGE_CHARS = 4096
#: What an error keeps of its message at construction: bounds memory long before the response's own cut (which runs
#: after secrets are scrubbed, so a secret split by this first cut is far beyond the part that is shown).
MAX_KEPT_CHARS = 64 * 1024
TRUNCATED_NOTE = " [... message cut: {} more characters]"


def cap_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` if it has at most ``limit`` characters, else its start and a note saying how much was cut (the
    result has at most ``limit`` characters)."""
    if len(message) <= limit:
        return message
    note = TRUNCATED_NOTE.format(len(message) - limit)
    keep = limit - len(note)
    return message[:keep] + TRUNCATED_NOTE.format(len(message) - keep)


class CpiError(Exception):
    """Base class; ``bosh_type`` is the director's name for the error, ``ok_to_retry`` its retry hint."""

    bosh_type = "Bosh::Clouds::CpiError"

    def __init__(self, message: str, ok_to_retry: bool = False) -> None:
        if isinstance(message, str) and len(message) > MAX_KEPT_CHARS:
            message = cap_message(message, MAX_KEPT_CHARS)
        super().__init__(message)
        self.message = message
        self.ok_to_retry = ok_to_retry


class NotSupported(CpiError):
    """The method exists but this provider cannot do what was asked (e.g. shrinking a disk)."""

    bosh_type = "Bosh::Clouds::NotSupported"


class NotImplemented(CpiError):  # noqa: A001 - the director's name
    """The method is unknown or not implemented by this provider; the director skips optional features."""

    bosh_type = "Bosh::Clouds::NotImplemented"


class CloudError(CpiError):
    """The IaaS failed or refused; the message says which resource and why."""

    bosh_type = "Bosh::Clouds::CloudError"


class VMNotFound(CpiError):
    bosh_type = "Bosh::Clouds::VMNotFound"


class NetworkNotFound(CpiError):
    bosh_type = "Bosh::Clouds::NetworkNotFound"


class NoDiskSpace(CpiError):
    bosh_type = "Bosh::Clouds::NoDiskSpace"


class DiskNotAttached(CpiError):
    bosh_type = "Bosh::Clouds::DiskNotAttached"


class DiskNotFound(CpiError):
    bosh_type = "Bosh::Clouds::DiskNotFound"


class VMCreationFailed(CpiError):
    """create_vm failed after removing everything it created; ``ok_to_retry`` only when a retry can help."""

    bosh_type = "Bosh::Clouds::VMCreationFailed"


ALL_ERROR_TYPES: tuple[type[CpiError], ...] = (
    CpiError,
    NotSupported,
    NotImplemented,
    CloudError,
    VMNotFound,
    NetworkNotFound,
    NoDiskSpace,
    DiskNotAttached,
    DiskNotFound,
    VMCreationFailed,
)

KNOWN_BOSH_TYPES: frozenset[str] = frozenset(cls.bosh_type for cls in ALL_ERROR_TYPES)
