"""Writing, reading, verifying and extracting stemcell tarballs with real files (and a real qcow2)."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stemcells.errors import StemcellError, UnsafeArchiveError
from stemcells.manifest import EMPTY_SHA1, StemcellManifest
from stemcells.root_image import open_root_image
from stemcells.tarball import (
    detect_image_format,
    extract_stemcell,
    read_stemcell,
    verify_stemcell,
    write_stemcell,
)
from stemforge_base.hashing import sha256_file

OPENSTACK: dict[str, Any] = {
    "name": "bosh-openstack-kvm-ubuntu-jammy-go_agent",
    "version": "1.50",
    "operating_system": "ubuntu-jammy",
    "stemcell_formats": ["openstack-qcow2"],
    "cloud_properties": {
        "infrastructure": "openstack",
        "architecture": "x86_64",
        "root_device_name": "/dev/sda1",
        "disk": 5120,
        "disk_format": "qcow2",
    },
}
OPENSTACK_RAW: dict[str, Any] = {
    **OPENSTACK,
    "stemcell_formats": ["openstack-raw"],
    "cloud_properties": {**OPENSTACK["cloud_properties"], "disk_format": "raw"},
}
AWS_LIGHT: dict[str, Any] = {
    "name": "bosh-aws-xen-hvm-ubuntu-jammy-go_agent",
    "version": "1.50",
    "operating_system": "ubuntu-jammy",
    "stemcell_formats": ["aws-light"],
    "cloud_properties": {"infrastructure": "aws", "ami": {"us-east-1": "ami-0abc", "eu-west-1": "ami-0def"}},
}


@pytest.fixture(scope="module")
def qcow2_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img (qemu-utils) is not installed")
    path = tmp_path_factory.mktemp("images") / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    path = tmp_path / "root.raw"
    path.write_bytes(b"\xeb\x63\x90" + bytes(1024 * 1024) + b"end")
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def heavy(out: Path, image: Path, **overrides: Any) -> Path:
    """Write a heavy OpenStack stemcell whose formats match the image (qcow2 or raw)."""
    base = OPENSTACK if image.is_file() and detect_image_format(image) == "qcow2" else OPENSTACK_RAW
    fields: dict[str, Any] = {**base, **overrides}
    return write_stemcell(out, root_image=image, packages_txt="ii  bash  5.1\n", **fields)


def repack(source: Path, target: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a stemcell tarball, replacing (bytes) or dropping (None) the named members."""
    with tarfile.open(source, "r:gz") as src, tarfile.open(target, "w:gz") as dst:
        for info in src.getmembers():
            if info.name in change:
                data = change[info.name]
                if data is None:
                    continue
                info.size = len(data)
                dst.addfile(info, io.BytesIO(data))
            else:
                dst.addfile(info, src.extractfile(info))
    return target


def member_bytes(tgz: Path, name: str) -> bytes:
    with tarfile.open(tgz, "r:gz") as tar:
        data = tar.extractfile(name)
        assert data is not None
        return data.read()


