"""Tests of the tiny test stemcell image (stemcells/testimage): real builds, real QEMU (TCG).

* ``json.awk`` against Python's json module, under the same busybox awk the guest runs;
* the build: cache hit, outputs, partition layout, packages.txt;
* one VM booted from its own disk with a config drive (SATA CD-ROM, ISO 9660 labelled
  ``config-2``), a persistent disk found by its virtio serial, an ephemeral disk, a manual and
  a DHCP network (QEMU user networking with ``restrict=on``), then live: a hot-plugged second
  persistent disk announced by swapping the CD media, the first disk removed the same way,
  a reboot (second boot of the same disks) that must find its data again, and a clean
  poweroff on the ACPI power button.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pycdlib = pytest.importorskip("pycdlib")

from stemcells.testimage import build as tib  # noqa: E402

HERE = Path(tib.__file__).resolve().parent
BUSYBOX = shutil.which("busybox")
QEMU = shutil.which("qemu-system-x86_64")
BUILD_TOOLS = ("apt-get", "dpkg-deb", "mke2fs", "mkfs.vfat", "mcopy", "sfdisk", "qemu-img")
MISSING_BUILD_TOOLS = [t for t in BUILD_TOOLS if shutil.which(t) is None]

needs_build = pytest.mark.skipif(bool(MISSING_BUILD_TOOLS), reason=f"missing build tools: {MISSING_BUILD_TOOLS}")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

LINE_RE = re.compile(r"STEMFORGE-AGENT (.*?)\r?$")
BOOT_TIMEOUT = 120.0
EVENT_TIMEOUT = 60.0

SECRETS = ("S3CRET-mbus-pw", "S3CRET-blob-pw", "S3CRET-env-pw", "S3CRET-cert-key", "S3CRET-ntp-host")


# ---------------------------------------------------------------- json.awk


def _flatten(text: str) -> tuple[int, list[list[str]]]:
    assert BUSYBOX is not None
    res = subprocess.run(
        [BUSYBOX, "awk", "-f", str(HERE / "json.awk")],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    rows = [line.split("\t") for line in res.stdout.decode().splitlines()]
    return res.returncode, rows


def _decode_key(seg: str) -> str:
    if seg == "%":
        return ""
    return str(json.loads('"' + seg.replace("%2F", "/").replace("%25", "%") + '"'))


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
        yield path, "o", len(value)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, str(i)))
        yield path, "a", len(value)
    elif isinstance(value, bool):
        yield path, "b", value
    elif value is None:
        yield path, "z", None
    elif isinstance(value, int | float):
        yield path, "n", value
    else:
        yield path, "s", value


JSON_DOCS = [
    '{"a":1}',
    '  {\n\t"agent_id" :\r\n "x-1" , "vm" : { "name":"vm-\\u00e9\\/\\"q\\"" } }  \n',
    '{"networks":{"default":{"type":"manual","ip":"10.0.2.15","default":["dns","gateway"],"dns":[]},'
    '"n/2%":{"type":"dynamic","use_dhcp":true,"routes":null}},"ntp":[],"x":{}}',
    '[1, -2.5e-3, 0, true, false, null, [[]], [{}], "tab\\tnl\\nbs\\\\", "\\ud83d\\ude00", "é→"]',
    '{"a\\"b":{"c\\\\d":"\\\\"}, "": "empty key", "deep":[[[[{"k":[1,[2,[3]]]}]]]]}',
    '"just a string"',
    '{"disks":{"persistent":{"disk-1":{"id":"sfd0123456789abcdefX","path":"/dev/sdc"},"disk-2":"/dev/sdd"}}}',
]


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")
@pytest.mark.parametrize("doc", JSON_DOCS)
def test_json_awk_matches_python(doc: str) -> None:
    rc, rows = _flatten(doc)
    assert rc == 0, rows
    got: dict[tuple[str, ...], tuple[str, Any]] = {}
    for row in rows:
        assert len(row) == 3, row
        path, typ, raw = row
        key = tuple(_decode_key(s) for s in path.split("/")) if path != "" else ()
        if typ == "s":
            assert "\n" not in raw and "\t" not in raw
            value: Any = json.loads('"' + raw + '"')
        elif typ == "n":
            value = json.loads(raw)
        elif typ == "b":
            value = raw == "true"
        elif typ == "z":
            value = None
        else:
            value = int(raw)
        got[key] = (typ, value)
    want = {p: (t, v) for p, t, v in _walk(json.loads(doc))}
    assert got == want


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")
def test_json_awk_passes_escapes_through() -> None:
    rc, rows = _flatten('{"u":"caf\\u00e9 \\/x \\\\/ \\"q\\""}')
    assert rc == 0
    assert rows[0] == ["u", "s", 'caf\\u00e9 /x \\\\/ \\"q\\"']


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed")
@pytest.mark.parametrize(
    "doc",
    [
        '{"a":1,}',
        '{"a" 1}',
        "[1 2]",
        '"abc',
        '{"a":"\\x"}',
        "",
        '{"a":1} x',
        "[01]",
        '{"a":"\t"}',
        '{"a":tru}',
        "{",
        "[1,]",
        '{"a":[}',
    ],
)
def test_json_awk_rejects_malformed(doc: str) -> None:
    rc, rows = _flatten(doc)
    assert rc == 1
    assert rows[-1][0] == "!error"


# ---------------------------------------------------------------- build


@pytest.fixture(scope="module")
def image() -> Path:
    """The cached test image (built on first use; progress goes to the test's output)."""
    if MISSING_BUILD_TOOLS:
        pytest.skip(f"missing build tools: {MISSING_BUILD_TOOLS}")
    return tib.build_test_image(progress=print)


@needs_build
def test_build_is_cached_and_well_formed(image: Path) -> None:
    lines: list[str] = []
    t = time.monotonic()
    again = tib.build_test_image(progress=lines.append)
    assert again == image
    assert time.monotonic() - t < 3.0, lines
    assert any("cached" in line for line in lines)

    raw = tib.build_test_image(fmt="raw")
    assert raw.name == image.name == "root.img"
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(image)], capture_output=True, check=True).stdout
    )
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == tib.DISK_SIZE_MIB * 1024 * 1024
    assert image.stat().st_size < 32 * 1024 * 1024
    assert raw.stat().st_size == tib.DISK_SIZE_MIB * 1024 * 1024

    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=True).stdout)
    parts = table["partitiontable"]["partitions"]
    assert table["partitiontable"]["label"] == "dos"
    assert [p["type"] for p in parts] == ["e", "83"]
    assert parts[0].get("bootable") is True
    with open(raw, "rb") as fh:
        mbr = fh.read(512)
        fh.seek(parts[1]["start"] * 512 + 1024 + 0x38)
        ext_magic = fh.read(2)
        fh.seek(parts[1]["start"] * 512 + 1024 + 0x78)
        ext_label = fh.read(16).rstrip(b"\0")
    assert mbr[510:512] == b"\x55\xaa"
    assert ext_magic == b"\x53\xef"
    assert ext_label == tib.ROOT_LABEL.encode()

    pk = tib.packages_txt()
    names = [line.split()[1] for line in pk.splitlines() if line.startswith("ii ")]
    assert "busybox-static" in names and "syslinux" in names
    assert f"linux-image-{tib.kernel_version()}" in names
    manifest = tib.image_manifest()
    assert manifest["kernel_release"] == tib.kernel_version()


