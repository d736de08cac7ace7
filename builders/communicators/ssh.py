"""The SSH communicator (Packer's ``communicator: ssh``), built on paramiko.

Contract (see ``builders.core.Communicator``):

* :meth:`SSHCommunicator.connect` retries until ``timeout`` seconds have passed: refused connections, missing
  banners and resets (a guest still booting behind a QEMU host-forward) are retried quietly; authentication
  failures count against ``handshake_attempts`` (cloud-init may install the key a little after sshd starts).
  The cancel event and an optional ``alive`` probe (is the VM still running?) are polled between attempts.
* :meth:`run` exports ``env`` in the command (``export K='v'; command``, values single-quoted as Packer's shell
  provisioner does), streams stdout/stderr to the UI line by line, returns the exit status (never raises for a
  non-zero one), raises ``BuildError`` on timeout or a lost connection and ``stemforge_base.steps.Cancelled`` when the
  run is cancelled.
* :meth:`upload` / :meth:`download` use SFTP. Directories follow Packer's trailing-slash rule: ``src/`` copies the
  directory's contents into the destination, ``src`` copies the directory itself into it. A file whose
  destination ends in ``/`` or is an existing directory lands inside it with its own name. File modes are kept.
* The host key is not verified (the machine is a temporary build VM reached over loopback); this is said at debug
  level with the key's fingerprint. Passwords and private keys are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import re
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from builders.core import BuildError, CommandResult, Communicator, Ui
from stemforge_base.steps import Cancelled

LOG = logging.getLogger("stemforge.builders.ssh")

class _DemoteParamikoErrors(logging.Filter):
    """paramiko logs every failed connection attempt (banner timeouts and resets while the guest boots) as ERROR
    tracebacks; the communicator reports the outcome itself, so those records go to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("paramiko.transport").addFilter(_DemoteParamikoErrors())

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHUNK = 32768


@dataclass
class SSHConfig:
    """Where and how to connect. ``private_key`` is an OpenSSH/PEM private key text (never logged)."""

    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    #: Seconds to keep trying to connect (Packer's ``ssh_timeout``, default 5m).
    timeout: float = 300.0
    #: Authentication failures tolerated once the server answers (Packer's ``ssh_handshake_attempts``).
    handshake_attempts: int = 10
    #: Request a pseudo-terminal for commands (Packer's ``ssh_pty``).
    pty: bool = False
    #: Seconds between keepalives (Packer's ``ssh_keep_alive_interval``); 0 disables them.
    keepalive: float = 5.0
    #: Seconds between connection attempts.
    retry_interval: float = 2.0


class _UnverifiedHostKey(paramiko.MissingHostKeyPolicy):
    """Accept the key of the temporary build VM, saying so at debug level."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fingerprint = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        LOG.debug("host key of %s not verified (temporary build VM): %s SHA256:%s", hostname, key.get_name(),
                  fingerprint)


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an OpenSSH or PEM private key of any type paramiko supports; ValueError (without the key) if not."""
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            errors.append(f"{cls.__name__}: {type(exc).__name__}")
    raise ValueError("not a private key paramiko can read (" + ", ".join(errors) + ")")


