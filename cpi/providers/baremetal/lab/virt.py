"""The lab's objects in the host libvirtd (``qemu:///system``): its domains ``sf-lab-<id>-*`` and its storage pool,
found by name so that removal works after a crash."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cpi.providers.baremetal.lab import domain as lab_domain
from cpi.providers.baremetal.lab.record import LIBVIRT_URI


@contextlib.contextmanager
def connect() -> Iterator[Any]:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised; libvirt must not print them
    conn = libvirt.open(LIBVIRT_URI)
    try:
        yield conn
    finally:
        conn.close()


def remove_domains(lab_id: str) -> list[str]:
    """Destroy and undefine every domain named ``sf-lab-<id>-*``. Idempotent."""
    import libvirt

    removed = []
    prefix = lab_domain.domain_prefix(lab_id)
    with connect() as conn:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if not dom.name().startswith(prefix):
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                removed.append(dom.name())
    return removed


def remove_pool(lab_id: str) -> list[str]:
    """Delete the lab pool's volumes, then stop and undefine the pool. Idempotent."""
    import libvirt

    removed: list[str] = []
    with connect() as conn:
        try:
            pool = conn.storagePoolLookupByName(lab_domain.pool_name(lab_id))
        except libvirt.libvirtError:
            return removed
        with contextlib.suppress(libvirt.libvirtError):
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    name = vol.name()
                    vol.delete(0)
                    removed.append(name)
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()
        removed.append(f"pool {lab_domain.pool_name(lab_id)}")
    return removed


def domain_states(lab_id: str) -> dict[str, str]:
    import libvirt

    prefix = lab_domain.domain_prefix(lab_id)
    out = {}
    with connect() as conn:
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.name().startswith(prefix):
                    out[dom.name()] = "running" if dom.isActive() else "shut off"
    return out


def pool_exists(lab_id: str) -> bool:
    import libvirt

    with connect() as conn:
        try:
            conn.storagePoolLookupByName(lab_domain.pool_name(lab_id))
            return True
        except libvirt.libvirtError:
            return False