@needs_build
def test_failed_build_names_the_step_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("apt-get", "apt-cache", "dpkg", "dpkg-deb", "mke2fs", "mcopy", "mattrib", "sfdisk", "qemu-img"):
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bindir))  # no mkfs.vfat
    cache = tmp_path / "cache"
    with pytest.raises(tib.ImageBuildError) as info:
        tib.build_test_image(cache)
    assert info.value.step == "check-tools"
    assert "mkfs.vfat" in str(info.value)
    assert list((cache / "testimage" / "tmp").iterdir()) == []
    assert list((cache / "testimage" / "images").iterdir()) == []


def test_bad_format_is_rejected() -> None:
    with pytest.raises(ValueError):
        tib.build_test_image(fmt="vmdk")


# ---------------------------------------------------------------- VM helpers


def make_config_drive(
    path: Path,
    settings: dict[str, Any] | bytes,
    meta: dict[str, Any] | None = None,
    *,
    label: str = "config-2",
    ec2: bool = True,
) -> bytes:
    """Write an OpenStack-style config drive ISO (volume id ``label``, Joliet + Rock Ridge)
    holding the openstack tree and, when ``ec2``, the ec2 tree; ``settings`` is a document or
    the raw user-data bytes.  Returns the user-data bytes written."""
    user_data = settings if isinstance(settings, bytes) else json.dumps(settings, indent=1).encode()
    meta_data = json.dumps(meta or {}).encode()
    files = {
        "openstack/latest/meta_data.json": meta_data,
        "openstack/latest/user_data": user_data,
        "openstack/latest/network_data.json": b'{"links":[],"networks":[],"services":[]}',
    }
    if ec2:
        files = {"ec2/latest/user-data": user_data, "ec2/latest/meta-data.json": meta_data, **files}
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    iso_dirs = {"": ""}
    n = 0
    for name, data in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in iso_dirs:
                n += 1
                iso_dirs[d] = f"{iso_dirs['/'.join(parts[: i - 1])]}/D{n}"
                iso.add_directory(iso_dirs[d], rr_name=parts[i - 1], joliet_path="/" + d)
        n += 1
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"{iso_dirs['/'.join(parts[:-1])]}/F{n}.;1",
            rr_name=parts[-1],
            joliet_path="/" + name,
        )
    iso.write(str(path))
    iso.close()
    return user_data


