"""The ``debian`` build as Packer-style steps sharing one state dict.

Order and what each leaves behind (cleanups run in reverse on failure, cancellation or a failpoint; the
``temporary`` ones also after success):

=================  ==========================================================  ===================================
step               does                                                        cleanup
=================  ==========================================================  ===================================
output-directory   checks/creates ``output_directory`` (``-force`` empties it)  on failure: deletes it
bootstrap          unpacks the cached tree, or debootstraps, apt-installs the   deletes the work dir (temporary)
                   option packages and caches it (work dir: /dev/shm if room)
prepare-chroot     binds /proc /sys /dev /dev/pts, policy-rc.d, resolv.conf    undoes all, unmounts (temporary)
install            apt for anything still missing (normally all cached) and     (inside the work dir)
                   ``extra_packages`` (+ EFI GRUB for uefi/hybrid);
                   networkd DHCP, cloud-init datasources, hostname, password
provision          the template's provisioners over the chroot communicator     (inside the work dir)
finalise           fstab by UUID, machine-id, apt caches, ssh host keys,        (inside the work dir)
                   initramfs if stale, GRUB files + core.img, policy-rc.d gone
unmount-chroot     unmounts everything under the tree (verified)                -
disk               sparse raw: msdos or GPT table, ext4 filled by ``mke2fs -d``,  (inside the work dir)
                   GRUB (MBR + gap / bios_grub; ESP by mkfs.fat + mcopy)
convert            qcow2 via ``qemu-img convert`` and/or the raw moved in place  (inside the output directory)
artifact           sha256 and size of each file                                -
=================  ==========================================================  ===================================
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from builders.core import BuildContext, BuildError, BuildStep, ProvisionHook, StepProvision
from stemforge_base.hashing import sha256_file
from stemforge_base.steps import Step

from . import bootstrap, chroot, disk, grub, proc
from .communicator import ChrootCommunicator
from .config import DebianConfig

WORK_DIR_NAME = ".stemforge-work"
SHM = Path("/dev/shm")
NETWORKD_UNIT = "etc/systemd/network/80-stemforge-dhcp.network"
NETWORKD_BODY = "# stemforge: DHCP on every wired interface (cloud-init's own files take precedence)\n" \
                "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
HOSTKEYS_UNIT_NAME = "stemforge-ssh-hostkeys.service"
HOSTKEYS_UNIT = """[Unit]
Description=Generate SSH host keys on first boot (stemforge image)
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200n8"
#: Installed first when there is a kernel, so its initramfs can be built while apt installs the rest.
KERNEL_PHASE = frozenset({"initramfs-tools", "zstd", "udev", "systemd-sysv"})
APT_PRESEED = ("echo 'grub-pc grub-pc/install_devices_empty boolean true' | debconf-set-selections 2>/dev/null"
               " || true")
APT_INSTALL = "apt-get -q -y -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-unsafe-io " \
              "--no-install-recommends install"


def _apt_progress(ctx: BuildContext) -> Callable[[str], None]:
    """Forward apt's phase lines (downloads summarised, one line per package set up) to the UI."""

    def on_line(line: str) -> None:
        if line.startswith(("Get:", "Selecting", "(Reading", "Preparing", "Unpacking")):
            return
        ctx.ui.message(line)

    return on_line


