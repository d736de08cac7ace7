"""The qemu builder type: option validation (Packer's words), boot command language, qemuargs merge rules,
sources and checksums, the CD and HTTP server, and real builds under QEMU/TCG from the stemforge test image with
``communicator: none`` (ACPI power-down path): backing file, resize, format conversion, compaction, cidata seed,
output directory rules. Also prints the convert throughput against bare ``qemu-img convert``."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders.builder_types._sdk.iso import ChecksumError, parse_checksum
from builders.builder_types.qemu import PLUGIN, QemuBuilder, measure_convert
from builders.builder_types.qemu import boot_command as bc
from builders.builder_types.qemu.cdrom import read_iso
from builders.builder_types.qemu.config import OPTIONS_SCHEMA
from builders.builder_types.qemu.http_server import HTTPServer
from builders.builder_types.qemu.qemu_process import LaunchPlan, command_line
from builders.builder_types.qemu.steps import StepConvertDisk, StepDownload
from builders.core import BuildError, ConfigError
from tests.harness.qemu import RecordingUi, make_ctx, qemu_pids, run_build

BASE = {"iso_url": "file:///nonexistent.iso", "iso_checksum": "none", "communicator": "none"}


def prepare(config: dict[str, Any], tmp: Path, **kw: Any) -> tuple[QemuBuilder, list[str]]:
    b = QemuBuilder(config, make_ctx(tmp, **kw))
    return b, b.prepare()


# ------------------------------------------------------------------ options


def test_plugin_contract() -> None:
    assert PLUGIN is QemuBuilder and PLUGIN.type_name == "qemu"
    assert OPTIONS_SCHEMA["additionalProperties"] is False
    for key in ("iso_url", "disk_image", "qemuargs", "cd_files", "boot_command", "ssh_username", "shutdown_command",
                "skip_compaction", "disk_compression", "host_port_min", "ssh_host_port_min"):
        assert key in OPTIONS_SCHEMA["properties"]


def test_defaults_follow_packer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    b, warnings = prepare({**BASE, "communicator": "ssh", "ssh_username": "u"}, tmp_path)
    cfg = b.cfg
    assert cfg is not None
    assert (cfg.disk_size, cfg.format, cfg.memory, cfg.cpus) == ("40960M", "qcow2", 512, 1)
    assert (cfg.output_directory, cfg.vm_name) == (Path("output-test"), "packer-test")
    assert (cfg.net_device, cfg.disk_interface, cfg.machine_type) == ("virtio-net", "virtio", "pc")
    assert (cfg.boot_wait, cfg.ssh_timeout, cfg.shutdown_timeout) == (10.0, 300.0, 300.0)
    assert (cfg.host_port_min, cfg.host_port_max, cfg.accelerator) == (2222, 4444, "auto")
    assert cfg.temporary_key and cfg.temporary_key_pair_type == "rsa"
    assert any("checksum of 'none'" in w for w in warnings)


def test_weakly_typed_values_and_disk_sizes(tmp_path: Path) -> None:
    b, _ = prepare({**BASE, "memory": "1024", "cpus": "2", "headless": "true", "disk_size": 20480,
                    "disk_image": "1", "boot_wait": "1m30s", "use_backing_file": "false"}, tmp_path)
    assert b.cfg is not None
    assert (b.cfg.memory, b.cfg.cpus, b.cfg.headless, b.cfg.disk_size) == (1024, 2, True, "20480M")
    assert b.cfg.disk_image is True and b.cfg.boot_wait == 90.0
    for size, want in (("10G", "10G"), ("512m", "512m"), ("0", "40960M")):
        b, _ = prepare({**BASE, "disk_size": size}, tmp_path)
        assert b.cfg is not None and b.cfg.disk_size == want
    b, _ = prepare({**BASE, "boot_wait": "1h2m3.5s", "boot_key_interval": "300ms", "shutdown_timeout": "0"},
                   tmp_path)
    assert b.cfg is not None and (b.cfg.boot_wait, b.cfg.boot_key_interval) == (3723.5, 0.3)
    assert b.cfg.shutdown_timeout == 300.0  # Go's zero value: the default
    with pytest.raises(ConfigError, match="boot_wait: invalid duration '5 minutes'"):
        prepare({**BASE, "boot_wait": "5 minutes"}, tmp_path)


def test_every_problem_is_reported_with_the_key(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    config = {
        "iso_url": "a.iso", "iso_urls": ["b.iso"], "disk_size": "lots", "format": "vmdk",
        "use_backing_file": True, "net_bridge": "br0", "communicator": "ssh",
        "output_directory": str(tmp_path / "exists"), "accelerator": "hax", "boot_command": ["caf\u00e9<enter>"],
        "http_bind_address": "0.0.0.0", "ssh_host": "10.0.0.5", "disk_interface": "floppy",
        "qemuargs": [["no-dash", "x"]], "iso_checksum": "sha256:abc",
    }
    with pytest.raises(ConfigError) as info:
        prepare(config, tmp_path)
    text = str(info.value)
    for expected in (
        "qemu.test: Only one of iso_url or iso_urls must be specified",
        "qemu.test: disk_size: Invalid disk size.",
        "invalid format, only 'qcow2' or 'raw' are allowed",
        "use_backing_file can only be enabled for QCOW2 images and when disk_image is true",
        "net_bridge: not supported by stemforge's qemu builder",
        "An ssh_username must be specified",
        f"Output directory '{tmp_path / 'exists'}' already exists. It must not exist.",
        "invalid accelerator 'hax'",
        "boot_command: cannot be typed through the QEMU monitor (US keyboard): '\u00e9' (U+00E9)",
        "http_bind_address: '0.0.0.0' is not a loopback address",
        "ssh_host: '10.0.0.5' is not a loopback address",
        "unrecognized disk interface type",
        "qemuargs[0]",
        "iso_checksum: 'sha256:abc' is not a valid sha256 checksum",
    ):
        assert expected in text, expected
    assert all(line.startswith("qemu.test: ") for line in text.splitlines() if line and not line.startswith("  "))
    assert (tmp_path / "exists").is_dir()  # bad input loses nothing
    # unknown keys and values of the wrong type are the one schema check's (validate_options), reported together
    # in Packer's decoder words before any rule between keys is looked at, as Packer's config.Decode does
    with pytest.raises(ConfigError) as info:
        prepare({**config, "iso_ur": "typo", "memory": "many"}, tmp_path)
    assert str(info.value).splitlines() == [
        "qemu.test: unknown configuration key: 'iso_ur' (did you mean 'iso_url'?)",
        "qemu.test: 'memory' expected type 'integer', got unconvertible type 'string'",
    ]
    with pytest.raises(ConfigError, match="One of iso_url or iso_urls must be specified"):
        prepare({"iso_checksum": "none", "communicator": "none"}, tmp_path)
    with pytest.raises(ConfigError, match="A checksum must be specified"):
        prepare({"iso_url": "x.iso", "communicator": "none", "output_directory": str(tmp_path / "o")}, tmp_path)
    b, warnings = prepare({**BASE, "vnc_port_min": 5901, "output_directory": str(tmp_path / "exists")},
                          tmp_path, force=True)
    assert any(w.startswith("vnc_port_min is ignored") for w in warnings)
    # builds are labelled the way the runner labels them: the type alone when the name is the type
    ctx = make_ctx(tmp_path, name="qemu")
    with pytest.raises(ConfigError, match=r"^qemu: unknown configuration key: 'bogus'"):
        QemuBuilder({**BASE, "bogus": 1}, ctx).prepare()


def test_checksum_forms() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert parse_checksum(digest).kind == "sha256"
    assert parse_checksum(f"SHA256:{digest.upper()}").value == digest
    assert parse_checksum("d41d8cd98f00b204e9800998ecf8427e").kind == "md5"
    assert parse_checksum("none").kind == "none"
    assert parse_checksum("file:./SUMS").kind == "file"
    for bad in ("crc32:1234", "xyz", "sha1:" + digest):
        with pytest.raises(ChecksumError):
            parse_checksum(bad)


# ------------------------------------------------------------------ boot command


def test_boot_command_language() -> None:
    acts = bc.parse_boot_command("aB <enter><wait><wait5><wait1m30s><leftCtrlOn>c<leftCtrlOff><F12>~<foo>")
    assert acts[:3] == [bc.Press(("a",)), bc.Press(("shift", "b")), bc.Press(("spc",))]
    assert acts[3] == bc.Press(("ret",))
    assert [a.seconds for a in acts if isinstance(a, bc.Wait)] == [1.0, 5.0, 90.0]
    assert bc.Hold("ctrl", True) in acts and bc.Hold("ctrl", False) in acts
    assert bc.Press(("f12",)) in acts and bc.Press(("shift", "grave_accent")) in acts
    # an unknown <...> is typed literally, as in Packer
    assert acts[-5:] == [bc.Press(("shift", "comma")), bc.Press(("f",)), bc.Press(("o",)), bc.Press(("o",)),
                         bc.Press(("shift", "dot"))]
    with pytest.raises(bc.BootCommandError, match="U\\+0007"):
        bc.parse_boot_command("bell\a")
    text = bc.render_fields("http://{{ .HTTPIP }}:{{.HTTPPort}}/{{ .Name }}", {"HTTPIP": "10.0.2.100",
                                                                              "HTTPPort": 8100, "Name": "vm"})
    assert text == "http://10.0.2.100:8100/vm"
    with pytest.raises(bc.BootCommandError, match="unknown template field .Nope"):
        bc.render_fields("{{ .Nope }}", {"HTTPIP": "x"})
    sent: list[tuple[str, dict[str, object]]] = []
    bc.type_actions(bc.parse_boot_command("A<wait0.01s>"), lambda n, a: sent.append((n, a)), lambda s: None, 0)
    assert sent == [("send-key", {"keys": [{"type": "qcode", "data": "shift"}, {"type": "qcode", "data": "a"}],
                                  "hold-time": 30})]


# ------------------------------------------------------------------ command line


def _argv(tmp: Path, **over: Any) -> tuple[list[str], LaunchPlan]:
    b, _ = prepare({**BASE, "disk_image": True, "output_directory": str(tmp / "o"), **over}, tmp)
    assert b.cfg is not None
    plan = LaunchPlan(accel="tcg", disks=[tmp / "o" / "disk"], cd_paths=[tmp / "seed.iso"], qmp_path=tmp / "q",
                      serial_path=tmp / "s", ssh_host_port=2345, http_port=8111)
    return command_line(b.cfg, plan, "qemu-system-x86_64"), plan


def _pairs(argv: list[str], key: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == key]


def test_default_command_line_is_restricted_to_loopback(tmp_path: Path) -> None:
    argv, _ = _argv(tmp_path)
    assert _pairs(argv, "-netdev") == [
        "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:2345-:22,"
        f"guestfwd=tcp:10.0.2.100:8111-cmd:{sys.executable} http-relay.py 8111"]
    assert _pairs(argv, "-machine") == ["type=pc,accel=tcg"]
    assert _pairs(argv, "-device") == ["virtio-net,netdev=user.0"]
    drives = _pairs(argv, "-drive")
    assert drives[0].startswith(f"file={tmp_path / 'o' / 'disk'},if=virtio,cache=writeback,discard=ignore")
    assert drives[1] == f"file={tmp_path / 'seed.iso'},media=cdrom"
    assert _pairs(argv, "-boot") == ["c"] and _pairs(argv, "-m") == ["512M"] and _pairs(argv, "-display") == ["none"]
    assert _pairs(argv, "-qmp") == [f"unix:{tmp_path / 'q'},server=on,wait=off"]


def test_qemuargs_merge_rules(tmp_path: Path) -> None:
    argv, plan = _argv(tmp_path, qemuargs=[
        ["-m", "2048M"], ["-device", "virtio-rng-pci"], ["-device", "e1000,netdev=user.0,id=n", ""],
        ["-netdev", "user,id=user.0,", "hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"], ["-no-reboot", ""],
        ["-name", "{{ .Name }}-x"]])
    assert _pairs(argv, "-m") == ["2048M"]
    # the user's -device list replaces the defaults; virtio-net is re-added because no user device names it
    assert _pairs(argv, "-device") == ["virtio-rng-pci", "e1000,netdev=user.0,id=n", "virtio-net,netdev=user.0"]
    assert _pairs(argv, "-netdev") == ["user,id=user.0,hostfwd=tcp:127.0.0.1:2345-:22"]
    assert any("no restrict=on" in w for w in plan.warnings)
    assert "-no-reboot" in argv and _pairs(argv, "-name") == ["packer-test-x"]
    assert len(_pairs(argv, "-drive")) == 2  # defaults kept for switches the user did not give


# ------------------------------------------------------------------ sources


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def loopback_http(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _download(tmp: Path, **over: Any) -> tuple[Path, RecordingUi]:
    ui = RecordingUi()
    base = {k: v for k, v in BASE.items() if k != "iso_url"}
    b = QemuBuilder({**base, "output_directory": str(tmp / "o"), **over}, make_ctx(tmp, ui=ui))
    b.prepare()
    assert b.cfg is not None
    state: dict[str, Any] = {}
    step = StepDownload(b.cfg, b.ctx)
    try:
        step.run(state)
    finally:
        step.cleanup(state)
    return Path(state["iso_path"]), ui


def test_sources_checksums_and_cache(tmp_path: Path, loopback_http: tuple[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKER_CACHE_DIR", str(tmp_path / "cache"))
    url, www = loopback_http
    payload = b"disk image bytes " * 100_000
    digest = hashlib.sha256(payload).hexdigest()
    (www / "img.qcow2").write_bytes(payload)
    (www / "SHA256SUMS").write_text(f"{'0' * 64}  other.iso\n{digest} *img.qcow2\n")
    local = tmp_path / "img.qcow2"
    local.write_bytes(payload)
    (tmp_path / "BSD.sums").write_text(f"SHA256 (img.qcow2) = {digest}\n")

    # local paths are verified and used in place (plain path, file:// URL, bare/typed/file: checksums)
    assert _download(tmp_path, iso_url=str(local), iso_checksum=digest)[0] == local
    assert _download(tmp_path, iso_url=local.as_uri(), iso_checksum=f"sha256:{digest}")[0] == local
    assert _download(tmp_path, iso_url=str(local), iso_checksum=f"file:{tmp_path / 'BSD.sums'}")[0] == local
    with pytest.raises(BuildError, match="Checksums did not match"):
        _download(tmp_path, iso_url=str(local), iso_checksum="sha256:" + "1" * 64)

    # downloads: the first URL fails (404), the second is fetched into the cache, checked against a loopback
    # SHA256SUMS, and reused on the next build
    path, ui = _download(tmp_path, iso_urls=[f"{url}/missing.qcow2", f"{url}/img.qcow2"],
                         iso_checksum=f"file:{url}/SHA256SUMS")
    assert path.parent == tmp_path / "cache" and path.read_bytes() == payload
    assert "Error downloading" in ui.text() and any(p[0].startswith("download") for p in ui.progress_calls)
    assert not list((tmp_path / "cache").glob(".*part*"))
    again, ui2 = _download(tmp_path, iso_urls=[f"{url}/missing.qcow2", f"{url}/img.qcow2"],
                           iso_checksum=f"file:{url}/SHA256SUMS")
    assert again == path
    # a wrong checksum leaves no partial file and nothing in the cache
    (www / "bad.qcow2").write_bytes(b"corrupted")
    with pytest.raises(BuildError, match="Checksums did not match"):
        _download(tmp_path, iso_url=f"{url}/bad.qcow2", iso_checksum=digest)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]


def test_http_server_is_loopback_only(tmp_path: Path) -> None:
    (tmp_path / "preseed.cfg").write_text("d-i debian-installer/locale string en_US\n")
    server = HTTPServer(tmp_path)
    port = server.start(18000, 18100)
    try:
        assert 18000 <= port <= 18100
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /preseed.cfg HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert b"200" in data.split(b"\r\n")[0] and data.endswith(b"en_US\n")
        assert server._server is not None and server._server.server_address[0] == "127.0.0.1"
    finally:
        server.stop()
        server.stop()  # idempotent


def test_http_relay_carries_each_guest_connection(tmp_path: Path) -> None:
    """The script QEMU runs per guest connection (guestfwd cmd:) relays to the loopback HTTP server."""
    from builders.builder_types.qemu.qemu_process import RELAY_SCRIPT

    (tmp_path / "f.txt").write_text("payload\n")
    server = HTTPServer(tmp_path)
    port = server.start(18300, 18399)
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY_SCRIPT)
    try:
        for _ in range(3):  # one relay process per connection, as QEMU spawns them
            guest, qemu_side = socket.socketpair()
            with guest, qemu_side:
                proc = subprocess.Popen([sys.executable, str(relay), str(port)], stdin=qemu_side.fileno(),
                                        stdout=qemu_side.fileno())
                qemu_side.close()
                guest.sendall(b"GET /f.txt HTTP/1.0\r\n\r\n")
                guest.settimeout(10)
                data = b""
                while chunk := guest.recv(4096):
                    data += chunk
                assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"payload\n")
                assert proc.wait(timeout=10) == 0
    finally:
        server.stop()


def test_convert_step_and_throughput(tmp_path: Path, test_image: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(test_image, out / "vm")
    b = QemuBuilder({**BASE, "output_directory": str(out), "vm_name": "vm", "disk_compression": True},
                    make_ctx(tmp_path, force=True))
    b.prepare()
    assert b.cfg is not None
    step = StepConvertDisk(b.cfg, b.ctx)
    state: dict[str, Any] = {}
    step.run(state)
    step.cleanup(state)
    assert sorted(p.name for p in out.iterdir()) == ["vm"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out / "vm")], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    assert info["format"] == "qcow2"
    ui = b.ctx.ui
    assert isinstance(ui, RecordingUi) and ui.progress_calls[-1][1] == ui.progress_calls[-1][2]
    # throughput: a 192 MiB disk, half random data, half zeros (raw in, qcow2 compaction like the builder's)
    data = tmp_path / "data.raw"
    with open(data, "wb") as fh:
        for _ in range(96):
            fh.write(os.urandom(1 << 20) + bytes(1 << 20))
    result = measure_convert(data, rounds=3)
    print(f"\nconvert throughput ({result['virtual_size'] >> 20} MiB qcow2 compaction): step "
          f"{result['step_mib_s']:.0f} MiB/s vs bare qemu-img {result['bare_mib_s']:.0f} MiB/s = "
          f"{100 * result['ratio']:.0f}% (target >= 90%; best of {result['rounds']}, interleaved)")
    assert result["ratio"] > 0 and result["progress_updates"] > 0
    assert not list(Path(tempfile.gettempdir()).glob("stemforge-measure-convert-*"))


# ------------------------------------------------------------------ real builds (QEMU/TCG, communicator none)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_disk_image_backing_file_resize_and_cidata_seed(tmp_path: Path, test_image: Path,
                                                        private_tmp: Path) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_text("#cloud-config\nssh_authorized_keys:\n  - {{ build `SSHPublicKey` }}\n")
    (seed / "meta-data").write_text("instance-id: {{ build_name }}\n")
    out = tmp_path / "output-seeded"
    seen: dict[str, Any] = {}

    def during(comm: Any, state: dict[str, Any]) -> None:
        seen["cd"] = read_iso(Path(state["cd_path"]))
        seen["pids"] = qemu_pids(str(out))

    ui = RecordingUi()
    ctx = make_ctx(tmp_path, ui=ui, name="seeded")
    ctx.generated["SSHPublicKey"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample test"
    builder, state, artifact, hook = run_build({
        "iso_url": str(test_image), "iso_checksum": "file:" + str(_sums(tmp_path, test_image)),
        "disk_image": True, "use_backing_file": True, "disk_size": "192M", "communicator": "none",
        "output_directory": str(out), "vm_name": "seeded.qcow2", "boot_wait": "1s", "shutdown_timeout": "150s",
        "headless": True, "cd_files": [str(seed) + "/"], "cd_content": {"extra/notes.txt": "{{ build_type }}"},
        "cd_label": "cidata", "accelerator": "auto",
    }, ctx, during)
    assert hook.calls == 1 and len(seen["pids"]) == 1
    label, files = seen["cd"]
    assert label == "cidata"
    assert files["user-data"].decode() == ("#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 "
                                           "AAAAC3NzaC1lZDI1NTE5AAAAIexample test\n")
    assert files["meta-data"] == b"instance-id: seeded\n" and files["extra/notes.txt"] == b"qemu"
    assert artifact is not None and artifact.files == [out / "seeded.qcow2"]
    assert artifact.state["shutdown"] == "acpi", ui.text()  # the guest's acpid powered it off
    assert artifact.state["domainType"] == "tcg"
    assert artifact.state["virtual_size"] == 192 << 20
    assert Path(artifact.state["backing_file"]) == test_image.resolve()
    assert artifact.state["sha256"] == hashlib.sha256((out / "seeded.qcow2").read_bytes()).hexdigest()
    assert (out / "seeded.qcow2").stat().st_size < test_image.stat().st_size  # an overlay, not a copy
    assert "Converting hard drive" not in ui.text()  # use_backing_file forces skip_compaction (Packer's rule)
    assert qemu_pids(str(out)) == [] and list(private_tmp.iterdir()) == []
    assert "SSHPrivateKey" not in json.dumps(artifact.state)


def _sums(tmp: Path, image: Path) -> Path:
    sums = tmp / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(image.read_bytes()).hexdigest()}  {image.name}\n")
    return sums


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_disk_image_converted_to_raw_with_force(tmp_path: Path, test_image: Path,
                                                private_tmp: Path) -> None:
    out = tmp_path / "output-raw"
    out.mkdir()
    (out / "old-artifact").write_text("from a previous build")
    ui = RecordingUi()
    ctx = make_ctx(tmp_path, ui=ui, force=True, name="raw")
    builder, state, artifact, _ = run_build({
        "iso_url": test_image.as_uri(), "iso_checksum": "none", "disk_image": True, "format": "raw",
        "disk_size": "160", "communicator": "none", "output_directory": str(out), "boot_wait": "0s",
        "shutdown_timeout": "150s", "memory": "256", "disk_interface": "virtio-scsi", "accelerator": "tcg",
        "boot_command": ["<wait0.2s>echo {{ .Name }}<enter><leftShiftOn>x<leftShiftOff><esc>"],
    }, ctx)
    assert "Typing the boot command through the QEMU monitor..." in ui.text()  # QEMU accepted every key event
    assert "Deleting previous output directory..." in ui.text()
    assert artifact is not None and [p.name for p in artifact.files] == ["packer-raw"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out / "packer-raw")], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    assert info["format"] == "raw" and info["virtual-size"] == 160 << 20
    assert artifact.state["format"] == "raw" and artifact.state["shutdown"] == "acpi", ui.text()
    # the raw disk still holds the test image's MBR and partitions
    head = (out / "packer-raw").read_bytes()[:512]
    assert head[510:512] == b"\x55\xaa"
    assert qemu_pids(str(out)) == [] and list(private_tmp.iterdir()) == []


def test_output_directory_is_removed_on_failure(tmp_path: Path, test_image: Path,
                                                private_tmp: Path) -> None:
    out = tmp_path / "out"
    ctx = make_ctx(tmp_path)
    with pytest.raises(BuildError, match="does not exist"):
        run_build({"iso_url": str(tmp_path / "missing.qcow2"), "iso_checksum": "none", "disk_image": True,
                   "communicator": "none", "output_directory": str(out)}, ctx)
    assert not out.exists()
    # a failure after the output directory and the disk were made (disk_size would shrink the 128 MiB image)
    with pytest.raises(BuildError, match="smaller than the image's virtual size"):
        run_build({"iso_url": str(test_image), "iso_checksum": "none", "disk_image": True, "disk_size": "64M",
                   "communicator": "none", "output_directory": str(out), "cd_content": {"a": "b"}}, ctx)
    assert not out.exists() and list(private_tmp.iterdir()) == []


def test_a_long_tmpdir_still_gets_a_qmp_socket(tmp_path: Path, test_image: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """AF_UNIX paths stop at 107 bytes: under a long TMPDIR (CI workers, nested build dirs) QMP's socket gets a
    short private directory of its own, removed with the VM."""
    import tempfile

    deep = tmp_path / ("t" * 60) / ("m" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    before = set(Path("/tmp").glob("sf-qmp-*"))
    ctx = make_ctx(tmp_path, name="long")
    _, _, artifact, _ = run_build({
        "iso_url": test_image.as_uri(), "iso_checksum": "none", "disk_image": True, "communicator": "none",
        "output_directory": str(tmp_path / "out"), "boot_wait": "0s", "shutdown_timeout": "150s", "memory": "256",
        "accelerator": "tcg", "boot_command": ["<wait0.2s>x"],
    }, ctx)
    assert artifact is not None
    assert set(Path("/tmp").glob("sf-qmp-*")) == before and list(deep.iterdir()) == []
