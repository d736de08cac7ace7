"""Secrets from env, config, context and cloud_properties never reach stdout, stderr or ``log``.

The end-to-end tests run the real ``cpi.main.main`` in a subprocess with a throwaway provider module (written to
tmp_path and registered in ``cpi.providers.PROVIDERS`` by the runner) that logs, prints, warns and raises with every
secret it was given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stemforge_base.redaction import REDACTED, Redactor, is_secret_key

# -- unit ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "admin_password",
        "passwd",
        "secret",
        "client_secret",
        "secret_access_key",
        "secretAccessKey",
        "SECRET_ACCESS_KEY",
        "access_key",
        "access_key_id",
        "token",
        "auth_token",
        "api_key",
        "apiKey",
        "private_key",
        "privateKey",
        "key",
        "ssh_key",
        "cert",
        "ca_cert",
        "certificate",
        "ca",
        "pem",
        "auth",
        "credential",
        "credentials",
        "json_key",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "key_name",
        "auth_url",
        "uri",
        "name",
        "cache",
        "cpu",
        "keypair",
        "certificate_id",
        "pool",
        "state_dir",
        "private",
        "private_network",
        "",
        5,
    ],
)
def test_non_secret_keys(key: Any) -> None:
    assert not is_secret_key(key)


def test_scrub_longest_first_and_escaped_forms() -> None:
    redactor = Redactor()
    redactor.add("abcd")
    redactor.add("abcdefgh")
    redactor.add('qu"ote\\x')
    assert redactor.scrub("x abcdefgh y abcd z") == f"x {REDACTED} y {REDACTED} z"
    assert redactor.scrub(json.dumps({"p": 'qu"ote\\x'})) == f'{{"p": "{REDACTED}"}}'
    assert redactor.scrub(repr('qu"ote\\x')) == f"'{REDACTED}'"


def test_short_values_are_not_scrubbed_from_text_but_redacted_by_key() -> None:
    redactor = Redactor()
    redactor.collect({"password": "abc"})
    assert redactor.scrub("abc") == "abc"
    assert redactor.redact({"password": "abc", "user": "abc"}) == {"password": REDACTED, "user": "abc"}


def test_url_userinfo() -> None:
    redactor = Redactor()
    text = "connecting to nats://nats:pa55word@10.0.0.6:4222 and https://user@host/x"
    assert redactor.scrub(text) == f"connecting to nats://{REDACTED}@10.0.0.6:4222 and https://user@host/x"
    redactor.collect({"agent": {"mbus": "nats://nats:p%40ss-w0rd@10.0.0.6:4222"}})
    assert redactor.scrub("password p@ss-w0rd leaked") == f"password {REDACTED} leaked"
    assert redactor.scrub("encoded p%40ss-w0rd leaked") == f"encoded {REDACTED} leaked"


def test_collect_and_redact_structures() -> None:
    redactor = Redactor()
    config = {
        "blobstore": {"provider": "dav", "options": {"user": "agent", "password": "blob-pass"}},
        "tls": {"ca": "-----BEGIN CERT-----", "private_key": "-----BEGIN KEY-----"},
        "credentials": {"access_key_id": "AKIA123", "region": "us-east-1"},
        "key_name": "bosh",
    }
    redactor.collect(config)
    assert {"blob-pass", "-----BEGIN CERT-----", "-----BEGIN KEY-----", "AKIA123", "us-east-1"} <= redactor.secrets()
    assert "bosh" not in redactor.secrets() and "agent" not in redactor.secrets()
    redacted = redactor.redact(config)
    assert redacted == {
        "blobstore": {"provider": "dav", "options": {"user": "agent", "password": REDACTED}},
        "tls": {"ca": REDACTED, "private_key": REDACTED},
        "credentials": REDACTED,
        "key_name": "bosh",
    }


def test_env_strings_are_all_secret() -> None:
    redactor = Redactor()
    redactor.add_all_strings({"bosh": {"password": "x", "groups": ["cf", "router-z1"], "port": 4222}})
    assert {"router-z1"} <= redactor.secrets()
    assert "4222" not in redactor.secrets()


# -- end to end ------------------------------------------------------------------------------------------------------

SECRETS = {
    "mbus": "MbusPassw0rd",
    "blobstore": "BlobPassw0rd",
    "libvirt": "LibvirtPassw0rd",
    "context": "CtxApiKey-123",
    "context_url": "CtxUrlPass-456",
    "cloud_properties": "CloudPropToken-789",
    "env_password": "$6$envhash$EnvPasswordHash",
    "env_cert": "-----BEGIN RSA PRIVATE KEY-----MIIEenvkey",
    "env_plain": "EnvPlainGroupName",
}

PROVIDER_MODULE = """
import logging, sys, warnings
from cpi.provider import Provider


