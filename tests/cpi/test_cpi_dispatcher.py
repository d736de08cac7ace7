"""The dispatcher layer alone, against a recording in-test provider: result shapes per API version, argument
normalisation, optional capabilities, error mapping and the context merge."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cpi import errors
from cpi.dispatcher import METHODS, Dispatcher, Request
from cpi.main import Call, respond
from cpi.provider import DiskHint, DiskResizer, DiskUpdater, Networks, Provider, Snapshots, VmRequest
from stemforge_base.redaction import Redactor

NETWORKS = {"private": {"type": "manual", "ip": "10.0.0.10", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}}


class RecordingProvider(Provider):
    """Implements the required interfaces; records every call; behaviour tweakable per test via class attributes."""

    name = "recording"
    instances: list[RecordingProvider] = []
    hint: Any = {"path": "/dev/vdc"}
    vm_result: Any = ("vm-1", {"private": {**NETWORKS["private"], "mac": "52:54:00:00:00:01"}})
    raise_on: dict[str, BaseException] = {}

    def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
        super().__init__(properties, logger)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        type(self).instances.append(self)

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if method in self.raise_on:
            raise self.raise_on[method]

    def create_stemcell(self, image_path: str, cloud_properties: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        self._record("create_stemcell", image_path, cloud_properties, tags)
        return "sc-1"

    def delete_stemcell(self, stemcell_cid: str) -> None:
        self._record("delete_stemcell", stemcell_cid)

    def create_vm(self, request: VmRequest) -> tuple[str, Networks]:
        r = request
        self._record("create_vm", r.agent_id, r.stemcell_cid, r.cloud_properties, r.networks, r.disk_cids, r.env)
        result: tuple[str, Networks] = self.vm_result
        return result

    def delete_vm(self, vm_cid: str) -> None:
        self._record("delete_vm", vm_cid)

    def has_vm(self, vm_cid: str) -> bool:
        self._record("has_vm", vm_cid)
        return vm_cid == "vm-1"

    def reboot_vm(self, vm_cid: str) -> None:
        self._record("reboot_vm", vm_cid)

    def set_vm_metadata(self, vm_cid: str, metadata: Mapping[str, str]) -> None:
        self._record("set_vm_metadata", vm_cid, metadata)

    def get_disks(self, vm_cid: str) -> list[str]:
        self._record("get_disks", vm_cid)
        return ["disk-1"]

    def calculate_vm_cloud_properties(self, vm_resources: Mapping[str, int]) -> dict[str, Any]:
        self._record("calculate_vm_cloud_properties", vm_resources)
        return {"cpu": vm_resources["cpu"], "ram": vm_resources["ram"]}

    def create_disk(self, size_mib: int, cloud_properties: Mapping[str, Any], vm_locality: str | None) -> str:
        self._record("create_disk", size_mib, cloud_properties, vm_locality)
        return "disk-1"

    def delete_disk(self, disk_cid: str) -> None:
        self._record("delete_disk", disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        self._record("has_disk", disk_cid)
        return True

    def attach_disk(self, vm_cid: str, disk_cid: str) -> DiskHint:
        self._record("attach_disk", vm_cid, disk_cid)
        hint: DiskHint = self.hint
        return hint

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        self._record("detach_disk", vm_cid, disk_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: Mapping[str, str]) -> None:
        self._record("set_disk_metadata", disk_cid, metadata)


class FullProvider(RecordingProvider, Snapshots, DiskResizer, DiskUpdater):
    """Also implements every optional capability."""

    def snapshot_disk(self, disk_cid: str, metadata: Mapping[str, Any]) -> str:
        self._record("snapshot_disk", disk_cid, metadata)
        return "snap-1"

    def delete_snapshot(self, snapshot_cid: str) -> None:
        self._record("delete_snapshot", snapshot_cid)

    def resize_disk(self, disk_cid: str, new_size_mib: int) -> None:
        self._record("resize_disk", disk_cid, new_size_mib)

    def update_disk(self, disk_cid: str, new_size_mib: int, cloud_properties: Mapping[str, Any]) -> str | None:
        self._record("update_disk", disk_cid, new_size_mib, cloud_properties)
        return "disk-2"


@pytest.fixture(autouse=True)
def _reset() -> None:
    for cls in (RecordingProvider, FullProvider):
        cls.instances = []
        cls.hint = {"path": "/dev/vdc"}
        cls.vm_result = ("vm-1", {"private": {**NETWORKS["private"], "mac": "52:54:00:00:00:01"}})
        cls.raise_on = {}


def make(provider_class: type[Provider] = FullProvider, properties: dict[str, Any] | None = None) -> Dispatcher:
    logger = logging.getLogger("stemforge.cpi")
    return Dispatcher(
        "libvirt",
        properties if properties is not None else {"state_dir": "/nonexistent"},
        logger_factory=lambda: logger,
        redactor=Redactor(),
        provider_class=provider_class,
    )


def call(dispatcher: Dispatcher, method: str, *arguments: Any, api_version: int | None = 2) -> Any:
    return dispatcher.dispatch(Request(method, list(arguments), {"director_uuid": "d"}, api_version))


def last_call(provider_class: type[RecordingProvider] = FullProvider) -> tuple[str, tuple[Any, ...]]:
    return provider_class.instances[-1].calls[-1]


# -- API versions ----------------------------------------------------------------------------------------------------


def test_info_does_not_construct_the_provider() -> None:
    dispatcher = make()
    assert call(dispatcher, "info", api_version=None) == {
        "api_version": 3,
        "stemcell_formats": ["libvirt-qcow2", "libvirt-raw", "openstack-qcow2", "openstack-raw"],
    }
    assert FullProvider.instances == []


def test_info_formats_override() -> None:
    dispatcher = make(properties={"stemcell_formats": ["openstack-raw"]})
    assert call(dispatcher, "info")["stemcell_formats"] == ["openstack-raw"]


@pytest.mark.parametrize(("api_version", "expected_shape"), [(None, "cid"), (1, "cid"), (2, "pair"), (3, "pair")])
def test_create_vm_shape(api_version: int | None, expected_shape: str) -> None:
    result = call(make(), "create_vm", "agent", "sc-1", {}, NETWORKS, None, {"bosh": {}}, api_version=api_version)
    if expected_shape == "cid":
        assert result == "vm-1"
    else:
        assert result == ["vm-1", {"private": {**NETWORKS["private"], "mac": "52:54:00:00:00:01"}}]
    name, args = last_call()
    assert name == "create_vm" and args[4] == []  # disk_cids null -> []


def test_create_vm_normalises_nulls() -> None:
    call(make(), "create_vm", "agent", "sc-1", None, NETWORKS, ["disk-9"], None)
    assert last_call()[1] == ("agent", "sc-1", {}, NETWORKS, ["disk-9"], {})


@pytest.mark.parametrize(("api_version", "expected"), [(1, None), (2, {"path": "/dev/vdc"}), (3, {"path": "/dev/vdc"})])
def test_attach_disk_shape(api_version: int, expected: Any) -> None:
    assert call(make(), "attach_disk", "vm-1", "disk-1", api_version=api_version) == expected
    assert last_call() == ("attach_disk", ("vm-1", "disk-1"))


def test_attach_disk_string_hint() -> None:
    FullProvider.hint = "/dev/vdc"
    assert call(make(), "attach_disk", "vm-1", "disk-1") == "/dev/vdc"


@pytest.mark.parametrize("hint", ["", "  ", {}, None, 7])
def test_empty_disk_hint_is_a_provider_bug(hint: Any) -> None:
    FullProvider.hint = hint
    with pytest.raises(errors.CloudError, match="attach_disk: provider attached disk disk-1 to VM vm-1 but returned"):
        call(make(), "attach_disk", "vm-1", "disk-1", api_version=2)
    assert call(make(), "attach_disk", "vm-1", "disk-1", api_version=1) is None  # v1 ignores the hint


def test_create_stemcell_v3_tags() -> None:
    env = {"tags": {"team": "core", "index": 3, "critical": True, "none": None}}
    assert call(make(), "create_stemcell", "/tmp/image", {"infrastructure": "libvirt"}, env, api_version=3) == "sc-1"
    assert last_call() == (
        "create_stemcell",
        ("/tmp/image", {"infrastructure": "libvirt"}, {"team": "core", "index": "3", "critical": "true", "none": ""}),
    )


@pytest.mark.parametrize("env", [None, {}, {"tags": None}])
def test_create_stemcell_without_tags(env: Any) -> None:
    call(make(), "create_stemcell", "/tmp/image", None, env, api_version=3)
    assert last_call() == ("create_stemcell", ("/tmp/image", {}, {}))


def test_create_stemcell_v2_two_arguments() -> None:
    call(make(), "create_stemcell", "/tmp/image", {})
    assert last_call() == ("create_stemcell", ("/tmp/image", {}, {}))


def test_metadata_values_become_strings() -> None:
    metadata = {"director": "bosh", "index": 0, "bootstrap": False, "ratio": 1.5, "empty": None}
    call(make(), "set_vm_metadata", "vm-1", metadata)
    assert last_call() == (
        "set_vm_metadata",
        ("vm-1", {"director": "bosh", "index": "0", "bootstrap": "false", "ratio": "1.5", "empty": ""}),
    )
    call(make(), "set_disk_metadata", "disk-1", {"index": 2})
    assert last_call() == ("set_disk_metadata", ("disk-1", {"index": "2"}))


def test_simple_methods() -> None:
    dispatcher = make()
    assert call(dispatcher, "has_vm", "vm-1") is True
    assert call(dispatcher, "has_vm", "vm-2") is False
    assert call(dispatcher, "delete_vm", "vm-1") is None
    assert call(dispatcher, "reboot_vm", "vm-1") is None
    assert call(dispatcher, "get_disks", "vm-1") == ["disk-1"]
    assert call(dispatcher, "create_disk", 1024, None, None) == "disk-1"
    assert FullProvider.instances[-1].calls[-1] == ("create_disk", (1024, {}, None))
    assert call(dispatcher, "create_disk", 1024, {"type": "ssd"}, "vm-1") == "disk-1"
    assert call(dispatcher, "has_disk", "disk-1") is True
    assert call(dispatcher, "detach_disk", "vm-1", "disk-1") is None
    assert call(dispatcher, "delete_disk", "disk-1") is None
    assert call(dispatcher, "delete_stemcell", "sc-1") is None
    resources = {"ram": 1024, "cpu": 2, "ephemeral_disk_size": 4096}
    assert call(dispatcher, "calculate_vm_cloud_properties", resources) == {"cpu": 2, "ram": 1024}
    assert len(FullProvider.instances) == 1, "the provider is constructed once per process"


def test_provider_construction() -> None:
    properties = {"state_dir": "/x", "libvirt": {"uri": "qemu:///system"}}
    dispatcher = make(properties=properties)
    call(dispatcher, "has_vm", "vm-1")
    provider = FullProvider.instances[0]
    assert provider.properties == properties
    assert isinstance(provider.log, logging.Logger) and provider.log.name == "stemforge.cpi.libvirt"


# -- optional capabilities -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "arguments", "error"),
    [
        ("snapshot_disk", ("disk-1", {"deployment": "cf"}), errors.NotImplemented),
        ("delete_snapshot", ("snap-1",), errors.NotImplemented),
        ("resize_disk", ("disk-1", 2048), errors.NotSupported),
        ("update_disk", ("disk-1", 2048, {}), errors.NotSupported),
    ],
)
def test_missing_capabilities(method: str, arguments: tuple[Any, ...], error: type[errors.CpiError]) -> None:
    with pytest.raises(error, match=f"{method} is not supported by provider 'libvirt'") as raised:
        call(make(RecordingProvider), method, *arguments)
    assert type(raised.value) is error


def test_present_capabilities() -> None:
    dispatcher = make(FullProvider)
    assert call(dispatcher, "snapshot_disk", "disk-1", {"deployment": "cf", "custom": {"a": 1}}) == "snap-1"
    assert last_call() == ("snapshot_disk", ("disk-1", {"deployment": "cf", "custom": {"a": 1}}))
    assert call(dispatcher, "delete_snapshot", "snap-1") is None
    assert call(dispatcher, "resize_disk", "disk-1", 2048) is None
    assert last_call() == ("resize_disk", ("disk-1", 2048))
    assert call(dispatcher, "update_disk", "disk-1", 2048, None) == "disk-2"
    assert last_call() == ("update_disk", ("disk-1", 2048, {}))


def test_current_vm_id_is_not_implemented() -> None:
    with pytest.raises(errors.NotImplemented):
        call(make(), "current_vm_id")
    assert FullProvider.instances == []


def test_unknown_method() -> None:
    with pytest.raises(errors.NotImplemented, match="unknown method 'nope'"):
        call(make(), "nope")


# -- errors ----------------------------------------------------------------------------------------------------------


def test_cpi_errors_pass_through() -> None:
    FullProvider.raise_on = {"delete_vm": errors.VMNotFound("VM vm-9 not found")}
    with pytest.raises(errors.VMNotFound, match="VM vm-9 not found"):
        call(make(), "delete_vm", "vm-9")
    FullProvider.raise_on = {"create_vm": errors.VMCreationFailed("no capacity", ok_to_retry=True)}
    with pytest.raises(errors.VMCreationFailed) as raised:
        call(make(), "create_vm", "a", "sc", {}, NETWORKS, [], {})
    assert raised.value.ok_to_retry is True


def test_unknown_cpi_error_subclass_maps_to_its_director_type() -> None:
    class GoneDisk(errors.DiskNotFound):
        bosh_type = "Bosh::Clouds::GoneDisk"

    FullProvider.raise_on = {"delete_disk": GoneDisk("disk-3 vanished", ok_to_retry=True)}
    with pytest.raises(errors.DiskNotFound) as raised:
        call(make(), "delete_disk", "disk-3")
    assert type(raised.value) is errors.DiskNotFound
    assert raised.value.message == "disk-3 vanished" and raised.value.ok_to_retry is True


def test_other_exceptions_become_cloud_errors() -> None:
    FullProvider.raise_on = {"reboot_vm": KeyError("domain")}
    with pytest.raises(errors.CloudError, match=r"^reboot_vm failed: KeyError: 'domain'$") as raised:
        call(make(), "reboot_vm", "vm-1")
    assert type(raised.value) is errors.CloudError and raised.value.ok_to_retry is False


@pytest.mark.parametrize(
    ("method", "arguments", "attribute", "value", "fragment"),
    [
        ("create_vm", ("a", "sc", {}, NETWORKS, [], {}), "vm_result", "vm-1", "instead of (vm_cid, networks)"),
        ("create_vm", ("a", "sc", {}, NETWORKS, [], {}), "vm_result", ("", {}), "an empty string instead of a VM CID"),
        ("create_vm", ("a", "sc", {}, NETWORKS, [], {}), "vm_result", ("vm-1", None), "with networks of type"),
    ],
)
def test_bad_provider_results(
    method: str, arguments: tuple[Any, ...], attribute: str, value: Any, fragment: str
) -> None:
    setattr(FullProvider, attribute, value)
    with pytest.raises(errors.CloudError) as raised:
        call(make(), method, *arguments)
    assert fragment in raised.value.message


def test_non_boolean_has_vm_is_a_provider_bug() -> None:
    class Sloppy(FullProvider):
        def has_vm(self, vm_cid: str) -> bool:
            return "yes"  # type: ignore[return-value]

    with pytest.raises(
        errors.CloudError, match="has_vm: provider returned a value of type string instead of a boolean"
    ):
        call(make(Sloppy), "has_vm", "vm-1")


def test_provider_init_failure() -> None:
    class Broken(FullProvider):
        def __init__(self, properties: Mapping[str, Any], logger: logging.Logger) -> None:
            raise OSError("cannot open /var/run/libvirt/libvirt-sock")

    with pytest.raises(errors.CloudError, match="provider 'libvirt' failed to initialise: OSError: cannot open"):
        call(make(Broken), "has_vm", "vm-1")


def test_the_method_table_lists_every_cpi_method_and_only_info_is_local() -> None:
    """One table (handler + argument schemas per method): every CPI v2 method, and only ``info`` answered
    without the provider."""
    assert set(METHODS) == {
        "info", "current_vm_id", "create_stemcell", "delete_stemcell", "create_vm", "delete_vm", "has_vm",
        "reboot_vm", "set_vm_metadata", "calculate_vm_cloud_properties", "get_disks", "create_disk", "delete_disk",
        "resize_disk", "update_disk", "has_disk", "attach_disk", "detach_disk", "set_disk_metadata", "snapshot_disk",
        "delete_snapshot",
    }
    assert [name for name, method in METHODS.items() if method.local] == ["info"]


# -- through respond(): redaction of provider errors and the context merge -------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cpi.json"
    path.write_text(
        json.dumps(
            {
                "cloud": {
                    "plugin": "libvirt",
                    "properties": {
                        "state_dir": str(tmp_path / "state"),
                        "libvirt": {"uri": "qemu:///system", "password": "libvirt-Secret-1", "pool": "default"},
                        "agent": {"mbus": "nats://nats:mbus-Secret-2@10.0.0.6:4222"},
                        "nested": {"keep": 1, "replace": 2},
                    },
                }
            }
        )
    )
    return path


def run(config: Path, method: str, arguments: list[Any], context: dict[str, Any] | None = None, **kw: Any) -> Any:
    request = {
        "method": method,
        "arguments": arguments,
        "context": {"director_uuid": "d-1", "request_id": "cpi-42", **(context or {})},
        "api_version": kw.pop("api_version", 2),
    }
    call_state = Call()
    try:
        return respond(json.dumps(request).encode(), [str(config)], call_state, provider_class=FullProvider)
    finally:
        call_state.close()


def test_context_merge(config_file: Path) -> None:
    context = {"vm": {"stemcell": {"api_version": 3}}, "nested": {"replace": 3, "new": 4}, "extra": "x"}
    response = run(config_file, "has_vm", ["vm-1"], context)
    assert response["error"] is None and response["result"] is True
    properties = FullProvider.instances[0].properties
    assert properties["nested"] == {"keep": 1, "replace": 3, "new": 4}
    assert properties["extra"] == "x"
    assert properties["libvirt"]["pool"] == "default"
    assert not {"director_uuid", "request_id", "vm"} & set(properties)


def test_provider_exception_message_is_redacted(config_file: Path) -> None:
    FullProvider.raise_on = {
        "create_disk": RuntimeError("virsh said: auth failed with libvirt-Secret-1 via nats://nats:mbus-Secret-2@h")
    }
    response = run(config_file, "create_disk", [1024, {}, None])
    error = response["error"]
    assert error["type"] == "Bosh::Clouds::CloudError" and error["ok_to_retry"] is False
    assert error["message"].startswith("create_disk failed: RuntimeError: virsh said: auth failed with <redacted>")
    assert "Secret" not in json.dumps(response)
    assert "create_disk failed with an unexpected RuntimeError (traceback on stderr)" in response["log"]


def test_log_lines(config_file: Path) -> None:
    response = run(config_file, "has_vm", ["vm-1"])
    lines = response["log"].splitlines()
    assert lines[0].startswith("[stemforge-cpi] [cpi-42] INFO ") and lines[0].endswith(
        "has_vm: api_version 2, provider libvirt"
    )
    assert lines[-1].split()[3].endswith("s")


def _with_log_level(config: Path, level: str) -> None:
    document = json.loads(config.read_text())
    document["cloud"]["properties"]["log_level"] = level
    config.write_text(json.dumps(document))


def test_log_level_from_config(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEMFORGE_CPI_LOG_LEVEL", raising=False)
    _with_log_level(config_file, "warning")
    assert run(config_file, "has_vm", ["vm-1"])["log"] == ""
    _with_log_level(config_file, "DEBUG")
    assert " DEBUG " in run(config_file, "has_vm", ["vm-1"])["log"]


def test_log_level_from_environment_wins(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_log_level(config_file, "error")
    monkeypatch.setenv("STEMFORGE_CPI_LOG_LEVEL", "debug")
    assert " DEBUG " in run(config_file, "has_vm", ["vm-1"])["log"]
    monkeypatch.setenv("STEMFORGE_CPI_LOG_LEVEL", "chatty")
    _with_log_level(config_file, "info")
    log = run(config_file, "has_vm", ["vm-1"])["log"]
    assert "WARNING" in log and "ignoring $STEMFORGE_CPI_LOG_LEVEL" in log
