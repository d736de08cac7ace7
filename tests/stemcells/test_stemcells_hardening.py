"""Hostile stemcells and images (issue 12, items 1, 4 and 8): every attack from the adversarial review, refused with
its reason at every entry point of the ``stemcells`` package and the ``stemforge stemcell`` CLI.

The hostile root images are real qcow2/vmdk files made with ``qemu-img`` (a backing file on a host secret, an external
data file, LUKS encryption, a header claiming 8 EiB, an unknown format); the hostile tarballs are built header by
header. The CPI's entry points are tested with the same images (``tests/harness/hostile.py``) in
``cpi/test_cpi_bounded.py``.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stemcells.errors import StemcellError, UnsafeArchiveError
from stemcells.image_check import ImageRejected, check_image
from stemcells.manifest import StemcellManifest
from stemcells.root_image import open_root_image
from stemcells.safe_extract import MAX_EXTENDED_HEADER_BYTES, safe_extract
from stemcells.tarball import (
    _pack_root_image,
    _write_outer,
    extract_stemcell,
    read_stemcell,
    verify_stemcell,
    write_stemcell,
)
from stemforge.cli import main
from tests.harness.hostile import KINDS, hostile_header_tgz, make_hostile_images, qemu_img, tar_header

MF_FIELDS: dict[str, Any] = {
    "name": "bosh-openstack-kvm-ubuntu-jammy-go_agent",
    "version": "1.50",
    "operating_system": "ubuntu-jammy",
    "stemcell_formats": ["openstack-qcow2"],
    "cloud_properties": {"infrastructure": "openstack"},
}


# -- hostile images -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return make_hostile_images(tmp_path_factory.mktemp("hostile"))


def stemcell_around(image: Path, out: Path) -> Path:
    """A well-formed stemcell holding ``image`` as root.img, bypassing the writer's own image check (what a hostile
    builder would hand over)."""
    out.mkdir(parents=True, exist_ok=True)
    packed = out / "image"
    sha1 = _pack_root_image(image, "root.img", packed, 1_700_000_000)
    manifest = StemcellManifest(sha1=sha1, **MF_FIELDS)
    target = out / "hostile.tgz"
    _write_outer(target, manifest, packed, [], 1_700_000_000)
    packed.unlink()
    return target


@pytest.mark.parametrize("kind", KINDS)
def test_check_image_refuses_with_its_reason(hostile: dict[str, tuple[Path, str]], kind: str) -> None:
    image, reason = hostile[kind]
    with pytest.raises(ImageRejected) as info:
        check_image(image)
    assert reason in info.value.reason
    assert str(image) in info.value.message


@pytest.mark.parametrize("kind", KINDS)
def test_stemcell_create_refuses_hostile_root_image(
    hostile: dict[str, tuple[Path, str]], kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, reason = hostile[kind]
    status = main(["stemcell", "create", "--name", MF_FIELDS["name"], "--version", "1.50", "--os", "ubuntu-jammy",
                   "--format", "openstack-qcow2", "--image", str(image), "-o", str(tmp_path)])
    assert status == 1
    assert reason in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


@pytest.mark.parametrize("kind", KINDS)
def test_stemcell_verify_refuses_hostile_root_image(
    hostile: dict[str, tuple[Path, str]], kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, reason = hostile[kind]
    tgz = stemcell_around(image, tmp_path / "sc")
    report = verify_stemcell(tgz)
    failures = {check.name: check.detail for check in report.failures}
    assert list(failures) == ["root image"], failures
    assert reason in failures["root image"]
    assert main(["stemcell", "verify", str(tgz)]) == 1
    out = capsys.readouterr().out
    assert "stemcell OK" not in out and reason in out


def test_write_stemcell_enforces_the_configured_virtual_size_limit(tmp_path: Path) -> None:
    image = tmp_path / "root.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "64M")
    with pytest.raises(ImageRejected, match="virtual size 67108864 bytes exceeds the limit of 1048576 bytes"):
        write_stemcell(tmp_path, root_image=image, max_virtual_size=1024 * 1024, **MF_FIELDS)
    assert write_stemcell(tmp_path, root_image=image, **MF_FIELDS).is_file()  # the default limit allows it


def test_image_held_open_for_writing_is_refused_without_force_share(tmp_path: Path) -> None:
    image = tmp_path / "busy.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "16M")
    # qemu-io holds the image open read-write (with QEMU's image lock) for as long as it runs
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", str(image)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                check_image(image)
            except ImageRejected as exc:
                assert "lock" in exc.reason
                break
            assert time.monotonic() < deadline, "qemu-io never took the image lock"
            time.sleep(0.1)
    finally:
        holder.communicate(b"quit\n", timeout=20)
    assert check_image(image).format == "qcow2"


# -- bounded work: PAX and GNU long-name headers ---------------------------------------------------------------------


READERS: dict[str, Callable[[Path, Path], object]] = {
    "read_stemcell": lambda tgz, _work: read_stemcell(tgz),
    "extract_stemcell": lambda tgz, work: extract_stemcell(tgz, work / "dest"),
    "open_root_image": lambda tgz, work: open_root_image(tgz, work / "root"),
    "safe_extract": lambda tgz, work: safe_extract(tgz, work / "dest"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize(("kind", "size", "what"), [
    (tarfile.XHDTYPE, 4 * 1024 * 1024, "PAX header of 4194304 bytes"),
    (tarfile.GNUTYPE_LONGNAME, 64 * 1024 * 1024, "GNU long name of 67108864 bytes"),
])
def test_huge_extended_headers_are_refused_before_tarfile_parses_them(
    tmp_path: Path, reader: str, kind: bytes, size: int, what: str
) -> None:
    tgz = hostile_header_tgz(tmp_path / "evil.tgz", kind, size)
    assert tgz.stat().st_size < 100 * 1024  # a few compressed bytes...
    started = time.monotonic()
    with pytest.raises(StemcellError) as info:
        READERS[reader](tgz, tmp_path)
    assert time.monotonic() - started < 5  # ...that used to take minutes (PAX) or gigabytes (long name)
    assert what in info.value.message
    assert f"exceeds the limit of {MAX_EXTENDED_HEADER_BYTES} bytes" in info.value.message
    assert len(info.value.message) < 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz"]


def test_verify_reports_the_huge_pax_header_quickly(tmp_path: Path) -> None:
    tgz = hostile_header_tgz(tmp_path / "evil.tgz", tarfile.XHDTYPE, 4 * 1024 * 1024)
    started = time.monotonic()
    report = verify_stemcell(tgz)
    assert time.monotonic() - started < 5
    assert not report.ok
    assert "PAX header of 4194304 bytes exceeds the limit" in report.checks[0].detail


def test_many_small_pax_headers_are_bounded_in_total(tmp_path: Path) -> None:
    body = b""
    for index in range(20):  # each under the per-header limit, together over the per-archive one
        body += tar_header(f"p{index}", tarfile.XHDTYPE, 8000) + b"1" * 8000 + bytes(-8000 % 512)
        body += tar_header(f"f{index}", tarfile.REGTYPE, 0)
    (tmp_path / "many.tgz").write_bytes(gzip.compress(body + bytes(1024)))
    with pytest.raises(StemcellError, match="extended headers add up to more than 65536 bytes"):
        read_stemcell(tmp_path / "many.tgz")


def test_ordinary_pax_headers_still_work(tmp_path: Path) -> None:
    path = tmp_path / "pax.tgz"
    name = "d/" + "é" * 60 + "/" + "n" * 200  # non-ASCII and longer than ustar allows: needs a PAX header
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        info.pax_headers = {"comment": "x" * 2000}
        tar.addfile(info, io.BytesIO(b"abc"))
    files = safe_extract(path, tmp_path / "out")
    assert [f.read_bytes() for f in files] == [b"abc"]


# -- item 8: nesting, terminal escapes, symlink chains ---------------------------------------------------------------


def tgz_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def good_mf() -> bytes:
    return StemcellManifest(sha1="da39a3ee5e6b4b0d3255bfef95601890afd80709", **{
        **MF_FIELDS, "stemcell_formats": ["openstack-light"]}).to_yaml().encode()


@pytest.mark.parametrize("nesting", [
    b"cloud_properties: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"cloud_properties: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"\n",
])
def test_deeply_nested_manifest_is_a_stemcell_error_everywhere(
    tmp_path: Path, nesting: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    mf = b"name: x\nversion: '1'\nsha1: da39a3ee5e6b4b0d3255bfef95601890afd80709\noperating_system: y\n" + nesting
    tgz = tgz_with(tmp_path / "nested.tgz", [file_member("stemcell.MF", mf), file_member("image", b"")])
    with pytest.raises(StemcellError, match="nested more than 32 levels deep"):
        read_stemcell(tgz)
    with pytest.raises(StemcellError, match="nested more than 32 levels deep"):
        extract_stemcell(tgz, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    report = verify_stemcell(tgz)
    assert "nested more than 32 levels deep" in {c.name: c.detail for c in report.failures}["manifest"]
    for action in ("inspect", "verify"):
        assert main(["stemcell", action, str(tgz)]) == 1
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and "RecursionError" not in captured.err + captured.out
        assert "nested more than 32 levels deep" in captured.err + captured.out


def test_inspect_escapes_raw_bytes_and_terminal_sequences_in_member_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile_names = ["\x1b]0;pwned\x07\x1b[2J", "raw-\udcff\udcfe-bytes", "cr\rover"]
    members = [file_member("stemcell.MF", good_mf()), file_member("image", b"")]
    members += [file_member(name, b"x") for name in hostile_names]
    tgz = tmp_path / "names.tgz"
    with tarfile.open(tgz, "w:gz", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    assert main(["stemcell", "inspect", str(tgz)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\udcff" not in out
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in out
    assert "raw-\\xff\\xfe-bytes" in out
    assert main(["stemcell", "verify", str(tgz)]) == 0
    assert "\x1b" not in capsys.readouterr().out


@pytest.mark.parametrize("links", [
    [("a", "."), ("b", "a/..")],                      # each target lexically inside; together outside
    [("d", "."), ("e", "d/d/d/.."), ("f", "e/x")],    # through a chain of three
    [("l1", "l2"), ("l2", "l1")],                     # a loop
])
def test_verify_and_extraction_judge_symlink_chains_alike(tmp_path: Path, links: list[tuple[str, str]]) -> None:
    members = [file_member("stemcell.MF", good_mf()), file_member("image", b"")]
    members += [link_member(name, target) for name, target in links]
    tgz = tgz_with(tmp_path / "chain.tgz", members)
    with pytest.raises(UnsafeArchiveError) as extracted:
        extract_stemcell(tgz, tmp_path / "dest")
    report = verify_stemcell(tgz)
    archive = {c.name: c.detail for c in report.checks}["archive"]
    assert not report.ok and extracted.value.message in archive  # the same member, the same reason
    with pytest.raises(UnsafeArchiveError) as inspected:
        read_stemcell(tgz)
    assert inspected.value.message == extracted.value.message


def test_verify_refuses_members_written_through_a_symlink_like_extraction(tmp_path: Path) -> None:
    members = [file_member("stemcell.MF", good_mf()), file_member("image", b""),
               link_member("l", "."), file_member("l/x", b"x")]
    tgz = tgz_with(tmp_path / "through.tgz", members)
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract_stemcell(tgz, tmp_path / "dest")
    report = verify_stemcell(tgz)
    assert "writing through symlinks is refused" in {c.name: c.detail for c in report.failures}["archive"]


def test_safe_symlinks_still_pass_verify_and_extraction(tmp_path: Path) -> None:
    members = [file_member("stemcell.MF", good_mf()), file_member("image", b""), file_member("etc/real", b"x"),
               link_member("etc/alias", "real"), link_member("top", "etc/alias")]
    tgz = tgz_with(tmp_path / "fine.tgz", members)
    assert verify_stemcell(tgz).ok
    extracted = extract_stemcell(tgz, tmp_path / "dest")
    assert (extracted.root / "top").read_bytes() == b"x"


# -- the qemu builder's disk_image input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_qemu_builder_refuses_hostile_disk_image_sources(
    hostile: dict[str, tuple[Path, str]], kind: str, tmp_path: Path
) -> None:
    from builders.core import BuildError
    from tests.harness.qemu import make_ctx, qemu_pids, run_build

    image, reason = hostile[kind]
    out = tmp_path / "out"
    with pytest.raises(BuildError) as info:
        run_build({"iso_url": str(image), "iso_checksum": "none", "disk_image": True, "communicator": "none",
                   "output_directory": str(out)}, make_ctx(tmp_path))
    assert f"disk_image source {image} refused" in str(info.value) and reason in str(info.value)
    assert not out.exists() and qemu_pids(str(out)) == []


def test_cli_virtual_size_limit_is_configurable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "root.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "3G")
    create = ["stemcell", "create", "--name", MF_FIELDS["name"], "--version", "1.50", "--os", "ubuntu-jammy",
              "--format", "openstack-qcow2", "--image", str(image), "-o", str(tmp_path)]
    assert main([*create, "--max-virtual-gib", "2"]) == 1
    assert "virtual size 3221225472 bytes exceeds the limit of 2147483648 bytes" in capsys.readouterr().err
    assert main(create) == 0
    tgz = Path(capsys.readouterr().out.strip())
    assert main(["stemcell", "verify", str(tgz)]) == 0
    assert main(["stemcell", "verify", "--max-virtual-gib", "2", str(tgz)]) == 1
    assert "exceeds the limit of 2147483648 bytes" in capsys.readouterr().out


def test_check_image_follows_a_symlink_to_a_file_but_refuses_fifos(tmp_path: Path) -> None:
    image = tmp_path / "root.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "16M")
    (tmp_path / "link.qcow2").symlink_to(image)
    assert check_image(tmp_path / "link.qcow2").format == "qcow2"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ImageRejected, match="is not a regular file"):
        check_image(fifo)
    assert time.monotonic() - started < 5  # never blocks opening it
