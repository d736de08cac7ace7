"""The qemu build as Packer-style steps (``stemforge_base.steps.Step``), in Packer's order.

Each step records what it created in the shared ``state`` dict and its ``cleanup`` removes exactly that, so any
failure, Ctrl-C, SIGTERM or failpoint leaves nothing behind: no QEMU process, no temporary file (CD image, QMP
socket directory, partial download, ``.convert`` file), no temporary key, and no output directory (it is removed
unless the build succeeded). Steps marked ``temporary`` are also cleaned up after a successful build.

State keys: ``iso_path``, ``output_dir_created``, ``cd_path``, ``disk_paths``, ``ssh_key`` (private key text, never
logged), ``http_server``, ``vm`` (QemuProcess), ``vm_tmp``, ``communicator``, ``convert_tmp``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builders.builder_types._sdk.communicator import SSHTarget, format_duration
from builders.builder_types._sdk.communicator import StepConnect as SdkStepConnect
from builders.builder_types.qemu import boot_command as bootcmd
from builders.builder_types.qemu import cdrom, disk, iso
from builders.builder_types.qemu.config import QemuConfig, disk_size_bytes
from builders.builder_types.qemu.floppy import StepCreateFloppy
from builders.builder_types.qemu.http_server import HTTPServer
from builders.builder_types.qemu.qemu_process import (
    GUEST_HTTP_IP,
    RELAY_SCRIPT,
    LaunchPlan,
    QemuProcess,
    command_line,
    find_binary,
)
from builders.core import BuildContext, BuildError, BuildStep, ProvisionHook, StepProvision
from stemforge_base.steps import Step

if TYPE_CHECKING:
    from builders.communicators.ssh import SSHCommunicator

LOG = logging.getLogger("stemforge.builders.qemu")

#: Generated-data keys that hold secrets (never logged, kept out of the artifact).
SECRET_KEYS = ("SSHPrivateKey", "Password")


# ---------------------------------------------------------------- source


class StepDownload(BuildStep[QemuConfig]):
    """Find, fetch and verify the ISO or disk image (state ``iso_path``)."""

    name = "download"
    temporary = True  # its cleanup only removes a partial download

    def run(self, state: dict[str, Any]) -> None:
        checksum = iso.parse_checksum(self.cfg.iso_checksum)
        failures = []
        for url in self.cfg.iso_urls:
            self.ctx.check_cancelled()
            try:
                state["iso_path"] = self._fetch(url, checksum, state)
                if self.cfg.disk_image:  # judged before QEMU or qemu-img ever open it as a disk
                    disk.check_source_image(Path(state["iso_path"]))
                return
            except (iso.SourceError, iso.ChecksumError, OSError) as exc:
                failures.append(f"{url}: {exc}")
                self.ui.error(f"Error downloading {url}: {exc}")
                if len(self.cfg.iso_urls) > 1:
                    self.ui.message("Trying the next URL...")
        raise BuildError("Error downloading ISO: " + "; ".join(failures))

    def _fetch(self, url: str, checksum: iso.Checksum, state: dict[str, Any]) -> Path:
        resolved = iso.resolve_checksum(checksum, url, self.ctx.template_dir)
        if not iso.is_remote(url):
            path = iso.local_path(url, self.ctx.template_dir)
            if not path.is_file():
                raise iso.SourceError(f"{path} does not exist")
            self.ui.say(f"Using local source {path}")
            self._verify(path, resolved)
            return path.resolve()
        target = Path(self.cfg.iso_target_path) if self.cfg.iso_target_path else iso.cache_target(
            url, checksum, self.cfg.iso_target_extension)
        if target.is_file() and resolved.kind != "none":
            try:
                self._verify(target, resolved)
                self.ui.say(f"Using cached download {target}")
                return target.resolve()
            except iso.ChecksumError:
                self.ui.message(f"cached {target} does not match the checksum; downloading again")
        part = target.with_name(f".{target.name}.part-{os.getpid()}")
        state["download_part"] = part
        self.ui.say(f"Downloading {url}")
        try:
            iso.download(url, target, part, progress=lambda d, t: self.ui.progress(f"download {target.name}", d, t),
                         check_cancel=self.ctx.check_cancelled)
            self._verify(part, resolved)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
            state.pop("download_part", None)
        return target.resolve()

    def _verify(self, path: Path, checksum: iso.Checksum) -> None:
        if checksum.kind == "none":
            return
        self.ui.message(f"Verifying {checksum.kind} checksum of {path.name}")
        got = iso.file_digest(path, checksum.kind,
                              progress=lambda d, t: self.ui.progress(f"checksum {path.name}", d, t),
                              check_cancel=self.ctx.check_cancelled)
        if got != checksum.value:
            raise iso.ChecksumError(f"Checksums did not match for {path}.\nExpected: {checksum.value}\n"
                                    f"Got: {got}")

    def cleanup(self, state: dict[str, Any]) -> None:
        part = state.pop("download_part", None)
        if part is not None:
            Path(part).unlink(missing_ok=True)


# ---------------------------------------------------------------- output directory


class StepPrepareOutputDir(BuildStep[QemuConfig]):
    """Create ``output_directory`` (deleting a previous one with ``-force``); remove it unless the build
    succeeded."""

    name = "output_dir"

    def run(self, state: dict[str, Any]) -> None:
        out = self.cfg.output_directory
        if out.exists() or out.is_symlink():
            if not self.ctx.force:
                raise BuildError(f"Output directory '{out}' already exists. It must not exist.")
            self.ui.say("Deleting previous output directory...")
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            else:
                out.unlink()
        out.mkdir(parents=True)
        state["output_dir_created"] = out

    def cleanup(self, state: dict[str, Any]) -> None:
        out = state.pop("output_dir_created", None)
        if out is not None and Path(out).exists():
            self.ui.say("Deleting output directory...")
            for _ in range(5):
                try:
                    shutil.rmtree(out)
                    break
                except OSError as exc:
                    LOG.warning("error removing output directory %s: %s", out, exc)
                    time.sleep(1)


# ---------------------------------------------------------------- temporary SSH key


class StepTempSSHKey(BuildStep[QemuConfig]):
    """Packer's temporary key pair (when neither ``ssh_password`` nor ``ssh_private_key_file`` is set): its public
    key is the generated data ``SSHPublicKey`` (for ``cd_files`` seeds and ``boot_command``); the private key stays
    in memory and is dropped in cleanup."""

    name = "ssh_keygen"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.communicator != "ssh":
            return
        if cfg.ssh_private_key_file:
            state["ssh_key"] = Path(cfg.ssh_private_key_file).read_text()
            self.ctx.generated["SSHPrivateKey"] = state["ssh_key"]
            return
        if not cfg.temporary_key:
            return
        self.ui.say(f"Creating temporary {cfg.temporary_key_pair_type} SSH key for instance...")
        private, public = generate_key_pair(cfg.temporary_key_pair_type, cfg.temporary_key_pair_bits,
                                            comment=f"packer_{self.ctx.run_uuid[:8]}")
        state["ssh_key"] = private
        state["ssh_public_key"] = public
        self.ctx.generated["SSHPublicKey"] = public
        self.ctx.generated["SSHPrivateKey"] = private

    def cleanup(self, state: dict[str, Any]) -> None:
        if state.pop("ssh_public_key", None) is not None:
            self.ui.say("Deleting temporary SSH key pair...")
        state.pop("ssh_key", None)
        self.ctx.generated.pop("SSHPrivateKey", None)


def generate_key_pair(kind: str, bits: int = 0, comment: str = "packer") -> tuple[str, str]:
    """A new key pair: (OpenSSH private key text, ``authorized_keys`` line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key: Any
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits or 4096)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


