"""manifest, checksum, compress and stemcell post-processors on real files: Packer's formats byte for byte where
Packer's are deterministic, archives read back with the standard tools, stemcells read back with
``stemcells.tarball``."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import struct
import subprocess
import tarfile
import threading
import uuid
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from builders.core import Artifact, BuildContext, BuildError, ConfigError
from builders.image_repo import serve_in_thread
from builders.postprocessors.checksum import ChecksumPostProcessor
from builders.postprocessors.compress import CompressPostProcessor, detect_format
from builders.postprocessors.fanout import FanoutPostProcessor
from builders.postprocessors.manifest import ManifestPostProcessor, go_json
from builders.postprocessors.stemcell import StemcellPostProcessor
from stemcells.tarball import read_stemcell, verify_stemcell
from stemforge_base.steps import Cancelled
from tests.harness.recording_ui import RecordingUi

MIB = 1024 * 1024


def ctx_for(tmp_path: Path, *, force: bool = False, run_uuid: str | None = None, name: str = "img",
            build_type: str = "qemu") -> BuildContext:
    return BuildContext(build_name=name, build_type=build_type, ui=RecordingUi(), cancel=threading.Event(),
                        template_dir=tmp_path, run_uuid=run_uuid or str(uuid.uuid4()), force=force)


def data_file(path: Path, size: int, seed: int = 0) -> Path:
    block = hashlib.sha512(str(seed).encode()).digest()
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return path


@pytest.fixture
def in_tmp(tmp_path: Path) -> Any:
    """Run in ``tmp_path`` (Packer's relative outputs are relative to the working directory)."""
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


# -- manifest -------------------------------------------------------------------------------------------------


def test_manifest_is_packers_format_byte_for_byte(in_tmp: Path) -> None:
    (in_tmp / "out").mkdir()
    image = data_file(in_tmp / "out" / "disk.qcow2", 3)
    ctx = ctx_for(in_tmp, run_uuid="6a3a4c3e-0000-4000-8000-000000000001")
    artifact = Artifact("x", "img", "qemu", [Path("out/disk.qcow2")], "site-b:id2,site-a:id1")
    pp = ManifestPostProcessor({"strip_time": True, "custom_data": {"b": "<x>&", "a": "1"}}, ctx)
    out, keep = pp.post_process(artifact)
    assert out is artifact and keep is True
    expected = (
        '{\n  "builds": [\n    {\n      "name": "img",\n      "builder_type": "qemu",\n'
        '      "files": [\n        {\n          "name": "out/disk.qcow2",\n          "size": 3\n        }\n      ],\n'
        '      "artifact_id": "site-b:id2,site-a:id1",\n'
        '      "packer_run_uuid": "6a3a4c3e-0000-4000-8000-000000000001",\n'
        '      "custom_data": {\n        "a": "1",\n        "b": "\\u003cx\\u003e\\u0026"\n      }\n    }\n  ],\n'
        '  "last_run_uuid": "6a3a4c3e-0000-4000-8000-000000000001"\n}'
    )
    assert (in_tmp / "packer-manifest.json").read_text() == expected
    assert image.stat().st_size == 3
    assert not (in_tmp / "packer-manifest.json.lock").exists()


def test_manifest_appends_keeps_build_time_strips_path_and_force_starts_afresh(in_tmp: Path) -> None:
    data_file(in_tmp / "a.raw", 10)
    first = ctx_for(in_tmp, run_uuid="run-1")
    ManifestPostProcessor({"output": "m/manifest.json"}, first).post_process(
        Artifact("x", "img", "qemu", [in_tmp / "a.raw", in_tmp / "missing.raw"], "id-1"))
    second = ctx_for(in_tmp, run_uuid="run-2", name="other", build_type="file")
    ManifestPostProcessor({"output": "m/manifest.json", "strip_path": True}, second).post_process(
        Artifact("x", "other", "file", [in_tmp / "a.raw"], "id-2"))
    data = json.loads((in_tmp / "m" / "manifest.json").read_text())
    assert [b["name"] for b in data["builds"]] == ["img", "other"]
    assert data["last_run_uuid"] == "run-2"
    assert data["builds"][0]["files"] == [{"name": str(in_tmp / "a.raw"), "size": 10},
                                          {"name": str(in_tmp / "missing.raw"), "size": 0}]
    assert data["builds"][1]["files"] == [{"name": "a.raw", "size": 10}]
    assert isinstance(data["builds"][0]["build_time"], int) and data["builds"][0]["build_time"] > 1_600_000_000
    assert data["builds"][0]["custom_data"] is None
    # -force from a new run truncates; the same run keeps appending
    third = ctx_for(in_tmp, run_uuid="run-3", force=True)
    ManifestPostProcessor({"output": "m/manifest.json"}, third).post_process(Artifact("x", "img", "qemu", [], "id-3"))
    ManifestPostProcessor({"output": "m/manifest.json"}, third).post_process(Artifact("x", "img", "qemu", [], "id-4"))
    data = json.loads((in_tmp / "m" / "manifest.json").read_text())
    assert [b["artifact_id"] for b in data["builds"]] == ["id-3", "id-4"]
    assert data["builds"][0]["files"] is None


def test_manifest_parallel_builds_in_one_process_lose_nothing(in_tmp: Path) -> None:
    ctx = ctx_for(in_tmp, run_uuid="same-run")
    threads = [threading.Thread(target=ManifestPostProcessor({}, ctx).post_process,
                                args=(Artifact("x", "img", "qemu", [], f"id-{i}"),)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    data = json.loads((in_tmp / "packer-manifest.json").read_text())
    assert sorted(b["artifact_id"] for b in data["builds"]) == sorted(f"id-{i}" for i in range(16))


def test_manifest_rejects_unknown_keys_and_unparsable_manifests(in_tmp: Path) -> None:
    ctx = ctx_for(in_tmp)
    with pytest.raises(ConfigError, match="unknown configuration key: 'outptu'"):
        ManifestPostProcessor({"outptu": "x"}, ctx).prepare()
    (in_tmp / "packer-manifest.json").write_text("{not json")
    with pytest.raises(BuildError, match="Unable to parse content from packer-manifest.json"):
        ManifestPostProcessor({}, ctx).post_process(Artifact("x", "img", "qemu", [], "id"))
    assert (in_tmp / "packer-manifest.json").read_text() == "{not json"


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>\u2028é"}) == '{\n  "a": "\\u003c\\u0026\\u003e\\u2028é"\n}'
    assert go_json({"e": {}, "l": [], "n": None}) == '{\n  "e": {},\n  "l": [],\n  "n": null\n}'


# -- checksum -------------------------------------------------------------------------------------------------


def test_checksum_writes_packers_files(in_tmp: Path) -> None:
    one = data_file(in_tmp / "disk-1.raw", 3 * MIB + 7, seed=1)
    two = data_file(in_tmp / "disk-2.raw", 1000, seed=2)
    ctx = ctx_for(in_tmp)
    pp = ChecksumPostProcessor({"checksum_types": ["sha256", "md5", "sha512"]}, ctx)
    pp.prepare()
    out, keep = pp.post_process(Artifact("x", "img", "qemu", [one, two], "id"))
    assert keep is True and out.artifact_id == "" and out.builder_id == "packer.post-processor.checksum"
    for kind in ("sha256", "md5", "sha512"):
        target = in_tmp / f"packer_img_qemu_{kind}.checksum"
        lines = [f"{hashlib.new(kind, p.read_bytes()).hexdigest()}\t{p.name}\n" for p in (one, two)]
        assert target.read_text() == "".join(lines)
        assert oct(target.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
        assert Path(f"packer_img_qemu_{kind}.checksum") in out.files
    assert out.files[:2] == [one, two]
    # sha256sum can check Packer's tab-separated lines
    check = subprocess.run(["sha256sum", "-c", "packer_img_qemu_sha256.checksum"], cwd=in_tmp,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # a second run appends and does not list the existing file as new
    out2, _ = ChecksumPostProcessor({"checksum_types": ["md5"]}, ctx).post_process(
        Artifact("x", "img", "qemu", [two], "id"))
    assert out2.files == [two]
    assert (in_tmp / "packer_img_qemu_md5.checksum").read_text().count("\n") == 3


def test_checksum_default_md5_custom_output_and_errors(in_tmp: Path) -> None:
    image = data_file(in_tmp / "x.qcow2", 100)
    ctx = ctx_for(in_tmp)
    ChecksumPostProcessor({"output": "sums/{{.BuildName}}.{{.ChecksumType}}"}, ctx).post_process(
        Artifact("x", "img", "qemu", [image], "id"))
    assert (in_tmp / "sums" / "img.md5").read_text() == f"{hashlib.md5(image.read_bytes()).hexdigest()}\tx.qcow2\n"
    with pytest.raises(ConfigError, match="Unrecognized checksum type: crc32"):
        ChecksumPostProcessor({"checksum_types": ["sha1", "crc32"]}, ctx).prepare()
    with pytest.raises(BuildError, match="unable to open file"):
        ChecksumPostProcessor({"output": "new.{{.ChecksumType}}"}, ctx).post_process(
            Artifact("x", "img", "qemu", [image, in_tmp / "gone.raw"], "id"))
    assert not (in_tmp / "new.md5").exists()  # what the failed run created is removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- compress -------------------------------------------------------------------------------------------------


def test_detect_format_follows_packer() -> None:
    assert detect_format("packer_img_qemu") == ("tar", "pgzip")
    assert detect_format("a.tar.gz") == ("tar", "pgzip")
    assert detect_format("a.tgz") == ("tar", "pgzip")
    assert detect_format("a.gz") == (None, "pgzip")
    assert detect_format("a.zip") == ("zip", None)
    assert detect_format("a.tar") == ("tar", None)
    assert detect_format("a.tar.lz4") == ("tar", "lz4")
    assert detect_format("a.lz4") == (None, "lz4")
    assert detect_format("a.xz") == (None, "xz")
    assert detect_format("a.bgzf") == (None, "bgzf")
    assert detect_format("out", "tar.xz") == ("tar", "xz")


@pytest.mark.parametrize("output, reader", [
    ("img.tar.gz", ["tar", "-tzf"]),
    ("img.tgz", ["tar", "-tzf"]),
    ("img.tar", ["tar", "-tf"]),
    ("img.tar.xz", ["tar", "-tJf"]),
    ("img.tar.lz4", ["sh", "-c", 'lz4 -dc "$0" | tar -tf -']),
    ("packer_{{.BuildName}}_{{.BuilderType}}", ["tar", "-tzf"]),
])
def test_compress_tar_formats_read_back_with_standard_tools(in_tmp: Path, output: str, reader: list[str]) -> None:
    files = [data_file(in_tmp / "disk.qcow2", 2 * MIB + 1, seed=3), data_file(in_tmp / "notes.txt", 10, seed=4)]
    pp = CompressPostProcessor({"output": output, "compression_level": 1}, ctx_for(in_tmp))
    pp.prepare()
    out, keep = pp.post_process(Artifact("x", "img", "qemu", files, "id"))
    assert keep is False and out.builder_id == "packer.post-processor.compress"
    target = out.files[0]
    assert target.name == output.replace("{{.BuildName}}", "img").replace("{{.BuilderType}}", "qemu")
    listing = subprocess.run([*reader, str(target)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert listing.split() == ["disk.qcow2", "notes.txt"]
    assert [p.name for p in in_tmp.iterdir() if p.name.startswith(".")] == []


def test_compress_single_file_formats_round_trip(in_tmp: Path) -> None:
    source = data_file(in_tmp / "disk.raw", 3 * MIB + 5, seed=5)
    content = source.read_bytes()
    for output, decode in [
        ("d.gz", lambda p: gzip.decompress(p.read_bytes())),
        ("d.xz", lambda p: lzma.decompress(p.read_bytes())),
        ("d.bgzf", lambda p: gzip.decompress(p.read_bytes())),
        ("d.lz4", lambda p: subprocess.run(["lz4", "-dc", str(p)], capture_output=True, timeout=60,
                                           check=True).stdout),
    ]:
        out, _ = CompressPostProcessor({"output": output}, ctx_for(in_tmp)).post_process(
            Artifact("x", "img", "qemu", [source], "id"))
        assert decode(out.files[0]) == content, output
    raw = (in_tmp / "d.bgzf").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x04" and raw[12:14] == b"BC"  # BGZF block header
    block_size = struct.unpack("<H", raw[16:18])[0] + 1
    assert raw[block_size:block_size + 4] == b"\x1f\x8b\x08\x04"
    assert raw.endswith(bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000"))
    gunzip = subprocess.run(["gzip", "-t", str(in_tmp / "d.gz")], capture_output=True, timeout=60, check=False)
    assert gunzip.returncode == 0


def test_compress_zip_entries_and_errors(in_tmp: Path) -> None:
    files = [data_file(in_tmp / "a.raw", 1000, seed=6), data_file(in_tmp / "b.raw", 2000, seed=7)]
    ctx = ctx_for(in_tmp)
    out, _ = CompressPostProcessor({"output": "bundle.zip"}, ctx).post_process(
        Artifact("x", "img", "qemu", [Path("a.raw"), Path("b.raw")], "id"))
    with zipfile.ZipFile(out.files[0]) as archive:
        assert archive.namelist() == ["a.raw", "b.raw"]
        assert archive.read("b.raw") == files[1].read_bytes()
        assert archive.testzip() is None
    with pytest.raises(BuildError, match="Can only have 1 input file when not using tar/zip. Found 2 files"):
        CompressPostProcessor({"output": "x.gz"}, ctx).post_process(Artifact("x", "img", "qemu", files, "id"))
    with pytest.raises(ConfigError, match="Invalid compression level"):
        CompressPostProcessor({"compression_level": -5}, ctx).prepare()
    with pytest.raises(ConfigError, match="unknown configuration key: 'level'"):
        CompressPostProcessor({"level": 5}, ctx).prepare()


def test_compress_cancelled_midway_leaves_nothing(in_tmp: Path) -> None:
    source = data_file(in_tmp / "big.raw", 64 * MIB, seed=8)
    ctx = ctx_for(in_tmp)
    ui: Any = ctx.ui
    ui.on_progress = lambda label, done, total: ctx.cancel.set()  # at the first report, from the copy loop
    with pytest.raises(Cancelled):
        CompressPostProcessor({"output": "big.tar.gz", "compression_level": 1}, ctx).post_process(
            Artifact("x", "img", "qemu", [source], "id"))
    assert sorted(p.name for p in in_tmp.iterdir()) == ["big.raw"]


# -- stemcell -------------------------------------------------------------------------------------------------


def test_heavy_stemcell_from_the_image(tmp_path: Path) -> None:
    image = data_file(tmp_path / "root.raw", 2 * MIB, seed=9)
    ctx = ctx_for(tmp_path)
    pp = StemcellPostProcessor({"version": "1.50", "os": "debian-bookworm", "output_directory": str(tmp_path / "sc"),
                                "cloud_properties": {"architecture": "x86_64"}}, ctx)
    pp.prepare()
    out, _keep = pp.post_process(Artifact("x", "img", "qemu", [image], str(image)))
    path = out.files[0]
    assert path.name == "bosh-stemcell-1.50-libvirt-kvm-debian-bookworm-go_agent.tgz"
    report = verify_stemcell(path)
    assert report.ok, report.failures
    stemcell = read_stemcell(path)
    assert not stemcell.is_light
    assert stemcell.manifest.stemcell_formats == ["libvirt-raw"]
    assert stemcell.manifest.cloud_properties == {"architecture": "x86_64"}
    with pytest.raises(BuildError, match="already exists"):
        pp.post_process(Artifact("x", "img", "qemu", [image], str(image)))


def test_light_stemcell_lists_every_region_of_a_fanout(tmp_path: Path) -> None:
    from cpi.providers.libvirt.config import LIGHT_STEMCELL_SCHEMA
    from cpi.validation import validate

    image = data_file(tmp_path / "img.qcow2", MIB + 3, seed=10)
    ctx = ctx_for(tmp_path)
    with ExitStack() as stack:
        repo = stack.enter_context(serve_in_thread(tmp_path / "repo"))
        destinations = [{"type": "local", "name": "site-a", "path": str(tmp_path / "a")},
                        {"type": "local", "name": "site-b", "path": str(tmp_path / "b")},
                        {"type": "http", "name": "site-c", "url": repo.url}]
        fan = FanoutPostProcessor({"destinations": destinations, "image_name": "stemcell-{{.BuildName}}.qcow2"}, ctx)
        fan.prepare()
        published, _ = fan.post_process(Artifact("x", "img", "qemu", [image], str(image), {"format": "qcow2"}))
    regions = published.state["regions"]
    light = StemcellPostProcessor({"version": "2.0", "os": "ubuntu-jammy", "output_directory": str(tmp_path / "sc")},
                                  ctx)
    out, _ = light.post_process(published)
    stemcell = read_stemcell(out.files[0])
    assert stemcell.is_light
    assert out.files[0].name == "light-bosh-stemcell-2.0-libvirt-kvm-ubuntu-jammy-go_agent.tgz"
    assert stemcell.manifest.cloud_properties["image_id"] == regions
    assert stemcell.manifest.region_image_ids() == regions
    assert stemcell.manifest.image_id_for_region("site-b") == str(tmp_path / "b" / "stemcell-img.qcow2")
    assert stemcell.manifest.stemcell_formats == ["libvirt-qcow2"]
    validate("create_stemcell: light stemcell cloud_properties", LIGHT_STEMCELL_SCHEMA,
             stemcell.manifest.cloud_properties)
    # AWS-style key and volume names instead of full ids
    ami = StemcellPostProcessor({"version": "2.1", "os": "ubuntu-jammy", "image_id_key": "ami", "image_ref": "name",
                                 "output_directory": str(tmp_path / "sc")}, ctx)
    out, _ = ami.post_process(published)
    manifest = read_stemcell(out.files[0]).manifest
    assert manifest.cloud_properties["ami"] == {region: "stemcell-img.qcow2" for region in regions}
    # a light stemcell without a fan-out is refused with a clear reason
    with pytest.raises(BuildError, match="after 'fanout'"):
        StemcellPostProcessor({"version": "3", "os": "x", "light": True, "output_directory": str(tmp_path)},
                              ctx).post_process(Artifact("x", "img", "qemu", [image], "id"))
    shutil.rmtree(tmp_path / "sc")


def test_stemcell_requires_version_and_os(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        StemcellPostProcessor({"name": "bosh-x"}, ctx_for(tmp_path)).prepare()
    assert "version" in str(caught.value) and "os" in str(caught.value)


def test_tar_members_are_regular_files_with_sizes(in_tmp: Path) -> None:
    source = data_file(in_tmp / "disk.qcow2", 12345, seed=11)
    out, _ = CompressPostProcessor({"output": "x.tar.gz"}, ctx_for(in_tmp)).post_process(
        Artifact("x", "img", "qemu", [source], "id"))
    with tarfile.open(out.files[0]) as tar:
        member = tar.getmember("disk.qcow2")
        assert member.isreg() and member.size == 12345
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == source.read_bytes()
