"""The libvirt CPI's create_stemcell against hostile and heavy stemcells (issue 12, items 1, 4 and 5), through the real
``bin/cpi`` wrapper, real libvirt and a private pool: hostile root images are refused with their reason, hostile tar
headers are refused at once, ``call_timeout`` ends the work and removes what the call made, a killed call's leftovers
are swept, zero-filled images stay sparse in the pool, and error messages are bounded.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import tarfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stemcells.tarball import _pack_root_image  # noqa: E402
from tests.harness.hostile import KINDS, hostile_header_tgz, make_hostile_images
from tests.harness.libvirt import LibvirtCpi, session_cpi_or_skip

pytestmark = pytest.mark.libvirt

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def cpi() -> Iterator[LibvirtCpi]:
    with session_cpi_or_skip("bd") as session:
        yield session


def director_image(root: Path, out: Path) -> Path:
    """The ``image`` file the director hands create_stemcell: a gzipped tar holding ``root`` as root.img."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _pack_root_image(root, "root.img", out, 1_700_000_000)
    return out


def leftovers(cpi: LibvirtCpi) -> dict[str, list[str]]:
    """Everything a create_stemcell call could leave behind: pool volumes, temporary directories in the state dir
    (and their extracted files), state rows, and child processes still running from the state dir."""
    temps = sorted(p.name for p in cpi.state_dir.glob("stemforge-stemcell-*")) if cpi.state_dir.exists() else []
    pending = cpi.state_dir / "pending-stemcells"
    temps += sorted(p.name for p in pending.iterdir()) if pending.exists() else []
    rows = [row["cid"] for row in cpi.state_rows("stemcells")] if (cpi.state_dir / "state.db").exists() else []
    procs = subprocess.run(["pgrep", "-f", f"stemcells.image_check .*{cpi.root}"], capture_output=True, text=True)
    return {"volumes": cpi.volumes(), "temps": temps, "rows": rows, "children": procs.stdout.split()}


NOTHING: dict[str, list[str]] = {"volumes": [], "temps": [], "rows": [], "children": []}


@pytest.fixture(scope="module")
def hostile_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("hostile-cpi")
    images = make_hostile_images(directory / "roots")
    return {kind: (director_image(root, directory / kind.replace(" ", "-") / "image"), reason)
            for kind, (root, reason) in images.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_create_stemcell_refuses_hostile_root_images(
    cpi: LibvirtCpi, hostile_images: dict[str, tuple[Path, str]], kind: str
) -> None:
    image, reason = hostile_images[kind]
    error = cpi.call("create_stemcell", str(image), {}, {}, api_version=3).error
    assert error["type"] == "Bosh::Clouds::CloudError"
    assert reason in error["message"] and "root image root.img" in error["message"]
    assert leftovers(cpi) == NOTHING


def test_create_stemcell_refuses_a_bare_qcow2_with_a_host_backing_file(cpi: LibvirtCpi, tmp_path: Path) -> None:
    bare = tmp_path / "image"  # not a tar: the director's file is itself the disk
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(bare)], check=True)
    error = cpi.call("create_stemcell", str(bare), {}, {}, api_version=3).error
    assert "has a backing file (/etc/shadow)" in error["message"]
    assert leftovers(cpi) == NOTHING


def test_pax_header_attack_is_answered_at_once(cpi: LibvirtCpi, tmp_path: Path) -> None:
    image = hostile_header_tgz(tmp_path / "image", tarfile.XHDTYPE, 16 * MIB)
    started = time.monotonic()
    result = cpi.run(cpi.request("create_stemcell", str(image), {}, {}, api_version=3,
                                 context={"call_timeout": 20}), timeout=120)
    assert time.monotonic() - started < 15  # on Python < 3.11.10 tarfile alone needed minutes
    assert "PAX header of 16777216 bytes exceeds the limit of 8192 bytes" in result.error["message"]
    assert leftovers(cpi) == NOTHING


def test_huge_member_name_gives_a_small_response(cpi: LibvirtCpi, tmp_path: Path) -> None:
    image = hostile_header_tgz(tmp_path / "image", tarfile.GNUTYPE_LONGNAME, 256 * MIB)
    result = cpi.run(cpi.request("create_stemcell", str(image), {}, {}, api_version=3), timeout=120)
    assert "GNU long name of 268435456 bytes exceeds the limit" in result.error["message"]
    assert len(result.stdout) < 64 * 1024
    assert leftovers(cpi) == NOTHING