class FakeProvider(Provider):
    def __init__(self, properties, logger):
        super().__init__(properties, logger)
        self.log.info("properties: %s", properties)
        self.log.debug("debug properties: %r", properties)

    def create_vm(self, request):
        cloud_properties, env = request.cloud_properties, request.env
        everything = {"props": self.properties, "cp": cloud_properties, "env": env}
        self.log.info("creating with %s", everything)
        logging.getLogger("some.library").warning("library saw %s", env)
        print("stdout print", everything)
        print("stderr print", everything, file=sys.stderr)
        warnings.warn(f"warning with {env}")
        try:
            raise ValueError(f"inner failure {everything}")
        except ValueError:
            self.log.exception("caught")
        mode = cloud_properties.get("mode")
        if mode == "cpi-error":
            from cpi.errors import VMCreationFailed
            raise VMCreationFailed(f"could not boot: {env}")
        if mode == "exit":
            raise SystemExit(f"exiting with {env}")
        raise RuntimeError(f"boom {everything}")

    def create_stemcell(self, *a): raise NotImplementedError
    def delete_stemcell(self, *a): raise NotImplementedError
    def delete_vm(self, *a): raise NotImplementedError
    def has_vm(self, *a): raise NotImplementedError
    def reboot_vm(self, *a): raise NotImplementedError
    def set_vm_metadata(self, *a): raise NotImplementedError
    def get_disks(self, *a): raise NotImplementedError
    def calculate_vm_cloud_properties(self, *a): raise NotImplementedError
    def create_disk(self, *a): raise NotImplementedError
    def delete_disk(self, *a): raise NotImplementedError
    def has_disk(self, *a): raise NotImplementedError
    def attach_disk(self, *a): raise NotImplementedError
    def detach_disk(self, *a): raise NotImplementedError
    def set_disk_metadata(self, *a): raise NotImplementedError