def image_tar(entries: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_info(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- heavy round trip ------------------------------------------------------------------------------------------


def test_heavy_qcow2_round_trip(out: Path, tmp_path: Path, qcow2_image: Path) -> None:
    path = heavy(out, qcow2_image)
    assert path == out / "bosh-stemcell-1.50-openstack-kvm-ubuntu-jammy-go_agent.tgz"
    assert listing(out) == [path.name], "no temporary files may remain"

    stemcell = read_stemcell(path)
    assert stemcell.manifest.version == "1.50"
    assert not stemcell.is_light
    assert [m.name for m in stemcell.members] == ["stemcell.MF", "image", "packages.txt", "dev_tools_file_list.txt"]
    image_bytes = member_bytes(path, "image")
    assert stemcell.image_size == len(image_bytes)
    assert stemcell.manifest.sha1 == hashlib.sha1(image_bytes).hexdigest()
    assert member_bytes(path, "packages.txt") == b"ii  bash  5.1\n"

    report = verify_stemcell(path)
    assert report.ok, report.failures
    assert [c.name for c in report.checks] == ["archive", "members", "manifest", "image sha1", "root image"]
    assert (report.root_image, report.image_format) == ("root.img", "qcow2")
    assert "virtual size 64.0 MiB" in report.checks[-1].detail

    extracted = extract_stemcell(path, tmp_path / "extracted")
    assert extracted.manifest == stemcell.manifest
    assert extracted.image_path.read_bytes() == image_bytes
    root = extracted.extract_root_image()
    assert root == tmp_path / "extracted" / "root.img"
    assert detect_image_format(root) == "qcow2"
    assert root.read_bytes() == qcow2_image.read_bytes()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(root)], check=True, capture_output=True, text=True)
    assert '"format": "qcow2"' in info.stdout


def test_open_root_image_from_the_image_file_the_director_hands_over(
    out: Path, tmp_path: Path, qcow2_image: Path
) -> None:
    path = heavy(out, qcow2_image)
    image_file = tmp_path / "director-image"
    image_file.write_bytes(member_bytes(path, "image"))
    dest = tmp_path / "cpi" / "stemcell-1"
    root = open_root_image(image_file, dest)
    assert root == dest / "root.img"
    assert detect_image_format(root) == "qcow2"
    assert listing(tmp_path / "cpi") == ["stemcell-1", "stemcell-1/root.img"]
    with pytest.raises(StemcellError, match="already exists"):
        open_root_image(image_file, dest)
    assert listing(tmp_path / "cpi") == ["stemcell-1", "stemcell-1/root.img"]


def test_raw_image_as_disk_raw(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(
        out,
        raw_image,
        name="bosh-google-kvm-ubuntu-jammy-go_agent",
        stemcell_formats=["google-rawdisk"],
        cloud_properties={"infrastructure": "google"},
        root_image_name="disk.raw",
    )
    report = verify_stemcell(path)
    assert report.ok, report.failures
    assert (report.root_image, report.image_format) == ("disk.raw", "raw")
    root = extract_stemcell(path, tmp_path / "x").extract_root_image(tmp_path / "disk")
    assert root.name == "disk.raw"
    assert detect_image_format(root) == "raw"
    assert root.read_bytes() == raw_image.read_bytes()


def test_equal_inputs_give_identical_tarballs(tmp_path: Path, raw_image: Path) -> None:
    first = write_stemcell(tmp_path / "a.tgz", root_image=raw_image, mtime=1_700_000_000, **OPENSTACK_RAW)
    second = write_stemcell(tmp_path / "b.tgz", root_image=raw_image, mtime=1_700_000_000, **OPENSTACK_RAW)
    assert first.read_bytes() == second.read_bytes()


def test_sboms_and_dev_tools_are_stored(out: Path, tmp_path: Path, raw_image: Path) -> None:
    spdx = tmp_path / "sbom.spdx.json"
    spdx.write_text('{"spdxVersion": "SPDX-2.3"}')
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={}, sbom_files=[spdx],
                 dev_tools_file_list="/usr/bin/gcc\n")  # fmt: skip
    assert member_bytes(path, "sbom.spdx.json") == spdx.read_bytes()
    assert member_bytes(path, "dev_tools_file_list.txt") == b"/usr/bin/gcc\n"
    assert verify_stemcell(path).ok


# -- light round trip ------------------------------------------------------------------------------------------