class Qmp:
    """Minimal QMP client over a unix socket (commands only; events are skipped)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, cmd: str, **args: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd}: {msg['error']}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Serial:
    """Reads STEMFORGE-AGENT events from a QEMU serial log file."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path = path
        self.proc = proc

    def text(self) -> str:
        try:
            return self.path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            m = LINE_RE.search(line)
            if m:
                try:
                    out.append(json.loads(m.group(1)))
                except ValueError:
                    out.append({"event": "<malformed>", "line": line})
        return out

    def wait(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events():
                if pred(ev):
                    return ev
            if self.proc.poll() is not None:
                pytest.fail(f"QEMU exited ({self.proc.returncode}) while waiting for {what}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.text()[-4000:]}")
            time.sleep(0.25)


def serial20(name: str) -> str:
    """A 20-character disk serial (what virtio-blk keeps) derived from a name."""
    return "sf" + hashlib.sha256(name.encode()).hexdigest()[:18]


@contextlib.contextmanager
def run_vm(
    workdir: Path, tag: str, root: Path, iso: Path, disks: list[tuple[str, Path, str]], nics: list[tuple[str, str]]
) -> Iterator[tuple[subprocess.Popen[bytes], Serial, Qmp, float]]:
    """Boot a q35 VM under TCG; yield (process, serial reader, QMP, start time); always kill it."""
    assert QEMU is not None
    log = workdir / f"serial-{tag}.log"
    qmp_path = workdir / f"qmp-{tag}.sock"
    cmd = [
        QEMU,
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        "256",
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        f"file:{log}",
        "-qmp",
        f"unix:{qmp_path},server=on,wait=off",
        "-drive",
        f"if=none,id=root,file={root},format=qcow2",
        "-device",
        "virtio-blk-pci,drive=root,bootindex=1",
        "-drive",
        f"if=none,id=cd0,media=cdrom,file={iso},format=raw,readonly=on",
        "-device",
        "ide-cd,drive=cd0,bus=ide.0,id=cdrom0",
        "-device",
        "pcie-root-port,id=rp1,chassis=1,slot=1",
        "-device",
        "pcie-root-port,id=rp2,chassis=2,slot=2",
    ]
    for node, path, serial in disks:
        cmd += [
            "-drive",
            f"if=none,id={node},file={path},format=qcow2",
            "-device",
            f"virtio-blk-pci,drive={node}" + (f",serial={serial}" if serial else ""),
        ]
    for i, (mac, net) in enumerate(nics):
        cmd += [
            "-netdev",
            f"user,id=n{i},restrict=on,net={net}",
            "-device",
            f"virtio-net-pci,netdev=n{i},mac={mac},romfile=",
        ]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    qmp: Qmp | None = None
    try:
        qmp = Qmp(qmp_path)
        yield proc, Serial(log, proc), qmp, t0
    finally:
        if qmp is not None:
            with contextlib.suppress(Exception):
                qmp.execute("quit")
            qmp.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def swap_cd(qmp: Qmp, iso: Path, timeout: float = 20.0) -> None:
    """Replace the config drive media (retrying while the guest holds the tray)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            qmp.execute(
                "blockdev-change-medium",
                id="cdrom0",
                filename=str(iso),
                format="raw",
                **{"read-only-mode": "read-only"},
            )
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def settings_doc(agent_id: str, persistent: dict[str, Any], eph_serial: str) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "vm": {"name": "vm-" + agent_id},
        "mbus": "nats://nats:S3CRET-mbus-pw@192.0.2.10:4222",
        "ntp": ["S3CRET-ntp-host.invalid", "ntp2.invalid"],
        "blobstore": {
            "provider": "dav",
            "options": {"endpoint": "http://192.0.2.11:25250", "password": "S3CRET-blob-pw"},
        },
        "networks": {
            "default": {
                "type": "manual",
                "ip": "10.0.2.15",
                "netmask": "255.255.255.0",
                "gateway": "10.0.2.2",
                "dns": ["10.0.2.3"],
                "default": ["dns", "gateway"],
                "mac": "52:54:00:5f:00:01",
                "cloud_properties": {},
            },
            "dhcp-net": {"type": "dynamic", "mac": "52:54:00:5f:00:02", "default": []},
        },
        "disks": {"system": "/dev/sda", "ephemeral": {"id": eph_serial, "path": "/dev/sdb"}, "persistent": persistent},
        "env": {
            "bosh": {"password": "S3CRET-env-pw", "mbus": {"cert": {"private_key": "S3CRET-cert-key"}}},
            "persistent_disk_fs": "ext4",
        },
    }


# ---------------------------------------------------------------- the VM test


@needs_build
@needs_qemu
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_agent_boot_settings_disks_hotplug_and_reboot(image: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(root)], check=True)
    pd1, pd2, eph = tmp_path / "pd1.qcow2", tmp_path / "pd2.qcow2", tmp_path / "eph.qcow2"
    for p, size in ((pd1, "64M"), (pd2, "48M"), (eph, "32M")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), size], check=True)
    # the libvirt CPI's disk CIDs: virtio-<13-character serial>, the by-id link udev makes for the disk, which
    # bosh-agent's ID resolver globs for (the image carries the stock OpenStack agent.json)
    s1, s2, se = serial20("disk-1")[:13], serial20("disk-2")[:13], serial20("ephemeral")
    c1, c2 = f"virtio-{s1}", f"virtio-{s2}"
    agent_id = "agent-7e57"
    hint1 = {"id": s1, "path": "/dev/sdc"}
    hint2 = {"id": s2, "path": "/dev/sdd"}

    iso1, iso2, iso3 = tmp_path / "cd1.iso", tmp_path / "cd2.iso", tmp_path / "cd3.iso"
    ud1 = make_config_drive(
        iso1,
        settings_doc(agent_id, {c1: hint1}, se),
        {"public-keys": {"0": {"openssh-key": "ssh-ed25519 AAAA test"}}},
    )
    ud2 = make_config_drive(iso2, settings_doc(agent_id, {c1: hint1, c2: hint2}, se))
    ud3 = make_config_drive(iso3, settings_doc(agent_id, {c2: hint2}, se))
    sha1, sha2, sha3 = (hashlib.sha256(u).hexdigest() for u in (ud1, ud2, ud3))
    nics = [("52:54:00:5f:00:01", "10.0.2.0/24"), ("52:54:00:5f:00:02", "10.0.3.0/24")]

    # ---- first boot
    with run_vm(tmp_path, "boot1", root, iso1, [("eph", eph, se), ("pd1", pd1, s1)], nics) as (proc, serial, qmp, t0):
        ready = serial.wait(lambda e: e.get("event") == "ready", BOOT_TIMEOUT, "ready")
        boot_s = time.monotonic() - t0
        print(f"\nboot-to-ready under TCG: {boot_s:.1f}s (guest uptime {ready['uptime_s']}s)")
        events = serial.events()
        settings = next(e for e in events if e["event"] == "settings")
        assert settings["agent_id"] == agent_id
        assert settings["hostname"] == agent_id
        assert settings["vm_name"] == "vm-" + agent_id
        assert settings["settings_sha256"] == sha1
        assert settings["source"] == "config-drive" and settings["device"] == "/dev/sr0"
        assert settings["path"] == "ec2/latest/user-data"
        assert settings["mbus_scheme"] == "nats"
        assert settings["ntp_count"] == 2
        assert settings["blobstore_provider"] == "dav"
        assert settings["env_keys"] == ["bosh", "persistent_disk_fs"]
        assert settings["persistent_disks"] == [c1]
        assert settings["has_public_key"] is True
        assert ready["settings_sha256"] == sha1 and ready["boot"] == 1
        assert ready["device_path_resolution"] == "virtio"

        nets = {e["name"]: e for e in events if e["event"] == "network"}
        assert nets["default"]["mac"] == "52:54:00:5f:00:01"
        assert nets["default"]["configured"] is True and nets["default"]["ip"] == "10.0.2.15"
        assert nets["default"]["prefix"] == 24 and nets["default"]["default_route"] is True
        assert nets["dhcp-net"]["configured"] is True and nets["dhcp-net"]["dhcp"] is True
        assert nets["dhcp-net"]["ip"].startswith("10.0.3.")
        assert nets["dhcp-net"]["default_route"] is False
        assert nets["default"]["iface"] != nets["dhcp-net"]["iface"]

        disks = {(e["kind"], e["cid"]): e for e in events if e["event"] == "disk"}
        system = disks[("system", None)]
        assert system["device"] == "/dev/vda" and system["resolved_by"] == "mapped"
        ephemeral = disks[("ephemeral", None)]
        # bosh-agent gives the ephemeral disk no ID: the mapped resolver maps /dev/sdb to /dev/vdb
        assert ephemeral["mounted"] == "/var/vcap/data" and ephemeral["resolved_by"] == "mapped"
        assert ephemeral["device"] == "/dev/vdb" and ephemeral["serial"] == se
        d1 = disks[("persistent", c1)]
        assert d1["resolved_by"] == "id" and d1["hint"] == hint1 and d1["serial"] == s1
        assert d1["mounted"] == "/var/vcap/store"
        assert d1["formatted"] is True and d1["marker_existed"] is False
        assert d1["size_mib"] == 64
        assert re.fullmatch(r"/dev/vd[b-z]", d1["device"])
        assert not [e for e in events if e["event"] in ("error", "<malformed>")], events

        # ---- live: hot-plug a second persistent disk, then announce it through the CD media
        qmp.execute(
            "blockdev-add", **{"node-name": "pd2", "driver": "qcow2", "file": {"driver": "file", "filename": str(pd2)}}
        )
        qmp.execute("device_add", driver="virtio-blk-pci", drive="pd2", id="pd2dev", bus="rp1", serial=s2)
        t1 = time.monotonic()
        swap_cd(qmp, iso2)
        d2 = serial.wait(
            lambda e: e.get("event") == "disk" and e.get("cid") == c2, EVENT_TIMEOUT, "disk-2 mounted"
        )
        print(f"hot-plugged disk reported {time.monotonic() - t1:.1f}s after the media swap")
        assert d2["resolved_by"] == "id" and d2["mounted"] == "/var/vcap/store-2" and d2["size_mib"] == 48
        assert d2["serial"] == s2
        assert d2["device"] != d1["device"]
        s_2 = [e for e in serial.events() if e["event"] == "settings" and e["settings_sha256"] == sha2]
        assert s_2 and s_2[0]["seq"] == 2 and s_2[0]["persistent_disks"] == [c1, c2]

        # ---- live: the first disk leaves the settings
        swap_cd(qmp, iso3)
        gone = serial.wait(
            lambda e: e.get("event") == "disk-removed" and e.get("cid") == c1, EVENT_TIMEOUT, "disk-1 removed"
        )
        assert gone["reason"] == "settings" and gone["unmounted"] is True
        assert gone["mounted"] == "/var/vcap/store"
        serial.wait(
            lambda e: e.get("event") == "applied" and e.get("settings_sha256") == sha3,
            EVENT_TIMEOUT,
            "settings 3 applied",
        )
        log1 = serial.text()
        events = serial.events()
        assert not [e for e in events if e["event"] in ("error", "<malformed>")], events
        assert len([e for e in events if e["event"] == "ready"]) == 1  # the agent never restarted

    # ---- reboot: same root disk and disks, settings 3 (only disk-2, now attached at boot)
    with run_vm(tmp_path, "boot2", root, iso3, [("eph", eph, se), ("pd2", pd2, s2)], nics) as (proc, serial, qmp, t0):
        ready = serial.wait(lambda e: e.get("event") == "ready", BOOT_TIMEOUT, "ready after reboot")
        print(f"second boot-to-ready under TCG: {time.monotonic() - t0:.1f}s")
        events = serial.events()
        assert ready["boot"] == 2 and ready["settings_sha256"] == sha3
        settings = next(e for e in events if e["event"] == "settings")
        assert settings["hostname"] == agent_id and settings["persistent_disks"] == [c2]
        disks = {(e["kind"], e["cid"]): e for e in events if e["event"] == "disk"}
        d2 = disks[("persistent", c2)]
        assert d2["resolved_by"] == "id" and d2["serial"] == s2
        assert d2["mounted"] == "/var/vcap/store"
        assert d2["formatted"] is False and d2["marker_existed"] is True
        assert disks[("ephemeral", None)]["formatted"] is False
        assert not [e for e in events if e["event"] in ("error", "<malformed>")], events

        # ACPI power button (what libvirt's shutdown sends): the guest powers off cleanly
        qmp.execute("system_powerdown")
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the guest did not power off on the ACPI power button:\n{serial.text()[-2000:]}")
        log2 = serial.text()

    for secret in SECRETS:
        assert secret not in log1 and secret not in log2, f"secret {secret} leaked on the serial console"


@needs_build
@needs_qemu
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_agent_fallbacks_and_bad_settings(image: Path, tmp_path: Path) -> None:
    """Upper-case label, openstack tree only, string disk hint (/dev/sdb -> /dev/vdb), a network
    without MAC on the only NIC, malformed settings (reported, ignored), then valid ones again."""
    root = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(root)], check=True)
    pd = tmp_path / "pd.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pd), "40M"], check=True)
    doc: dict[str, Any] = {
        "agent_id": "agent-fa11",
        "vm": {"name": "vm-fa11"},
        "mbus": "https://mbus:S3CRET-mbus-pw@192.0.2.10:6868",
        "networks": {"only": {"type": "manual", "ip": "10.0.2.20", "netmask": "255.255.255.0", "gateway": "10.0.2.2"}},
        "disks": {"persistent": {"disk-s": "/dev/sdb"}},
        "env": {"bosh": {"password": "S3CRET-env-pw"}},
    }
    iso1, iso2, iso3 = tmp_path / "a.iso", tmp_path / "b.iso", tmp_path / "c.iso"
    ud1 = make_config_drive(iso1, doc, label="CONFIG-2", ec2=False)
    bad = b'{"agent_id": "agent-fa11", "env": {"bosh": {"password": "S3CRET-env-pw"}'
    make_config_drive(iso2, bad, label="CONFIG-2", ec2=False)
    ud3 = make_config_drive(iso3, {**doc, "disks": {"persistent": {}}}, label="CONFIG-2", ec2=False)
    # no serial on the disk: only the path hint can find it
    with run_vm(tmp_path, "fb", root, iso1, [("pd", pd, "")], [("52:54:00:5f:00:09", "10.0.2.0/24")]) as (
        proc,
        serial,
        qmp,
        t0,
    ):
        ready = serial.wait(lambda e: e.get("event") == "ready", BOOT_TIMEOUT, "ready")
        events = serial.events()
        settings = next(e for e in events if e["event"] == "settings")
        assert settings["path"] == "openstack/latest/user_data"
        assert settings["settings_sha256"] == hashlib.sha256(ud1).hexdigest() == ready["settings_sha256"]
        assert settings["mbus_scheme"] == "https" and settings["ntp_count"] == 0
        assert settings["blobstore_provider"] == "" and settings["has_public_key"] is False
        net = next(e for e in events if e["event"] == "network")
        assert net["configured"] is True and net["ip"] == "10.0.2.20" and net["default_route"] is True
        assert net["iface"] == "eth0" and net["mac"] == ""
        disk = next(e for e in events if e["event"] == "disk" and e["kind"] == "persistent")
        assert disk["hint"] == "/dev/sdb" and disk["device"] == "/dev/vdb" and disk["resolved_by"] == "mapped"
        assert disk["mounted"] == "/var/vcap/store"

        swap_cd(qmp, iso2)
        error = serial.wait(lambda e: e.get("event") == "error", EVENT_TIMEOUT, "parse error")
        assert error["step"] == "parse-settings"
        swap_cd(qmp, iso3)
        gone = serial.wait(lambda e: e.get("event") == "disk-removed", EVENT_TIMEOUT, "disk-s removed")
        assert gone["cid"] == "disk-s" and gone["reason"] == "settings"
        applied = serial.wait(lambda e: e.get("event") == "applied" and e.get("seq") == 2, EVENT_TIMEOUT, "seq 2")
        assert applied["settings_sha256"] == hashlib.sha256(ud3).hexdigest()
        log = serial.text()
    assert "S3CRET" not in log
