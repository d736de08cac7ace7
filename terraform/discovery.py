"""Where Terraform and the hashicorp/aws provider are on this machine, read the way Terraform itself reads them.

Contract: nothing here changes the machine or touches the network; every function answers from the filesystem and
the environment it is given (``home``, ``env``, ``cwd``), so tests pass temporary directories.

* :func:`find_terraform` — the ``terraform`` binary on the search path, else in :data:`TERRAFORM_CANDIDATE_DIRS`.
* :func:`read_terraform_cli_config` — what the CLI configuration files say about provider installation.
* :func:`implied_mirror_dirs` — the local mirror directories Terraform searches when none is configured.
* :func:`provider_versions` — the versions and platforms of a provider in one filesystem mirror (both layouts).

``terraform.mirror`` (``stemforge env``'s provider lookup) and ``terraform.checks`` (``stemforge doctor``) use them.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stemforge_base.checks import find_binary

#: The provider the AWS environment needs, as Terraform names it in a mirror.
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
#: Places to look for ``terraform`` when it is not on PATH (globs; ``~`` is the user's home).
TERRAFORM_CANDIDATE_DIRS = ("/usr/local/bin", "/usr/bin", "/snap/bin", "~/.local/bin", "~/bin", "/opt/*/bin", "/opt/*")


def find_terraform(path: str | None = None, home: Path | None = None,
                   candidates: Sequence[str] = TERRAFORM_CANDIDATE_DIRS) -> tuple[str | None, bool]:
    """``terraform`` on the search path, else in the first of ``candidates`` (globs) that has it.
    Returns (path or None, whether it is on the search path)."""
    exe = find_binary("terraform", path)
    if exe:
        return exe, True
    home = home or Path.home()
    for pattern in candidates:
        if pattern.startswith("~"):
            pattern = str(home) + pattern[1:]
        for d in sorted(glob.glob(pattern)):
            candidate = os.path.join(d, "terraform")
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate, False
    return None, False


def terraform_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for running terraform without network traffic (no update/security checkpoint)."""
    return {**env, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def terraform_platform() -> str:
    """Terraform's ``os_arch`` name for this machine, e.g. ``linux_amd64``."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i686": "386",
            "i386": "386", "armv7l": "arm"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{platform.system().lower()}_{arch}"


def provider_versions(root: Path, provider: str = AWS_PROVIDER) -> dict[str, list[str]]:
    """Versions of ``provider`` in the filesystem mirror ``root``, each with its platforms, in both layouts
    Terraform reads: unpacked ``HOST/NS/TYPE/VERSION/OS_ARCH/terraform-provider-TYPE*`` and packed
    ``HOST/NS/TYPE/terraform-provider-TYPE_VERSION_OS_ARCH.zip``."""
    base = root / provider
    kind = provider.rsplit("/", 1)[-1]
    found: dict[str, set[str]] = {}
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            if entry.is_dir():
                for plat in entry.iterdir():
                    if plat.is_dir() and any(plat.glob(f"terraform-provider-{kind}*")):
                        found.setdefault(entry.name, set()).add(plat.name)
            else:
                m = re.fullmatch(rf"terraform-provider-{re.escape(kind)}_(.+)_([a-z0-9]+_[a-z0-9]+)\.zip", entry.name)
                if m:
                    found.setdefault(m.group(1), set()).add(m.group(2))
    return {v: sorted(p) for v, p in sorted(found.items(), key=lambda kv: _version_key(kv[0]))}


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.+-]", version))


@dataclass(frozen=True)
class TerraformCliConfig:
    """What the Terraform CLI configuration says about provider installation (as Terraform loads it:
    ``$TF_CLI_CONFIG_FILE`` or ``$TERRAFORM_CONFIG`` alone when set, else ``~/.terraformrc`` plus
    ``~/.terraform.d/*.tfrc`` and ``*.tfrc.json``)."""

    main_file: Path  # the file a fix should edit
    files: tuple[Path, ...]  # the files that exist and were read
    override_missing: bool  # $TF_CLI_CONFIG_FILE names a file that does not exist
    explicit: bool  # some file has a provider_installation block (the implied mirrors are then unused)
    mirrors: tuple[Path, ...]  # its filesystem_mirror paths
    plugin_cache_dir: Path | None
    disable_checkpoint: bool


def _strip_hcl_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(?m)(#|//).*$", "", text)


def _json_mirrors(node: Any) -> list[str]:
    paths: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filesystem_mirror":
                for block in value if isinstance(value, list) else [value]:
                    if isinstance(block, dict) and isinstance(block.get("path"), str):
                        paths.append(block["path"])
            else:
                paths.extend(_json_mirrors(value))
    elif isinstance(node, list):
        for item in node:
            paths.extend(_json_mirrors(item))
    return paths


def read_terraform_cli_config(home: Path, env: Mapping[str, str]) -> TerraformCliConfig:
    """Read the Terraform CLI configuration files of ``home``/``env`` (see :class:`TerraformCliConfig`); an
    unreadable file counts as absent."""
    override = env.get("TF_CLI_CONFIG_FILE") or env.get("TERRAFORM_CONFIG")
    main = Path(override) if override else home / ".terraformrc"
    candidates = [main]
    if not override:
        config_dir = home / ".terraform.d"
        candidates += sorted(config_dir.glob("*.tfrc")) + sorted(config_dir.glob("*.tfrc.json"))
    files, mirrors = [], []
    explicit = checkpoint_off = False
    cache: str | None = None
    for f in candidates:
        try:
            text = f.read_text()
        except OSError:
            continue
        files.append(f)
        if f.name.endswith(".json"):
            with contextlib.suppress(ValueError):
                doc = json.loads(text)
                explicit |= isinstance(doc, dict) and "provider_installation" in doc
                mirrors += _json_mirrors(doc.get("provider_installation", {}) if isinstance(doc, dict) else {})
                checkpoint_off |= isinstance(doc, dict) and doc.get("disable_checkpoint") is True
                cache = cache or (doc.get("plugin_cache_dir") if isinstance(doc, dict) else None)
            continue
        text = _strip_hcl_comments(text)
        explicit |= re.search(r"\bprovider_installation\s*\{", text) is not None
        for block in re.finditer(r"\bfilesystem_mirror\s*\{([^}]*)\}", text):
            m = re.search(r'\bpath\s*=\s*"([^"]*)"', block.group(1))
            if m:
                mirrors.append(m.group(1))
        checkpoint_off |= re.search(r"\bdisable_checkpoint\s*=\s*true\b", text) is not None
        m = re.search(r'\bplugin_cache_dir\s*=\s*"([^"]*)"', text)
        if m and not cache:
            cache = os.path.expandvars(m.group(1))
    cache = env.get("TF_PLUGIN_CACHE_DIR") or cache
    return TerraformCliConfig(main, tuple(files), bool(override) and not main.exists(), explicit,
                              tuple(Path(p) for p in mirrors), Path(cache) if cache else None, checkpoint_off)


def implied_mirror_dirs(home: Path, env: Mapping[str, str], cwd: Path) -> list[Path]:
    """The directories Terraform searches on Linux when no ``provider_installation`` block is configured:
    ``./terraform.d/plugins``, ``~/.terraform.d/plugins``, ``$XDG_DATA_HOME/terraform/plugins`` (default
    ``~/.local/share``) and each ``$XDG_DATA_DIRS`` entry's ``terraform/plugins`` (default ``/usr/local/share``,
    ``/usr/share``)."""
    data_home = env.get("XDG_DATA_HOME") or str(home / ".local/share")
    data_dirs = [d for d in (env.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":") if d]
    dirs = [cwd / "terraform.d/plugins", home / ".terraform.d/plugins"]
    dirs += [Path(d) / "terraform/plugins" for d in (data_home, *data_dirs)]
    return list(dict.fromkeys(dirs))
