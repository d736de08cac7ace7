"""The communicator config part (packer-plugin-sdk ``communicator/config.go`` ``Config`` + ``SSH`` +
``SSHTemporaryKeyPair``) and the SSH connection every builder's connect step opens with it.

``CommConfig.prepare_comm`` parses the SSH options once for every builder; builders differ only in the default
``ssh_host`` and in whether the host must be a loopback address (the qemu guest is reached through a host-forward).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from builders.builder_types._sdk.options import Options
from builders.communicators import NoCommunicator
from builders.core import BuildContext
from stemforge_base.net import is_loopback
from stemforge_base.steps import Step

if TYPE_CHECKING:
    from builders.communicators.ssh import SSHCommunicator

LOG = logging.getLogger("stemforge.builders.communicator")
COMMUNICATORS = ("ssh", "none")
KEY_PAIR_TYPES = ("rsa", "ed25519")


@dataclass(kw_only=True)
class CommConfig:
    """The communicator options (Packer's names; durations in seconds)."""

    communicator: str = "ssh"
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_username: str = ""
    ssh_password: str = field(default="", repr=False)
    ssh_private_key_file: str = ""
    ssh_timeout: float = 300.0
    ssh_handshake_attempts: int = 10
    ssh_pty: bool = False
    ssh_keep_alive_interval: float = 5.0
    ssh_clear_authorized_keys: bool = False
    temporary_key_pair_type: str = "rsa"
    temporary_key_pair_bits: int = 0
    pause_before_connecting: float = 0.0

    def prepare_comm(self, opts: Options, *, loopback_only: bool = False) -> None:
        """Packer's ``communicator.Config.Prepare`` for ``ssh``/``none``; with ``loopback_only`` ``ssh_host``
        must be a loopback address. Options a builder ignores are left at their defaults by the builder's
        tables (they never reach here set: ``check_unsupported`` warns about them)."""
        self.communicator = opts.text("communicator", "ssh")
        if self.communicator not in COMMUNICATORS:
            opts.errors.append(f"communicator: {self.communicator!r} is not supported (use 'ssh' or 'none')")
        self.ssh_host = opts.text("ssh_host", self.ssh_host)
        if loopback_only and not is_loopback(self.ssh_host):
            opts.errors.append(f"ssh_host: {self.ssh_host!r} is not a loopback address (the VM is reached through "
                               "a host-forward on 127.0.0.1)")
        self.ssh_port = opts.value("ssh_port", 22)
        self.ssh_username = opts.text("ssh_username")
        self.ssh_password = opts.text("ssh_password")
        self.ssh_private_key_file = opts.text("ssh_private_key_file")
        timeout_key = "ssh_timeout" if "ssh_timeout" in opts.raw else "ssh_wait_timeout"
        self.ssh_timeout = opts.duration(timeout_key, 300.0)
        self.ssh_handshake_attempts = opts.value("ssh_handshake_attempts", 10)
        self.ssh_pty = opts.flag("ssh_pty")
        self.ssh_clear_authorized_keys = opts.flag("ssh_clear_authorized_keys")
        self.pause_before_connecting = opts.duration("pause_before_connecting", 0.0)
        self.temporary_key_pair_type = opts.text("temporary_key_pair_type", "rsa")
        if self.temporary_key_pair_type not in KEY_PAIR_TYPES:
            opts.errors.append(f"temporary_key_pair_type: {self.temporary_key_pair_type!r} must be 'rsa' or "
                               "'ed25519'")
        if self.communicator == "ssh":
            self._prepare_ssh_auth(opts)

    def prepare_keep_alive_and_key_bits(self, opts: Options) -> None:
        """``ssh_keep_alive_interval`` and ``temporary_key_pair_bits``, for builders that make and use them."""
        self.ssh_keep_alive_interval = opts.duration("ssh_keep_alive_interval", 5.0, zero_is_default=False)
        self.temporary_key_pair_bits = opts.value("temporary_key_pair_bits", 0)
        if self.temporary_key_pair_type == "rsa" and self.temporary_key_pair_bits not in (0, 2048, 3072, 4096):
            opts.errors.append("temporary_key_pair_bits: RSA keys must be 2048, 3072 or 4096 bits")

    def _prepare_ssh_auth(self, opts: Options) -> None:
        if not self.ssh_username:
            opts.errors.append("An ssh_username must be specified\n  Note: some builders used to default "
                               "ssh_username to \"root\".")
        if self.ssh_private_key_file:
            key_path = opts.template_file(self.ssh_private_key_file)
            if not key_path.is_file():
                opts.errors.append(f"ssh_private_key_file is invalid: {self.ssh_private_key_file} does not exist")
            else:
                self.ssh_private_key_file = str(key_path)

    def connect_ssh(self, ctx: BuildContext, host: str, port: int, private_key: str | None,
                    alive: Callable[[], str | None], log: logging.Logger) -> SSHCommunicator:
        """Wait for SSH on ``host:port`` with these options (``pause_before_connecting`` first, cancellable);
        ``alive`` says why the machine is gone (None while it runs). Returns the connected communicator."""
        from builders.communicators.ssh import SSHCommunicator, SSHConfig  # lazy: paramiko only when connecting

        if self.pause_before_connecting > 0:
            ctx.ui.say(f"Waiting {format_duration(self.pause_before_connecting)} before connecting...")
            if ctx.cancel.wait(self.pause_before_connecting):
                ctx.check_cancelled()
        ctx.ui.say("Waiting for SSH to become available...")
        comm = SSHCommunicator(SSHConfig(host, port, self.ssh_username, password=self.ssh_password or None,
                                         private_key=private_key or None, timeout=self.ssh_timeout,
                                         handshake_attempts=self.ssh_handshake_attempts, pty=self.ssh_pty,
                                         keepalive=self.ssh_keep_alive_interval),
                               ctx.ui, cancel=ctx.cancel, log=log)
        try:
            comm.connect(alive=alive)
        except BaseException:
            comm.close()
            raise
        ctx.ui.say("Connected to SSH!")
        return comm


def format_duration(seconds: float) -> str:
    """Seconds the way Go prints a ``time.Duration`` for whole minutes (``5m0s``), else ``1.5s``."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m0s"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class SSHTarget:
    """Where a build's SSH connection goes: address, port, the private key text (None: password or key file)
    and ``alive`` (why the machine is gone, None while it runs)."""

    host: str
    port: int
    private_key: str | None
    alive: Callable[[], str | None]


CommConfigT = TypeVar("CommConfigT", bound=CommConfig)


class StepConnect(Step, Generic[CommConfigT]):
    """Packer's ``communicator.StepConnect``: ``communicator: none`` gives provisioners a NoCommunicator; ``ssh``
    waits for SSH at the builder's :meth:`target` (state ``communicator``) and fills the generated data. The
    cleanup closes the connection."""

    name = "connect"
    temporary = True
    #: Whether ``{{ build `Password` }}`` is the SSH password (qemu; the amazon builders do not publish it).
    generated_password = False
    #: The logger the SSH communicator writes its debug lines to (the builder's).
    log = LOG

    def __init__(self, cfg: CommConfigT, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @property
    def ui(self) -> Any:
        return self.ctx.ui

    def target(self, state: dict[str, Any]) -> SSHTarget:
        """Where to connect; raises BuildError when the machine has no usable address."""
        raise NotImplementedError

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.communicator == "none":
            state["communicator"] = NoCommunicator()
            return
        target = self.target(state)
        state["communicator"] = cfg.connect_ssh(self.ctx, target.host, target.port, target.private_key,
                                                alive=target.alive, log=self.log)
        generated = {"Host": target.host, "Port": str(target.port), "User": cfg.ssh_username}
        if self.generated_password:
            generated["Password"] = cfg.ssh_password
        self.ctx.generated.update({**generated, "ConnType": "ssh", "PackerRunUUID": self.ctx.run_uuid})

    def cleanup(self, state: dict[str, Any]) -> None:
        comm = state.pop("communicator", None)
        close = getattr(comm, "close", None)
        if close is not None:
            close()
