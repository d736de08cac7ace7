"""Terraform-made test environments: ``up`` (init + apply + metadata), ``down`` (destroy), ``metadata``.

One environment is one directory (``<root>/<name>``)::

    terraformrc              private CLI config: the hashicorp/aws provider only from the local mirror
    terraform/               working directory: a copy of terraform/aws/*.tf, terraform.tfvars.json (0600), state
    environment/metadata     the flat JSON of ``terraform output -json`` values, as the CPI pipelines hand to tests
    environment/default_key.pem   private half of the key pair named by default_key_name (0600)

Contract:

* :meth:`Environment.up` validates its :class:`EnvironmentSpec` (errors name the field), finds terraform and the
  provider mirror (:mod:`terraform.mirror`), then runs the steps with Packer-style cleanup
  (:class:`stemforge_base.steps.StepRunner`): when any step fails or is interrupted, what this ``up`` made is
  destroyed and the directory removed, unless ``keep_on_failure``; when that destroy fails too, the directory is
  kept and the error says to run ``down``. An ``up`` over an existing environment converges it and never destroys it
  on failure.
* :meth:`Environment.down` is idempotent: no directory or no state means nothing to do; after a successful destroy
  the directory is removed.
* Secrets (the access and secret keys, from the spec or from ``AWS_*`` in the environment) never appear in progress
  lines or errors: every Terraform line goes through a :class:`stemforge_base.redaction.Redactor`, plus SigV4
  signatures.
* When every endpoint is on loopback, Terraform runs with ``HTTP(S)_PROXY`` pointing at a closed loopback port
  (Go never proxies loopback): any request that would leave the machine fails at once instead of leaving.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stemforge_base.net import is_loopback
from stemforge_base.redaction import REDACTED, Redactor
from stemforge_base.steps import Step, StepRunner
from terraform.discovery import TERRAFORM_CANDIDATE_DIRS, find_terraform
from terraform.mirror import ProviderMirror, TerraformSetupError, find_aws_provider, write_cli_config
from terraform.runner import Terraform, TerraformCommandFailed

#: The Terraform configuration of the AWS test environment.
AWS_CONFIG_DIR = Path(__file__).resolve().parent / "aws"
METADATA = Path("environment") / "metadata"
PRIVATE_KEY = Path("environment") / "default_key.pem"
#: A closed loopback port: the proxy of a loopback-only run (nothing listens on the discard port here).
TRAP_PROXY = "http://127.0.0.1:9"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,26}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_SIGV4 = re.compile(r"(Signature=)[0-9a-f]{64}|(X-Amz-Security-Token[\"':= ]+)[^\s\"',]+", re.IGNORECASE)
_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_TERRAFORM_VARS_OVERRIDE = (
    "TF_CLI_CONFIG_FILE",
    "TERRAFORM_CONFIG",
    "TF_PLUGIN_CACHE_DIR",
    "TF_DATA_DIR",
    "TF_WORKSPACE",
    "TF_CLI_ARGS",
    "TF_CLI_ARGS_init",
    "TF_CLI_ARGS_apply",
    "TF_CLI_ARGS_destroy",
    "TF_CLI_ARGS_output",
)

log = logging.getLogger(__name__)


class TerraformNotFound(TerraformSetupError):
    """No terraform binary on this machine."""


class EnvironmentError(RuntimeError):  # noqa: A001 - ours, distinct from the builtin alias of OSError
    """An environment operation failed; the message is redacted and says what is left behind."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """What to make: ``name`` prefixes everything (and names the key pair), ``endpoint`` is one URL for every
    service (the moto server) or ``None`` for real AWS; credentials ``None`` mean the environment's ``AWS_*`` (and,
    with an endpoint, the dummies ``testing``/``testing`` when those are unset too)."""

    name: str
    region: str = "us-east-1"
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    availability_zone: str | None = None
    load_balancers: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"name: {self.name!r} must be 2-28 characters of lowercase letters, digits and '-', "
                "not starting or ending with '-' (it names S3 buckets and load balancers)"
            )
        if not isinstance(self.region, str) or not _REGION.match(self.region):
            raise ValueError(f"region: {self.region!r} is not an AWS region name (like us-east-1)")
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint) if isinstance(self.endpoint, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint: {self.endpoint!r} is not an http(s) URL")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError as exc:
                raise ValueError(f"endpoint: {self.endpoint!r}: {exc}") from None
        if self.availability_zone is not None and not (
            isinstance(self.availability_zone, str) and self.availability_zone.startswith(self.region)
        ):
            raise ValueError(f"availability_zone: {self.availability_zone!r} is not a zone of region {self.region}")
        for field_name in ("access_key", "secret_key"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, str) or not value or value.strip() != value):
                raise ValueError(f"{field_name}: must be a non-empty string without surrounding blanks")

    @property
    def loopback_only(self) -> bool:
        """True when the endpoint is on loopback: nothing may then leave the machine."""
        if not self.endpoint:
            return False
        return is_loopback(urlsplit(self.endpoint).hostname or "")


def default_root(env: Mapping[str, str] | None = None) -> Path:
    """``$STEMFORGE_ENV_ROOT``, else ``$XDG_STATE_HOME/stemforge/envs`` (default ``~/.local/state``)."""
    env = os.environ if env is None else env
    if env.get("STEMFORGE_ENV_ROOT"):
        return Path(env["STEMFORGE_ENV_ROOT"])
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "stemforge" / "envs"


def locate_terraform(
    binary: str | None = None,
    env: Mapping[str, str] | None = None,
    candidates: Sequence[str] = TERRAFORM_CANDIDATE_DIRS,
) -> str:
    """The terraform binary: ``binary`` when given (must be executable), else the one on ``$PATH``, else the first
    in ``candidates`` (globs). Raises :class:`TerraformNotFound` naming where it looked."""
    env = os.environ if env is None else env
    if binary:
        if os.path.isfile(binary) and os.access(binary, os.X_OK):
            return binary
        raise TerraformNotFound(f"terraform: {binary} is not an executable file")
    exe, _ = find_terraform(env.get("PATH", ""), Path(env.get("HOME") or Path.home()), candidates)
    if exe is None:
        raise TerraformNotFound(
            f"terraform: no terraform binary on PATH ({env.get('PATH', '')}) or in {', '.join(candidates)}. "
            "Fix: install Terraform >= 1.0 (the terraform_<version>_linux_amd64.zip release unpacked into "
            "/usr/local/bin, or the terraform package of HashiCorp's apt repository), or pass --terraform PATH."
        )
    return exe


def flatten_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """``terraform output -json`` (``{name: {value, type, sensitive}}``) or already-plain values -> ``{name: value}``
    (sensitive outputs are dropped: the metadata file is handed around)."""
    flat: dict[str, Any] = {}
    for name, entry in outputs.items():
        if isinstance(entry, Mapping) and "value" in entry and "type" in entry:
            if entry.get("sensitive"):
                continue
            flat[name] = entry["value"]
        else:
            flat[name] = entry
    return dict(sorted(flat.items()))


def generate_key_pair() -> tuple[bytes, str]:
    """A new RSA 2048 key: (PEM private key, OpenSSH public key line)."""
    from cryptography.hazmat.primitives import serialization  # lazy: ~30 ms; every `stemforge` command imports
    from cryptography.hazmat.primitives.asymmetric import rsa  # lazy: this module, only `env up` makes a key

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode() + " stemforge-env"


def _write_private(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


class Progress:
    """Progress lines ``env NAME: [  12.3s] message`` (elapsed since the operation started) to ``sink``."""

    def __init__(self, name: str, sink: Callable[[str], None]) -> None:
        self.name = name
        self.sink = sink
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.sink(f"env {self.name}: [{time.monotonic() - self.started:7.1f}s] {message}")

    def elapsed(self) -> float:
        return time.monotonic() - self.started


#: Terraform lines worth a progress line (the rest is kept for error messages).
_INTERESTING = re.compile(
    r"(Creation complete|Destruction complete|Modifications complete|Still \w+\.\.\.|"
    r"Apply complete|Destroy complete|Error|Warning|Installing|Installed|Terraform has been "
    r"successfully initialized)"
)


class Environment:
    """The environment in ``directory`` (see the module docstring). ``sink`` receives progress lines."""

    def __init__(
        self,
        directory: Path,
        *,
        terraform_binary: str | None = None,
        sink: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 1800.0,
        provider_search: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.name = self.directory.name
        self.terraform_binary = terraform_binary
        self.sink = sink or (lambda line: print(line, flush=True))
        self.base_env = dict(os.environ if env is None else env)
        self.timeout = timeout
        self.provider_search = dict(provider_search or {})
        self.redactor = Redactor()
        for key in _ENV_SECRETS:
            self.redactor.add(self.base_env.get(key))

    # -- paths ------------------------------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        return self.directory / "terraform"

    @property
    def metadata_path(self) -> Path:
        return self.directory / METADATA

    @property
    def cli_config(self) -> Path:
        return self.directory / "terraformrc"

    def has_state(self) -> bool:
        """True when Terraform's state records any managed resource (data sources are not made)."""
        try:
            state = json.loads((self.workdir / "terraform.tfstate").read_text())
        except (OSError, ValueError):
            return False
        return any(r.get("mode") == "managed" for r in state.get("resources") or [] if isinstance(r, dict))

    # -- helpers ----------------------------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` without registered secrets and SigV4 signatures/session tokens."""
        return _SIGV4.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, self.redactor.scrub(text))

    def _terraform(self, progress: Progress, mirror: ProviderMirror, loopback_only: bool) -> Terraform:
        binary = locate_terraform(self.terraform_binary, self.base_env)
        write_cli_config(self.cli_config, mirror.path)
        env = {k: v for k, v in self.base_env.items() if k not in _TERRAFORM_VARS_OVERRIDE}
        env.update(TF_CLI_CONFIG_FILE=str(self.cli_config), CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
        if loopback_only:
            for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[key] = TRAP_PROXY
            for key in ("NO_PROXY", "no_proxy"):
                env[key] = "127.0.0.1,localhost,::1"

        def on_line(stream: str, line: str) -> None:
            line = self.scrub(line)
            if stream == "stderr" and line.strip() or _INTERESTING.search(line):
                progress(line.strip())

        return Terraform(
            self.workdir, binary=binary, env=env, redactor=self.redactor, on_line=on_line, timeout=self.timeout
        )

    def _mirror(self) -> ProviderMirror:
        return find_aws_provider(env=self.base_env, **self.provider_search)

    # -- operations -------------------------------------------------------------------------------------------------

    def up(self, spec: EnvironmentSpec, keep_on_failure: bool = False) -> dict[str, Any]:
        """Make (or converge) the environment; returns the metadata written to ``environment/metadata``."""
        spec.validate()
        if spec.name != self.name:
            raise ValueError(f"name: {spec.name!r} differs from the environment directory's name {self.name!r}")
        progress = Progress(self.name, self.sink)
        existed = self.has_state()
        binary = locate_terraform(self.terraform_binary, self.base_env)
        self.terraform_binary = binary
        mirror = self._mirror()
        progress(
            f"terraform {binary}; provider hashicorp/aws {mirror.version} ({mirror.platform}) from "
            f"{mirror.path} ({mirror.source})"
        )
        access_key = spec.access_key or self.base_env.get("AWS_ACCESS_KEY_ID") or ("testing" if spec.endpoint else "")
        secret_key = (
            spec.secret_key or self.base_env.get("AWS_SECRET_ACCESS_KEY") or ("testing" if spec.endpoint else "")
        )
        self.redactor.add(access_key)
        self.redactor.add(secret_key)
        state: dict[str, Any] = {"existed": existed}
        steps: list[Step] = [
            _PrepareDirectory(self, spec, access_key, secret_key, existed),
            _Init(self, progress, mirror, spec.loopback_only),
            _Apply(self, progress, mirror, spec.loopback_only),
            _WriteMetadata(self, progress, mirror, spec.loopback_only),
        ]
        runner = StepRunner(log, cleanup_on_failure=not (keep_on_failure or existed))
        try:
            runner.run(steps, state)
        except BaseException as exc:
            self._report_failure(progress, exc, keep_on_failure or existed, state)
            if not isinstance(exc, Exception):
                raise
            raise EnvironmentError(self._failure_message(exc, keep_on_failure or existed, state)) from None
        progress(
            f"up: done in {progress.elapsed():.1f}s ("
            + ", ".join(f"{r.name} {r.seconds:.1f}s" for r in runner.records)
            + ")"
        )
        metadata: dict[str, Any] = state["metadata"]
        return metadata

    def _report_failure(self, progress: Progress, exc: BaseException, kept: bool, state: dict[str, Any]) -> None:
        if kept:
            progress(f"up failed; kept everything in {self.directory} (run `stemforge env down {self.name}`)")
        elif state.get("destroy_failed"):
            progress(f"up failed and its destroy failed too; state kept in {self.directory}")
        else:
            progress("up failed; what it made was destroyed")

    def _failure_message(self, exc: BaseException, kept: bool, state: dict[str, Any]) -> str:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else self.scrub(str(exc))
        if kept:
            tail = f"the environment is kept in {self.directory}: `stemforge env down {self.name}` removes it"
        elif state.get("destroy_failed"):
            tail = (
                f"destroying what it made failed too ({self.scrub(str(state['destroy_failed']))}); state kept "
                f"in {self.directory}: retry `stemforge env down {self.name}`"
            )
        else:
            tail = "what it made was destroyed"
        return f"env {self.name}: up failed: {reason}\n{tail}"

    def down(self) -> bool:
        """Destroy the environment and remove its directory; False when there was nothing to destroy."""
        progress = Progress(self.name, self.sink)
        if not self.directory.exists():
            progress(f"nothing to destroy ({self.directory} does not exist)")
            return False
        if not self.has_state():
            shutil.rmtree(self.directory)
            progress(f"nothing to destroy (no resources in the state); removed {self.directory}")
            return False
        tfvars = self._read_tfvars()
        self.redactor.collect(tfvars)
        loopback = EnvironmentSpec(name=self.name, endpoint=tfvars.get("endpoint") or None).loopback_only
        mirror = self._mirror()
        try:
            tf = self._terraform(progress, mirror, loopback)
            progress("terraform init")  # again: the mirror found now may not be the one up installed from
            tf.init()
            progress("terraform destroy")
            tf.destroy()
        except TerraformCommandFailed as exc:
            raise EnvironmentError(
                f"env {self.name}: destroy failed: {self.scrub(str(exc))}\n"
                f"state kept in {self.directory}; retry `stemforge env down {self.name}`"
            ) from None
        shutil.rmtree(self.directory)
        progress(f"down: done in {progress.elapsed():.1f}s; removed {self.directory}")
        return True

    def metadata(self) -> dict[str, Any]:
        """The metadata written by the last successful ``up``."""
        try:
            doc = json.loads(self.metadata_path.read_text())
        except FileNotFoundError:
            raise EnvironmentError(
                f"env {self.name}: no metadata at {self.metadata_path} (run `stemforge env up {self.name}`)"
            ) from None
        except ValueError as exc:
            raise EnvironmentError(f"env {self.name}: {self.metadata_path} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise EnvironmentError(f"env {self.name}: {self.metadata_path} is not a JSON object")
        return doc

    def _read_tfvars(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.workdir / "terraform.tfvars.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _destroy_for_cleanup(
        self, progress: Progress, mirror: ProviderMirror, loopback: bool, state: dict[str, Any]
    ) -> None:
        if not self.has_state():
            return
        progress("destroying what this up made")
        try:
            self._terraform(progress, mirror, loopback).destroy()
        except BaseException as exc:  # a Ctrl-C here still let the destroy finish (runner.py)
            if not self.has_state():
                return
            state["destroy_failed"] = exc
            # an Exception, so the step runner logs it and still runs the remaining cleanups
            raise RuntimeError(f"destroy after the failed up: {self.scrub(str(exc)) or type(exc).__name__}") from None


# -- steps of `up` -----------------------------------------------------------------------------------------------


class _PrepareDirectory(Step):
    """Create the directory: the .tf copy, the variables (0600), the key pair. Cleanup removes the directory when
    this run created it and nothing is left to destroy."""

    name = "prepare"

    def __init__(
        self, env: Environment, spec: EnvironmentSpec, access_key: str, secret_key: str, existed: bool
    ) -> None:
        self.env, self.spec, self.access_key, self.secret_key, self.existed = env, spec, access_key, secret_key, existed

    def run(self, state: dict[str, Any]) -> None:
        env = self.env
        state["created_dir"] = not env.directory.exists()
        env.workdir.mkdir(parents=True, exist_ok=True)
        for tf in sorted(AWS_CONFIG_DIR.glob("*.tf")):
            shutil.copyfile(tf, env.workdir / tf.name)
        key_path = env.directory / PRIVATE_KEY
        tfvars = env._read_tfvars()
        public_key = tfvars.get("public_key")
        if not key_path.exists() or not public_key:
            private, public_key = generate_key_pair()
            _write_private(key_path, private)
        values = {
            "env_name": self.spec.name,
            "region": self.spec.region,
            "endpoint": self.spec.endpoint or "",
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "public_key": public_key,
            "availability_zone": self.spec.availability_zone or "",
            "load_balancers": self.spec.load_balancers,
        }
        state["tfvars"] = values
        _write_private(env.workdir / "terraform.tfvars.json", json.dumps(values, indent=2, sort_keys=True))

    def cleanup(self, state: dict[str, Any]) -> None:
        if state.get("destroy_failed") or self.env.has_state():
            return
        if state.get("created_dir") and self.env.directory.exists():
            shutil.rmtree(self.env.directory)


class _TerraformStep(Step):
    def __init__(self, env: Environment, progress: Progress, mirror: ProviderMirror, loopback: bool) -> None:
        self.env, self.progress, self.mirror, self.loopback = env, progress, mirror, loopback

    def terraform(self) -> Terraform:
        return self.env._terraform(self.progress, self.mirror, self.loopback)


class _Init(_TerraformStep):
    name = "init"

    def run(self, state: dict[str, Any]) -> None:
        self.progress("terraform init")
        self.terraform().init()


class _Apply(_TerraformStep):
    """terraform apply; its cleanup (after a later failure) is terraform destroy."""

    name = "apply"

    def run(self, state: dict[str, Any]) -> None:
        self.progress("terraform apply")
        self.terraform().apply()

    def cleanup(self, state: dict[str, Any]) -> None:
        self.env._destroy_for_cleanup(self.progress, self.mirror, self.loopback, state)


class _WriteMetadata(_TerraformStep):
    """terraform output -json -> environment/metadata (atomically). Cleanup removes the file."""

    name = "metadata"

    def run(self, state: dict[str, Any]) -> None:
        outputs = self.terraform().output(full_value=True)
        metadata = flatten_outputs(outputs)
        path = self.env.metadata_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        state["metadata"] = metadata
        self.progress(f"metadata: {path} ({len(metadata)} values)")

    def cleanup(self, state: dict[str, Any]) -> None:
        self.env.metadata_path.unlink(missing_ok=True)
