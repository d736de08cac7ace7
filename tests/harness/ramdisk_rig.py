"""A rig that runs the deploy ramdisk in plain QEMU (TCG), for its tests and benchmark -- no libvirt, no lab
(``tests/metal/test_metal_ramdisk.py``, ``benchmarks/bench_metal_write.py``).

* :class:`ProvisioningStub` plays the provisioning API of ONE node on ``127.0.0.1:<free port>`` (the routes of
  ``metal serve`` the ramdisk and the booted OS use: instructions, images, config drive, events, root-device,
  phone-home), with token checks, and records what it was sent.  ``root-device`` is answered by the same function
  as ``metal serve`` (``instructions.render_root_device``: Ironic's hint rules over the reported disks).
  Faults for tests: serve only the first N bytes of an image (the
  connection closes early, Content-Length still announces the whole file).
* :func:`boot` starts ``qemu-system-x86_64 -accel tcg`` with ``-kernel/-initrd/-append`` (or from its first disk),
  raw sparse disk files and one user-mode NIC.  Guest traffic reaches the stub only through slirp's host address
  ``10.0.2.2`` (= 127.0.0.1 on the host); the guest is given only that address, and QEMU's ``-no-reboot`` makes the
  ramdisk's ``reboot -f``/``poweroff -f`` end the process.
* :func:`run_ramdisk` boots the ramdisk until its result event; :func:`layout_deploy` is a whole file-based
  (layout) deploy through it, and :meth:`LayoutDeploy.boot_os` boots what it deployed until the OS's login prompt
  (``tests/metal/test_metal_ramdisk_layout.py``); :func:`tiny_root_image` is a small disk image whose root
  partition looks like an OS's root filesystem to the ramdisk (for layout deploys that fail before booting it).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpi import configdrive
from cpi.providers.baremetal.instructions import HIDDEN_KEYS, render_layout_answer, render_root_device
from cpi.providers.baremetal.ramdisk.build import RamdiskArtifacts
from stemforge_base.hashing import sha256_file

GUEST_HOST = "10.0.2.2"  # slirp's address of the host (its loopback)
CHUNK = 1024 * 1024


def render_instructions(values: Mapping[str, Any]) -> str:
    """Instructions as ``metal serve`` renders them: ``SF_<KEY>='value'`` lines, ``'`` written as ``'\\''``
    (``layout`` and ``boot_mode`` are not sent: metal serve keeps them for the layout route)."""
    lines = []
    for key, value in values.items():
        if key in HIDDEN_KEYS:  # the layout document and boot mode stay with metal serve (the layout route uses them)
            continue
        text = str(value).replace("'", "'\\''")
        lines.append(f"SF_{key.upper()}='{text}'\n")
    return "".join(lines)


@dataclass
class ProvisioningStub:
    """The provisioning API for one node (see the module docstring).  Use as a context manager."""

    node: str = "node-1"
    instructions: dict[str, Any] = field(default_factory=dict)
    instructions_text: str | None = None  # served verbatim instead of ``instructions`` (malformed-input tests)
    images: dict[str, Path] = field(default_factory=dict)
    configdrive: Path | None = None
    truncate_images_at: int | None = None
    # the answer to POST layout (a layout deploy) served verbatim instead of metal serve's
    # (instructions.render_layout_answer of the job's ``layout``): malformed-answer tests
    layout_answer: str | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    phone_home_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    events: list[dict[str, Any]] = field(default_factory=list)
    disk_reports: list[dict[str, Any]] = field(default_factory=list)
    phone_homes: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ addresses
    @property
    def guest_base(self) -> str:
        return f"http://{GUEST_HOST}:{self.port}"

    @property
    def api(self) -> str:
        """What the ramdisk gets as ``sf.api``."""
        return f"{self.guest_base}/v1/nodes/{self.node}"

    def image_url(self, name: str) -> str:
        return f"{self.guest_base}/images/{name}"

    @property
    def configdrive_url(self) -> str:
        return f"{self.api}/configdrive"

    @property
    def phone_home_url(self) -> str:
        return f"{self.api}/phone-home"

    def kernel_args(self, *extra: str) -> str:
        return " ".join(
            ["console=ttyS0", "quiet", "loglevel=3", f"sf.api={self.api}", f"sf.token={self.token}", *extra]
        )

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> ProvisioningStub:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                stub._get(self)

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                stub._post(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ------------------------------------------------------------ routes
    def _authorised(self, h: http.server.BaseHTTPRequestHandler, token: str) -> bool:
        got = h.headers.get("X-Stemforge-Token", "")
        if secrets.compare_digest(got.encode(), token.encode()):
            return True
        with self._lock:
            self.rejected.append(f"{h.command} {h.path}")
        self._reply(h, 401, b"bad token\n")
        return False

    def _reply(
        self, h: http.server.BaseHTTPRequestHandler, code: int, body: bytes = b"", ctype: str = "text/plain"
    ) -> None:
        h.send_response(code)
        if code != 204:
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def _get(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(f"GET {h.path}")
        prefix = f"/v1/nodes/{self.node}/"
        if h.path == prefix + "instructions":
            if self._authorised(h, self.token):
                text = self.instructions_text
                if text is None:
                    text = render_instructions(self.instructions)
                self._reply(h, 200, text.encode())
        elif h.path == prefix + "configdrive":
            if self._authorised(h, self.token):
                if self.configdrive is None:
                    self._reply(h, 404, b"no config drive\n")
                else:
                    self._reply(h, 200, self.configdrive.read_bytes(), "application/octet-stream")
        elif h.path.startswith("/images/") and h.path[len("/images/") :] in self.images:
            self._send_file(h, self.images[h.path[len("/images/") :]])
        else:
            self._reply(h, 404, b"not found\n")

    def _send_file(self, h: http.server.BaseHTTPRequestHandler, path: Path) -> None:
        """The file, or one ``Range: bytes=A-B`` of it (206 with Content-Range; 416 when outside the file)."""
        total = path.stat().st_size
        start, size = 0, total
        wanted = h.headers.get("Range", "")
        if wanted:
            m = re.fullmatch(r"bytes=(\d+)-(\d+)", wanted.strip())
            if m is None or int(m[1]) > int(m[2]) or int(m[2]) >= total:
                self._reply(h, 416, f"bad range {wanted!r} for {total} bytes\n".encode())
                return
            start, size = int(m[1]), int(m[2]) - int(m[1]) + 1
        limit = size if self.truncate_images_at is None else min(size, self.truncate_images_at)
        h.send_response(206 if wanted else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(size))
        if wanted:
            h.send_header("Content-Range", f"bytes {start}-{start + size - 1}/{total}")
        h.end_headers()
        sent = 0
        with open(path, "rb") as fh, contextlib.suppress(OSError):
            fh.seek(start)
            while sent < limit:
                chunk = fh.read(min(CHUNK, limit - sent))
                if not chunk:
                    break
                h.wfile.write(chunk)
                sent += len(chunk)
        if sent < size:
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.wfile.flush()
                h.connection.shutdown(2)

    def _post(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(f"POST {h.path}")
        length = int(h.headers.get("Content-Length", "0") or 0)
        body = h.rfile.read(length) if length else b""
        prefix = f"/v1/nodes/{self.node}/"
        if h.path == prefix + "root-device":
            if self._authorised(h, self.token):
                self._root_device(h, body)
            return
        if h.path == prefix + "layout":
            if self._authorised(h, self.token):
                self._layout(h, body)
            return
        if h.path == prefix + "events":
            if not self._authorised(h, self.token):
                return
            target = self.events
        elif h.path == prefix + "phone-home":
            if not self._authorised(h, self.phone_home_token):
                return
            target = self.phone_homes
        else:
            self._reply(h, 404, b"not found\n")
            return
        try:
            doc = json.loads(body)
        except ValueError as exc:
            self._reply(h, 400, f"bad JSON: {exc}\n".encode())
            return
        if not isinstance(doc, dict):
            self._reply(h, 400, b"bad JSON: not an object\n")
            return
        doc["_received"] = time.monotonic()
        with self._lock:
            target.append(doc)
        self._reply(h, 204)

    def _root_device(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            report = json.loads(body)
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
            text = render_root_device(self.node, self.instructions, report)
        except ValueError as exc:
            self._reply(h, 400, f"bad disk report: {exc}\n".encode())
            return
        with self._lock:
            self.disk_reports.append(report)
        self._reply(h, 200, text.encode())

    def _layout(self, h: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            report = json.loads(body)
            if not isinstance(report, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            self._reply(h, 400, f"bad disk report: {exc}\n".encode())
            return
        with self._lock:
            self.disk_reports.append(report)
        text = self.layout_answer
        if text is None:
            try:
                text = render_layout_answer(self.node, self.instructions, report)
            except ValueError as exc:
                self._reply(h, 400, f"bad disk report: {exc}\n".encode())
                return
        self._reply(h, 200, text.encode())

    # ------------------------------------------------------------ waiting
    def stages(self) -> list[str]:
        with self._lock:
            return [e["stage"] for e in self.events if e.get("kind") == "stage"]

    def result(self) -> dict[str, Any] | None:
        with self._lock:
            return next((e for e in self.events if e.get("kind") == "result"), None)

    def wait(
        self, predicate: Callable[[ProvisioningStub], Any], timeout: float, vm: Vm | None = None, what: str = "event"
    ) -> Any:
        """Poll ``predicate(self)`` until it returns something truthy; raise TimeoutError (with the console tail)
        after ``timeout`` s or, when ``vm`` is given and ``predicate`` is still false, once QEMU has exited."""
        deadline = time.monotonic() + timeout
        while True:
            got = predicate(self)
            if got:
                return got
            exited = vm is not None and vm.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                if exited:
                    time.sleep(0.5)
                    got = predicate(self)
                    if got:
                        return got
                why = "QEMU exited" if exited else f"timed out after {timeout:.0f}s"
                tail = vm.console()[-3000:] if vm is not None else ""
                raise TimeoutError(f"{why} waiting for {what}; events {self.events[-6:]}\nconsole:\n{tail}")
            time.sleep(0.2)


@dataclass
class Disk:
    """A disk of the guest: a raw (sparse) file, optionally with a serial; ``bus`` virtio or sata;
    ``write_mib_s`` > 0 limits its write bandwidth (QEMU block throttling), to emulate a disk of that speed;
    ``discard``: the guest's discards and write-zeroes punch holes in the file (``discard=unmap``), as a thin
    provisioned or SSD-backed disk; otherwise QEMU ignores discards (the data stays: a disk that announces discard
    and does not honour it)."""

    path: Path
    serial: str = ""
    bus: str = "virtio"
    write_mib_s: float = 0
    discard: bool = False


@dataclass
class Vm:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float

    def console(self) -> str:
        try:
            return self.log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def sparse_disk(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def sparse_disks(workdir: Path, *specs: tuple[str, int]) -> list[Disk]:
    """One virtio disk per ``(serial, size in bytes)``: a new sparse raw file ``workdir/d<i>.raw``."""
    return [Disk(sparse_disk(workdir / f"d{i}.raw", size), serial) for i, (serial, size) in enumerate(specs)]


@contextlib.contextmanager
def boot(
    workdir: Path,
    tag: str,
    disks: list[Disk],
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    append: str = "",
    mac: str = "52:54:00:5f:aa:01",
    memory_mib: int = 384,
    smp: int = 1,
    cpu: str = "max",
) -> Iterator[Vm]:
    """Run one QEMU guest (TCG, q35); kill it on exit of the block.  Direct kernel boot when ``kernel`` is given,
    else from the first disk (BIOS)."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 is not installed")
    log = workdir / f"console-{tag}.log"
    cmd = [
        qemu,
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        str(memory_mib),
        "-smp",
        str(smp),
        "-cpu",
        cpu,
        "-nographic",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        f"file:{log}",
        "-netdev",
        "user,id=n0,ipv6=off",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
    ]
    if kernel is not None:
        cmd += ["-kernel", str(kernel), "-append", append]
        if initrd is not None:
            cmd += ["-initrd", str(initrd)]
    sata = 0
    for i, d in enumerate(disks):
        throttle = f",throttling.bps-write={int(d.write_mib_s * 1024 * 1024)}" if d.write_mib_s > 0 else ""
        unmap = ",discard=unmap,detect-zeroes=unmap" if d.discard else ""
        cmd += ["-drive", f"if=none,id=d{i},file={d.path},format=raw,cache=unsafe{throttle}{unmap}"]
        if d.bus == "sata":
            cmd += ["-device", f"ide-hd,drive=d{i},bus=ide.{sata}" + (f",serial={d.serial}" if d.serial else "")]
            sata += 1
        else:
            dev = f"virtio-blk-pci,drive=d{i}" + (f",serial={d.serial}" if d.serial else "")
            if i == 0 and kernel is None:
                dev += ",bootindex=1"
            cmd += ["-device", dev]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    vm = Vm(proc=proc, log=log, started=time.monotonic())
    try:
        yield vm
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


