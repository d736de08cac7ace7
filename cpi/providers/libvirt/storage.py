"""Storage volumes in one libvirt directory pool: stemcell images, VM overlays, ephemeral and persistent disks.

Every volume the provider creates is named after the CID that owns it, so a leak is visible with ``virsh vol-list``
and cleanup can find it without state. Image uploads go through libvirt streams, so the pool may be remote.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from cpi.deadline import UndoScope
from cpi.errors import CloudError, CpiError, NoDiskSpace
from cpi.providers.libvirt import domain_xml
from cpi.providers.libvirt.config import LibvirtConfig

MIB = 1024 * 1024


class Pool:
    """The provider's storage pool (created as a ``dir`` pool when missing and ``create_pool`` is set)."""

    def __init__(self, conn: libvirt.virConnect, config: LibvirtConfig, log: logging.Logger) -> None:
        self.conn = conn
        self.log = log
        self.pool = self._ensure(config)

    def _ensure(self, config: LibvirtConfig) -> libvirt.virStoragePool:
        try:
            pool = self.conn.storagePoolLookupByName(config.storage_pool)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            if not config.create_pool:
                raise CloudError(f"storage pool {config.storage_pool!r} does not exist "
                                 f"(create it, or set libvirt.create_pool: true)") from None
            pool = self._define(config)
        if not pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):  # a concurrent process may have started it
                pool.create(0)
        if not pool.isActive():
            pool = self._restart_stale(pool, config)
        return pool

    def _restart_stale(self, pool: libvirt.virStoragePool, config: LibvirtConfig) -> libvirt.virStoragePool:
        """A defined pool that cannot start: when its directory is gone and the config names another
        ``pool_path`` (a pool left by a run whose directory was removed), it is redefined there (with
        ``create_pool``); otherwise a CloudError names the pool and libvirt's reason."""
        current = _pool_path(pool)
        wanted = str(config.pool_path) if config.pool_path else None
        if (config.create_pool and wanted and current != wanted and current is not None
                and not Path(current).exists()):
            self.log.info("storage pool %s points at the missing %s: redefining it at %s",
                          config.storage_pool, current, wanted)
            with contextlib.suppress(libvirt.libvirtError):
                pool.undefine()
            pool = self._define(config)
            with contextlib.suppress(libvirt.libvirtError):
                pool.create(0)
            if pool.isActive():
                return pool
        try:
            pool.create(0)
        except libvirt.libvirtError as exc:
            raise CloudError(f"storage pool {config.storage_pool!r} (at {current}) is defined but cannot be "
                             f"started: {exc.get_error_message()}") from None
        return pool

    def _define(self, config: LibvirtConfig) -> libvirt.virStoragePool:
        path = config.pool_path
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)
        try:
            pool = self.conn.storagePoolDefineXML(domain_xml.dir_pool(config.storage_pool, str(path)), 0)
            self.log.info("defined storage pool %s at %s", config.storage_pool, path)
        except libvirt.libvirtError:
            pool = self.conn.storagePoolLookupByName(config.storage_pool)  # lost a race: someone defined it
        with contextlib.suppress(libvirt.libvirtError):
            pool.setAutostart(1)
        return pool

    @property
    def path(self) -> Path:
        import xml.etree.ElementTree as ET

        return Path(ET.fromstring(self.pool.XMLDesc(0)).findtext("./target/path") or "")

    def lookup(self, name: str) -> libvirt.virStorageVol | None:
        try:
            return self.pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL,):
                # the volume may exist on disk but not yet in the pool's cache (created by another process)
                if (self.path / name).exists():
                    with contextlib.suppress(libvirt.libvirtError):
                        self.pool.refresh(0)
                        return self.pool.storageVolLookupByName(name)
                return None
            raise

    def exists(self, name: str) -> bool:
        return self.lookup(name) is not None

    def create(self, name: str, capacity_bytes: int, fmt: str,
               backing: tuple[str, str] | None = None) -> libvirt.virStorageVol:
        self._check_space(capacity_bytes if backing is None and fmt == "raw" else 0)
        xml = domain_xml.volume(name, capacity_bytes, fmt, backing)
        try:
            return self.pool.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise _storage_error(f"creating volume {name}", exc) from None

    def clone(self, name: str, source: libvirt.virStorageVol, fmt: str) -> libvirt.virStorageVol:
        info = source.info()
        self._check_space(info[2])
        xml = domain_xml.volume(name, info[1], fmt)
        try:
            return self.pool.createXMLFrom(xml, source, 0)
        except libvirt.libvirtError as exc:
            raise _storage_error(f"copying volume {source.name()} to {name}", exc) from None

    def upload(self, name: str, local_file: Path, fmt: str, capacity_bytes: int,
               undo: UndoScope | None = None) -> libvirt.virStorageVol:
        """Create ``name`` and stream ``local_file`` into it as a sparse stream: holes of the file (runs of zeros
        extracted from a stemcell are holes) stay holes in the volume. On failure the volume is removed again;
        with ``undo`` (see ``cpi.deadline``) an abandoned call aborts the stream and removes the volume too."""
        size = local_file.stat().st_size
        self._check_space(_allocated(local_file))
        keys: list[int] = []
        if undo is not None:  # registered before the volume exists: no window in which it could leak
            keys.append(undo.add(f"volume {name}", lambda: self.delete_when_free(name)))
        vol = self.pool.createXML(domain_xml.volume(name, max(capacity_bytes, size), fmt), 0)
        stream: libvirt.virStream | None = None
        try:
            stream = self.conn.newStream(0)
            if undo is not None:
                keys.append(undo.add(f"upload stream of {name}", functools.partial(_abort, stream)))
            vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            fd = os.open(local_file, os.O_RDONLY | os.O_CLOEXEC)
            try:
                stream.sparseSendAll(_read_handler, _hole_handler, _skip_handler, fd)
            finally:
                os.close(fd)
            stream.finish()
        except BaseException:
            if undo is not None and keys:
                undo.discard(keys[-1])  # the stream is over either way
            if stream is not None:
                _abort(stream)
            self.delete_when_free(name)
            raise
        if undo is not None:
            for key in keys:
                undo.discard(key)
        return vol

    def delete_when_free(self, name: str, timeout: float = 20.0) -> bool:
        """``delete``, retried while libvirt still counts the volume as in use (an aborted upload's stream is
        released asynchronously); False when it did not exist."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.delete(name)
            except CpiError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def delete(self, name: str) -> bool:
        """Delete a volume by name; False when it did not exist."""
        vol = self.lookup(name)
        if vol is None:
            return False
        try:
            vol.delete(0)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise _storage_error(f"deleting volume {name}", exc) from None

    def _check_space(self, needed: int) -> None:
        if needed <= 0:
            return
        with contextlib.suppress(libvirt.libvirtError):
            self.pool.refresh(0)
        available = self.pool.info()[3]
        if available < needed:
            raise NoDiskSpace(
                f"storage pool {self.pool.name()} has {available // MIB} MiB free, {needed // MIB} MiB needed")


def _allocated(path: Path) -> int:
    """Bytes the file occupies on disk (a sparse image needs only that much of the pool)."""
    st = path.stat()
    return min(st.st_size, st.st_blocks * 512)


def _abort(stream: libvirt.virStream) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()


# Sparse-stream callbacks after libvirt-python's examples/sparsestream.py: data sections are read, holes are sent as
# hole lengths (SEEK_DATA/SEEK_HOLE), so libvirtd punches holes instead of writing zeros.
def _read_handler(_stream: libvirt.virStream, nbytes: int, fd: int) -> bytes:
    return os.read(fd, nbytes)


def _skip_handler(_stream: libvirt.virStream, length: int, fd: int) -> int:
    return os.lseek(fd, length, os.SEEK_CUR)


def _hole_handler(_stream: libvirt.virStream, fd: int) -> list[Any]:
    """``[in_data, section_length]`` at the current offset of ``fd``."""
    cur = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, cur, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        data = -1
    if data < 0:  # in the trailing hole (or at EOF)
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, cur, os.SEEK_SET)
        return [False, end - cur]
    if data > cur:  # in a hole that ends where data starts
        os.lseek(fd, cur, os.SEEK_SET)
        return [False, data - cur]
    hole = os.lseek(fd, data, os.SEEK_HOLE)  # in data: up to the next hole (EOF is one)
    os.lseek(fd, cur, os.SEEK_SET)
    return [True, hole - data]


def _storage_error(action: str, exc: libvirt.libvirtError) -> Exception:
    message = exc.get_error_message() or str(exc)
    if "space" in message.lower():
        return NoDiskSpace(f"{action}: {message}")
    return CloudError(f"{action}: {message}", ok_to_retry=True)


def _pool_path(pool: libvirt.virStoragePool) -> str | None:
    """The ``<target><path>`` of a pool's XML (None when it has none)."""
    try:
        node = ET.fromstring(pool.XMLDesc(0)).find("./target/path")
    except (libvirt.libvirtError, ET.ParseError):
        return None
    return node.text if node is not None and node.text else None
