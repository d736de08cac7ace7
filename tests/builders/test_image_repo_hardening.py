"""Attacks on the image repository (``builders.image_repo``, issue 12 item 6), each reproduced against a real server
on 127.0.0.1: unauthenticated writes, malformed framing (``Content-Length: -1``/``abc``, chunk size ``-1``), a
crowd of half-sent uploads and slow headers, a symlink planted in the root, plus ``Range`` downloads and the fan-out's
``http`` destination sending its token. Every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from builders.communicators.ssh import free_loopback_port
from builders.destinations import SourceImage, TransferIO, load_destination
from builders.image_repo import ImageRepoServer, parse_range, serve_in_thread
from builders.image_store import INCOMING

MIB = 1024 * 1024
TOKEN = "repo-token-7f3a9c1e5b2d4068"
TOKENS = [TOKEN.encode(), b"second-token-0123456789ab"]


def raw_request(server: ImageRepoServer, head: str, body: bytes = b"", *, wait: float = 5.0) -> tuple[int, bytes]:
    """Send ``head`` (request line + headers, ``\\n``-separated) and ``body`` over a raw socket; return the status
    and whatever the server answered within ``wait`` seconds (0 when it answered nothing)."""
    host, port = server.server_address[:2]
    with socket.create_connection((str(host), port), timeout=wait) as sock:
        sock.sendall(head.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + body)
        data = b""
        deadline = time.monotonic() + wait
        with contextlib.suppress(OSError):
            while not _complete(data) and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    if not data.startswith(b"HTTP/1."):
        return 0, data
    return int(data.split(b" ", 2)[1]), data


def _complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response head and its ``Content-Length`` bytes of body."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def incoming(server: ImageRepoServer) -> list[str]:
    return sorted(os.listdir(server.store.root / INCOMING))


def images(server: ImageRepoServer) -> list[str]:
    return sorted(p.name for p in server.store.root.iterdir() if p.name not in (INCOMING, ".repo~meta"))


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[ImageRepoServer]:
    with serve_in_thread(tmp_path / "repo", tokens=TOKENS, max_size=10 * MIB) as server:
        yield server


# -- authentication -----------------------------------------------------------------------------------------


def test_writes_need_a_valid_bearer_token_reads_stay_open(repo: ImageRepoServer) -> None:
    url = repo.url
    good = {"Authorization": f"Bearer {TOKEN}"}
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        put = requests.put(f"{url}images/a.raw", data=b"abc", headers=headers, timeout=10)
        assert put.status_code == 401, headers
        assert put.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in put.text
    assert images(repo) == [] and incoming(repo) == []
    assert requests.put(f"{url}images/a.raw", data=b"abc", headers=good, timeout=10).status_code == 201
    second = {"Authorization": "Bearer second-token-0123456789ab"}
    assert requests.put(f"{url}images/b.raw", data=b"b", headers=second, timeout=10).status_code == 201
    # reads need nothing
    assert requests.get(f"{url}images/a.raw", timeout=10).content == b"abc"
    assert requests.head(f"{url}images/a.raw", timeout=10).status_code == 200
    assert [i["name"] for i in requests.get(url, timeout=10).json()["images"]] == ["a.raw", "b.raw"]
    # MOVE and DELETE too
    move = {"Destination": "/images/c.raw", "Overwrite": "F"}
    assert requests.request("MOVE", f"{url}images/a.raw", headers=move, timeout=10).status_code == 401
    assert requests.delete(f"{url}images/a.raw", timeout=10).status_code == 401
    assert images(repo) == ["a.raw", "b.raw"]
    assert requests.request("MOVE", f"{url}images/a.raw", headers={**move, **good}, timeout=10).status_code == 201
    assert requests.delete(f"{url}images/c.raw", headers=good, timeout=10).status_code == 204
    assert images(repo) == ["b.raw"]


def _serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stemforge.cli", "image-repo", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_a_non_loopback_listen_without_tokens_and_a_loose_token_file(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for listen in ("0.0.0.0:8090", "[::]:8090", "192.0.2.10:8090"):
        result = _serve_cli("--root", str(root), "--listen", listen)
        assert result.returncode == 2, result
        assert "without authentication" in result.stderr and "--token-file" in result.stderr
    loose = tmp_path / "tokens"
    loose.write_text(f"# site b\n{TOKEN}\n")
    loose.chmod(0o644)
    result = _serve_cli("--root", str(root), "--token-file", str(loose), "--listen", "127.0.0.1:1")
    assert result.returncode == 2 and "chmod 600" in result.stderr and TOKEN not in result.stderr
    short = tmp_path / "short"
    short.write_text("tiny\n")
    short.chmod(0o600)
    result = _serve_cli("--root", str(root), "--token-file", str(short), "--listen", "127.0.0.1:1")
    assert result.returncode == 2 and "at least 16" in result.stderr and "tiny" not in result.stderr


def test_cli_with_a_token_file_guards_writes(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# site b\n\n{TOKEN}\n")
    tokens.chmod(0o600)
    port = free_loopback_port()
    proc = subprocess.Popen([sys.executable, "-m", "stemforge.cli", "image-repo", "serve", "--root",
                             str(tmp_path / "repo"), "--listen", f"127.0.0.1:{port}", "--token-file", str(tokens),
                             "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert f"127.0.0.1:{port}" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/images/z.raw"
        assert requests.put(url, data=b"z", headers={"Authorization": "Bearer nope-nope-nope-nope"},
                            timeout=10).status_code == 401
        assert requests.put(url, data=b"z", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 201
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "1 token(s)" in err and "401" in err
    assert TOKEN not in err and "nope-nope" not in err  # the log names refusals, never credentials


# -- malformed framing ------------------------------------------------------------------------------------------


AUTH = f"Authorization: Bearer {TOKEN}"


@pytest.mark.parametrize(("headers", "status"), [
    ("Content-Length: -1", 400),
    ("Content-Length: abc", 400),
    ("Content-Length: 1e3", 400),
    ("Content-Length: 5\nContent-Length: 6", 400),
    ("Content-Length: 99999999999999999999999999", 400),
    ("Content-Length: 5\nTransfer-Encoding: chunked", 400),
    ("Transfer-Encoding: gzip, chunked", 501),
    ("", 411),
    (f"Content-Length: {11 * MIB}", 413),
])
def test_malformed_or_oversized_framing_is_answered_without_reading_the_body(
        repo: ImageRepoServer, headers: str, status: int, caplog: pytest.LogCaptureFixture) -> None:
    """Before the fix ``-1`` read until EOF (buffering everything in memory, 300 MiB in the review) and ``abc``
    dropped the connection with a traceback; here the server must answer while the connection is still open."""
    caplog.set_level(logging.DEBUG, logger="stemforge.image_repo")
    got, answer = raw_request(repo, f"PUT /images/x.raw HTTP/1.1\nHost: x\n{AUTH}\n{headers}", b"0123456789")
    assert got == status, answer
    assert b'"error"' in answer
    assert images(repo) == [] and incoming(repo) == []
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("chunks", "status"), [
    (b"-1\r\n" + b"x" * 64, 400),
    (b"zz\r\nabc\r\n0\r\n\r\n", 400),
    (b"3\r\nabcdef\r\n0\r\n\r\n", 400),          # chunk longer than its size
    (b"A00001\r\n" + b"x" * 64, 413),            # one chunk above --max-size
    (b"11111111111111111\r\n", 400),             # 17 hex digits
])
def test_bad_chunked_bodies_get_400_or_413(repo: ImageRepoServer, chunks: bytes, status: int) -> None:
    got, answer = raw_request(repo, f"PUT /images/y.raw HTTP/1.1\nHost: x\n{AUTH}\nTransfer-Encoding: chunked",
                              chunks)
    assert got == status, answer
    assert images(repo) == []
    deadline = time.monotonic() + 5
    while incoming(repo) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert incoming(repo) == []


def test_a_chunked_stream_past_max_size_stops_at_the_limit(repo: ImageRepoServer) -> None:
    """Many small chunks adding up past ``--max-size``: 413 once the limit is crossed, nothing kept."""
    host, port = repo.server_address[:2]
    with socket.create_connection((str(host), port), timeout=10) as sock:
        sock.sendall(f"PUT /images/big.raw HTTP/1.1\r\nHost: x\r\n{AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .encode())
        piece = b"100000\r\n" + b"z" * MIB + b"\r\n"
        answer = b""
        with contextlib.suppress(OSError):
            for _ in range(40):  # at most 40 MiB offered against a 10 MiB limit
                sock.sendall(piece)
            answer = sock.recv(4096)
        if not answer:
            with contextlib.suppress(OSError):
                answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert images(repo) == []


# -- bounded workers and deadlines --------------------------------------------------------------------------


def test_half_sent_uploads_and_slow_headers_are_bounded_and_timed_out(tmp_path: Path) -> None:
    """200 half-sent uploads held 201 threads forever. Now: at most ``max_clients`` workers, the rest answered
    503 at once, and every stalled connection is closed after ``client_timeout`` with its partial upload removed."""
    baseline = threading.active_count()
    sockets: list[socket.socket] = []
    with serve_in_thread(tmp_path / "repo", max_clients=8, client_timeout=1.0) as server:
        host, port = server.server_address[:2]
        try:
            for i in range(60):
                sock = socket.create_connection((str(host), port), timeout=10)
                sockets.append(sock)
                if i % 2:
                    sock.sendall(b"PUT /images/slow.raw HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
                                 + b"x" * 1000)
                else:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finished
            time.sleep(0.3)
            assert threading.active_count() <= baseline + 2 + 8, threading.active_count()
            assert server.refused_busy >= 60 - 8
            answers: list[bytes] = []
            started = time.monotonic()
            for sock in sockets:
                sock.settimeout(max(0.1, 8 - (time.monotonic() - started)))
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := sock.recv(4096):
                        data += chunk
                answers.append(data)
            elapsed = time.monotonic() - started
            # every connection was ended by the server (EOF), none outlived the deadline by much
            assert elapsed < 6, elapsed
            assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 60 - 8
            deadline = time.monotonic() + 5
            while (incoming(server) or threading.active_count() > baseline + 2) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert incoming(server) == []
            assert threading.active_count() <= baseline + 2
            # and the server still serves
            assert requests.get(server.url, timeout=10).status_code == 200
        finally:
            for sock in sockets:
                sock.close()


def test_a_trickling_upload_is_cut_off_by_the_minimum_rate(tmp_path: Path) -> None:
    """A client that keeps each read under ``client_timeout`` but sends only a few bytes a second still ends: each
    1 MiB step must arrive within ``client_timeout`` + 1 MiB at ``min_rate``."""
    with serve_in_thread(tmp_path / "repo", client_timeout=1.0, min_rate=1 * MIB) as server:
        host, port = server.server_address[:2]
        with socket.create_connection((str(host), port), timeout=10) as sock:
            sock.sendall(b"PUT /images/t.raw HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
            started = time.monotonic()
            closed = False
            with contextlib.suppress(OSError):
                for _ in range(40):  # 40 x 0.2 s, a byte each: well under any idle timeout per read
                    sock.sendall(b"x")
                    time.sleep(0.2)
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                data = sock.recv(4096)
                closed = data == b"" or data.startswith(b"HTTP/1.1 408")
            assert closed or time.monotonic() - started < 8
        assert server.deadlines.expired >= 1
        deadline = time.monotonic() + 5
        while incoming(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert incoming(server) == [] and images(server) == []


# -- symlinks -------------------------------------------------------------------------------------------------


def test_a_symlink_in_the_root_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not for the repository")
    with serve_in_thread(tmp_path / "repo") as server:
        root = server.store.root
        (root / "passwd").symlink_to("/etc/passwd")
        (root / "outside").symlink_to(outside)
        (root / "dir").symlink_to(tmp_path)
        for name in ("passwd", "outside", "dir"):
            for method in ("GET", "HEAD"):
                response = requests.request(method, f"{server.url}images/{name}", timeout=10)
                assert response.status_code == 403, (name, method)
                assert b"root:" not in response.content and b"not for" not in response.content
        listing = requests.get(server.url, timeout=10).json()
        assert listing["images"] == []
        move = requests.request("MOVE", f"{server.url}images/outside", headers={"Destination": "/images/o2"},
                                timeout=10)
        assert move.status_code == 404
        # If-None-Match sees the link; a PUT replaces the link itself, never writes through it
        assert requests.put(f"{server.url}images/outside", data=b"x", headers={"If-None-Match": "*"},
                            timeout=10).status_code == 412
        assert requests.put(f"{server.url}images/outside", data=b"new", timeout=10).status_code == 200
        assert outside.read_bytes() == b"not for the repository"
        assert not (root / "outside").is_symlink() and (root / "outside").read_bytes() == b"new"
        assert requests.delete(f"{server.url}images/dir", timeout=10).status_code == 204
        assert tmp_path.is_dir() and outside.exists()


# -- Range -------------------------------------------------------------------------------------------------------


def test_range_downloads_resume_and_unsatisfiable_ranges_get_416(tmp_path: Path) -> None:
    body = os.urandom(3 * MIB + 5)
    sha = hashlib.sha256(body).hexdigest()
    size = len(body)
    with serve_in_thread(tmp_path / "repo") as server:
        url = f"{server.url}images/big.img"
        assert requests.put(url, data=body, timeout=30).status_code == 201
        full = requests.get(url, timeout=30)
        assert full.status_code == 200 and full.headers["Accept-Ranges"] == "bytes"
        # a resumable download: the first part, then the rest with If-Range
        first = requests.get(url, headers={"Range": "bytes=0-1048575"}, timeout=30)
        assert first.status_code == 206 and first.content == body[:MIB]
        assert first.headers["Content-Range"] == f"bytes 0-1048575/{size}"
        rest = requests.get(url, headers={"Range": f"bytes={MIB}-", "If-Range": f'"{sha}"'}, timeout=30)
        assert rest.status_code == 206 and hashlib.sha256(first.content + rest.content).hexdigest() == sha
        suffix = requests.get(url, headers={"Range": "bytes=-10"}, timeout=30)
        assert suffix.status_code == 206 and suffix.content == body[-10:]
        clamp = requests.get(url, headers={"Range": f"bytes={size - 3}-{'9' * 5000}"}, timeout=30)
        assert clamp.status_code == 206 and clamp.content == body[-3:]
        for bad in (f"bytes={size}-", f"bytes={'9' * 5000}-", "bytes=-0"):
            answer = requests.get(url, headers={"Range": bad}, timeout=30)
            assert answer.status_code == 416, bad
            assert answer.headers["Content-Range"] == f"bytes */{size}"
        # ignored: several ranges, other units, nonsense, a stale If-Range -> the whole image
        for headers in ({"Range": "bytes=0-1,5-9"}, {"Range": "items=0-1"}, {"Range": "bytes=9-1"},
                        {"Range": "bytes=0-9", "If-Range": '"stale"'}):
            answer = requests.get(url, headers=headers, timeout=30)
            assert answer.status_code == 200 and len(answer.content) == size, headers
        head = requests.head(url, headers={"Range": "bytes=10-19"}, timeout=30)
        assert head.status_code == 206 and head.headers["Content-Length"] == "10"


def test_parse_range_rules() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=5-", 10) == (5, 9)
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=0-0", 0) == "unsatisfiable"
    assert parse_range("bytes=-", 10) is None
    assert parse_range("bytes=1-2, 4-5", 10) is None


# -- the fan-out's http destination -------------------------------------------------------------------------


def _publish(config: dict[str, object], image: Path) -> str:
    data = image.read_bytes()
    source = SourceImage(image, len(data), hashlib.sha256(data).hexdigest())
    destination = load_destination(config, 0)
    io = TransferIO()
    destination.preflight(source, "img.raw", False)
    staged = destination.stage(source, "img.raw", io)
    committed = destination.commit(staged, False)
    destination.finalize(committed)
    return committed.id


def test_http_destination_sends_its_token_from_config_file_or_env(
        repo: ImageRepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(2 * MIB + 1))
    base = {"type": "http", "name": "site-b", "url": repo.url, "timeout": 10}
    # no token: the staging PUT is refused, the error says 401 and nothing is left behind
    monkeypatch.delenv("STEMFORGE_IMAGE_REPO_TOKEN", raising=False)
    with pytest.raises(Exception, match="HTTP 401"):
        _publish(base, image)
    assert images(repo) == [] and incoming(repo) == []
    # from the config
    assert _publish({**base, "token": TOKEN}, image).endswith("/images/img.raw")
    requests.delete(f"{repo.url}images/img.raw", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    # from a file
    token_file = tmp_path / "token"
    token_file.write_text(f"# the site's token\n{TOKEN}\n")
    _publish({**base, "token_file": str(token_file)}, image)
    requests.delete(f"{repo.url}images/img.raw", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    # from the environment (default name, then a named variable)
    monkeypatch.setenv("STEMFORGE_IMAGE_REPO_TOKEN", TOKEN)
    _publish(base, image)
    requests.delete(f"{repo.url}images/img.raw", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    monkeypatch.delenv("STEMFORGE_IMAGE_REPO_TOKEN")
    monkeypatch.setenv("SITE_B_TOKEN", TOKEN)
    _publish({**base, "token_env": "SITE_B_TOKEN"}, image)
    assert images(repo) == ["img.raw"]
    destination = load_destination({**base, "token": TOKEN}, 0)
    assert TOKEN not in destination.describe()
    assert TOKEN not in caplog.text
    with pytest.raises(ValueError, match="token_file") as missing:
        load_destination({**base, "token_file": str(tmp_path / "absent")}, 0)
    assert TOKEN not in str(missing.value)