class DebianStep(BuildStep[DebianConfig]):
    """A debian step: ``run`` says the step's ``title`` and delegates to ``execute``; the runner's timing is
    reported on the UI (``<name>: done in <s>s``)."""

    title = ""

    def run(self, state: dict[str, Any]) -> None:
        self.ctx.check_cancelled()
        self.ctx.ui.say(self.title)
        self.execute(state)

    def execute(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def done(self, seconds: float) -> None:
        self.ctx.ui.message(f"{self.name}: done in {seconds:.1f}s")

    # -- helpers --------------------------------------------------------------------------------------------

    def tree(self, state: dict[str, Any]) -> Path:
        tree: Path = state["tree"]
        return tree

    def in_chroot(self, state: dict[str, Any], script: str, what: str, *, timeout: float = 1800,
                  input_data: bytes | None = None, quiet: bool = False, capture: bool = False,
                  on_line: Callable[[str], None] | None = None) -> proc.ProcResult:
        """Run ``script`` with /bin/sh inside the tree; output lines go to ``on_line`` or the UI unless ``quiet``."""
        if on_line is None and not quiet:
            on_line = self.ctx.ui.message
        return proc.run(["chroot", str(self.tree(state)), "/bin/sh", "-c", script], what=what,
                        cancel=self.ctx.cancel, timeout=timeout, env=chroot.chroot_env(), on_line=on_line,
                        input_data=input_data, capture=capture)


class StepOutputDir(DebianStep):
    name = "output_directory"
    title = "Creating the output directory..."

    def execute(self, state: dict[str, Any]) -> None:
        out = self.cfg.output_directory
        if out.exists() or out.is_symlink():
            if not self.ctx.force:
                raise BuildError(f"Output directory exists: {out}\n\nUse the force flag to delete it prior to "
                                 "building.")
            self.ctx.ui.message(f"Deleting previous output directory {out} (-force)")
            chroot.remove_tree(out)
        out.mkdir(parents=True)
        state["output_dir_created"] = out

    def cleanup(self, state: dict[str, Any]) -> None:
        out = state.pop("output_dir_created", None)
        if out is not None and out.exists():
            self.ctx.ui.message(f"Deleting output directory {out}...")
            chroot.remove_tree(out)


#: debootstrap's per-package lines: only every 25th is shown.
PER_PACKAGE_LINES = ("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking", "I: Configuring")


class StepBootstrap(DebianStep):
    name = "bootstrap"
    title = "Bootstrapping the root tree..."
    temporary = True

    def execute(self, state: dict[str, Any]) -> None:
        work = make_work_dir(self.cfg)
        state["work_dir"] = work
        self.ctx.ui.message(f"Work directory {work}")
        tree = work / "root"
        state["tree"] = tree
        inputs = bootstrap.BootstrapInputs.from_config(self.cfg)
        state["bootstrap_key"] = inputs.key
        cache = bootstrap.BootstrapCache(self.cfg.cache_dir)
        ui = self.ctx.ui
        with cache.locked(inputs.key, self.ctx.cancel,
                          on_wait=lambda: ui.message("Waiting for another build bootstrapping the same tree...")):
            if cache.has(inputs.key):
                ui.message(f"Using cached bootstrap {inputs.key} ({self.cfg.suite}/{self.cfg.variant}); "
                           "skipping debootstrap")
                state["bootstrap_cached"] = True
                cache.extract(inputs.key, tree, self.ctx.cancel)
                return
            state["bootstrap_cached"] = False
            started = time.monotonic()
            ui.message(f"debootstrap --variant={self.cfg.variant} {self.cfg.suite} from {self.cfg.mirror} "
                       f"(+{len(inputs.packages)} packages)")
            count = {"n": 0}

            def on_line(line: str) -> None:
                if line.startswith(PER_PACKAGE_LINES):
                    count["n"] += 1
                    if count["n"] % 25:
                        return
                if line.startswith(("I:", "W:", "E:")):
                    ui.message(line)

            parts: dict[str, float] = state.setdefault("bootstrap_parts", {})
            mark = time.monotonic()
            bootstrap.debootstrap(self.cfg, [], tree, self.ctx.cancel, on_line)
            chroot.unmount_all(tree)  # debootstrap mounts /proc and /sys itself
            parts["debootstrap"] = time.monotonic() - mark
            if inputs.packages:
                # apt, not debootstrap --include: debootstrap cannot resolve virtual packages (cloud-init's
                # python3-cryptography needs python3-cffi-backend-api-*), and apt honours --no-install-recommends.
                self._apt_install(state, list(inputs.packages))
            bootstrap.drop_unsafe_io(tree)
            ui.message(f"Caching the bootstrap tree as {cache.tarball(inputs.key)}")
            mark = time.monotonic()
            cache.publish(tree, inputs, self.ctx.cancel, seconds=time.monotonic() - started)
            parts["publish"] = time.monotonic() - mark
            ui.message("Bootstrap took " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()))

    def _apt_install(self, state: dict[str, Any], packages: list[str]) -> None:
        tree = self.tree(state)
        mounted: list[str] = state.setdefault("chroot_mounts", [])
        try:
            chroot.bind_mounts(tree, mounted.append)
            if chroot.write_policy_rc_d(tree):
                state["policy_rc_d"] = True
            state["resolv_conf_previous"] = chroot.ensure_resolv_conf(tree)
            self.ctx.ui.message(f"apt-get install {' '.join(packages)}")
            parts: dict[str, float] = state.setdefault("bootstrap_parts", {})
            mark = time.monotonic()
            self.in_chroot(state, APT_PRESEED, "bootstrap: debconf", quiet=True)
            self.in_chroot(state, "apt-get -q update", "bootstrap: apt-get update", on_line=_apt_progress(self.ctx))
            first = [p for p in packages if p in KERNEL_PHASE or p == self.cfg.kernel] if self.cfg.kernel else []
            rest = [p for p in packages if p not in first]
            if first:
                # INITRD=No: the kernel's postinst and the trigger would each build the initramfs; build it once,
                # in the background while apt installs everything else (two cores, two single-threaded jobs).
                self.in_chroot(state, f"INITRD=No {APT_INSTALL} {' '.join(first)}", "bootstrap: apt-get install",
                               timeout=3600, on_line=_apt_progress(self.ctx))
                self._initramfs_beside_apt(state, rest, parts)
            elif rest:
                self.in_chroot(state, f"{APT_INSTALL} {' '.join(rest)}", "bootstrap: apt-get install",
                               timeout=3600, on_line=_apt_progress(self.ctx))
            parts["apt"] = time.monotonic() - mark
            self.in_chroot(state, "apt-get clean && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/apt/lists/partial",
                           "bootstrap: apt-get clean", quiet=True)
        finally:
            teardown_chroot(state, self.ctx)

    def _initramfs_beside_apt(self, state: dict[str, Any], rest: list[str], parts: dict[str, float]) -> None:
        """``update-initramfs -c`` in the background while apt installs ``rest``. Meanwhile
        ``update_initramfs=no`` keeps apt's triggers from writing the same file; if apt touched any initramfs
        input (hooks, conf, modprobe.d, modules: directory mtimes show dpkg's renames), it is rebuilt after."""
        tree = self.tree(state)
        conf = tree / "etc" / "initramfs-tools" / "update-initramfs.conf"
        saved = conf.read_bytes() if conf.is_file() else None
        saved_times = (conf.stat().st_atime, conf.stat().st_mtime) if saved is not None else None
        if saved is not None:
            conf.write_text(saved.decode() + "\nupdate_initramfs=no  # stemforge: while the image is built\n")
        errors: list[BaseException] = []
        started_wall = time.time()
        started = time.monotonic()

        def generate() -> None:
            try:
                self.in_chroot(state, "rm -f /boot/initrd.img-* && update-initramfs -c -k all",
                               "bootstrap: update-initramfs", timeout=1800)
                parts["initramfs"] = time.monotonic() - started
            except BaseException as exc:  # noqa: BLE001 - re-raised in the build thread
                errors.append(exc)

        worker = threading.Thread(target=generate, name="initramfs", daemon=True)
        worker.start()
        try:
            if rest:
                self.in_chroot(state, f"INITRD=No {APT_INSTALL} {' '.join(rest)}", "bootstrap: apt-get install",
                               timeout=3600, on_line=_apt_progress(self.ctx))
        finally:
            worker.join(timeout=1800)
            if saved is not None and saved_times is not None:
                conf.write_bytes(saved)
                os.utime(conf, saved_times)  # our own edit must not look like a changed initramfs input
        if errors:
            raise errors[0]
        if worker.is_alive():
            raise BuildError("bootstrap: update-initramfs did not finish")
        if _newest_mtime(initramfs_inputs(tree)) >= started_wall:
            self.ctx.ui.message("apt changed initramfs inputs meanwhile: rebuilding the initramfs")
            self.in_chroot(state, "update-initramfs -u -k all", "bootstrap: update-initramfs", timeout=1800)

    def cleanup(self, state: dict[str, Any]) -> None:
        work = state.pop("work_dir", None)
        if work is not None and work.exists():
            self.ctx.ui.message("Removing the build's work directory...")
            chroot.remove_tree(work)


