"""The SSH communicator against a real OpenSSH server on loopback: each test module run starts its own
``sshd -D -e`` on a free port of 127.0.0.1 (the ``sshd`` fixture, ``tests/harness/sshd.py``), killed at teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders.communicators.ssh import SSHCommunicator, SSHConfig, free_loopback_port, load_private_key
from builders.core import BuildError
from stemforge_base.steps import Cancelled
from tests.harness.recording_ui import RecordingUi
from tests.harness.sshd import Sshd, keygen


@pytest.fixture
def comm(sshd: Sshd) -> Iterator[tuple[SSHCommunicator, RecordingUi]]:
    ui = RecordingUi()
    c = SSHCommunicator(SSHConfig("127.0.0.1", sshd.port, "root", private_key=sshd.private_key, timeout=20), ui)
    c.connect()
    try:
        yield c, ui
    finally:
        c.close()


def test_run_streams_output_and_returns_exit_status(comm: tuple[SSHCommunicator, RecordingUi]) -> None:
    c, ui = comm
    result = c.run("echo hello; echo oops >&2; printf 'no newline'; exit 3", capture=True)
    assert result.exit_status == 3
    assert result.stdout == "hello\nno newline"
    assert result.stderr == "oops\n"
    assert "hello" in ui.lines and "oops" in ui.lines and "no newline" in ui.lines
    assert c.run("true").exit_status == 0


def test_env_vars_are_exported_and_quoted(comm: tuple[SSHCommunicator, RecordingUi]) -> None:
    c, _ = comm
    env = {"PLAIN": "value", "TRICKY": "it's \"quoted\" $HOME `x` ; rm -rf /", "EMPTY": ""}
    result = c.run('printf "%s|%s|%s" "$PLAIN" "$TRICKY" "$EMPTY"; sh -c \'printf "|%s" "$PLAIN"\'',
                   env=env, capture=True)
    assert result.exit_status == 0
    assert result.stdout == "value|it's \"quoted\" $HOME `x` ; rm -rf /||value"
    with pytest.raises(BuildError, match="not a valid shell identifier"):
        c.run("true", env={"BAD-NAME": "x"})


def test_large_output_and_timeout(comm: tuple[SSHCommunicator, RecordingUi]) -> None:
    c, ui = comm
    result = c.run("seq 1 20000", capture=True)
    assert result.stdout.splitlines()[-1] == "20000" and len(result.stdout.splitlines()) == 20000
    started = time.monotonic()
    with pytest.raises(BuildError, match="timed out after 1s"):
        c.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 10
    # the connection is still usable afterwards
    assert c.run("echo again", capture=True).stdout == "again\n"


def test_cancel_interrupts_a_running_command(sshd: Sshd) -> None:
    cancel = threading.Event()
    c = SSHCommunicator(SSHConfig("127.0.0.1", sshd.port, "root", private_key=sshd.private_key, timeout=20),
                        RecordingUi(), cancel=cancel)
    c.connect()
    try:
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            c.run("sleep 30")
        assert time.monotonic() - started < 10
    finally:
        c.close()


def test_upload_download_files_with_trailing_slash_rules(comm: tuple[SSHCommunicator, RecordingUi],
                                                          sshd: Sshd, tmp_path: Path) -> None:
    c, _ = comm
    remote = sshd.home / "files"
    remote.mkdir()
    src = tmp_path / "hello.sh"
    src.write_bytes(b"#!/bin/sh\necho hi\n" + os.urandom(100_000))
    src.chmod(0o751)
    c.upload(src, str(remote / "renamed.sh"))  # explicit file name
    c.upload(src, str(remote) + "/")  # trailing slash: inside, own name
    c.upload(src, str(remote))  # existing directory: inside, own name (overwrites)
    assert (remote / "renamed.sh").read_bytes() == src.read_bytes()
    assert (remote / "hello.sh").read_bytes() == src.read_bytes()
    assert (remote / "hello.sh").stat().st_mode & 0o777 == 0o751
    with pytest.raises(BuildError, match="upload of"):
        c.upload(src, str(remote / "missing-parent" / "x"))
    with pytest.raises(BuildError, match="does not exist"):
        c.upload(tmp_path / "nope", str(remote))

    back = tmp_path / "back"
    back.mkdir()
    c.download(str(remote / "renamed.sh"), back / "one.sh")
    c.download(str(remote / "hello.sh"), back)  # existing local dir: inside
    assert (back / "one.sh").read_bytes() == src.read_bytes()
    assert (back / "hello.sh").read_bytes() == src.read_bytes()
    assert (back / "one.sh").stat().st_mode & 0o777 == 0o751
    assert not list(back.glob(".*.part"))
    with pytest.raises(BuildError, match="not found"):
        c.download(str(remote / "nope"), back / "x")


def test_upload_download_directories(comm: tuple[SSHCommunicator, RecordingUi], sshd: Sshd,
                                     tmp_path: Path) -> None:
    c, _ = comm
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    (tree / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    dest = sshd.home / "dirs"
    dest.mkdir()
    c.upload(tree, str(dest / "no-slash"))  # the directory itself: no-slash/tree/...
    c.upload(str(tree) + "/", str(dest / "slash" / "created"))  # its contents; missing parents are made

    def listing(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert listing(dest / "no-slash" / "tree") == listing(tree)
    assert listing(dest / "slash" / "created") == listing(tree)

    out = tmp_path / "out"
    c.download(str(dest / "no-slash" / "tree"), out)  # out/tree/...
    c.download(str(dest / "slash" / "created") + "/", out / "contents")  # contents into out/contents
    assert listing(out / "tree") == listing(tree)
    assert listing(out / "contents") == listing(tree)
    assert not list(out.rglob(".*.part"))


def test_connect_retries_until_the_server_appears_and_times_out(sshd: Sshd, tmp_path: Path) -> None:
    # nothing listens on this port: the connect loop retries, then reports a timeout naming host and port
    port = free_loopback_port()
    c = SSHCommunicator(SSHConfig("127.0.0.1", port, "root", private_key=sshd.private_key, timeout=2,
                                  retry_interval=0.2), RecordingUi())
    started = time.monotonic()
    with pytest.raises(BuildError, match=f"Timeout waiting for SSH: 127.0.0.1:{port}"):
        c.connect()
    assert 1.5 < time.monotonic() - started < 20

    # a server that appears later is found: a listener that only accepts and closes first (like a QEMU
    # host-forward to a guest whose sshd is not up yet), then forwards to the real sshd
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    fwd_port = listener.getsockname()[1]
    stop = threading.Event()
    ready_at = time.monotonic() + 2

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            if time.monotonic() < ready_at:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", sshd.port))

            def pipe(a: socket.socket, b: socket.socket) -> None:
                try:
                    while data := a.recv(65536):
                        b.sendall(data)
                except OSError:
                    pass
                finally:
                    for s in (a, b):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)

            threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        c2 = SSHCommunicator(SSHConfig("127.0.0.1", fwd_port, "root", private_key=sshd.private_key, timeout=30,
                                       retry_interval=0.3), RecordingUi())
        c2.connect()
        assert c2.run("echo via-forward", capture=True).stdout == "via-forward\n"
        c2.close()
    finally:
        stop.set()
        t.join(timeout=5)
        listener.close()


def test_auth_failures_are_bounded_and_secrets_not_logged(sshd: Sshd, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keygen(tmp_path / "wrong")
    wrong = (tmp_path / "wrong").read_text()
    c = SSHCommunicator(SSHConfig("127.0.0.1", sshd.port, "root", private_key=wrong, timeout=60,
                                  handshake_attempts=2, retry_interval=0.1), RecordingUi())
    with pytest.raises(BuildError, match=r"failed 2 times \(ssh_handshake_attempts\)"):
        c.connect()
    secret = "S3cret-Passw0rd-do-not-log"
    c = SSHCommunicator(SSHConfig("127.0.0.1", sshd.port, "root", password=secret, timeout=60,
                                  handshake_attempts=1, retry_interval=0.1), RecordingUi())
    with pytest.raises(BuildError) as info:
        c.connect()
    assert secret not in str(info.value)
    assert secret not in repr(c.config)
    assert "PRIVATE KEY" not in repr(c.config)
    text = caplog.text
    assert secret not in text and "PRIVATE KEY" not in text
    assert "not verified (temporary build VM)" in text


def test_cancel_stops_connect_loop(sshd: Sshd) -> None:
    cancel = threading.Event()
    c = SSHCommunicator(SSHConfig("127.0.0.1", free_loopback_port(), "root", private_key=sshd.private_key,
                                  timeout=60, retry_interval=0.5), RecordingUi(), cancel=cancel)
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        c.connect()
    assert time.monotonic() - started < 10
    # and a machine that died ends the wait at once with its reason
    c = SSHCommunicator(SSHConfig("127.0.0.1", free_loopback_port(), "root", private_key=sshd.private_key,
                                  timeout=60), RecordingUi())
    with pytest.raises(BuildError, match="stopped while waiting for SSH: qemu exited with status 1"):
        c.connect(alive=lambda: "qemu exited with status 1")


def test_private_key_formats(tmp_path: Path) -> None:
    for kind in ("ed25519", "rsa", "ecdsa"):
        keygen(tmp_path / kind, kind)
        assert load_private_key((tmp_path / kind).read_text()).get_name()
    with pytest.raises(ValueError, match="not a private key"):
        load_private_key("garbage")

