"""The wire contract of the real ``stemforge-cpi`` executable, run as a subprocess.

Every malformed or hostile request must produce exactly one JSON object on stdout with ``result`` null, the right
``Bosh::Clouds::*`` error type, a message naming the problem, ``log`` a string, exit status 0, nothing else on stdout
and no change under the (libvirt) config's state_dir: malformed requests never reach a provider.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cpi import schemas

BIN = Path(sys.executable).parent
EXE = BIN / "stemforge-cpi"
CPI_ERROR = "Bosh::Clouds::CpiError"
NOT_IMPLEMENTED = "Bosh::Clouds::NotImplemented"
CLOUD_ERROR = "Bosh::Clouds::CloudError"
DIRECTOR_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LIMIT = 10 * 1024 * 1024


@pytest.fixture
def cpi_config(tmp_path: Path) -> Path:
    """A valid libvirt config whose state_dir (with one marker file) lives in tmp_path."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "marker").write_text("untouched")
    config = tmp_path / "cpi.json"
    config.write_text(
        json.dumps(
            {
                "cloud": {
                    "plugin": "libvirt",
                    "properties": {
                        "state_dir": str(state),
                        "agent": {"mbus": "nats://nats:nats-password@10.0.0.6:4222", "ntp": ["0.pool.ntp.org"]},
                        "libvirt": {"uri": "qemu:///session"},
                    },
                }
            }
        )
    )
    return config


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root`` with its size, mode and content digest: any state change shows."""
    import hashlib

    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (stat.st_size if path.is_file() else 0, stat.st_mode, digest)
    return out


def run_cpi(
    stdin: bytes, args: list[str], *, env: dict[str, str] | None = None, command: list[str] | None = None
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    """Run the CPI; assert the universal contract (exit 0, exactly one JSON object with the three keys)."""
    proc = subprocess.run(
        (command or [str(EXE)]) + args, input=stdin, capture_output=True, env=env, timeout=120, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode("ascii")  # the response is pure ASCII JSON
    assert text.endswith("\n") and text.count("\n") == 1, f"more than one line on stdout: {text[:500]!r}"
    response = json.loads(text)
    assert isinstance(response, dict) and set(response) == {"result", "error", "log"}, response
    assert isinstance(response["log"], str)
    if response["error"] is not None:
        error = response["error"]
        assert set(error) == {"type", "message", "ok_to_retry"}
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["ok_to_retry"], bool)
        assert response["result"] is None
    return proc, response


def envelope(method: Any = "info", arguments: Any = (), **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "method": method,
        "arguments": list(arguments) if isinstance(arguments, tuple) else arguments,
        "context": {"director_uuid": "d-uuid", "request_id": "cpi-123456"},
        "api_version": 2,
    }
    request.update(overrides)
    return {key: value for key, value in request.items() if value is not DROP}


DROP = object()


def req(method: Any = "info", arguments: Any = (), **overrides: Any) -> bytes:
    return json.dumps(envelope(method, arguments, **overrides)).encode()


def ctx(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"director_uuid": "d-uuid", "request_id": "cpi-1"}
    for key, value in fields.items():
        if value is DROP:
            base.pop(key)
        else:
            base[key] = value
    return base


NETWORKS = {"private": {"type": "manual", "ip": "10.0.0.10", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}}


def create_vm(**replace: Any) -> list[Any]:
    arguments: list[Any] = ["agent-1", "sc-1", {}, NETWORKS, [], {"bosh": {"password": "pw-hash"}}]
    names = ["agent_id", "stemcell_cid", "cloud_properties", "networks", "disk_cids", "env"]
    for name, value in replace.items():
        arguments[names.index(name)] = value
    return arguments


# (id, stdin, error type, substrings the message must contain)
CASES: list[tuple[str, bytes, str, list[str]]] = [
    ("not-json", b"hello director", CPI_ERROR, ["request: not valid JSON", "line 1 column 1"]),
    ("empty-stdin", b"", CPI_ERROR, ["request: empty input"]),
    ("whitespace-stdin", b" \n\t ", CPI_ERROR, ["request: empty input"]),
    ("json-array", b"[]", CPI_ERROR, ["request: expected a JSON object, got array"]),
    ("json-number", b"42", CPI_ERROR, ["request: expected a JSON object, got integer"]),
    ("json-null", b"null", CPI_ERROR, ["request: expected a JSON object, got null"]),
    ("json-string", b'"info"', CPI_ERROR, ["request: expected a JSON object, got string"]),
    ("deeply-nested", b"[" * 200_000 + b"]" * 200_000, CPI_ERROR, ["request: JSON nested deeper than"]),
    (
        "nested-past-limit",
        req(context={**ctx(), "x": json.loads("[" * 80 + "]" * 80)}),
        CPI_ERROR,
        ["request: JSON nested deeper than 64"],
    ),
    ("huge-input", b" " * (LIMIT + 100) + req(), CPI_ERROR, ["request: larger than the limit"]),
    ("invalid-utf8", b'{"method":"info\xff\xfe","arguments":[]}', CPI_ERROR, ["not valid UTF-8", "offset 15"]),
    ("utf8-bom", b"\xef\xbb\xbf" + req(), CPI_ERROR, ["request: not valid JSON", "BOM"]),
    ("truncated", req()[:-5], CPI_ERROR, ["request: not valid JSON"]),
    ("trailing-garbage", req() + b" {}", CPI_ERROR, ["request: not valid JSON: Extra data"]),
    ("nan-literal", req("create_disk").replace(b"[]", b"[NaN, {}, null]"), CPI_ERROR, ["NaN is not valid JSON"]),
    ("infinity", req("create_disk").replace(b"[]", b"[Infinity, {}, null]"), CPI_ERROR, ["Infinity"]),
    ("minus-infinity", req("create_disk").replace(b"[]", b"[-Infinity, {}, null]"), CPI_ERROR, ["-Infinity"]),
    (
        "duplicate-keys",
        b'{"method":"info","method":"delete_vm","arguments":[],"context":{"director_uuid":"x"}}',
        CPI_ERROR,
        ['duplicate key "method"'],
    ),
    (
        "giant-integer",
        req("create_disk").replace(b"[]", b"[" + b"9" * 5000 + b", {}, null]"),
        CPI_ERROR,
        ["request: not valid JSON"],
    ),
    ("missing-method", req(method=DROP), CPI_ERROR, ["request: 'method' is required"]),
    ("method-number", req(method=42), CPI_ERROR, ["request: 'method': expected a string, got integer"]),
    ("method-null", req(method=None), CPI_ERROR, ["'method': expected a string, got null"]),
    ("method-empty", req(method=""), CPI_ERROR, ["request: 'method': must not be empty"]),
    ("unknown-method", req("launch_rockets"), NOT_IMPLEMENTED, ["unknown method 'launch_rockets'"]),
    ("method-padded", req(" info"), NOT_IMPLEMENTED, ["unknown method ' info'"]),
    ("method-huge", req("x" * 100_000), NOT_IMPLEMENTED, ["unknown method 'xxxx", "..."]),
    ("missing-arguments", req(arguments=DROP), CPI_ERROR, ["request: 'arguments' is required"]),
    ("arguments-object", req(arguments={"a": 1}), CPI_ERROR, ["'arguments': expected an array, got object"]),
    ("arguments-null", req(arguments=None), CPI_ERROR, ["'arguments': expected an array, got null"]),
    ("arguments-string", req(arguments="vm-1"), CPI_ERROR, ["'arguments': expected an array, got string"]),
    ("missing-context", req(context=DROP), CPI_ERROR, ["request: 'context' is required"]),
    ("context-string", req(context="d-uuid"), CPI_ERROR, ["'context': expected an object, got string"]),
    ("context-array", req(context=[]), CPI_ERROR, ["'context': expected an object, got array"]),
    ("no-director-uuid", req(context=ctx(director_uuid=DROP)), CPI_ERROR, ["'context.director_uuid' is required"]),
    (
        "director-uuid-number",
        req(context=ctx(director_uuid=7)),
        CPI_ERROR,
        ["'context.director_uuid': expected a string, got integer"],
    ),
    ("request-id-number", req(context=ctx(request_id=5)), CPI_ERROR, ["'context.request_id': expected a string"]),
    ("request-id-huge", req(context=ctx(request_id="r" * 300)), CPI_ERROR, ["'context.request_id': must be at most"]),
    ("context-vm-string", req(context=ctx(vm="vm-1")), CPI_ERROR, ["'context.vm': expected an object or null"]),
    ("api-version-string", req(api_version="2"), CPI_ERROR, ["'api_version': expected an integer, got string"]),
    ("api-version-zero", req(api_version=0), CPI_ERROR, ["'api_version': must be a supported CPI API version", "0"]),
    ("api-version-99", req(api_version=99), CPI_ERROR, ["'api_version': must be a supported CPI API version", "99"]),
    ("api-version-float", req(api_version=2.0), CPI_ERROR, ["'api_version': expected an integer, got number"]),
    ("api-version-bool", req(api_version=True), CPI_ERROR, ["'api_version': expected an integer, got boolean"]),
    ("info-with-arguments", req("info", [1]), CPI_ERROR, ["info: expected no arguments, got 1"]),
    ("create-vm-arity", req("create_vm", ["agent", "sc"]), CPI_ERROR, ["create_vm: expected 6 arguments", "got 2"]),
    ("delete-vm-arity-0", req("delete_vm", []), CPI_ERROR, ["delete_vm: expected 1 argument (vm_cid), got 0"]),
    ("has-vm-arity-2", req("has_vm", ["a", "b"]), CPI_ERROR, ["has_vm: expected 1 argument (vm_cid), got 2"]),
    ("attach-arity-3", req("attach_disk", ["a", "b", "c"]), CPI_ERROR, ["attach_disk: expected 2 arguments"]),
    ("create-stemcell-arity-1", req("create_stemcell", ["/x"]), CPI_ERROR, ["create_stemcell: expected 2 to 3"]),
    ("create-stemcell-arity-4", req("create_stemcell", ["/x", {}, {}, {}]), CPI_ERROR, ["got 4"]),
    ("update-disk-arity", req("update_disk", ["d", 10]), CPI_ERROR, ["update_disk: expected 3 arguments"]),
    ("set-vm-metadata-arity", req("set_vm_metadata", ["vm"]), CPI_ERROR, ["set_vm_metadata: expected 2"]),
    (
        "cid-number",
        req("has_disk", [12]),
        CPI_ERROR,
        ["has_disk: argument 1 (disk_cid): expected a string, got integer"],
    ),
    ("cid-null", req("has_vm", [None]), CPI_ERROR, ["has_vm: argument 1 (vm_cid): expected a string, got null"]),
    ("cid-object", req("reboot_vm", [{"id": "x"}]), CPI_ERROR, ["reboot_vm: argument 1 (vm_cid): expected a string"]),
    ("cid-empty", req("delete_vm", [""]), CPI_ERROR, ["delete_vm: argument 1 (vm_cid): must not be empty"]),
    ("cid-whitespace", req("delete_vm", ["   "]), CPI_ERROR, ["delete_vm: argument 1 (vm_cid): must not be blank"]),
    ("cid-leading-space", req("delete_vm", [" vm-1"]), CPI_ERROR, ["argument 1 (vm_cid): must not be blank"]),
    ("cid-newline", req("delete_disk", ["disk-1\n"]), CPI_ERROR, ["(disk_cid)", "control characters"]),
    ("cid-nul", req("delete_disk", ["disk\u00001"]), CPI_ERROR, ["(disk_cid)", "control characters"]),
    ("cid-escape", req("delete_stemcell", ["sc\u001b[31m"]), CPI_ERROR, ["(stemcell_cid)", "control characters"]),
    (
        "cid-lone-surrogate",
        req("delete_snapshot", []).replace(b"[]", b'["snap\\ud800"]'),
        CPI_ERROR,
        ["delete_snapshot: argument 1 (snapshot_cid)", "control characters"],
    ),
    ("cid-huge", req("has_vm", ["v" * 5000]), CPI_ERROR, ["(vm_cid): must be at most 1024 characters long, got 5000"]),
    ("attach-disk-cid-list", req("attach_disk", ["vm-1", ["d"]]), CPI_ERROR, ["argument 2 (disk_cid): expected a"]),
    ("disk-size-negative", req("create_disk", [-1, {}, None]), CPI_ERROR, ["create_disk: argument 1 (size): must be"]),
    ("disk-size-zero", req("create_disk", [0, {}, None]), CPI_ERROR, ["argument 1 (size): must be a positive", "0"]),
    ("disk-size-float", req("create_disk", [1.5, {}, None]), CPI_ERROR, ["(size): expected an integer, got number"]),
    ("disk-size-whole-float", req("create_disk", [1024.0, {}, None]), CPI_ERROR, ["expected an integer, got number"]),
    ("disk-size-string", req("create_disk", ["1024", {}, None]), CPI_ERROR, ["expected an integer, got string"]),
    ("disk-size-bool", req("create_disk", [True, {}, None]), CPI_ERROR, ["expected an integer, got boolean"]),
    ("disk-size-huge", req("create_disk", [2**80, {}, None]), CPI_ERROR, ["argument 1 (size): must be a positive"]),
    ("resize-zero", req("resize_disk", ["disk-1", 0]), CPI_ERROR, ["resize_disk: argument 2 (new_size)"]),
    ("update-size-string", req("update_disk", ["d", "big", {}]), CPI_ERROR, ["update_disk: argument 2 (new_size)"]),
    (
        "disk-cloud-properties-list",
        req("create_disk", [1024, [], None]),
        CPI_ERROR,
        ["create_disk: argument 2 (cloud_properties): expected an object or null, got array"],
    ),
    ("disk-locality-empty", req("create_disk", [1024, {}, ""]), CPI_ERROR, ["argument 3 (vm_cid): must not be empty"]),
    (
        "metadata-list",
        req("set_vm_metadata", ["vm-1", ["director", "bosh"]]),
        CPI_ERROR,
        ["set_vm_metadata: argument 2 (metadata): expected an object, got array"],
    ),
    (
        "metadata-nested",
        req("set_vm_metadata", ["vm-1", {"deployment": {"name": "cf"}}]),
        CPI_ERROR,
        ["argument 2 (metadata): 'deployment': expected a string or a number or a boolean or null, got object"],
    ),
    ("metadata-empty-key", req("set_disk_metadata", ["d-1", {"": "x"}]), CPI_ERROR, ["has a key that is empty"]),
    ("snapshot-metadata-string", req("snapshot_disk", ["d-1", "m"]), CPI_ERROR, ["argument 2 (metadata): expected"]),
    (
        "cloud-properties-string",
        req("create_vm", create_vm(cloud_properties="big")),
        CPI_ERROR,
        ["create_vm: argument 3 (cloud_properties): expected an object or null, got string"],
    ),
    (
        "networks-string",
        req("create_vm", create_vm(networks="private")),
        CPI_ERROR,
        ["create_vm: argument 4 (networks): expected an object, got string"],
    ),
    (
        "network-not-object",
        req("create_vm", create_vm(networks={"private": ["10.0.0.10"]})),
        CPI_ERROR,
        ["create_vm: argument 4 (networks): 'private': expected an object, got array"],
    ),
    (
        "network-dns-number",
        req("create_vm", create_vm(networks={"private": {"type": "manual", "dns": [8]}})),
        CPI_ERROR,
        ["create_vm: argument 4 (networks): 'private.dns[0]': expected a string, got integer"],
    ),
    (
        "disk-cids-string",
        req("create_vm", create_vm(disk_cids="disk-1")),
        CPI_ERROR,
        ["argument 5 (disk_cids): expected an array or null, got string"],
    ),
    (
        "disk-cids-empty-cid",
        req("create_vm", create_vm(disk_cids=[""])),
        CPI_ERROR,
        ["argument 5 (disk_cids): '[0]': must not be empty"],
    ),
    ("env-string", req("create_vm", create_vm(env="x")), CPI_ERROR, ["create_vm: argument 6 (env): expected an"]),
    ("agent-id-empty", req("create_vm", create_vm(agent_id="")), CPI_ERROR, ["argument 1 (agent_id): must not be"]),
    (
        "vm-resources-missing-ram",
        req("calculate_vm_cloud_properties", [{"cpu": 2, "ephemeral_disk_size": 1024}]),
        CPI_ERROR,
        ["calculate_vm_cloud_properties: argument 1 (vm_resources): 'ram' is required"],
    ),
    (
        "vm-resources-cpu-zero",
        req("calculate_vm_cloud_properties", [{"ram": 1024, "cpu": 0, "ephemeral_disk_size": 1024}]),
        CPI_ERROR,
        ["(vm_resources): 'cpu': must be a positive integer, got 0"],
    ),
    (
        "stemcell-image-path-empty",
        req("create_stemcell", ["", {}]),
        CPI_ERROR,
        ["create_stemcell: argument 1 (image_path): must not be empty"],
    ),
    (
        "stemcell-tags-string",
        req("create_stemcell", ["/tmp/image", {}, {"tags": "x"}], api_version=3),
        CPI_ERROR,
        ["create_stemcell: argument 3 (env): 'tags': expected an object or null, got string"],
    ),
]


def test_case_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("stdin", "error_type", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_request(cpi_config: Path, stdin: bytes, error_type: str, fragments: list[str]) -> None:
    before = tree(cpi_config.parent)
    proc, response = run_cpi(stdin, [str(cpi_config)])
    error = response["error"]
    assert error is not None, response
    assert error["type"] == error_type
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    assert error["ok_to_retry"] is False
    assert len(error["message"]) < 600
    assert tree(cpi_config.parent) == before, "a malformed request changed the state dir"
    assert b"Traceback" not in proc.stderr


def test_current_vm_id_is_not_implemented_without_touching_the_provider(cpi_config: Path) -> None:
    before = tree(cpi_config.parent)
    _, response = run_cpi(req("current_vm_id"), [str(cpi_config)])
    assert response["error"]["type"] == NOT_IMPLEMENTED
    assert tree(cpi_config.parent) == before


@pytest.mark.parametrize("api_version", [None, 1, 2, 3])
def test_info(cpi_config: Path, api_version: int | None) -> None:
    before = tree(cpi_config.parent)
    request = envelope("info", api_version=DROP if api_version is None else api_version)
    _, response = run_cpi(json.dumps(request).encode(), [str(cpi_config)])
    assert response == {
        "result": {
            "api_version": 3,
            "stemcell_formats": ["libvirt-qcow2", "libvirt-raw", "openstack-qcow2", "openstack-raw"],
        },
        "error": None,
        "log": "",
    }
    assert tree(cpi_config.parent) == before, "info must be side-effect free"


def test_info_formats_override_and_context_merge(cpi_config: Path) -> None:
    document = json.loads(cpi_config.read_text())
    document["cloud"]["properties"]["stemcell_formats"] = ["openstack-qcow2"]
    cpi_config.write_text(json.dumps(document))
    _, response = run_cpi(req(), [str(cpi_config)])
    assert response["result"]["stemcell_formats"] == ["openstack-qcow2"]
    # cpi-config properties arrive in the context and win over the file
    _, response = run_cpi(req(context=ctx(stemcell_formats=["libvirt-raw"])), [str(cpi_config)])
    assert response["result"]["stemcell_formats"] == ["libvirt-raw"]


# -- config and command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["{config}"], ["--config", "{config}"], ["--config={config}"], ["-configPath", "{config}"], ["--", "{config}"]],
    ids=["positional", "--config", "--config=", "-configPath", "double-dash"],
)
def test_config_path_forms(cpi_config: Path, args: list[str]) -> None:
    _, response = run_cpi(req(), [arg.format(config=cpi_config) for arg in args])
    assert response["error"] is None and response["result"]["api_version"] == 3


def test_relative_config_path(cpi_config: Path) -> None:
    proc = subprocess.run([str(EXE), "cpi.json"], input=req(), capture_output=True, cwd=cpi_config.parent, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["error"] is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "expected exactly one config path, got 0"),
        (["a.json", "b.json"], "expected exactly one config path, got 2"),
        (["--config"], "--config needs a value"),
        (["--verbose", "x.json"], "unknown option '--verbose'"),
    ],
)
def test_usage_errors(args: list[str], fragment: str) -> None:
    _, response = run_cpi(req(), args)
    assert response["error"]["type"] == CPI_ERROR
    assert fragment in response["error"]["message"] and "usage: stemforge-cpi" in response["error"]["message"]


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    _, response = run_cpi(req(), [str(missing)])
    assert response["error"] == {
        "type": CPI_ERROR,
        "message": f"config {missing}: file not found",
        "ok_to_retry": False,
    }


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("", "the file is empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a mapping at the top level, got array"),
        ('{"cloud": {"plugin": "libvirt"}, "cloud": {}}', 'duplicate key "cloud"'),
        ("{}", "'cloud' is required"),
        ('{"cloud": []}', "'cloud': expected an object, got array"),
        ('{"cloud": {}}', "'cloud.plugin' is required"),
        ('{"cloud": {"plugin": 3}}', "'cloud.plugin': expected a string, got integer"),
        ('{"cloud": {"plugin": "vsphere"}}',
         "'cloud.plugin': is not a known provider plugin (known: aws, baremetal, libvirt)"),
        ('{"cloud": {"plugin": "libvirt", "propertes": {}}}', "'cloud': unexpected key 'propertes'"),
        ('{"cloud": {"plugin": "libvirt", "properties": []}}', "'cloud.properties': expected an object or null"),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"state_dir": 5}}}',
            "'cloud.properties.state_dir': expected a string, got integer",
        ),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"stemcell_formats": []}}}',
            "'cloud.properties.stemcell_formats': must have at least 1 items",
        ),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"agent": {"mbus": 4222}}}}',
            "'cloud.properties.agent.mbus': expected a string, got integer",
        ),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"agent": {"blobstore": {"options": {}}}}}}',
            "'cloud.properties.agent.blobstore.provider' is required",
        ),
        (
            '{"cloud": {"plugin": "libvirt", "properties": {"log_level": "loud"}}}',
            "'cloud.properties.log_level': must be one of",
        ),
        ("cloud:\n  plugin: libvirt\n  properties: [\n", "neither valid JSON nor valid YAML"),
    ],
)
def test_invalid_config(tmp_path: Path, document: str, fragment: str) -> None:
    config = tmp_path / "cpi.yml"
    config.write_text(document)
    for method_request in (req(), req("has_vm", ["vm-1"])):
        _, response = run_cpi(method_request, [str(config)])
        assert response["error"]["type"] == CPI_ERROR
        assert response["error"]["message"].startswith(f"config {config}: ")
        assert fragment in response["error"]["message"]


def test_invalid_context_override_names_the_merge(cpi_config: Path) -> None:
    _, response = run_cpi(req("has_vm", ["vm-1"], context=ctx(state_dir=7)), [str(cpi_config)])
    message = response["error"]["message"]
    assert message == (
        f"config {cpi_config} merged with the request context: 'cloud.properties.state_dir': "
        "expected a string, got integer"
    )


def test_yaml_config(tmp_path: Path) -> None:
    config = tmp_path / "cpi.yml"
    config.write_text("cloud:\n  plugin: libvirt\n  properties:\n    stemcell_formats: [openstack-raw]\n")
    _, response = run_cpi(req(), [str(config)])
    assert response["result"] == {"api_version": 3, "stemcell_formats": ["openstack-raw"]}


# -- process behaviour -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_becomes_an_error_response(cpi_config: Path, signum: int) -> None:
    proc = subprocess.Popen(
        [str(EXE), str(cpi_config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        proc.stdin.write(b'{"method": "info",')  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        time.sleep(1.5)  # the CPI is now blocked reading the rest of the request
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    response = json.loads(stdout)
    assert response["error"]["type"] == CLOUD_ERROR
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    assert f"interrupted by {name}" in response["error"]["message"]
    assert stdout.count(b"\n") == 1


def test_internal_bug_still_answers(cpi_config: Path) -> None:
    code = (
        "import sys, cpi.main as m\n"
        "def boom(data):\n"
        "    raise ZeroDivisionError('internal oops')\n"
        "m.parse_request = boom\n"
        "sys.exit(m.main())\n"
    )
    proc, response = run_cpi(req(), [str(cpi_config)], command=[sys.executable, "-c", code])
    assert response["error"]["type"] == CPI_ERROR
    assert "internal error: ZeroDivisionError: internal oops" in response["error"]["message"]
    assert b"Traceback" in proc.stderr and b"Traceback" not in proc.stdout


def _lines(text: str) -> set[str]:
    """Log lines without their elapsed-time field (the same record formatted twice would differ only there)."""
    import re

    return {re.sub(r" \d+\.\d{3}s ", " ", line) for line in text.splitlines() if line.startswith("[stemforge-cpi]")}


@pytest.mark.parametrize(
    "stdin",
    [b'{"method": "info",', req("no_such_method"), req("has_vm", ["vm-x"])],
    ids=["before-parse", "rejected", "debug-call"],
)
def test_each_log_line_is_written_once(cpi_config: Path, stdin: bytes) -> None:
    """The director appends the response's ``log`` and then stderr to the task's CPI log: a line in both showed
    twice in ``bosh task N --cpi``. Every record goes to ``log`` only; stderr carries tracebacks and raw writes."""
    proc, response = run_cpi(stdin, [str(cpi_config)], env={**os.environ, "STEMFORGE_CPI_LOG_LEVEL": "debug"})
    log_lines = _lines(response["log"])
    assert log_lines, "the call logged something (at debug level at least its request)"
    assert log_lines.isdisjoint(_lines(proc.stderr.decode())), proc.stderr.decode()[-2000:]


def test_traceback_goes_to_stderr_once_and_its_line_to_log_once(cpi_config: Path) -> None:
    code = (
        "import sys, cpi.main as m\n"
        "def boom(data):\n"
        "    raise ZeroDivisionError('internal oops')\n"
        "m.parse_request = boom\n"
        "sys.exit(m.main())\n"
    )
    proc, response = run_cpi(req(), [str(cpi_config)], command=[sys.executable, "-c", code])
    stderr = proc.stderr.decode()
    assert stderr.count("Traceback (most recent call last)") == 1
    assert response["log"].count("internal error: ZeroDivisionError: internal oops") == 1
    assert "internal error: ZeroDivisionError" not in "\n".join(_lines(stderr))


def test_stdout_is_reserved_for_the_response(cpi_config: Path) -> None:
    """Stray writes to stdout (Python-level and fd 1) land on stderr."""
    code = (
        "import os, sys, cpi.main as m\n"
        "real = m.parse_request\n"
        "def noisy(data):\n"
        "    print('python print')\n"
        "    os.write(1, b'raw fd write\\n')\n"
        "    return real(data)\n"
        "m.parse_request = noisy\n"
        "sys.exit(m.main())\n"
    )
    proc, response = run_cpi(req(), [str(cpi_config)], command=[sys.executable, "-c", code])
    assert response["error"] is None
    assert b"python print" in proc.stderr and b"raw fd write" in proc.stderr


def test_closed_stdin(cpi_config: Path) -> None:
    proc = subprocess.run([str(EXE), str(cpi_config)], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.returncode == 0
    assert "empty input" in json.loads(proc.stdout)["error"]["message"]


# -- the wrapper under the director's stripped environment -----------------------------------------------------------


def test_wrapper_in_stripped_environment(cpi_config: Path, tmp_path: Path) -> None:
    import argparse

    from cpi.cli import register

    parser = argparse.ArgumentParser(prog="stemforge")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cpi", "wrapper", "--config", str(cpi_config), "--out", str(tmp_path / "job")])
    assert args.handler(args) == 0
    script = tmp_path / "job" / "bin" / "cpi"
    text = script.read_text()
    # a Python script started by its #! line (no shell), through env --block-signal where env has it; -S: the
    # sys.path site made is baked in
    first = f"{os.path.abspath(sys.executable)} -IS\n"
    assert text.startswith((f"#!{first}", f"#!/usr/bin/env -S --block-signal=TERM,INT,HUP {first}"))
    assert os.access(script, os.X_OK)
    assert f"CONFIG = {str(cpi_config)!r}\n" in text
    env = {"PATH": DIRECTOR_PATH}
    for request, check in [
        (req(), lambda r: r["result"]["api_version"] == 3),
        (req("delete_vm", [""]), lambda r: "must not be empty" in r["error"]["message"]),
    ]:
        proc, response = run_cpi(
            request, [], env=env, command=["/usr/bin/env", "-i", f"PATH={DIRECTOR_PATH}", str(script)]
        )
        assert check(response), response


def test_wrapper_rejects_invalid_config(tmp_path: Path) -> None:
    from cpi.wrapper import WrapperError, write_wrapper

    bad = tmp_path / "bad.json"
    bad.write_text('{"cloud": {"plugin": "nope"}}')
    with pytest.raises(WrapperError, match="is not a known provider plugin"):
        write_wrapper(bad, tmp_path / "job")
    assert not (tmp_path / "job").exists()
    assert write_wrapper(bad, tmp_path / "job", check_config=False).is_file()


def test_cli_call(cpi_config: Path) -> None:
    base = [
        sys.executable,
        "-c",
        "import sys; from cpi.cli import register; import argparse\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))",
    ]
    ok = subprocess.run([*base, "cpi", "call", "info", "--config", str(cpi_config)], capture_output=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["result"]["api_version"] == 3
    bad = subprocess.run(
        [*base, "cpi", "call", "has_vm", '[""]', "--config", str(cpi_config)], capture_output=True, timeout=60
    )
    assert bad.returncode == 1
    assert "must not be empty" in json.loads(bad.stdout)["error"]["message"]
    usage = subprocess.run(
        [*base, "cpi", "call", "has_vm", '{"a": 1}', "--config", str(cpi_config)], capture_output=True, timeout=60
    )
    assert usage.returncode == 2 and b"must be a JSON array" in usage.stderr


# -- info stays cheap ------------------------------------------------------------------------------------------------

HEAVY = ("libvirt", "cpi.providers.libvirt", "cpi.provider", "jsonschema", "yaml", "boto3")


def _imported(stderr: bytes) -> set[str]:
    names = set()
    for line in stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_info_imports_nothing_heavy(cpi_config: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(EXE), str(cpi_config)],
        input=req(),
        capture_output=True,
        timeout=60,
    )
    assert json.loads(proc.stdout)["error"] is None
    imported = _imported(proc.stderr)
    assert "cpi.main" in imported
    assert not {name for name in imported if name.split(".")[0] in HEAVY or name in HEAVY}, imported
    assert "logging" not in imported


def test_argument_errors_import_no_provider(cpi_config: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(EXE), str(cpi_config)],
        input=req("create_vm", create_vm(networks="x")),
        capture_output=True,
        timeout=60,
    )
    assert "argument 4 (networks)" in json.loads(proc.stdout)["error"]["message"]
    imported = _imported(proc.stderr)
    assert "jsonschema" in imported  # argument errors may use jsonschema...
    assert not {name for name in imported if name.split(".")[0] == "libvirt" or name.startswith("cpi.providers.")}


def test_info_in_process_leaves_libvirt_unimported(cpi_config: Path) -> None:
    code = (
        "import json, sys\n"
        "from cpi.main import Call, respond\n"
        f"request = {req()!r}\n"
        f"response = respond(request, [{str(cpi_config)!r}], Call())\n"
        "assert response['error'] is None, response\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    modules = set(json.loads(proc.stdout))
    assert "libvirt" not in modules and "cpi.providers.libvirt" not in modules
    assert "jsonschema" not in modules and "yaml" not in modules


def test_info_round_trip_speed(cpi_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An info round trip through the generated wrapper vs bare ``python -c pass`` (median of interleaved runs).
    The target is 1.5x; the assertion is a loose regression guard (importing jsonschema alone costs ~4x)."""
    from cpi.wrapper import write_wrapper

    script = write_wrapper(cpi_config, tmp_path / "job")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    commands = {"bare": ([sys.executable, "-c", "pass"], None), "info": ([str(script)], req())}
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(25):
        for name, (command, stdin) in commands.items():
            started = time.perf_counter()
            subprocess.run(command, input=stdin, capture_output=True, env=env, check=True)
            if round_ >= 3:  # warm-up: bytecode caches, page cache
                samples[name].append(time.perf_counter() - started)
    ratio = statistics.median(samples["info"]) / statistics.median(samples["bare"])
    with capsys.disabled():
        print(
            f"\ninfo round trip {statistics.median(samples['info']) * 1e3:.1f} ms, "
            f"bare python {statistics.median(samples['bare']) * 1e3:.1f} ms, ratio {ratio:.2f}"
        )
    assert ratio < 2.5