def make_work_dir(cfg: DebianConfig) -> Path:
    """Where the tree and the raw disk are built: a directory in ``/dev/shm`` when ``tmpfs`` is on and memory
    allows it (as diskimage-builder does; the tree is written and read many times), else
    ``<output_directory>/.stemforge-work``. Work dirs of dead builds in /dev/shm are removed first."""
    if cfg.tmpfs and SHM.is_dir():
        for stale in SHM.glob("stemforge-debian-*"):
            pid = stale.name.split("-")[2]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                chroot.remove_tree(stale)
        needed = (cfg.disk_size_mb + 1024) * disk.MIB
        st = os.statvfs(SHM)
        if st.f_bavail * st.f_frsize > needed and _mem_available() > needed + 1024 * disk.MIB:
            return Path(tempfile.mkdtemp(prefix=f"stemforge-debian-{os.getpid()}-", dir=SHM))
    work = cfg.output_directory / WORK_DIR_NAME
    work.mkdir(mode=0o700)
    return work


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class StepPrepareChroot(DebianStep):
    name = "prepare_chroot"
    title = "Preparing the chroot..."
    temporary = True

    def execute(self, state: dict[str, Any]) -> None:
        tree = self.tree(state)
        mounted: list[str] = state.setdefault("chroot_mounts", [])
        chroot.bind_mounts(tree, mounted.append)
        if chroot.write_policy_rc_d(tree):
            state["policy_rc_d"] = True
        state["resolv_conf_previous"] = chroot.ensure_resolv_conf(tree)
        self.ctx.ui.message(f"Mounted {', '.join(os.path.relpath(m, tree) for m in mounted)}; service starts "
                            "blocked")

    def cleanup(self, state: dict[str, Any]) -> None:
        teardown_chroot(state, self.ctx)


