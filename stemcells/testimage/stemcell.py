"""The tiny test stemcell: the test image (``build.py``) packaged as a real heavy stemcell tarball."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stemcells.manifest import stemcell_filename
from stemcells.tarball import write_stemcell
from stemcells.testimage import build

NAME = "bosh-libvirt-kvm-busybox-go_agent"
OPERATING_SYSTEM = "busybox"
FORMATS = ("libvirt-qcow2", "openstack-qcow2")


def build_test_stemcell(
    out_dir: Path,
    *,
    version: str = "0.1.0",
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Build (cached) the test image and package it as ``out_dir/bosh-stemcell-<version>-libvirt-kvm-busybox-
    go_agent.tgz``; an existing tarball of the same image (recorded next to it in ``<tarball>.image``) is
    returned as it is."""
    image = build.build_test_image(cache_dir, fmt="qcow2", progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / stemcell_filename(NAME, version, light=False)
    # which image the tarball holds: the image's cache path names its key (a hash of every guest file), so a
    # tarball packaged from another build of the image (other agent files) is never taken for this one
    source = target.with_name(target.name + ".image")
    if target.exists() and source.exists() and source.read_text() == str(image):
        return target
    with open(image, "rb") as fh:
        header = fh.read(32)
    virtual_mib = int.from_bytes(header[24:32], "big") // (1024 * 1024)
    path = write_stemcell(
        out_dir,
        name=NAME,
        version=version,
        operating_system=OPERATING_SYSTEM,
        stemcell_formats=list(FORMATS),
        cloud_properties={
            "infrastructure": "libvirt",
            "architecture": "x86_64",
            "root_device_name": "/dev/vda",
            "disk": virtual_mib,
            "disk_format": "qcow2",
        },
        root_image=image,
        packages_txt=build.packages_txt(cache_dir),
        dev_tools_file_list="",
        overwrite=True,
        progress=progress,
    )
    source.write_text(str(image))
    return path
