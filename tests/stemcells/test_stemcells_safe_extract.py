"""Safe extraction: every attack is refused by name and leaves nothing behind; good archives extract fully."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from stemcells.errors import StemcellError, UnsafeArchiveError
from stemcells.safe_extract import ExtractLimits, safe_extract


def entry(name: str, data: bytes = b"data", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def make_tar(path: Path, entries: list[tuple], *, gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A directory holding only the destination's parent; the archive lives elsewhere."""
    (tmp_path / "work").mkdir()
    (tmp_path / "archives").mkdir()
    return tmp_path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_rejected(work: Path, entries: list[tuple], member: str, reason: str, **kwargs: object) -> None:
    archive = make_tar(work / "archives" / "evil.tgz", entries)
    dest = work / "work" / "dest"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, dest, **kwargs)  # type: ignore[arg-type]
    assert info.value.member == member
    assert reason in info.value.reason
    assert f"member {member!r} rejected" in str(info.value)
    assert listing(work / "work") == [], "a refused archive must leave nothing behind"
    assert listing(work) == ["archives", "archives/evil.tgz", "work"]


# -- attacks ---------------------------------------------------------------------------------------------------


def test_absolute_path_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("ok.txt"), entry("/tmp/evil")], "/tmp/evil", "absolute path")


def test_dotdot_path_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("ok.txt"), entry("../x")], "../x", "'..'")


def test_dotdot_in_the_middle_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("a/../../x")], "a/../../x", "'..'")


def test_symlink_escaping_is_rejected(work: Path) -> None:
    assert_rejected(
        work, [entry("d", kind=tarfile.DIRTYPE), entry("d/l", kind=tarfile.SYMTYPE, link="../../x")], "d/l", "escapes"
    )


def test_absolute_symlink_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("l", kind=tarfile.SYMTYPE, link="/etc/passwd")], "l", "absolute")


def test_symlink_chain_escaping_is_rejected(work: Path) -> None:
    # Each target is lexically inside, but "a" is the root, so "a/.." is the root's parent.
    entries = [entry("a", kind=tarfile.SYMTYPE, link="."), entry("b", kind=tarfile.SYMTYPE, link="a/..")]
    archive = make_tar(work / "archives" / "evil.tgz", entries)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, work / "work" / "dest")
    assert info.value.member == "b"
    assert listing(work / "work") == []


def test_writing_through_a_symlink_is_rejected(work: Path) -> None:
    entries = [
        entry("sub", kind=tarfile.DIRTYPE),
        entry("l", kind=tarfile.SYMTYPE, link="sub"),
        entry("l/file"),
    ]
    assert_rejected(work, entries, "l/file", "symlink")


def test_hardlink_escaping_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("h", kind=tarfile.LNKTYPE, link="../../etc/passwd")], "h", "escapes")


def test_absolute_hardlink_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("h", kind=tarfile.LNKTYPE, link="/etc/passwd")], "h", "outside the archive")


def test_hardlink_to_a_missing_member_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("h", kind=tarfile.LNKTYPE, link="nothing")], "h", "not a regular file")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(tarfile.CHRTYPE, "device nodes"), (tarfile.BLKTYPE, "device nodes"), (tarfile.FIFOTYPE, "FIFOs")],
)
def test_device_and_fifo_members_are_rejected(work: Path, kind: bytes, reason: str) -> None:
    assert_rejected(work, [entry("ok.txt"), entry("dev/sda", kind=kind)], "dev/sda", reason)


def test_oversized_member_is_rejected(work: Path) -> None:
    limits = ExtractLimits(max_member_bytes=10)
    assert_rejected(work, [entry("small", b"123"), entry("big", b"x" * 11)], "big", "exceeds", limits=limits)


def test_total_size_limit(work: Path) -> None:
    limits = ExtractLimits(max_total_bytes=10)
    assert_rejected(work, [entry("a", b"x" * 6), entry("b", b"x" * 6)], "b", "exceed the limit", limits=limits)


def test_too_many_members(work: Path) -> None:
    limits = ExtractLimits(max_members=2)
    entries = [entry("a"), entry("b"), entry("c")]
    assert_rejected(work, entries, "c", "more than 2 members", limits=limits)


def test_duplicate_file_is_rejected(work: Path) -> None:
    assert_rejected(work, [entry("a", b"one"), entry("a", b"two")], "a", "duplicate")


def test_names_outside_allowed_names_are_rejected(work: Path) -> None:
    allowed = ("root.img",)
    assert_rejected(work, [entry("root.img"), entry("extra")], "extra", "unexpected member", allowed_names=allowed)


def test_before_commit_can_abort_and_nothing_is_published(work: Path) -> None:
    archive = make_tar(work / "archives" / "ok.tgz", [entry("a")])

    def refuse(tree: Path) -> None:
        assert (tree / "a").read_bytes() == b"data"
        raise StemcellError("refused by caller")

    with pytest.raises(StemcellError, match="refused by caller"):
        safe_extract(archive, work / "work" / "dest", before_commit=refuse)
    assert listing(work / "work") == []