def teardown_chroot(state: dict[str, Any], ctx: BuildContext) -> None:
    """Undo ``prepare_chroot`` (idempotent): processes killed, resolv.conf and policy-rc.d restored, every mount
    under the tree unmounted in reverse order and verified."""
    tree: Path | None = state.get("tree")
    if tree is None:
        return
    killed = chroot.kill_processes_in(tree)
    if killed:
        ctx.ui.message(f"Stopped {len(killed)} process(es) left in the chroot")
    if "resolv_conf_previous" in state:
        chroot.restore_resolv_conf(tree, state.pop("resolv_conf_previous"))
    if state.pop("policy_rc_d", False):
        chroot.remove_policy_rc_d(tree)
    if chroot.mounts_under(tree):
        chroot.unmount_all(tree, say=ctx.ui.message)
    state.pop("chroot_mounts", None)


class StepInstall(DebianStep):
    name = "install"
    title = "Installing the kernel, boot loader and services..."

    def execute(self, state: dict[str, Any]) -> None:
        tree = self.tree(state)
        wanted = bootstrap.base_packages(self.cfg) + bootstrap.extra_packages(self.cfg)
        missing = self._missing(state, wanted)
        if missing:
            self.ctx.ui.message(f"apt-get install {' '.join(missing)}")
            self.in_chroot(state, APT_PRESEED, "install: debconf", quiet=True)
            self.in_chroot(state, f"apt-get -q update && {APT_INSTALL} {' '.join(missing)}", "install: apt-get",
                           timeout=3600, on_line=_apt_progress(self.ctx))
        elif wanted:
            self.ctx.ui.message(f"{len(wanted)} packages already in the bootstrap tree")
        if self.cfg.kernel is not None:
            (tree / NETWORKD_UNIT).parent.mkdir(parents=True, exist_ok=True)
            (tree / NETWORKD_UNIT).write_text(NETWORKD_BODY)
            self._enable(state, "systemd-networkd.service")
        if self.cfg.include_sshd:
            unit = tree / "etc" / "systemd" / "system" / HOSTKEYS_UNIT_NAME
            unit.write_text(HOSTKEYS_UNIT)
            self._enable(state, HOSTKEYS_UNIT_NAME)
        if self.cfg.include_cloud_init:
            cfg_dir = tree / "etc" / "cloud" / "cloud.cfg.d"
            cfg_dir.mkdir(parents=True, exist_ok=True)
            sources = ", ".join([*self.cfg.datasources, "None"] if "None" not in self.cfg.datasources
                                else self.cfg.datasources)
            (cfg_dir / "90_stemforge.cfg").write_text(
                "# stemforge debian builder\n"
                f"datasource_list: [{sources}]\n"
                "system_info:\n  network:\n    renderers: ['networkd', 'eni', 'netplan']\n")
        self._set_hostname(tree)
        if self.cfg.root_password is not None:
            self.in_chroot(state, "chpasswd", "install: setting the root password", quiet=True,
                           input_data=f"root:{self.cfg.root_password}\n".encode())
            self.ctx.ui.message("Root password set")
        else:
            self.in_chroot(state, "passwd -l root >/dev/null", "install: locking root", quiet=True)

    def _missing(self, state: dict[str, Any], wanted: list[str]) -> list[str]:
        if not wanted:
            return []
        out = self.in_chroot(state, "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' " + " ".join(wanted)
                             + " 2>/dev/null; true", "install: dpkg-query", quiet=True, capture=True)
        installed = {line.split()[0] for line in out.stdout.splitlines() if line.split()[1:2] == ["ii"]}
        return [p for p in wanted if p not in installed]

    def _enable(self, state: dict[str, Any], unit: str) -> None:
        self.in_chroot(state, f"systemctl enable {unit}", f"install: enabling {unit}", quiet=True)

    def _set_hostname(self, tree: Path) -> None:
        etc_hostname = tree / "etc" / "hostname"
        name = self.cfg.hostname
        if name is None:
            # debootstrap copies the build host's name; an image must not carry it.
            host = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
            current = etc_hostname.read_text().strip() if etc_hostname.exists() else ""
            if current and current != host:
                return
            name = "debian"
        write_hostname(tree, name)
        self.ctx.ui.message(f"Hostname {name}")


