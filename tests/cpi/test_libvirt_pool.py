"""The provider's storage pool against the real libvirtd: a defined pool whose directory is gone (left by a run
whose work directory was removed) is redefined at the configured path; one that cannot start for another reason
is a CloudError naming the pool."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpi.errors import CloudError
from tests.harness.libvirt import libvirt_unavailable_reason

pytestmark = [pytest.mark.libvirt]


@pytest.fixture
def conn() -> Iterator[object]:
    reason = libvirt_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import libvirt

    connection = libvirt.open("qemu:///system")
    try:
        yield connection
    finally:
        connection.close()


def _remove(conn: object, name: str) -> None:
    import libvirt

    try:
        pool = conn.storagePoolLookupByName(name)  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.destroy()
    pool.undefine()


def _pool_without_its_directory(conn: object, tmp_path: Path, kind: str) -> tuple[str, Path]:
    """Define a dir pool at ``tmp_path/gone``, then remove that directory (what a removed workdir leaves)."""
    from cpi.providers.libvirt.domain_xml import dir_pool

    name = f"sf-test-{kind}-{uuid.uuid4().hex[:8]}"
    gone = tmp_path / "gone"
    gone.mkdir()
    conn.storagePoolDefineXML(dir_pool(name, str(gone)), 0)  # type: ignore[attr-defined]
    gone.rmdir()
    return name, gone


def test_a_pool_whose_directory_is_gone_is_redefined_at_the_configured_path(conn: object, tmp_path: Path) -> None:
    from cpi.providers.libvirt.config import LibvirtConfig
    from cpi.providers.libvirt.storage import Pool, _pool_path

    name, _gone = _pool_without_its_directory(conn, tmp_path, "stale")
    try:
        config = LibvirtConfig.from_properties({"storage_pool": name, "pool_path": str(tmp_path / "pool")})
        pool = Pool(conn, config, logging.getLogger("test.pool")).pool  # type: ignore[arg-type]
        assert pool.isActive() and _pool_path(pool) == str(tmp_path / "pool")
    finally:
        _remove(conn, name)


def test_a_pool_that_cannot_start_is_a_cloud_error_naming_it(conn: object, tmp_path: Path) -> None:
    from cpi.providers.libvirt.config import LibvirtConfig
    from cpi.providers.libvirt.storage import Pool

    name, path = _pool_without_its_directory(conn, tmp_path, "broken")
    try:
        # the configured path is the pool's own: nothing to move it to, so the failure is reported
        config = LibvirtConfig.from_properties({"storage_pool": name, "pool_path": str(path)})
        with pytest.raises(CloudError, match=f"storage pool '{name}' .* cannot be started"):
            Pool(conn, config, logging.getLogger("test.pool"))  # type: ignore[arg-type]
    finally:
        _remove(conn, name)