# ---------------------------------------------------------------- CD


class StepCreateCD(BuildStep[QemuConfig]):
    """``cd_files``/``cd_content`` -> a temporary ISO (state ``cd_path``), rendered through ``ctx.render`` so
    ``{{ build `SSHPublicKey` }}`` works in a cloud-init seed."""

    name = "create_cd"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.cd_files and not cfg.cd_content:
            return
        self.ui.say("Creating CD disk...")
        label = cfg.cd_label or "packer"
        try:
            entries = cdrom.collect(cfg.cd_files, {}, [Path.cwd(), self.ctx.template_dir])
        except cdrom.CDError as exc:
            raise BuildError(f"Error creating temporary file for CD: {exc}") from None
        data: dict[str, bytes] = {}
        render = self.ctx.render
        for rel, src in entries.items():
            raw = src.read_bytes() if isinstance(src, Path) else src
            data[rel] = cdrom.render_text(raw, render)
        for rel, content in cfg.cd_content.items():
            data[rel.lstrip("/")] = str(render(content)).encode()
        fd, tmp = tempfile.mkstemp(prefix="packer", suffix=".iso")
        os.close(fd)
        state["cd_path"] = Path(tmp)
        try:
            cdrom.write_iso(data, label, Path(tmp))
        except cdrom.CDError as exc:
            raise BuildError(str(exc)) from None
        self.ui.message(f"CD {label!r} with {len(data)} file(s): " + ", ".join(sorted(data)))

    def cleanup(self, state: dict[str, Any]) -> None:
        path = state.pop("cd_path", None)
        if path is not None:
            LOG.debug("Deleting CD disk: %s", path)
            Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------- disks