BOOT_TIMEOUT = 150.0  # s: the ramdisk booted under TCG until its result event


def deploy_instructions(stub: ProvisioningStub, image: Path, **over: Any) -> dict[str, Any]:
    """The ``deploy`` instructions ``metal serve`` would hand the ramdisk for ``image`` served by ``stub``; ``over``
    replaces fields."""
    doc: dict[str, Any] = {
        "mode": "deploy",
        "image_url": stub.image_url(image.name),
        "image_sha256": sha256_file(image),
        "image_size": image.stat().st_size,
        "image_format": "raw",
        "configdrive_url": stub.configdrive_url,
        "root_hints": "",
        "heartbeat_s": 2,
    }
    doc.update(over)
    return doc


def run_ramdisk(
    tmp_path: Path,
    tag: str,
    stub: ProvisioningStub,
    ramdisk: RamdiskArtifacts,
    disks: list[Disk],
    *,
    timeout: float = BOOT_TIMEOUT,
    memory_mib: int = 384,
) -> dict[str, Any]:
    """Boot the ramdisk until its result event (at most ``timeout`` s); a success must end QEMU (reboot/poweroff),
    a failure keeps it up.  Returns the result event.  The token must not be on the console."""
    t0 = time.monotonic()
    with boot(
        tmp_path, tag, disks, kernel=ramdisk.kernel, initrd=ramdisk.initrd, append=stub.kernel_args(),
        memory_mib=memory_mib,
    ) as vm:  # fmt: skip
        result = stub.wait(lambda s: s.result(), timeout, vm, f"the ramdisk's result ({tag})")
        if result["ok"]:
            vm.wait_exit(30)
        else:
            time.sleep(0.5)
            assert vm.proc.poll() is None, "a failed ramdisk must stay up for the provider to power it off"
        console = vm.console()
    print(f"{tag}: result after {time.monotonic() - t0:.1f}s: {result}")
    assert stub.token not in console
    assert stub.rejected == []
    return result