class SSHCommunicator(Communicator):
    """An SSH connection to the machine being built (see the module docstring for the contract)."""

    def __init__(self, config: SSHConfig, ui: Ui, cancel: threading.Event | None = None,
                 log: logging.Logger | None = None) -> None:
        self.config = config
        self.ui = ui
        self.cancel = cancel or threading.Event()
        self.log = log or LOG
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection

    def connect(self, alive: Callable[[], str | None] | None = None) -> None:
        """Connect, retrying until ``config.timeout``. ``alive`` returns None while the machine runs, else why
        it stopped (the wait then fails at once). Raises BuildError (timeout, repeated auth failure, machine
        gone) or Cancelled."""
        cfg = self.config
        pkey = load_private_key(cfg.private_key) if cfg.private_key else None
        deadline = time.monotonic() + cfg.timeout
        auth_failures = 0
        attempt = 0
        last_error = "no attempt made"
        while True:
            self._check_cancel()
            if alive is not None:
                gone = alive()
                if gone:
                    raise BuildError(f"the machine stopped while waiting for SSH: {gone}")
            attempt += 1
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_UnverifiedHostKey())
            remaining = max(1.0, deadline - time.monotonic())
            try:
                client.connect(
                    cfg.host, port=cfg.port, username=cfg.username, password=cfg.password, pkey=pkey,
                    timeout=min(10.0, remaining), banner_timeout=min(15.0, remaining),
                    auth_timeout=min(15.0, remaining), allow_agent=False, look_for_keys=False,
                )
            except paramiko.AuthenticationException as exc:
                client.close()
                auth_failures += 1
                last_error = f"authentication failed: {exc}"
                self.log.debug("SSH %s:%d attempt %d: %s", cfg.host, cfg.port, attempt, last_error)
                if auth_failures >= cfg.handshake_attempts:
                    raise BuildError(
                        f"SSH authentication as {cfg.username!r} to {cfg.host}:{cfg.port} failed "
                        f"{auth_failures} times (ssh_handshake_attempts): {exc}") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                client.close()
                last_error = f"{type(exc).__name__}: {exc}"
                self.log.debug("SSH %s:%d attempt %d: %s", cfg.host, cfg.port, attempt, last_error)
            else:
                transport = client.get_transport()
                if transport is not None and cfg.keepalive > 0:
                    transport.set_keepalive(int(max(1, cfg.keepalive)))
                self._client = client
                self.log.debug("SSH connected to %s:%d as %s after %d attempt(s)", cfg.host, cfg.port,
                               cfg.username, attempt)
                return
            if time.monotonic() >= deadline:
                raise BuildError(f"Timeout waiting for SSH: {cfg.host}:{cfg.port} not reachable within "
                                 f"{cfg.timeout:g}s (last error: {last_error})")
            self._sleep(min(cfg.retry_interval, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        """Close SFTP and the connection; idempotent."""
        with self._lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
                self._sftp = None
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise BuildError(f"SSH connection to {self.config.host}:{self.config.port} is not open")
        return transport

    def _check_cancel(self) -> None:
        if self.cancel.is_set():

            raise Cancelled("cancelled")

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            self._check_cancel()

    # ------------------------------------------------------------------ commands

    @staticmethod
    def command_with_env(command: str, env: Mapping[str, str] | None) -> str:
        """``export K='v'; ... command`` (values single-quoted; names must be shell identifiers)."""
        if not env:
            return command
        parts = []
        for key, value in env.items():
            if not _ENV_NAME.match(key):
                raise BuildError(f"environment variable name {key!r} is not a valid shell identifier")
            parts.append(f"export {key}={shlex.quote(str(value))}")
        return "; ".join(parts) + "; " + command

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        full = self.command_with_env(command, env)
        self.log.debug("SSH run: %s", command)
        channel = self._transport().open_session(timeout=30)
        try:
            if self.config.pty:
                channel.get_pty()
            channel.exec_command(full)
            channel.shutdown_write()
            out = _LineStream(self.ui, capture)
            err = _LineStream(self.ui, capture)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                self._check_cancel()
                if deadline is not None and time.monotonic() > deadline:
                    raise BuildError(f"command timed out after {timeout:g}s: {command}")
                got = False
                while channel.recv_ready():
                    out.feed(channel.recv(_CHUNK))
                    got = True
                while channel.recv_stderr_ready():
                    err.feed(channel.recv_stderr(_CHUNK))
                    got = True
                # done when the exit status AND the end of the output arrived (sshd may send the status before the
                # last of the output, as golang's ssh Session.Wait waits for both: Packer's communicator)
                pending = channel.recv_ready() or channel.recv_stderr_ready()
                if channel.exit_status_ready() and channel.eof_received and not pending:
                    break
                if channel.closed and not got:
                    break
                if not got:
                    if not self._transport_alive():
                        raise BuildError(f"SSH connection lost while running: {command}")
                    select.select([channel], [], [], 0.2)
            # drain what arrived with the exit status
            while channel.recv_ready():
                out.feed(channel.recv(_CHUNK))
            while channel.recv_stderr_ready():
                err.feed(channel.recv_stderr(_CHUNK))
            out.flush()
            err.flush()
            if not channel.exit_status_ready():
                raise BuildError(f"remote command exited without exit status or exit signal: {command}")
            status = channel.recv_exit_status()
            return CommandResult(status, out.text(), err.text())
        finally:
            with contextlib.suppress(Exception):
                channel.close()

    def _transport_alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    # ------------------------------------------------------------------ files

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
                if self._sftp is None:
                    raise BuildError("could not open an SFTP session")
            return self._sftp

    def _remote_is_dir(self, path: str) -> bool:
        try:
            mode = self._sftp_client().stat(path).st_mode
        except OSError:
            return False
        return mode is not None and stat.S_ISDIR(mode)

    def _remote_makedirs(self, path: str) -> None:
        sftp = self._sftp_client()
        parts: list[str] = []
        current = path.rstrip("/") or "/"
        while current not in ("", "/", ".") and not self._remote_is_dir(current):
            parts.append(current)
            current = posixpath.dirname(current)
        for p in reversed(parts):
            try:
                sftp.mkdir(p)
            except OSError as exc:
                if not self._remote_is_dir(p):
                    raise BuildError(f"cannot create remote directory {p}: {exc}") from None

    def upload(self, source: Path | str, destination: str) -> None:
        """Upload a file or directory. ``source`` may be a str so a trailing ``/`` (copy the contents) survives;
        ``pathlib.Path`` drops it, so a Path directory is always copied as itself."""
        source_str = str(source)
        src = Path(source)
        if not src.exists():
            raise BuildError(f"upload source does not exist: {src}")
        if src.is_dir():
            target = destination.rstrip("/") or "/"
            if not source_str.endswith("/"):
                target = posixpath.join(target, src.name)
            self._upload_dir(src, target)
            return
        target = destination
        if destination.endswith("/") or self._remote_is_dir(destination):
            target = posixpath.join(destination, src.name)
        self._upload_file(src, target)

    def _upload_file(self, src: Path, target: str) -> None:
        sftp = self._sftp_client()
        size = src.stat().st_size
        self.log.debug("SSH upload %s -> %s (%d bytes)", src, target, size)
        label = f"upload {src.name}"
        try:
            with open(src, "rb") as fh, sftp.open(target, "wb") as remote:
                remote.set_pipelined(True)
                done = 0
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    self._check_cancel()
                    remote.write(chunk)
                    done += len(chunk)
                    if size > 4 * 1024 * 1024:
                        self.ui.progress(label, done, size)
            sftp.chmod(target, stat.S_IMODE(src.stat().st_mode))
        except OSError as exc:
            raise BuildError(f"upload of {src} to {target} failed: {exc}") from None

    def _upload_dir(self, src: Path, target: str) -> None:
        self._remote_makedirs(target)
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            remote_root = target if rel == "." else posixpath.join(target, *Path(rel).parts)
            if rel != ".":
                self._remote_makedirs(remote_root)
                with contextlib.suppress(OSError):
                    self._sftp_client().chmod(remote_root, stat.S_IMODE(os.stat(root).st_mode))
            for name in sorted(files):
                local = Path(root) / name
                if local.is_symlink() and not local.exists():
                    continue
                self._upload_file(local, posixpath.join(remote_root, name))

    def download(self, source: str, destination: Path | str) -> None:
        """Download a file or directory; ``destination`` may be a str ending in ``/`` (put it inside)."""
        dest_str = str(destination)
        if self._remote_is_dir(source):
            target = Path(destination)
            if not source.endswith("/"):
                target = target / posixpath.basename(source.rstrip("/"))
            self._download_dir(source.rstrip("/") or "/", target)
            return
        target = Path(destination)
        if dest_str.endswith("/") or target.is_dir():
            target = target / posixpath.basename(source)
        self._download_file(source, target)

    def _download_file(self, source: str, target: Path) -> None:
        sftp = self._sftp_client()
        try:
            attrs = sftp.stat(source)
        except OSError as exc:
            raise BuildError(f"download source {source} not found on the machine: {exc}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        size = attrs.st_size or 0
        tmp = target.with_name(f".{target.name}.part")
        try:
            with sftp.open(source, "rb") as remote, open(tmp, "wb") as fh:
                remote.prefetch(size)
                done = 0
                while True:
                    self._check_cancel()
                    chunk = remote.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    if size > 4 * 1024 * 1024:
                        self.ui.progress(f"download {posixpath.basename(source)}", done, size)
            if attrs.st_mode is not None:
                os.chmod(tmp, stat.S_IMODE(attrs.st_mode))
            os.replace(tmp, target)
        except OSError as exc:
            raise BuildError(f"download of {source} to {target} failed: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _download_dir(self, source: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self._sftp_client().listdir_attr(source), key=lambda a: a.filename):
            remote = posixpath.join(source, entry.filename)
            if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
                self._download_dir(remote, target / entry.filename)
            elif entry.st_mode is not None and stat.S_ISREG(entry.st_mode):
                self._download_file(remote, target / entry.filename)


class _LineStream:
    """Splits a byte stream into lines for the UI; keeps the text when capturing."""

    def __init__(self, ui: Ui, capture: bool) -> None:
        self.ui = ui
        self.capture = capture
        self._pending = b""
        self._chunks: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if self.capture:
            self._chunks.append(data)
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.ui.message(line.decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        if self._pending:
            self.ui.message(self._pending.decode("utf-8", "replace").rstrip("\r"))
            self._pending = b""

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


def free_loopback_port(low: int = 0, high: int = 0) -> int:
    """A TCP port on 127.0.0.1 that is free right now: any port when ``low``/``high`` are 0, else the first free
    one from a random start in ``[low, high]``. Raises BuildError when the range has none."""
    if not low and not high:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    import random

    span = list(range(low, high + 1))
    start = random.randrange(len(span))
    for port in span[start:] + span[:start]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BuildError(f"no free TCP port on 127.0.0.1 between {low} and {high}")