class StepCreateDisk(BuildStep[QemuConfig]):
    """Create the main disk (installer builds, or a ``use_backing_file`` overlay) and ``disk_additional_size``
    disks (state ``disk_paths``)."""

    name = "create_disk"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        paths = [cfg.disk_path] + [cfg.output_directory / f"{cfg.vm_name}-{i + 1}"
                                   for i in range(len(cfg.disk_additional_size))]
        sizes = [cfg.disk_size, *cfg.disk_additional_size]
        state["disk_paths"] = paths
        if cfg.use_backing_file or cfg.disk_additional_size:
            self.ui.say("Creating required virtual machine disks")
        for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
            if i == 0 and cfg.disk_image and not cfg.use_backing_file:
                continue  # the copy step makes it
            cmd = [disk.qemu_img(), "create", "-f", cfg.format]
            if i == 0 and cfg.use_backing_file:
                source = Path(state["iso_path"])
                src_fmt = disk.image_info(source).get("format", "qcow2")
                cmd += ["-b", str(source.resolve()), "-F", str(src_fmt)]
                if not cfg.skip_resize_disk:
                    size = self._at_least_source(size, source)
            cmd += [*cfg.qemu_img_args.get("create", []), str(path), size]
            if i == 0 and not cfg.disk_image:
                self.ui.say("Creating hard drive...")
            disk.run_tool(cmd, cancel=self.ctx.cancel, timeout=600, what="qemu-img create")

    def _at_least_source(self, size: str, source: Path) -> str:
        virtual = int(disk.image_info(source).get("virtual-size", 0))
        if disk_size_bytes(size) < virtual:
            raise BuildError(f"disk_size {size} is smaller than the source image's virtual size {virtual} bytes; "
                             "stemforge does not shrink disks")
        return size


class StepCopyDisk(BuildStep[QemuConfig]):
    """``disk_image`` without a backing file: copy (same format) or convert the source into the output disk."""

    name = "copy_disk"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.disk_image or cfg.use_backing_file:
            return
        source = Path(state["iso_path"])
        target = cfg.disk_path
        src_fmt = str(disk.image_info(source).get("format", ""))
        self.ui.say("Copying hard drive...")
        if src_fmt == cfg.format and not cfg.qemu_img_args.get("convert"):
            _copy_sparse(source, target, lambda d, t: self.ui.progress(f"copy {source.name}", d, t),
                         self.ctx.check_cancelled)
            return
        disk.convert(source, target, cfg.format, extra=cfg.qemu_img_args.get("convert", []),
                     cancel=self.ctx.cancel, source_format=src_fmt or None,
                     progress=lambda d, t: self.ui.progress(f"convert {source.name}", d, t))