def test_light_round_trip(out: Path, tmp_path: Path) -> None:
    path = write_stemcell(out, **AWS_LIGHT)
    assert path.name == "light-bosh-stemcell-1.50-aws-xen-hvm-ubuntu-jammy-go_agent.tgz"
    stemcell = read_stemcell(path)
    assert stemcell.is_light
    assert stemcell.image_size == 0
    assert stemcell.manifest.sha1 == EMPTY_SHA1
    assert stemcell.manifest.image_id_for_region("eu-west-1") == "ami-0def"
    report = verify_stemcell(path)
    assert report.ok, report.failures
    assert "light stemcell" in report.checks[-1].detail
    extracted = extract_stemcell(path, tmp_path / "x")
    assert extracted.is_light
    assert extracted.image_path.stat().st_size == 0
    with pytest.raises(StemcellError, match="light stemcell"):
        extracted.extract_root_image()


# -- verification failures -------------------------------------------------------------------------------------


def test_sha1_mismatch_is_detected(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    manifest = read_stemcell(path).manifest.replace(sha1="0" * 40)
    bad = repack(path, tmp_path / "bad.tgz", {"stemcell.MF": manifest.to_yaml().encode()})
    report = verify_stemcell(bad)
    assert not report.ok
    assert [c.name for c in report.failures] == ["image sha1"]
    assert f"but stemcell.MF says {'0' * 40}" in report.failures[0].detail
    with pytest.raises(StemcellError, match="sha1 of image is"):
        extract_stemcell(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tgz", "out", "root.raw"]


def test_tampered_image_is_detected(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    other = image_tar([file_info("root.img", b"tampered")])
    bad = repack(path, tmp_path / "bad.tgz", {"image": other})
    assert [c.name for c in verify_stemcell(bad).failures] == ["image sha1"]


def test_missing_image_member(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image)
    bad = repack(path, tmp_path / "bad.tgz", {"image": None})
    report = verify_stemcell(bad)
    failed = {c.name: c.detail for c in report.failures}
    assert failed["members"] == "missing required member(s): image"
    assert "image sha1" in failed
    with pytest.raises(StemcellError, match="has no image file"):
        extract_stemcell(bad, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_invalid_manifest_names_field_and_tarball(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image)
    text = member_bytes(path, "stemcell.MF").replace(b"api_version: 3", b"api_version: three")
    bad = repack(path, tmp_path / "bad.tgz", {"stemcell.MF": text})
    with pytest.raises(StemcellError) as info:
        read_stemcell(bad)
    assert info.value.message.startswith(f"stemcell.MF in {bad}: field 'api_version' must be a positive integer")
    report = verify_stemcell(bad)
    assert "field 'api_version'" in {c.name: c.detail for c in report.failures}["manifest"]


def test_heavy_with_light_format_is_caught_by_verify(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    manifest = read_stemcell(path).manifest.replace(stemcell_formats=["aws-light"])
    bad = repack(path, tmp_path / "bad.tgz", {"stemcell.MF": manifest.to_yaml().encode()})
    failures = {c.name: c.detail for c in verify_stemcell(bad).failures}
    assert failures == {"root image": f"light stemcell, but image is {read_stemcell(bad).image_size} bytes, not empty"}


def test_format_mismatch_is_refused_by_the_writer(out: Path, raw_image: Path) -> None:
    with pytest.raises(StemcellError, match="root image is raw but stemcell_formats say qcow2"):
        write_stemcell(out, root_image=raw_image, **OPENSTACK)
    with pytest.raises(StemcellError, match="root image is raw but cloud_properties.disk_format is qcow2"):
        write_stemcell(out, root_image=raw_image, **{**OPENSTACK, "stemcell_formats": ["openstack-raw"]})
    assert listing(out) == []


def test_format_mismatch_is_caught_by_verify(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image)
    manifest = read_stemcell(path).manifest
    wrong = manifest.replace(stemcell_formats=["openstack-qcow2"], cloud_properties={})
    bad = repack(path, tmp_path / "bad.tgz", {"stemcell.MF": wrong.to_yaml().encode()})
    failures = {c.name: c.detail for c in verify_stemcell(bad).failures}
    assert failures == {"root image": "root image is raw but stemcell_formats say qcow2"}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([file_info("root.img", b"x"), file_info("extra", b"y")], "image holds 'extra'"),
        ([file_info("notes.txt", b"x")], "image holds 'notes.txt'"),
        ([file_info("../root.img", b"x")], "member '../root.img' rejected"),
        ([], "image holds no root image"),
    ],
)
def test_image_must_hold_exactly_a_root_image(
    out: Path, tmp_path: Path, raw_image: Path, entries: list[tuple[tarfile.TarInfo, bytes]], expected: str
) -> None:
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    inner = image_tar(entries)
    manifest = read_stemcell(path).manifest.replace(sha1=hashlib.sha1(inner).hexdigest())
    bad = repack(path, tmp_path / "bad.tgz", {"image": inner, "stemcell.MF": manifest.to_yaml().encode()})
    failures = {c.name: c.detail for c in verify_stemcell(bad).failures}
    assert list(failures) == ["root image"]
    assert expected in failures["root image"]


def test_image_that_is_not_a_tar(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image)
    garbage = b"definitely not a tar archive" * 10
    manifest = read_stemcell(path).manifest.replace(sha1=hashlib.sha1(garbage).hexdigest())
    bad = repack(path, tmp_path / "bad.tgz", {"image": garbage, "stemcell.MF": manifest.to_yaml().encode()})
    failures = {c.name: c.detail for c in verify_stemcell(bad).failures}
    assert list(failures) == ["root image"]
    assert "not a gzipped tar" in failures["root image"]


def test_unsafe_outer_member(out: Path, tmp_path: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    bad = tmp_path / "bad.tgz"
    shutil.copy(path, bad)
    with tarfile.open(bad, "r:gz") as src:
        members = [(info, src.extractfile(info).read()) for info in src.getmembers()]  # type: ignore[union-attr]
    evil = tarfile.TarInfo("../../evil")
    evil.size = 4
    with tarfile.open(bad, "w:gz") as dst:
        for info, data in [*members, (evil, b"evil")]:
            dst.addfile(info, io.BytesIO(data))
    report = verify_stemcell(bad)
    assert [c.name for c in report.failures] == ["archive"]
    assert "member '../../evil' rejected" in report.failures[0].detail
    with pytest.raises(UnsafeArchiveError, match="'../../evil'"):
        read_stemcell(bad)
    with pytest.raises(UnsafeArchiveError, match="'../../evil'"):
        extract_stemcell(bad, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tgz", "out", "root.raw"]


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(StemcellError, match="not a readable stemcell tarball"):
        read_stemcell(junk)
    report = verify_stemcell(junk)
    assert not report.ok
    assert report.checks[0].name == "archive"
    with pytest.raises(StemcellError, match="cannot read"):
        read_stemcell(tmp_path / "missing.tgz")


def test_tarball_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.tgz"
    with tarfile.open(path, "w:gz") as tar:
        info, data = file_info("image", b"")
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StemcellError, match="has no stemcell.MF"):
        read_stemcell(path)


def test_dot_slash_member_names_are_accepted(out: Path, tmp_path: Path, raw_image: Path) -> None:
    """Builders that run ``tar czf stemcell.tgz -C dir .`` store ``./stemcell.MF``; that is a valid stemcell."""
    path = heavy(out, raw_image, stemcell_formats=["openstack-raw"], cloud_properties={})
    staged = tmp_path / "staged"
    staged.mkdir()
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(staged, filter="data")
    dotted = tmp_path / "dotted.tgz"
    with tarfile.open(dotted, "w:gz") as tar:
        tar.add(staged, arcname=".")
    assert read_stemcell(dotted).member("image") is not None
    assert verify_stemcell(dotted).ok


# -- writer contracts ------------------------------------------------------------------------------------------


def test_invalid_fields_fail_before_any_work(out: Path, raw_image: Path) -> None:
    with pytest.raises(StemcellError, match="field 'version'"):
        heavy(out, raw_image, version="1 50")
    assert listing(out) == []


def test_missing_root_image_leaves_nothing(out: Path, tmp_path: Path) -> None:
    with pytest.raises(StemcellError, match="does not exist"):
        heavy(out, tmp_path / "missing.img")
    assert listing(out) == []


def test_light_format_with_root_image_is_refused(out: Path, raw_image: Path) -> None:
    with pytest.raises(StemcellError, match="aws-light are for light stemcells"):
        write_stemcell(out, root_image=raw_image, **AWS_LIGHT)
    assert listing(out) == []


def test_existing_output_is_kept_unless_overwrite(out: Path, raw_image: Path) -> None:
    path = write_stemcell(out, **AWS_LIGHT)
    before = path.read_bytes()
    with pytest.raises(StemcellError, match="already exists"):
        write_stemcell(out, **AWS_LIGHT)
    assert path.read_bytes() == before
    assert write_stemcell(out, overwrite=True, **AWS_LIGHT) == path
    assert listing(out) == [path.name]


def test_output_must_be_a_directory_or_tgz_path(tmp_path: Path) -> None:
    with pytest.raises(StemcellError, match="neither an existing directory"):
        write_stemcell(tmp_path / "nowhere", **AWS_LIGHT)


def test_library_prints_nothing_and_reports_progress_through_the_callback(
    out: Path, raw_image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps: list[str] = []
    path = heavy(out, raw_image, progress=steps.append)
    verify_stemcell(path, progress=steps.append)
    assert capsys.readouterr() == ("", "")
    assert any(step.startswith("Packing") for step in steps)
    assert any(step.startswith("Hashing image") for step in steps)


def test_open_root_image_refuses_an_empty_image(tmp_path: Path) -> None:
    empty = tmp_path / "image"
    empty.touch()
    with pytest.raises(StemcellError, match="light stemcell"):
        open_root_image(empty, tmp_path / "dest")


def test_open_root_image_rejects_unsafe_inner_members_and_leaves_nothing(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(image_tar([file_info("root.img", b"QFI\xfb"), file_info("../../escape", b"x")]))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError) as info:
        open_root_image(image, dest)
    assert info.value.member == "../../escape"
    assert listing(dest) == []


def test_open_root_image_rejects_two_root_images(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(image_tar([file_info("root.img", b"a"), file_info("disk.raw", b"b")]))
    with pytest.raises(StemcellError, match="exactly one root image, found disk.raw, root.img"):
        open_root_image(image, tmp_path / "dest")
    assert listing(tmp_path / "dest") == []


def test_manifest_written_matches_loaded_manifest(out: Path, raw_image: Path) -> None:
    path = heavy(out, raw_image)
    text = member_bytes(path, "stemcell.MF").decode()
    assert "version: '1.50'" in text
    assert StemcellManifest.from_yaml(text) == read_stemcell(path).manifest


@pytest.mark.timeout(120)
def test_highly_compressible_image_streams_in_bounded_steps(out: Path, tmp_path: Path) -> None:
    """A mostly-empty raw disk compresses about a thousand to one, the case where tarfile's own r|gz
    decompression builds huge buffers; the round trip must stay quick, exact and sparse."""
    image = tmp_path / "sparse.raw"
    with open(image, "wb") as disk:
        disk.truncate(256 * 1024 * 1024)
        disk.seek(100 * 1024 * 1024)
        disk.write(b"\xeb\x63\x90 data in the middle")
    path = heavy(out, image)
    report = verify_stemcell(path)
    assert report.ok, report.failures
    root = extract_stemcell(path, tmp_path / "x").extract_root_image()
    assert root.stat().st_size == image.stat().st_size
    assert root.stat().st_blocks * 512 < 16 * 1024 * 1024, "the extracted raw image should stay sparse"
    assert sha256_file(root) == sha256_file(image)
