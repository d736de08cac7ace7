"""A minimal QMP (QEMU Machine Protocol) client over a unix socket: capabilities handshake, commands with
bounded waits, asynchronous events kept aside (``events``)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any


class QMPError(RuntimeError):
    """QMP failed: no socket, a timeout, or an error reply (the message carries QEMU's description)."""


class QMPClient:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, deadline: float) -> None:
        """Connect and negotiate capabilities, retrying until ``deadline`` (monotonic) while QEMU starts."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                last = exc
                time.sleep(0.05)
                continue
            self._sock = sock
            self._read()  # greeting
            self.command("qmp_capabilities")
            return
        raise QMPError(f"QMP socket {self.path} did not answer: {last}")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _read(self) -> dict[str, Any]:
        if self._sock is None:
            raise QMPError("QMP is not connected")
        while b"\n" not in self._buf:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise QMPError(f"QMP read failed: {exc}") from None
            if not data:
                raise QMPError("QMP connection closed by QEMU")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command; returns its ``return`` value, raises QMPError on an ``error`` reply."""
        if self._sock is None:
            raise QMPError("QMP is not connected")
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QMPError(f"QMP write failed: {exc}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"{name}: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")