def _copy_sparse(source: Path, target: Path, progress: Any, check_cancel: Any) -> None:
    """Copy keeping holes (SEEK_DATA/SEEK_HOLE)."""
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        fd_in, fd_out = src.fileno(), dst.fileno()
        pos = 0
        while pos < size:
            check_cancel()
            try:
                pos = os.lseek(fd_in, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd_in, pos, os.SEEK_HOLE)
            while pos < end:
                n = os.copy_file_range(fd_in, fd_out, min(64 << 20, end - pos), pos, pos)
                if n <= 0:
                    raise BuildError(f"copy of {source} stopped at byte {pos}")
                pos += n
                progress(pos, size)
                check_cancel()
        os.ftruncate(fd_out, size)


class StepResizeDisk(BuildStep[QemuConfig]):
    """``qemu-img resize`` to ``disk_size`` for ``disk_image`` builds (unless ``skip_resize_disk``); never
    shrinks."""

    name = "resize_disk"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.disk_image or cfg.skip_resize_disk:
            return
        path = cfg.disk_path
        virtual = int(disk.image_info(path).get("virtual-size", 0))
        want = disk_size_bytes(cfg.disk_size)
        if want < virtual:
            raise BuildError(f"disk_size {cfg.disk_size} is smaller than the image's virtual size {virtual} bytes; "
                             "stemforge does not shrink disks")
        if want == virtual:
            return
        self.ui.say("Resizing hard drive...")
        disk.run_tool([disk.qemu_img(), "resize", "-f", cfg.format, *cfg.qemu_img_args.get("resize", []),
                       str(path), cfg.disk_size], cancel=self.ctx.cancel, timeout=600, what="qemu-img resize")


# ---------------------------------------------------------------- HTTP server


class StepHTTPServer(BuildStep[QemuConfig]):
    """Serve ``http_directory``/``http_content`` on 127.0.0.1 (state ``http_server``)."""

    name = "http_server"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not cfg.http_directory and not cfg.http_content:
            return
        directory = None
        if cfg.http_directory:
            directory = Path(cfg.http_directory)
            if not directory.is_dir():
                directory = self.ctx.template_dir / cfg.http_directory
        server = HTTPServer(directory, cfg.http_content)
        try:
            port = server.start(cfg.http_port_min, cfg.http_port_max)
        except OSError as exc:
            raise BuildError(f"Error finding port: {exc}") from None
        state["http_server"] = server
        self.ui.say(f"Starting HTTP server on port {port}")
        self.ctx.generated.update({"PackerHTTPIP": GUEST_HTTP_IP, "PackerHTTPPort": str(port),
                                   "PackerHTTPAddr": f"{GUEST_HTTP_IP}:{port}"})

    def cleanup(self, state: dict[str, Any]) -> None:
        server = state.pop("http_server", None)
        if server is not None:
            server.stop()


# ---------------------------------------------------------------- QEMU


