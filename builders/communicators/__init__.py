"""Communicators (``builders.core.Communicator``): how provisioners reach the machine being built.

``ssh`` (a VM over a loopback host-forward), ``local`` (this host; used by ``shell-local`` and by tests); the
chroot communicator (an offline root tree) belongs to the builder that makes one, ``builder_types/debian``.
``NullCommunicator`` stands for "no machine": builders without one (the ``file`` builder) hand it to the provision
hook, which then skips provisioners that need a machine and says so.
``NoCommunicator`` is Packer's ``communicator: none`` on a builder that has a machine: provisioners that need it
fail, saying why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from builders.core import BuildError, CommandResult, Communicator


class NullCommunicator(Communicator):
    """No machine to talk to. Every method raises BuildError naming the builder; the runner never calls them
    for provisioners with ``needs_communicator`` (it skips those, like Packer's mock communicator)."""

    is_null: ClassVar[bool] = True

    def __init__(self, builder_type: str) -> None:
        self.builder_type = builder_type

    def _fail(self) -> BuildError:
        return BuildError(f"the {self.builder_type} builder has no machine to run provisioners on")

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        raise self._fail()

    def upload(self, source: Path, destination: str) -> None:
        raise self._fail()

    def download(self, source: str, destination: Path) -> None:
        raise self._fail()


class NoCommunicator(Communicator):
    """``communicator: none``: provisioners that need the machine fail with a clear message (``shell-local``
    and other local-only provisioners still run)."""

    def _refuse(self) -> BuildError:
        return BuildError("communicator is 'none': provisioners cannot run commands or copy files on the machine")

    def run(self, command: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None,
            capture: bool = False) -> CommandResult:
        raise self._refuse()

    def upload(self, source: Path, destination: str) -> None:
        raise self._refuse()

    def download(self, source: str, destination: Path) -> None:
        raise self._refuse()