"""

RUNNER = """
import sys
sys.path.insert(0, {directory!r})
from cpi.providers import PROVIDERS, ProviderSpec
PROVIDERS["fake"] = ProviderSpec(module="fakeprov", class_name="FakeProvider", stemcell_formats=("fake-raw",))
from cpi.main import main
sys.exit(main())
"""


@pytest.fixture
def fake_cpi(tmp_path: Path) -> tuple[list[str], Path]:
    (tmp_path / "fakeprov.py").write_text(PROVIDER_MODULE)
    config = tmp_path / "cpi.json"
    config.write_text(
        json.dumps(
            {
                "cloud": {
                    "plugin": "fake",
                    "properties": {
                        "state_dir": str(tmp_path / "state"),
                        "log_level": "debug",
                        "agent": {
                            "mbus": f"nats://nats:{SECRETS['mbus']}@10.0.0.6:4222",
                            "blobstore": {
                                "provider": "dav",
                                "options": {"user": "agent", "password": SECRETS["blobstore"]},
                            },
                        },
                        "libvirt": {"uri": "qemu:///system", "password": SECRETS["libvirt"]},
                    },
                }
            }
        )
    )
    return [sys.executable, "-c", RUNNER.format(directory=str(tmp_path)), str(config)], config


def create_vm_request(mode: str = "raise", arguments: list[Any] | None = None) -> bytes:
    env = {
        "bosh": {
            "password": SECRETS["env_password"],
            "mbus": {"cert": {"private_key": SECRETS["env_cert"]}},
            "group": SECRETS["env_plain"],
        }
    }
    cloud_properties = {"mode": mode, "secret_token": SECRETS["cloud_properties"], "cpu": 2}
    return json.dumps(
        {
            "method": "create_vm",
            "arguments": arguments
            if arguments is not None
            else ["agent-1", "sc-1", cloud_properties, {"private": {"type": "dynamic"}}, [], env],
            "context": {
                "director_uuid": "d-uuid",
                "request_id": "cpi-77",
                "openstack": {"api_key": SECRETS["context"], "auth_url": f"https://u:{SECRETS['context_url']}@ks/v3"},
            },
            "api_version": 2,
        }
    ).encode()


def assert_clean(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert proc.returncode == 0
    outputs = {"stdout": proc.stdout.decode(), "stderr": proc.stderr.decode()}
    response = json.loads(outputs["stdout"])
    outputs["log"] = response["log"]
    outputs["message"] = response["error"]["message"] if response["error"] else ""
    for where, text in outputs.items():
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} secret leaked into {where}"
            for fragment in (secret[:12], secret[-12:]):
                assert fragment not in text, f"part of the {name} secret leaked into {where}"
    return response


@pytest.mark.parametrize("mode", ["raise", "cpi-error", "exit"])
def test_no_secret_reaches_any_output(fake_cpi: tuple[list[str], Path], mode: str) -> None:
    command, _ = fake_cpi
    proc = subprocess.run(command, input=create_vm_request(mode), capture_output=True, timeout=60)
    response = assert_clean(proc)
    stderr = proc.stderr.decode()
    # the provider really did write all of it, redacted
    assert "stdout print" in stderr and "stderr print" in stderr  # raw writes: stderr
    log = response["log"]
    assert "library saw" in log and "warning with" in log  # log records: the response's log only (once)
    assert "library saw" not in stderr and "warning with" not in stderr
    assert "Traceback" in stderr and "inner failure" in stderr
    assert REDACTED in stderr and REDACTED in log
    assert "Traceback" not in response["log"]
    error = response["error"]
    if mode == "raise":
        assert error["type"] == "Bosh::Clouds::CloudError"
        assert error["message"].startswith("create_vm failed: RuntimeError: boom")
    elif mode == "cpi-error":
        assert error["type"] == "Bosh::Clouds::VMCreationFailed"
    else:
        assert "internal error: SystemExit" in error["message"]
    assert REDACTED in error["message"]


def test_malformed_request_with_secrets(fake_cpi: tuple[list[str], Path]) -> None:
    command, _ = fake_cpi
    bad = json.loads(create_vm_request())
    bad["arguments"][3] = "not-networks"
    proc = subprocess.run(command, input=json.dumps(bad).encode(), capture_output=True, timeout=60)
    response = assert_clean(proc)
    assert "argument 4 (networks)" in response["error"]["message"]


def test_debug_log_of_arguments_is_redacted(fake_cpi: tuple[list[str], Path]) -> None:
    command, _ = fake_cpi
    proc = subprocess.run(command, input=create_vm_request(), capture_output=True, timeout=60)
    response = assert_clean(proc)
    assert "create_vm arguments: ['agent-1', 'sc-1'," in response["log"]
    assert "{'private': {'type': 'dynamic'}}" in response["log"]  # a network named private is no secret
    assert "<redacted env>" in response["log"]


def test_yaml_error_does_not_echo_the_line(tmp_path: Path) -> None:
    config = tmp_path / "cpi.yml"
    config.write_text(f"cloud:\n  plugin: libvirt\n  properties:\n    password: {SECRETS['libvirt']}: oops\n")
    exe = Path(sys.executable).parent / "stemforge-cpi"
    request = b'{"method":"info","arguments":[],"context":{"director_uuid":"d"}}'
    proc = subprocess.run([str(exe), str(config)], input=request, capture_output=True, timeout=60)
    response = assert_clean(proc)
    assert "neither valid JSON nor valid YAML" in response["error"]["message"]
    assert "line 4" in response["error"]["message"]


def test_stderr_stream_scrubs_python_writes() -> None:
    import io

    from cpi.main import _ScrubbingStream

    redactor = Redactor()
    redactor.add("split-secret-value")
    raw = io.StringIO()
    stream = _ScrubbingStream(raw, redactor)
    stream.write("a split-sec")
    stream.write("ret-value b\nc")
    stream.flush()
    assert raw.getvalue() == f"a {REDACTED} b\nc"