class StepRun(BuildStep[QemuConfig]):
    """Pick the loopback SSH port, build the command line and start QEMU (state ``vm``); cleanup stops it."""

    name = "run_vm"
    temporary = True

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        binary = find_binary(cfg.qemu_binary)
        accel = choose_accelerator(cfg.accelerator, self.ui)
        tmp = Path(tempfile.mkdtemp(prefix="stemforge-qemu-"))
        state["vm_tmp"] = tmp
        qmp_dir = tmp
        if len(str(tmp / "qmp.sock")) > UNIX_PATH_MAX:
            # a long TMPDIR: the socket gets a short private directory of its own (AF_UNIX paths are <= 107 bytes)
            qmp_dir = Path(tempfile.mkdtemp(prefix="sf-qmp-", dir="/tmp"))
            state["vm_qmp_tmp"] = qmp_dir
        if not cfg.headless:
            self.ui.message("headless is false, but no GUI is opened: QEMU runs with -display none and the "
                            "serial console is logged")
        cds: list[Path] = []
        if not cfg.disk_image:
            cds.append(Path(state["iso_path"]))
        if state.get("cd_path"):
            cds.append(Path(state["cd_path"]))
        http = state.get("http_server")
        relay = None
        if http is not None:
            relay = tmp / "http-relay.py"
            relay.write_text(RELAY_SCRIPT)
        from builders.communicators.ssh import free_loopback_port

        attempts = 5 if cfg.communicator == "ssh" else 1
        for attempt in range(1, attempts + 1):
            self.ctx.check_cancelled()
            port = free_loopback_port(cfg.host_port_min, cfg.host_port_max) if cfg.communicator == "ssh" else None
            plan = LaunchPlan(accel=accel, disks=list(state["disk_paths"]), cd_paths=cds,
                              qmp_path=Path(cfg.qmp_socket_path) if cfg.qmp_socket_path else qmp_dir / "qmp.sock",
                              serial_path=tmp / "console.log", ssh_host_port=port,
                              http_port=http.port if http else None, http_relay=relay,
                              floppy_path=state.get("floppy_path"))
            argv = command_line(cfg, plan, binary, render=self.ctx.render)
            for w in plan.warnings:
                self.ui.message(f"WARNING: {w}")
            if cfg.qemuargs and attempt == 1:
                self.ui.say("Overriding default Qemu arguments with qemuargs template option...")
            if port:
                self.ui.say(f"Found port for communicator (SSH, WinRM, etc): {port}.")
            self.ui.say("Starting VM, booting disk image" if cfg.disk_image else "Starting VM, booting from CD-ROM")
            LOG.debug("qemu command line: %s", " ".join(argv))
            vm = QemuProcess(argv, tmp / "qemu.log", plan.qmp_path, plan.serial_path)
            state["vm"] = vm
            try:
                vm.start()
            except BuildError as exc:
                vm.kill()
                if ("hostfwd" in str(exc) or "host forwarding" in str(exc)) and attempt < attempts:
                    LOG.info("SSH port %s was taken before QEMU bound it; retrying", port)
                    continue
                raise
            state["ssh_host_port"] = port
            state["accelerator"] = accel
            if port:
                self.ctx.generated.update({"Host": "127.0.0.1", "Port": str(port)})
            self.ctx.generated["ID"] = cfg.vm_name
            return

    def cleanup(self, state: dict[str, Any]) -> None:
        vm: QemuProcess | None = state.pop("vm", None)
        if vm is not None and vm.running():
            self.ui.say("Stopping the VM...")
            vm.stop()
        elif vm is not None:
            vm.kill()
        for key in ("vm_tmp", "vm_qmp_tmp"):
            tmp = state.pop(key, None)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


UNIX_PATH_MAX = 107
"""The longest path an AF_UNIX socket can bind on Linux (``sun_path`` is 108 bytes with its NUL)."""


def choose_accelerator(mode: str, ui: Any) -> str:
    """``auto``: KVM only when the CPI's bounded probe proves it runs guests, else TCG."""
    if mode in ("kvm", "tcg", "none"):
        return mode
    from cpi.providers.libvirt import accel

    base = os.environ.get("STEMFORGE_CACHE") or os.path.expanduser("~/.cache/stemforge")
    state_dir = Path(base) / "qemu-builder"
    state_dir.mkdir(parents=True, exist_ok=True)
    chosen = "kvm" if accel.choose("auto", state_dir, LOG) == accel.KVM else "tcg"
    ui.message(f"accelerator auto: using {chosen}")
    if chosen == "tcg":
        ui.message("WARNING: The VM will be started with no hardware acceleration (TCG).\n"
                   "The installation may take considerably longer to finish.")
    return chosen


