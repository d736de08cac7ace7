"""The HTTP image repository (``builders.image_repo``) over real sockets on 127.0.0.1: streaming PUT with sha256
verification and atomic rename, GET/HEAD/DELETE/MOVE, listing, refused names, broken uploads leaving nothing, and
the ``stemforge image-repo serve`` command."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from builders.communicators.ssh import free_loopback_port
from builders.image_repo import serve_in_thread
from builders.image_store import INCOMING

MIB = 1024 * 1024


def incoming(root: Path) -> list[str]:
    return sorted(os.listdir(root / INCOMING))


def test_put_get_head_move_delete_and_listing(tmp_path: Path) -> None:
    body = os.urandom(3 * MIB + 17)
    sha = hashlib.sha256(body).hexdigest()
    with serve_in_thread(tmp_path / "repo") as repo:
        url = repo.url
        put = requests.put(f"{url}images/a.qcow2", data=body, headers={"X-Checksum-Sha256": sha}, timeout=30)
        assert put.status_code == 201 and put.json() == {"name": "a.qcow2", "size": len(body), "sha256": sha}
        head = requests.head(f"{url}images/a.qcow2", timeout=30)
        assert head.headers["X-Checksum-Sha256"] == sha and int(head.headers["Content-Length"]) == len(body)
        got = requests.get(f"{url}images/a.qcow2", timeout=30)
        assert got.content == body and got.headers["X-Checksum-Sha256"] == sha
        # If-None-Match: * refuses to replace
        again = requests.put(f"{url}images/a.qcow2", data=b"x", headers={"If-None-Match": "*"}, timeout=30)
        assert again.status_code == 412
        move = requests.request("MOVE", f"{url}images/a.qcow2", headers={"Destination": "/images/b.qcow2",
                                                                          "Overwrite": "F"}, timeout=30)
        assert move.status_code == 201
        listing = requests.get(url, timeout=30).json()
        assert listing == {"images": [{"name": "b.qcow2", "size": len(body), "sha256": sha,
                                       "mtime": listing["images"][0]["mtime"]}], "incoming": []}
        assert requests.get(f"{url}images/a.qcow2", timeout=30).status_code == 404
        assert requests.delete(f"{url}images/b.qcow2", timeout=30).status_code == 204
        assert requests.delete(f"{url}images/b.qcow2", timeout=30).status_code == 404
        assert requests.get(f"{url}images/", timeout=30).json()["images"] == []
        # chunked uploads work too (no Content-Length)
        chunked = requests.put(f"{url}images/c.raw", data=iter([b"abc", b"def" * 1000]), timeout=30)
        assert chunked.status_code == 201 and chunked.json()["size"] == 3003


def test_checksum_mismatch_and_bad_names_keep_nothing(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "repo") as repo:
        bad = requests.put(f"{repo.url}images/x.raw", data=b"hello", headers={"X-Checksum-Sha256": "0" * 64},
                           timeout=30)
        assert bad.status_code == 422 and "checksum mismatch" in bad.json()["error"]
        for name in ("..%2Fescape", "a%2Fb", ".repo~meta", "-x"):
            response = requests.put(f"{repo.url}images/{name}", data=b"x", timeout=30)
            assert response.status_code in (400, 404), name
        assert requests.get(repo.url, timeout=30).json() == {"images": [], "incoming": []}
        assert incoming(repo.store.root) == []
        assert sorted(os.listdir(repo.store.root)) == [".repo~incoming", ".repo~meta"]
        assert not (tmp_path / "escape").exists()


def test_broken_upload_leaves_nothing(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "repo") as repo:
        host, port = repo.server_address[:2]
        conn = http.client.HTTPConnection(str(host), port, timeout=30)
        conn.putrequest("PUT", "/images/partial.raw")
        conn.putheader("Content-Length", str(64 * MIB))
        conn.endheaders()
        conn.send(os.urandom(4 * MIB))
        deadline = time.monotonic() + 10
        while not incoming(repo.store.root) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert incoming(repo.store.root), "the upload should be in progress"
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        deadline = time.monotonic() + 10
        while incoming(repo.store.root) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert incoming(repo.store.root) == []
        assert not (repo.store.root / "partial.raw").exists()


def test_stale_hash_record_is_recomputed(tmp_path: Path) -> None:
    with serve_in_thread(tmp_path / "repo") as repo:
        requests.put(f"{repo.url}images/a.raw", data=b"one", timeout=30)
        (repo.store.root / "a.raw").write_bytes(b"changed behind the repository's back")
        head = requests.head(f"{repo.url}images/a.raw", timeout=30)
        assert head.headers["X-Checksum-Sha256"] == hashlib.sha256(b"changed behind the repository's back").hexdigest()


def test_cli_serve_until_sigterm(tmp_path: Path) -> None:
    port = free_loopback_port()
    root = tmp_path / "cli-repo"
    (root / INCOMING).mkdir(parents=True)
    (root / INCOMING / "stale.raw.0123").write_bytes(b"left by a crash")
    proc = subprocess.Popen([sys.executable, "-m", "stemforge.cli", "image-repo", "serve", "--root", str(root),
                             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line
        response = requests.put(f"http://127.0.0.1:{port}/images/z.raw", data=b"zzz", timeout=30)
        assert response.status_code == 201
        listing: Any = json.loads(requests.get(f"http://127.0.0.1:{port}/", timeout=30).text)
        assert [i["name"] for i in listing["images"]] == ["z.raw"] and listing["incoming"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise
    assert proc.returncode == 0, err
    assert "removed 1 half-done upload" in err