@dataclass
class LayoutDeploy:
    """What :func:`layout_deploy` did: the stub (serving while the block runs; its records stay afterwards), the
    ramdisk's result event, the disks, the config drive written for ``hostname`` and the deploy's duration."""

    stub: ProvisioningStub
    result: dict[str, Any]
    disks: list[Disk]
    configdrive: Path
    hostname: str
    seconds: float
    workdir: Path

    def boot_os(self, tag: str, timeout: float, *, memory_mib: int = 1024) -> str:
        """Boot the deployed disks (from the first one, BIOS) and wait at most ``timeout`` s for the deployed OS's
        login prompt ``<hostname> login:`` on its serial console (raises TimeoutError with the console's tail, also
        as soon as QEMU exits without it). Kills the guest and returns its console."""
        t0 = time.monotonic()
        with boot(self.workdir, tag, self.disks, memory_mib=memory_mib) as vm:
            prompt = f"{self.hostname} login:"
            self.stub.wait(lambda s: prompt in vm.console(), timeout, vm, "the deployed OS's login prompt")
            console = vm.console()
        print(f"{tag}: the deployed OS is up after {time.monotonic() - t0:.1f}s")
        return console


@contextlib.contextmanager
def layout_deploy(
    workdir: Path,
    tag: str,
    ramdisk: RamdiskArtifacts,
    image: Mapping[str, Any],
    layout: Mapping[str, Any],
    disks: Sequence[Disk],
    *,
    hostname: str,
    timeout: float = BOOT_TIMEOUT,
    memory_mib: int = 384,
    layout_answer: str | None = None,
) -> Iterator[LayoutDeploy]:
    """One file-based deploy of ``image`` onto ``disks`` with ``layout``, as ``metal serve`` drives it (the job of
    ``SF_DEPLOY_KIND='layout'``): a :class:`ProvisioningStub` serving ``image`` (``path`` of the raw image,
    ``offset``/``size``/``sha256`` of its root partition's bytes) and a config drive for ``hostname``
    (``workdir/cd.iso``), the layout job (answered by ``instructions.render_layout_answer`` of ``layout``, or by
    ``layout_answer`` verbatim), then the ramdisk booted with ``memory_mib`` until its result event
    (:func:`run_ramdisk`: at most ``timeout`` s; a success must end QEMU and a failure keep it up; the token never
    on the console, no request refused). Yields a :class:`LayoutDeploy` whatever the result (the caller asserts
    on it); the stub serves until the block ends (for :meth:`LayoutDeploy.boot_os`)."""
    path = Path(image["path"])
    with ProvisioningStub(images={path.name: path}, layout_answer=layout_answer) as stub:
        settings = {"agent_id": hostname, "vm": {"name": hostname}, "networks": {}, "disks": {"persistent": {}},
                    "env": {}}  # fmt: skip
        files = configdrive.files_for(settings, instance_uuid=hostname, hostname=hostname, network_data={"links": []})
        stub.configdrive = configdrive.write_iso(workdir / "cd.iso", files)
        stub.instructions = {
            "mode": "deploy",
            "deploy_kind": "layout",
            "layout": dict(layout),
            "boot_mode": layout["boot_mode"],
            "rootfs_url": stub.image_url(path.name),
            "rootfs_offset": image["offset"],
            "rootfs_size": image["size"],
            "rootfs_sha256": image["sha256"],
            "rootfs_format": image.get("format", "raw"),
            "rootfs_fstype": "ext4",
            "configdrive_url": stub.configdrive_url,
            "heartbeat_s": 5,
        }
        t0 = time.monotonic()
        result = run_ramdisk(workdir, tag, stub, ramdisk, list(disks), timeout=timeout, memory_mib=memory_mib)
        yield LayoutDeploy(stub, result, list(disks), stub.configdrive, hostname, time.monotonic() - t0, workdir)