def slow_image(path: Path, gib: int) -> Path:
    """A director image whose root.img is ``gib`` GiB of non-zero bytes (nothing sparse: extraction writes it all),
    made in a second from one compressed 64 MiB gzip member repeated (a multi-member gzip stream)."""
    size = gib * 1024 * MIB
    info = tarfile.TarInfo("root.img")
    info.size = size
    chunk = zlib.compressobj(1, zlib.DEFLATED, 31)
    member = chunk.compress(b"stemforge" * (64 * MIB // 9) + b"s" * (64 * MIB % 9)) + chunk.flush()
    with open(path, "wb") as out:
        out.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(size // (64 * MIB)):
            out.write(member)
        out.write(gzip.compress(bytes(1024)))
    return path


def test_call_timeout_ends_create_stemcell_and_removes_what_it_made(cpi: LibvirtCpi, tmp_path: Path) -> None:
    image = slow_image(tmp_path / "image", 4)  # extraction alone takes well over 5 s; the child is killed mid-way
    started = time.monotonic()
    result = cpi.run(cpi.request("create_stemcell", str(image), {}, {}, api_version=3,
                                 context={"call_timeout": 5}), timeout=300)
    elapsed = time.monotonic() - started
    assert "create_stemcell did not finish within 5s (call_timeout)" in result.error["message"]
    assert result.error["ok_to_retry"] is True
    assert elapsed < 40, elapsed
    assert b"abandoned call: undid temporary directory" in result.stderr
    assert b"abandoned call: undid child process" in result.stderr
    assert leftovers(cpi) == NOTHING


def test_abandoned_upload_removes_the_half_uploaded_volume(
    cpi: LibvirtCpi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog's undo during the upload step (in-process, with the libvirt stream slowed to a crawl the way a
    busy pool is: each read waits): the stream is aborted and the volume removed, and the call's scope waits."""
    from cpi import deadline
    from cpi.providers.libvirt import storage
    from cpi.providers.libvirt.provider import LibvirtProvider

    root = tmp_path / "root.img"
    root.write_bytes(os.urandom(MIB) * 32)
    real_read = storage._read_handler

    def slow_read(stream: Any, nbytes: int, fd: int) -> bytes:
        time.sleep(0.05)
        return real_read(stream, nbytes, fd)

    monkeypatch.setattr(storage, "_read_handler", slow_read)
    properties = json.loads(cpi.config_path.read_text())["cloud"]["properties"]
    provider = LibvirtProvider(properties, logging.getLogger("test"))
    volume = f"sc-{uuid.uuid4()}.raw"
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            with deadline.undo_scope() as undo:
                provider.pool.upload(volume, root, "raw", 32 * MIB, undo=undo)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    deadline_at = time.monotonic() + 30
    while not any("upload stream" in what for what in deadline.pending()):
        assert time.monotonic() < deadline_at and thread.is_alive(), "the upload never started"
        time.sleep(0.01)
    assert volume in cpi.volumes()
    undone = deadline.abandon()
    thread.join(60)
    assert undone == [f"upload stream of {volume}", f"volume {volume}"]
    assert failure, "the aborted upload must fail"
    assert volume not in cpi.volumes()
    assert leftovers(cpi) == NOTHING


def test_startup_sweep_removes_old_orphans_the_state_db_does_not_know(
    cpi: LibvirtCpi, stemcell_of_zeros: tuple[Path, str]
) -> None:
    """What a SIGKILLed create_stemcell leaves (a volume with its pending marker, a temporary directory) is swept
    by the next create_stemcell once old enough; a young one, and a volume of another CPI sharing the pool (no
    marker in this state dir), stay."""
    import libvirt

    names = {kind: f"sc-{uuid.uuid4()}.raw" for kind in ("orphan", "young", "foreign")}
    conn = libvirt.open("qemu:///system")
    try:
        pool = conn.storagePoolLookupByName(cpi.pool_name)
        for name in names.values():
            pool.createXML(f"<volume><name>{name}</name><capacity unit='bytes'>{MIB}</capacity>"
                           "<target><format type='raw'/></target></volume>", 0)
    finally:
        conn.close()
    pending = cpi.state_dir / "pending-stemcells"
    pending.mkdir(exist_ok=True)
    (pending / names["orphan"]).touch()
    (pending / names["young"]).touch()
    old_temp = cpi.state_dir / "stemforge-stemcell-killed"
    (old_temp / "deep").mkdir(parents=True)
    (old_temp / "deep" / "root.img").write_bytes(b"x" * 4096)
    long_ago = time.time() - 3 * 3600
    for path in (pending / names["orphan"], cpi.pool_path / names["foreign"], old_temp):
        os.utime(path, (long_ago, long_ago))
    image, _ = stemcell_of_zeros
    result = cpi.call("create_stemcell", str(image), {}, {}, api_version=3)
    cid = result.result
    volumes = cpi.volumes()
    assert names["orphan"] not in volumes and not old_temp.exists()
    assert names["young"] in volumes and names["foreign"] in volumes
    assert sorted(p.name for p in pending.iterdir()) == [names["young"]]
    assert f"removed orphaned stemcell volume {names['orphan']}" in result.response["log"]
    assert "removed orphaned temporary directory" in result.response["log"]
    cpi.ok("delete_stemcell", cid)
    conn = libvirt.open("qemu:///system")
    try:
        pool = conn.storagePoolLookupByName(cpi.pool_name)
        for kind in ("young", "foreign"):
            pool.storageVolLookupByName(names[kind]).delete(0)
    finally:
        conn.close()
    (pending / names["young"]).unlink()
    assert leftovers(cpi) == NOTHING


@pytest.fixture(scope="module")
def stemcell_of_zeros(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A director image whose 512 MiB raw root image is a boot sector and zeros."""
    directory = tmp_path_factory.mktemp("zeros")
    root = directory / "root.img"
    with open(root, "wb") as fh:
        fh.write(b"\xeb\x63\x90" + os.urandom(509))
        fh.truncate(512 * MIB)
    return director_image(root, directory / "image"), "raw"


def test_zero_filled_upload_stays_sparse(cpi: LibvirtCpi, stemcell_of_zeros: tuple[Path, str]) -> None:
    image, _ = stemcell_of_zeros
    cid = cpi.ok("create_stemcell", str(image), {}, {}, api_version=3)
    volume = cpi.pool_path / f"{cid}.raw"
    st = volume.stat()
    assert st.st_size == 512 * MIB
    assert st.st_blocks * 512 < 16 * MIB, f"{st.st_blocks * 512} bytes allocated for 512 MiB of zeros"
    cpi.ok("delete_stemcell", cid)
    assert leftovers(cpi) == NOTHING


def test_error_messages_are_capped_with_a_note(tmp_path: Path) -> None:
    """The one place responses are built caps every message (after scrubbing secrets)."""
    from cpi.errors import MAX_MESSAGE_CHARS, CloudError
    from cpi.main import Call, error_response

    huge = CloudError("create_stemcell: member " + "n" * (1024 * MIB // 64))
    response = error_response(Call(), huge)
    message = response["error"]["message"]
    assert len(message) <= MAX_MESSAGE_CHARS
    assert message.startswith("create_stemcell: member nnn")
    assert "[... message cut:" in message and "more characters]" in message
    assert len(huge.message) <= 64 * 1024  # the error itself keeps a bounded copy


@pytest.mark.parametrize("kind", KINDS)
def test_bare_metal_create_stemcell_refuses_hostile_root_images(
    hostile_images: dict[str, tuple[Path, str]], kind: str, tmp_path: Path
) -> None:
    from cpi.errors import CloudError
    from cpi.providers.baremetal.provider import BareMetalProvider

    provider = BareMetalProvider({"baremetal": {"state_dir": str(tmp_path / "metal")}}, logging.getLogger("test"))
    image, reason = hostile_images[kind]
    with pytest.raises(CloudError) as info:
        provider.create_stemcell(str(image), {}, {})
    assert reason in info.value.message and "root image root.img" in info.value.message
    assert list((tmp_path / "metal" / "images").iterdir()) == []
    assert not list((tmp_path / "metal").glob("stemforge-stemcell-*"))