# -- the hand-written info checks agree with the schemas -------------------------------------------------------------


def _envelope_corpus() -> list[Any]:
    good = envelope("info")
    corpus: list[Any] = [None, 1, "x", [], {}, good, {**good, "extra": 1}]
    values: list[Any] = [None, True, 0, 1, 2, 3, 4, -1, 2.0, "", "x", "2", [], {}, "u" * 256, "u" * 257]
    for key in ("method", "arguments", "context", "api_version"):
        corpus.append({k: v for k, v in good.items() if k != key})
        corpus.extend({**good, key: value} for value in values)
    for key in ("director_uuid", "request_id", "vm"):
        corpus.append({**good, "context": {k: v for k, v in good["context"].items() if k != key}})
        corpus.extend({**good, "context": {**good["context"], key: value}} for value in values)
    return corpus


def test_envelope_hand_check_matches_schema() -> None:
    validator = schemas.validator_for(schemas.ENVELOPE_SCHEMA)
    corpus = _envelope_corpus()
    assert len(corpus) > 100
    disagreements = [doc for doc in corpus if schemas.envelope_ok(doc) != validator.is_valid(doc)]
    assert disagreements == []
    assert any(schemas.envelope_ok(doc) for doc in corpus) and not all(schemas.envelope_ok(doc) for doc in corpus)


def test_schemas_are_valid_and_cover_the_dispatcher() -> None:
    from jsonschema import Draft202012Validator

    from cpi.dispatcher import METHODS

    Draft202012Validator.check_schema(schemas.ENVELOPE_SCHEMA)
    for method in METHODS.values():
        for _, schema in method.arguments:
            Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("vm-1", True),
        ("ami-123 light", True),
        ("i-0abc/ünïcode", True),
        ("x", True),
        ("", False),
        (" ", False),
        ("\t", False),
        (" a", False),
        ("a ", False),
        ("a\n", False),
        ("a\x00b", False),
        ("a\x7fb", False),
        ("a\x85b", False),
        ("a\ud800", False),
        ("c" * 1024, True),
        ("c" * 1025, False),
    ],
)
def test_cid_schema(value: str, ok: bool) -> None:
    assert schemas.validator_for(schemas.CID).is_valid(value) is ok


def test_executable_is_next_to_the_interpreter() -> None:
    assert EXE.is_file(), f"{EXE} missing: is the package installed (pip install -e .)?"
    assert shutil.which(str(EXE))