def write_hostname(tree: Path, name: str) -> None:
    """/etc/hostname and the 127.0.1.1 line of /etc/hosts."""
    (tree / "etc" / "hostname").write_text(name + "\n")
    hosts = tree / "etc" / "hosts"
    lines = hosts.read_text().splitlines() if hosts.exists() else ["127.0.0.1\tlocalhost"]
    lines = [line for line in lines if not line.startswith("127.0.1.1")]
    lines.insert(1 if lines else 0, f"127.0.1.1\t{name}")
    hosts.write_text("\n".join(lines) + "\n")


class StepFinalise(DebianStep):
    name = "finalise"
    title = "Finalising the tree (fstab, machine-id, caches, host keys, initramfs, GRUB)..."

    def execute(self, state: dict[str, Any]) -> None:
        tree = self.tree(state)
        root_uuid = state.setdefault("root_uuid", str(uuid.uuid4()))
        fstab = f"# stemforge: the root filesystem\nUUID={root_uuid} / {self.cfg.filesystem} errors=remount-ro 0 1\n"
        if self._has_esp():
            esp_id = state.setdefault("esp_volume_id", uuid.uuid4().hex[:8].upper())
            (tree / "boot" / "efi").mkdir(parents=True, exist_ok=True)
            # nofail: a deploy that lays out its own disks may give the system no ESP (BIOS boot)
            fstab += f"UUID={esp_id[:4]}-{esp_id[4:]} /boot/efi vfat umask=0077,nofail 0 1\n"
        (tree / "etc" / "fstab").write_text(fstab)
        (tree / "etc" / "machine-id").write_text("")
        dbus_id = tree / "var" / "lib" / "dbus" / "machine-id"
        if dbus_id.is_file() and not dbus_id.is_symlink():
            dbus_id.unlink()
        self.in_chroot(state, "apt-get clean", "finalise: apt-get clean", quiet=True)
        lists = tree / "var" / "lib" / "apt" / "lists"
        if lists.is_dir():
            for item in lists.iterdir():
                if item.is_file() and item.name != "lock":
                    item.unlink()
        for key in (tree / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        for tmp in (tree / "tmp", tree / "var" / "tmp"):
            if tmp.is_dir():
                for item in tmp.iterdir():
                    chroot.remove_tree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        kernels = self._kernels(tree)
        if self.cfg.kernel is not None:
            if not kernels:
                raise BuildError(f"finalise: no kernel in /boot after installing {self.cfg.kernel}")
            for version in kernels:
                self._initramfs(state, tree, version)
        if self.cfg.bootloader == "grub":
            self._grub(state, tree, root_uuid, kernels[-1])
        teardown_resolv_and_policy(state, tree)
        host_resolv = Path("/etc/resolv.conf")
        tree_resolv = tree / "etc" / "resolv.conf"
        if (tree_resolv.is_file() and not tree_resolv.is_symlink() and host_resolv.is_file()
                and tree_resolv.read_bytes() == host_resolv.read_bytes()):
            tree_resolv.write_text("")  # the build host's resolvers do not belong in the image

    def _has_esp(self) -> bool:
        return self.cfg.bootloader == "grub" and self.cfg.firmware in ("uefi", "hybrid")

    @staticmethod
    def _kernels(tree: Path) -> list[str]:
        versions = [p.name[len("vmlinuz-"):] for p in (tree / "boot").glob("vmlinuz-*")]
        return sorted(versions, key=lambda v: [int(x) if x.isdigit() else x for x in v.replace("-", ".").split(".")])

    def _initramfs(self, state: dict[str, Any], tree: Path, version: str) -> None:
        initrd = tree / "boot" / f"initrd.img-{version}"
        if initrd.exists():
            newest = _newest_mtime(initramfs_inputs(tree, version))
            if newest <= initrd.stat().st_mtime:
                self.ctx.ui.message(f"initramfs for {version} is current")
                return
            action = "-u"
        else:
            action = "-c"
        self.ctx.ui.message(f"Generating the initramfs for {version}...")
        self.in_chroot(state, f"update-initramfs {action} -k {version}", "finalise: update-initramfs", timeout=1800)

    def _grub(self, state: dict[str, Any], tree: Path, root_uuid: str, version: str) -> None:
        default = tree / "etc" / "default" / "grub"
        default.parent.mkdir(parents=True, exist_ok=True)
        default.write_text(grub.DEFAULT_GRUB.format(cmdline=KERNEL_CMDLINE))
        table = self.cfg.partition_table
        if self.cfg.firmware in ("bios", "hybrid"):
            boot_img, _ = grub.prepare_boot_dir(tree, root_uuid)
            self.in_chroot(state, " ".join(grub.mkimage_argv(table)), "finalise: grub-mkimage", quiet=True)
            state["grub_boot_img"] = boot_img
            state["grub_core_img"] = tree / "boot" / "grub" / "i386-pc" / "core.img"
            self.ctx.ui.message(f"GRUB i386-pc core image made for root UUID {root_uuid}")
        if self._has_esp():
            state["grub_efi_img"] = grub.prepare_efi_dir(tree)
            self.in_chroot(state, " ".join(grub.efi_mkimage_argv()), "finalise: grub-mkimage (x86_64-efi)",
                           quiet=True)
            self.ctx.ui.message(f"GRUB x86_64-efi image made for root UUID {root_uuid}")
        initrd = f"/boot/initrd.img-{version}" if (tree / "boot" / f"initrd.img-{version}").exists() else None
        (tree / "boot" / "grub" / "grub.cfg").write_text(
            grub.grub_cfg(root_uuid, f"/boot/vmlinuz-{version}", initrd, KERNEL_CMDLINE, table))


def teardown_resolv_and_policy(state: dict[str, Any], tree: Path) -> None:
    if "resolv_conf_previous" in state:
        chroot.restore_resolv_conf(tree, state.pop("resolv_conf_previous"))
    if state.pop("policy_rc_d", False):
        chroot.remove_policy_rc_d(tree)


def initramfs_inputs(tree: Path, version: str | None = None) -> list[Path]:
    """What the initramfs is made from (for staleness checks by mtime, directories included)."""
    modules = tree / "lib" / "modules"
    return [tree / "etc" / "initramfs-tools", tree / "usr" / "share" / "initramfs-tools", tree / "etc" / "modprobe.d",
            tree / "usr" / "lib" / "modprobe.d",
            modules / version / "modules.dep" if version else modules]


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        if path.is_file():
            newest = max(newest, path.stat().st_mtime)
        elif path.is_dir():
            for dirpath, _, files in os.walk(path):
                newest = max(newest, os.stat(dirpath).st_mtime)
                for name in files:
                    try:
                        newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                    except OSError:
                        continue
    return newest


class StepUnmountChroot(DebianStep):
    name = "unmount_chroot"
    title = "Leaving the chroot..."

    def execute(self, state: dict[str, Any]) -> None:
        teardown_chroot(state, self.ctx)
        left = chroot.mounts_under(self.tree(state))
        if left:
            raise BuildError(f"unmount_chroot: still mounted: {', '.join(left)}")


class StepCreateDisk(DebianStep):
    name = "disk"
    title = "Laying the tree onto a partitioned disk..."

    def execute(self, state: dict[str, Any]) -> None:
        tree = self.tree(state)
        root_uuid = state.setdefault("root_uuid", str(uuid.uuid4()))
        image = state["work_dir"] / "disk.raw"
        state["raw_image"] = image
        grub_on = self.cfg.bootloader == "grub"
        table = self.cfg.partition_table
        roles = disk.gpt_roles(self.cfg.firmware if grub_on else None) if table == "gpt" else ("root",)
        layout = disk.create_disk(image, tree, self.cfg.disk_size_mb, root_uuid, "root", self.ctx.cancel,
                                  self.ctx.ui.message, table=table, roles=roles)
        state["disk_layout"] = layout
        bios_grub = layout.part("bios_grub")
        if grub_on and table == "msdos":
            grub.install_mbr(image, state["grub_boot_img"], state["grub_core_img"], disk.FIRST_SECTOR)
            self.ctx.ui.message("GRUB installed in the MBR gap (BIOS boot)")
        elif grub_on and bios_grub is not None:
            grub.install_boot_code(image, state["grub_boot_img"], state["grub_core_img"], bios_grub.start_sector,
                                   bios_grub.start_sector + bios_grub.sectors)
            self.ctx.ui.message(f"GRUB installed in the bios_grub partition {bios_grub.number} (BIOS boot)")
        esp = layout.part("esp")
        if grub_on and esp is not None:
            disk.make_esp(image, esp, state["esp_volume_id"],
                          {grub.EFI_LOADER: state["grub_efi_img"], grub.EFI_CONFIG: grub.efi_stub_cfg(root_uuid)},
                          self.ctx.cancel)
            self.ctx.ui.message(f"EFI system partition {esp.number}: /{grub.EFI_LOADER} (UEFI boot)")
        used = os.stat(image).st_blocks * 512
        self.ctx.ui.message(f"Disk {self.cfg.disk_size_mb} MiB {table} (sparse, {used // disk.MIB} MiB allocated), "
                            f"ext4 root UUID {root_uuid}")


class StepConvert(DebianStep):
    name = "convert"
    title = "Writing the output formats..."

    def execute(self, state: dict[str, Any]) -> None:
        raw: Path = state["raw_image"]
        outputs: list[tuple[str, Path]] = state.setdefault("outputs", [])
        for fmt in [f for f in self.cfg.formats if f != "raw"]:
            dest = self.cfg.output_file(fmt)
            tmp = dest.with_name(f".{dest.name}.partial")
            self.ctx.ui.message(f"qemu-img convert to {fmt}{' (compressed)' if self.cfg.disk_compression else ''}"
                                f" -> {dest}")
            disk.convert(raw, tmp, fmt, compress=self.cfg.disk_compression, cancel=self.ctx.cancel,
                         progress=functools.partial(self.ctx.ui.progress, f"convert {fmt}"))
            os.replace(tmp, dest)
            outputs.append((fmt, dest))
        if "raw" in self.cfg.formats:
            dest = self.cfg.output_file("raw")
            if os.stat(raw).st_dev == os.stat(dest.parent).st_dev:
                os.replace(raw, dest)  # same filesystem: the laid-out disk is the raw output
            else:  # from tmpfs: a sparse copy with progress
                tmp = dest.with_name(f".{dest.name}.partial")
                disk.convert(raw, tmp, "raw", compress=False, cancel=self.ctx.cancel,
                             progress=functools.partial(self.ctx.ui.progress, "copy raw"))
                os.replace(tmp, dest)
            outputs.append(("raw", dest))
            self.ctx.ui.message(f"raw -> {dest}")
        outputs.sort(key=lambda item: self.cfg.formats.index(item[0]))


class StepArtifact(DebianStep):
    name = "artifact"
    title = "Checksumming the artifact..."

    def execute(self, state: dict[str, Any]) -> None:
        outputs: list[tuple[str, Path]] = state["outputs"]
        with ThreadPoolExecutor(max_workers=max(1, len(outputs))) as pool:  # hashlib releases the GIL
            digests = list(pool.map(
                lambda item: sha256_file(item[1], check=self.ctx.check_cancelled,
                                         progress=functools.partial(self.ctx.ui.progress, f"sha256 {item[1].name}")),
                outputs))
        files = []
        for (fmt, path), digest in zip(outputs, digests, strict=True):
            files.append({"path": str(path), "format": fmt, "sha256": digest, "size": path.stat().st_size})
            self.ctx.ui.message(f"{path.name}: sha256 {digest}")
        state["artifact_files"] = files


def chroot_communicator(cfg: DebianConfig, ctx: BuildContext, state: dict[str, Any]) -> ChrootCommunicator | None:
    """The provisioners' communicator: the chroot of the prepared tree (None with ``communicator: none``)."""
    if cfg.communicator == "none":
        ctx.ui.message("communicator is 'none': no provisioning")
        return None
    ctx.ui.say("Provisioning with the chroot communicator...")
    return ChrootCommunicator(state["tree"], say=ctx.ui.message, cancel=ctx.cancel)


def build_steps(cfg: DebianConfig, ctx: BuildContext, hook: ProvisionHook) -> list[Step]:
    return [
        StepOutputDir(cfg, ctx),
        StepBootstrap(cfg, ctx),
        StepPrepareChroot(cfg, ctx),
        StepInstall(cfg, ctx),
        StepProvision(hook, functools.partial(chroot_communicator, cfg, ctx)),
        StepFinalise(cfg, ctx),
        StepUnmountChroot(cfg, ctx),
        StepCreateDisk(cfg, ctx),
        StepConvert(cfg, ctx),
        StepArtifact(cfg, ctx),
    ]