#: A stand-in program of :func:`tiny_root_image`: present and executable (what the ramdisk's ``in_target`` checks),
#: refusing to run (nothing may use the tiny root filesystem as an OS)
STAND_IN = "#!/bin/sh\necho 'a stand-in of the stemforge test root filesystem: not a real program' >&2\nexit 1\n"


def tiny_root_image(
    workdir: Path, *, programs: Sequence[str], dirs: Sequence[str] = (), size_mib: int = 64, filler_mib: int = 4
) -> dict[str, Any]:
    """A small GPT disk image ``workdir/tiny-root.raw`` whose one partition (1 MiB in, ``size_mib`` MiB) is an ext4
    root filesystem made on the host with ``mkfs.ext4 -d`` from a small usr-merged tree: ``/etc/fstab`` (one
    ``UUID=`` line for ``/``, which a layout deploy replaces), ``/etc/hostname``, ``/etc/os-release``, ``/boot``,
    ``/var/lib/dpkg/info``, ``bin``/``sbin``/``lib`` -> ``usr/...``, ``filler_mib`` MiB of random bytes
    (``/usr/share/stemforge/filler``: the stream carries data, not only metadata), each of ``programs`` as an
    executable stand-in under ``/usr/sbin`` (:data:`STAND_IN`) and each of ``dirs`` (paths relative to ``/``) with
    one file in it. What the ramdisk's ``lay_requirements`` (``ramdisk/layout.sh``) looks for in a target is
    exactly what ``programs`` and ``dirs`` give; the rest of an OS is absent, so the image cannot boot: it is for
    layout deploys that fail at stage ``target`` (a ~1.2 GiB Debian root filesystem streams at 2-4 MiB/s under
    TCG; this one in seconds).

    Returns what :func:`layout_deploy` takes as ``image``: ``path``, ``offset``/``size``/``sha256`` of the root
    partition's bytes."""
    mib = 1024 * 1024
    tree = workdir / "tiny-root"
    for d in ("etc", "boot", "usr/sbin", "usr/bin", "usr/lib", "usr/share/stemforge", "var/lib/dpkg/info", "tmp",
              "root", "dev", "proc", "sys", "run"):  # fmt: skip
        (tree / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib"):
        (tree / link).symlink_to(f"usr/{link}")
    (tree / "etc/fstab").write_text(
        "# /etc/fstab of the stemforge tiny test root filesystem\n"
        "UUID=00000000-0000-4000-8000-000000000000 / ext4 errors=remount-ro 0 1\n"
    )
    (tree / "etc/hostname").write_text("sf-tiny-root\n")
    (tree / "etc/os-release").write_text('PRETTY_NAME="stemforge tiny test root filesystem"\nID=stemforge-tiny\n')
    (tree / "var/lib/dpkg/info/base-files.list").write_text("/.\n/etc\n/etc/os-release\n")
    (tree / "usr/share/stemforge/filler").write_bytes(os.urandom(filler_mib * mib))
    for name in programs:
        prog = tree / "usr/sbin" / name
        prog.write_text(STAND_IN)
        prog.chmod(0o755)
    for d in dirs:
        (tree / d).mkdir(parents=True, exist_ok=True)
        (tree / d / "README").write_text("stemforge tiny test root filesystem\n")
    root = workdir / "tiny-root.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "sf-tiny-root", "-d", str(tree), str(root), f"{size_mib}M"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    offset, size = mib, size_mib * mib
    assert root.stat().st_size == size, root.stat()
    raw = workdir / "tiny-root.raw"
    with open(raw, "wb") as out, open(root, "rb") as src:
        out.truncate(offset + size + mib)  # the backup GPT in the last MiB
        out.seek(offset)
        shutil.copyfileobj(src, out, 8 * mib)
    digest = hashlib.sha256()
    with open(root, "rb") as fh:
        for chunk in iter(lambda: fh.read(8 * mib), b""):
            digest.update(chunk)
    root.unlink()
    script = f"label: gpt\nunit: sectors\n\nstart={offset // 512}, size={size // 512}, type=linux, name=root\n"
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(raw)], input=script.encode(), check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    return {"path": raw, "offset": offset, "size": size, "sha256": digest.hexdigest()}
