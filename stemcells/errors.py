"""The one error type the ``stemcells`` package raises for bad input.

Every problem with a stemcell tarball, its ``stemcell.MF`` or an archive being extracted is a
``StemcellError`` whose message names the file and, where there is one, the field or archive member at fault.
Callers (the CLI, the CPI's ``create_stemcell``) show the message as is; no traceback is needed.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters (escape sequences), non-printable and undecodable
    characters (tarfile keeps raw bytes as surrogates) become backslash escapes; backslashes are doubled."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a raw byte kept by the surrogateescape error handler
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(repr(ch)[1:-1] if ord(ch) > 0xFF or ch in "\n\r\t" else f"\\x{ord(ch):02x}")
    return "".join(out)


class StemcellError(Exception):
    """A stemcell, manifest or archive is invalid, unsafe or unreadable; ``message`` is ready to show."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsafeArchiveError(StemcellError):
    """A tar member was refused during extraction or inspection.

    ``archive`` names the archive, ``member`` the offending member name exactly as stored, ``reason`` why it
    was refused; the message reads ``<archive>: member '<member>' rejected: <reason>``.
    """

    def __init__(self, archive: str, member: str, reason: str) -> None:
        super().__init__(f"{archive}: member {member!r} rejected: {reason}")
        self.archive = archive
        self.member = member
        self.reason = reason