def test_corrupt_archive_is_an_error_and_leaves_nothing(work: Path) -> None:
    good = make_tar(work / "archives" / "good.tgz", [entry("a", os.urandom(4096))])
    broken = work / "archives" / "broken.tgz"
    broken.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(StemcellError, match="broken.tgz"):
        safe_extract(broken, work / "work" / "dest")
    assert listing(work / "work") == []


# -- destination rules -------------------------------------------------------------------------------------------


def test_non_empty_destination_is_refused(work: Path) -> None:
    archive = make_tar(work / "archives" / "ok.tgz", [entry("a")])
    dest = work / "work" / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(StemcellError, match="not empty"):
        safe_extract(archive, dest)
    assert listing(work / "work") == ["dest", "dest/keep"]


def test_empty_destination_directory_is_used(work: Path) -> None:
    archive = make_tar(work / "archives" / "ok.tgz", [entry("a")])
    dest = work / "work" / "dest"
    dest.mkdir()
    assert safe_extract(archive, dest) == [dest / "a"]


def test_missing_parent_is_refused(work: Path) -> None:
    archive = make_tar(work / "archives" / "ok.tgz", [entry("a")])
    with pytest.raises(StemcellError, match="does not exist"):
        safe_extract(archive, work / "work" / "no" / "dest")


# -- good archives -----------------------------------------------------------------------------------------------


def test_good_archive_extracts_files_dirs_links_and_modes(work: Path) -> None:
    entries = [
        entry(".", kind=tarfile.DIRTYPE),
        entry("./bin", kind=tarfile.DIRTYPE),
        entry("./bin/tool", b"#!/bin/sh\n"),
        entry("./docs/readme.txt", b"hello"),  # parent directory created implicitly
        entry("./docs/latest", kind=tarfile.SYMTYPE, link="readme.txt"),
        entry("./docs/copy", kind=tarfile.LNKTYPE, link="./docs/readme.txt"),
    ]
    entries[2][0].mode = 0o4755  # set-uid must be dropped
    archive = make_tar(work / "archives" / "good.tar", entries, gz=False)
    dest = work / "work" / "dest"
    files = safe_extract(archive, dest)
    assert files == [dest / "bin/tool", dest / "docs/readme.txt"]
    assert listing(dest) == ["bin", "bin/tool", "docs", "docs/copy", "docs/latest", "docs/readme.txt"]
    assert (dest / "docs/latest").read_text() == "hello"
    assert os.readlink(dest / "docs/latest") == "readme.txt"
    assert (dest / "docs/copy").stat().st_ino == (dest / "docs/readme.txt").stat().st_ino
    assert (dest / "bin/tool").stat().st_mode & 0o7777 == 0o755
    assert listing(work / "work") == ["dest", *(f"dest/{name}" for name in listing(dest))]


def test_zero_runs_become_holes(work: Path) -> None:
    size = 8 * 1024 * 1024
    data = b"head" + bytes(size) + b"tail"
    archive = make_tar(work / "archives" / "sparse.tgz", [entry("disk.raw", data)])
    dest = work / "work" / "dest"
    safe_extract(archive, dest)
    extracted = dest / "disk.raw"
    assert extracted.read_bytes() == data
    assert extracted.stat().st_blocks * 512 < size // 2, "long zero runs should not be allocated"


@pytest.mark.parametrize(
    ("entries", "member"),
    [
        ([entry("/abs")], "/abs"),
        ([entry("../x")], "../x"),
        ([entry("l", kind=tarfile.SYMTYPE, link="../x")], "l"),
        ([entry("a", kind=tarfile.SYMTYPE, link="."), entry("b", kind=tarfile.SYMTYPE, link="a/..")], "b"),
        ([entry("h", kind=tarfile.LNKTYPE, link="../x")], "h"),
        ([entry("dev", kind=tarfile.CHRTYPE)], "dev"),
    ],
)
def test_own_checks_suffice_without_tarfile_data_filter(
    work: Path, monkeypatch: pytest.MonkeyPatch, entries: list[tuple], member: str
) -> None:
    """tarfile.data_filter is only a second opinion: with it gone every attack is still refused."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = make_tar(work / "archives" / "evil.tgz", entries)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, work / "work" / "dest")
    assert info.value.member == member
    assert listing(work / "work") == []


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_compression_is_detected_by_magic(work: Path, mode: str) -> None:
    archive = work / "archives" / "any-name"
    info, data = entry("root.img", b"payload")
    with tarfile.open(archive, mode) as tar:  # type: ignore[call-overload]
        tar.addfile(info, io.BytesIO(data))
    dest = work / "work" / "dest"
    assert safe_extract(archive, dest) == [dest / "root.img"]
    assert (dest / "root.img").read_bytes() == b"payload"
