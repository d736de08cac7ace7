"""Shared fixtures and the xdist scheduling. The libvirt fixtures build the test stemcell once per session and give
each session a private storage pool and state directory (see ``tests/harness/libvirt.py``).

Layout: one directory per area (``base/``, ``cpi/``, ``aws/``, ``metal/``, ``builders/``, ``stemcells/``, ``ci/``,
``terraform/``, ``project/``), the harnesses as the package ``tests.harness``, an area's shared fixtures in its
``conftest.py``. ``tests`` and its directories are packages, so pytest (default ``prepend`` import mode) puts the
repository root on ``sys.path`` and modules import ``tests.harness.*`` like any package; basenames may repeat
across directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.libvirt import LibvirtCpi, libvirt_unavailable_reason, session_cpi_or_skip, sweep_dead_runs

STEMCELL_DIR = Path("/var/lib/stemforge/tests/stemcells")
HERE = Path(__file__).parent

# ``scripts/test.sh`` runs the suite on two pytest-xdist workers with ``--dist loadscope`` and the scheduler below:
# every module is one scheduling unit (its module-scoped fixtures, e.g. a metal lab or a moto server, are made once),
# and modules that share host-global state run in one unit, one after the other:
# - "debian": debian builds share the bootstrap cache, whose ``.*.tmp`` temporaries, chroot mounts, loop devices
#   and ``sleep 300`` provisioners those tests assert are gone (the modules that run debootstrap);
# - "metal": the ``metal/`` directory (its modules boot emulated servers: TCG guests PXE-booting the ramdisk; the
#   metal benchmark's smoke test lives there too); their deploy deadlines are sized for one lab's guests on the
#   machine's cores, not two labs'.
# Entries are paths under tests/; one ending in "/" is a directory (every module under it).
# Units start longest first (the order below, then the rest as collected) so the last one to finish is short.
# (xdist's own ``loadgroup`` does not group under pytest 9: it renames ``item._nodeid``, which pytest 9 ignores.)
XDIST_GROUPS: dict[str, tuple[str, ...]] = {
    "metal": ("metal/",),
    "debian": ("builders/test_cpi_test_pp.py", "builders/test_debian_builder.py", "builders/test_qemu_builder_ssh.py",
               "builders/test_debian_builder_failpoints.py", "builders/test_debian_builder_template.py"),
}
LONGEST_FIRST = ("metal", "debian", "ci/test_pipeline_run_jobs.py", "terraform/test_terraform_env.py",
                 "cpi/test_libvirt_lifecycle.py", "cpi/test_disk_hints.py", "aws/test_aws_cpi_lifecycle.py",
                 "builders/test_amazon_ebs.py", "builders/test_release_pp_flow.py", "stemcells/test_testimage.py",
                 "cpi/test_libvirt_failures.py", "builders/test_qemu_builder.py")


def _in(module: str, entry: str) -> bool:
    return module.startswith(entry) if entry.endswith("/") else module == entry


def unit_of(nodeid: str) -> str:
    """The scheduling unit of a test: its module's group, else its module path under tests/
    (``tests/cpi/x.py::t[p]`` -> ``cpi/x.py``)."""
    module = nodeid.split("::", 1)[0].removeprefix("tests/")
    return next((group for group, entries in XDIST_GROUPS.items() if any(_in(module, e) for e in entries)), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``--dist loadscope``: xdist's scope scheduler, with our units as the scopes."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    return UnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest units first, in a stable, deterministic order (every xdist worker collects the same list).
    A module or directory named above that no longer exists is an error: a renamed one would silently leave its
    group."""
    named = [m for modules in XDIST_GROUPS.values() for m in modules] + [u for u in LONGEST_FIRST if u.endswith(".py")]
    missing = sorted(m for m in named if not ((HERE / m).is_dir() if m.endswith("/") else (HERE / m).is_file()))
    if missing:
        raise pytest.UsageError(f"tests/conftest.py schedules modules that do not exist: {', '.join(missing)}")
    rank = {unit: index for index, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove the libvirt runs (``run-*`` dirs, ``sft-*`` pools, their domains) of test sessions that were killed
    before their teardown; once per pytest run (in the xdist controller or the only process, not with
    ``--collect-only``). Live sessions' runs are never touched (``tests/harness/libvirt.py``)."""
    config = session.config
    if hasattr(config, "workerinput") or config.option.collectonly or libvirt_unavailable_reason():
        return
    removed = sweep_dead_runs()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if removed and reporter is not None:
        reporter.write_line(f"removed what dead test sessions left: {', '.join(removed)}")


@pytest.fixture(scope="session")
def test_stemcell() -> Path:
    """The test stemcell tarball (built once, cached)."""
    from stemcells.testimage.stemcell import build_test_stemcell

    STEMCELL_DIR.mkdir(parents=True, exist_ok=True)
    return build_test_stemcell(STEMCELL_DIR)


@pytest.fixture(scope="session")
def stemcell_image(test_stemcell: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The director's view of the stemcell: the extracted ``image`` file and the MF cloud_properties."""
    from stemcells.tarball import extract_stemcell

    dest = tmp_path_factory.mktemp("stemcell") / "extracted"
    extracted = extract_stemcell(test_stemcell, dest)
    return extracted.image_path, extracted.manifest.cloud_properties


@pytest.fixture(scope="session")
def libvirt_cpi() -> Iterator[LibvirtCpi]:
    with session_cpi_or_skip() as cpi:
        yield cpi


@pytest.fixture(scope="session")
def stemcell_cid(libvirt_cpi: LibvirtCpi, stemcell_image: tuple[Path, dict[str, Any]]) -> str:
    image, cloud_properties = stemcell_image
    cid: str = libvirt_cpi.ok("create_stemcell", str(image), cloud_properties, {"tags": {"suite": "pytest"}},
                              api_version=3)
    return cid


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto S3/EC2 server on 127.0.0.1 with test credentials in the environment (restored afterwards)."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/nonexistent",
                      AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    os.environ.pop("AWS_PROFILE", None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto's backends are process-global: a server started in this process sees what earlier modules' servers
    # kept (their AMIs, buckets...). Every module starts from moto's pristine state.
    requests.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()
    try:
        yield url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