class StepTypeBootCommand(BuildStep[QemuConfig]):
    """Wait ``boot_wait`` then type ``boot_command`` through the QEMU monitor."""

    name = "boot_command"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        vm: QemuProcess = state["vm"]
        if cfg.boot_wait > 0:
            self.ui.say(f"Waiting {format_duration(cfg.boot_wait)} for boot...")
            self._wait_alive(vm, cfg.boot_wait)
        if not cfg.boot_command:
            return
        http = state.get("http_server")
        data = {"HTTPIP": GUEST_HTTP_IP, "HTTPPort": http.port if http else 0, "Name": cfg.vm_name,
                "SSHPublicKey": self.ctx.generated.get("SSHPublicKey", "")}
        try:
            text = bootcmd.render_fields("".join(cfg.boot_command), data, self.ctx.render)
            actions = bootcmd.parse_boot_command(text)
        except bootcmd.BootCommandError as exc:
            raise BuildError(f"Error preparing boot command: {exc}") from None
        self.ui.say("Typing the boot command through the QEMU monitor...")

        def send(name: str, args: dict[str, object]) -> object:
            if not vm.running():
                raise BuildError(f"Error running boot command: {vm.exit_reason()}")
            return vm.command(name, args)

        bootcmd.type_actions(actions, send, self.sleep, cfg.boot_key_interval)

    def _wait_alive(self, vm: QemuProcess, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not vm.running():
                raise BuildError(f"the VM stopped during boot_wait: {vm.exit_reason()}")
            self.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------- communicator and provisioning


class StepConnect(SdkStepConnect[QemuConfig]):
    """Wait for SSH through the loopback host-forward (state ``communicator``); fills the generated data."""

    generated_password = True
    log = LOG

    def target(self, state: dict[str, Any]) -> SSHTarget:
        vm: QemuProcess = state["vm"]
        return SSHTarget(self.cfg.ssh_host, int(state["ssh_host_port"]), state.get("ssh_key"), vm.exit_reason)


class StepCleanupTempKeys(BuildStep[QemuConfig]):
    """With ``ssh_clear_authorized_keys``: remove the temporary public key from the guest's authorized_keys."""

    name = "cleanup_temp_keys"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if not (cfg.ssh_clear_authorized_keys and cfg.temporary_key and state.get("ssh_public_key")):
            return
        comm: SSHCommunicator = state["communicator"]
        self.ui.say("Trying to remove ephemeral keys from authorized_keys files")
        key = str(state["ssh_public_key"]).split()[1]
        pattern = key.replace("/", "\\/").replace("+", "\\+")
        for target in ("~/.ssh/authorized_keys", "/root/.ssh/authorized_keys"):
            sudo = "sudo " if target.startswith("/root") and cfg.ssh_username != "root" else ""
            res = comm.run(f"{sudo}sed -i.bak '/{pattern}/d' {target} && {sudo}rm -f {target}.bak", capture=True)
            if res.exit_status != 0:
                self.ui.message(f"Error cleaning up {target}: exit status {res.exit_status}")


class StepShutdown(BuildStep[QemuConfig]):
    """``shutdown_command`` over SSH then wait for QEMU to exit (``shutdown_timeout``); without one (or with
    communicator ``none``) press the ACPI power button through the monitor, repeating it in case the guest was not
    yet listening, and kill QEMU with a warning when the timeout passes."""

    name = "shutdown"

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        vm: QemuProcess = state["vm"]
        if cfg.shutdown_command and cfg.communicator != "none":
            comm = state["communicator"]
            self.ui.say("Gracefully halting virtual machine...")
            LOG.debug("Executing shutdown command: %s", cfg.shutdown_command)
            try:
                comm.run(cfg.shutdown_command, timeout=min(cfg.shutdown_timeout, 120))
            except BuildError as exc:  # the connection drops as the machine goes down
                LOG.debug("shutdown command ended: %s", exc)
            close = getattr(comm, "close", None)
            if close is not None:
                close()
            if not vm.wait(cfg.shutdown_timeout, poll=self.ctx.check_cancelled):
                raise BuildError("Timeout while waiting for machine to shut down.")
        else:
            self.ui.say("Sending an ACPI power-down to the virtual machine...")
            deadline = time.monotonic() + cfg.shutdown_timeout
            while vm.running() and time.monotonic() < deadline:
                with contextlib.suppress(BuildError):
                    vm.command("system_powerdown")
                if vm.wait(min(5.0, max(0.0, deadline - time.monotonic())), poll=self.ctx.check_cancelled):
                    break
            if vm.running():
                self.ui.error(f"WARNING: the VM did not power off within {format_duration(cfg.shutdown_timeout)} "
                              "of the ACPI power button; killing it (the disk may not be clean)")
                vm.kill()
                state["shutdown"] = "killed"
            else:
                state["shutdown"] = "acpi"
        if state.get("shutdown") != "killed":
            state.setdefault("shutdown", "command")
            self.ui.message("VM shut down.")
        state["vm_exit_status"] = vm.proc.returncode if vm.proc else None


class StepConvertDisk(BuildStep[QemuConfig]):
    """Compaction/compression: ``qemu-img convert [-c] -O <format>`` into ``<disk>.convert``, renamed over the
    disk; the partial file is removed on failure."""

    name = "convert_disk"
    temporary = True  # the cleanup only removes a partial .convert file

    def run(self, state: dict[str, Any]) -> None:
        cfg = self.cfg
        if cfg.skip_compaction and not cfg.disk_compression:
            return
        source = cfg.disk_path
        target = source.with_name(source.name + ".convert")
        state["convert_tmp"] = target
        self.ui.say("Converting hard drive...")
        started = time.monotonic()
        for attempt in range(10):
            try:
                disk.convert(source, target, cfg.format, compress=cfg.disk_compression,
                             extra=cfg.qemu_img_args.get("convert", []), cancel=self.ctx.cancel,
                             source_format=cfg.format,
                             progress=lambda d, t: self.ui.progress(f"convert {source.name}", d, t))
                break
            except BuildError as exc:
                if 'Failed to get shared "write" lock' in str(exc) and attempt < 9:
                    self.ui.say("Error getting file lock for conversion; retrying...")
                    self.sleep(1 + attempt)
                    continue
                raise BuildError(f"Error converting hard drive: {exc}") from None
        # the old disk's blocks are freed off the critical path (post-processors run meanwhile)
        disk.replace_freeing_later(target, source)
        state.pop("convert_tmp", None)
        state["convert_seconds"] = time.monotonic() - started

    def cleanup(self, state: dict[str, Any]) -> None:
        tmp = state.pop("convert_tmp", None)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def build_steps(cfg: QemuConfig, ctx: BuildContext, hook: ProvisionHook) -> list[Step]:
    """Packer's step order for the qemu builder."""
    return [
        StepDownload(cfg, ctx),
        StepPrepareOutputDir(cfg, ctx),
        StepTempSSHKey(cfg, ctx),
        StepCreateFloppy(cfg, ctx),
        StepCreateCD(cfg, ctx),
        StepCreateDisk(cfg, ctx),
        StepCopyDisk(cfg, ctx),
        StepResizeDisk(cfg, ctx),
        StepHTTPServer(cfg, ctx),
        StepRun(cfg, ctx),
        StepTypeBootCommand(cfg, ctx),
        StepConnect(cfg, ctx),
        StepProvision(hook),
        StepCleanupTempKeys(cfg, ctx),
        StepShutdown(cfg, ctx),
        StepConvertDisk(cfg, ctx),
    ]

