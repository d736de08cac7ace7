"""Find the hashicorp/aws provider in a local filesystem mirror and write a private Terraform CLI config for it.

Contract:

* :func:`find_aws_provider` looks, in this order, at: the ``filesystem_mirror`` paths of the user's CLI config
  (``$TF_CLI_CONFIG_FILE``/``$TERRAFORM_CONFIG``, else ``~/.terraformrc`` and ``~/.terraform.d/*.tfrc``), the plugin
  cache (``$TF_PLUGIN_CACHE_DIR`` or ``plugin_cache_dir``; same layout as an unpacked mirror), Terraform's implied
  local mirror directories (``./terraform.d/plugins``, ``~/.terraform.d/plugins``, ``$XDG_DATA_HOME/terraform/plugins``,
  each ``$XDG_DATA_DIRS`` entry's ``terraform/plugins``), and finally a bounded walk (depth and directory count) of
  :data:`SEARCH_ROOTS` and ``$HOME`` for a ``registry.terraform.io/hashicorp/aws/<version>/<os>_<arch>`` tree (or the
  packed ``.zip`` layout). The first mirror holding a version this configuration accepts (:data:`PROVIDER_MAJOR`) for
  this machine's platform wins; within it, the highest such version. No machine path is hard-coded.
* When nothing is found, :class:`ProviderNotFound` names every place searched (and the versions seen that did not
  fit), so the message says what to fix.
* :func:`write_cli_config` writes a CLI config whose only provider source is that mirror, with ``direct`` excluding
  ``registry.terraform.io/*/*``: ``terraform init`` never goes to the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from terraform.discovery import (
    AWS_PROVIDER,
    implied_mirror_dirs,
    provider_versions,
    read_terraform_cli_config,
    terraform_platform,
)

#: The major version of hashicorp/aws that terraform/aws/versions.tf accepts (``~> 5.0``).
PROVIDER_MAJOR = 5
#: Roots of the last-resort search (``$HOME`` is added at run time).
SEARCH_ROOTS: tuple[str, ...] = ("/opt", "/usr/local", "/srv")
#: How deep below a root a mirror's ``registry.terraform.io`` directory may be (``/opt/x/registry.terraform.io``
#: is depth 2), and how many directories one search may open in all.
SEARCH_MAX_DEPTH = 5
SEARCH_MAX_DIRS = 20000
#: Directory names never entered by the search (big trees that are no mirrors).
_SKIP_NAMES = frozenset({"proc", "sys", "node_modules", "__pycache__", "site-packages", "dist-packages", "include"})
_REGISTRY = AWS_PROVIDER.split("/", 1)[0]


class TerraformSetupError(RuntimeError):
    """Terraform or its provider is not usable on this machine; the message says what was searched."""


class ProviderNotFound(TerraformSetupError):
    """No local mirror holds a usable hashicorp/aws provider."""


@dataclass(frozen=True)
class ProviderMirror:
    """A filesystem mirror root (the directory holding ``registry.terraform.io/``) with a usable provider."""

    path: Path
    version: str
    platform: str
    source: str  # how it was found, for messages ("filesystem_mirror in ~/.terraformrc", "search of /opt", ...)


@dataclass
class _Search:
    """Where the search looked and what it saw, for the not-found message."""

    searched: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)


def accepted(version: str, major: int = PROVIDER_MAJOR) -> bool:
    """True when ``version`` (``5.100.0``) is a release of ``major`` (pre-releases are not accepted)."""
    parts = version.split(".")
    return len(parts) == 3 and all(p.isdigit() for p in parts) and int(parts[0]) == major


def _best_version(root: Path, plat: str, search: _Search, label: str) -> str | None:
    versions = provider_versions(root)
    usable = [v for v, plats in versions.items() if plat in plats and accepted(v)]
    if usable:
        return max(usable, key=lambda v: tuple(int(p) for p in v.split(".")))
    if versions:
        seen = ", ".join(f"{v} ({'/'.join(p)})" for v, p in versions.items())
        search.unusable.append(f"{label} {root}: {seen}")
    return None


def configured_candidates(home: Path, env: Mapping[str, str], cwd: Path) -> list[tuple[Path, str]]:
    """The mirror directories Terraform's own configuration points at, in search order, each with its origin."""
    config = read_terraform_cli_config(home, env)
    where = ", ".join(str(f) for f in config.files) or str(config.main_file)
    found: list[tuple[Path, str]] = [(p, f"filesystem_mirror in {where}") for p in config.mirrors]
    if env.get("TF_PLUGIN_CACHE_DIR"):
        found.append((Path(env["TF_PLUGIN_CACHE_DIR"]), "TF_PLUGIN_CACHE_DIR"))
    elif config.plugin_cache_dir:
        found.append((config.plugin_cache_dir, f"plugin_cache_dir in {where}"))
    found += [(d, "implied mirror directory") for d in implied_mirror_dirs(home, env, cwd)]
    seen: set[Path] = set()
    unique = []
    for path, origin in found:
        if path not in seen:
            seen.add(path)
            unique.append((path, origin))
    return unique


def search_mirrors(
    roots: Iterable[Path], max_depth: int = SEARCH_MAX_DEPTH, max_dirs: int = SEARCH_MAX_DIRS
) -> Iterator[Path]:
    """Mirror roots (parents of a ``registry.terraform.io`` directory holding ``hashicorp/aws``) under ``roots``,
    breadth first, at most ``max_depth`` levels down, opening at most ``max_dirs`` directories in all; symbolic
    links, hidden directories and :data:`_SKIP_NAMES` are not entered."""
    budget = max_dirs
    for root in roots:
        level = [root]
        for _depth in range(max_depth):
            following: list[Path] = []
            for directory in level:
                if budget <= 0:
                    return
                budget -= 1
                try:
                    entries = list(os.scandir(directory))
                except OSError:
                    continue
                for entry in sorted(entries, key=lambda e: e.name):
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    if entry.name == _REGISTRY:
                        if (Path(entry.path) / "hashicorp" / "aws").is_dir():
                            yield directory
                        continue
                    if entry.name.startswith(".") or entry.name in _SKIP_NAMES:
                        continue
                    following.append(Path(entry.path))
            level = following
            if not level:
                break


def find_aws_provider(
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
    roots: Sequence[str | Path] | None = None,
    max_depth: int = SEARCH_MAX_DEPTH,
    max_dirs: int = SEARCH_MAX_DIRS,
    platform: str | None = None,
) -> ProviderMirror:
    """The first local mirror with an accepted hashicorp/aws for ``platform`` (see the module docstring).

    Raises :class:`ProviderNotFound` naming every place searched."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    plat = platform or terraform_platform()
    search = _Search()
    for path, origin in configured_candidates(home, env, cwd):
        search.searched.append(f"{path} ({origin})")
        version = _best_version(path, plat, search, origin)
        if version:
            return ProviderMirror(path, version, plat, origin)
    search_roots = [Path(r) for r in (SEARCH_ROOTS if roots is None else roots)]
    if roots is None:
        search_roots.append(home)
    for root in search_roots:
        search.searched.append(f"{root}/** (search, depth {max_depth})")
    for path in search_mirrors(search_roots, max_depth, max_dirs):
        version = _best_version(path, plat, search, "found by search:")
        if version:
            return ProviderMirror(path, version, plat, "search of " + ", ".join(map(str, search_roots)))
    lines = [f"no {AWS_PROVIDER} {PROVIDER_MAJOR}.x for {plat} in a local filesystem mirror.", "Searched:"]
    lines += [f"  {s}" for s in search.searched]
    if search.unusable:
        lines.append("Seen but not usable:")
        lines += [f"  {u}" for u in search.unusable]
    lines.append(
        f"Fix: unpack a mirror ({_REGISTRY}/hashicorp/aws/<version>/{plat}/terraform-provider-aws_*) made "
        f"with `terraform providers mirror -platform={plat} DIR` where the registry is reachable, and name "
        'DIR in a provider_installation { filesystem_mirror { path = "DIR" } } block of ~/.terraformrc '
        "(or $TF_CLI_CONFIG_FILE), or put it in ~/.terraform.d/plugins."
    )
    raise ProviderNotFound("\n".join(lines))


def cli_config_text(mirror: Path) -> str:
    """A CLI config using only ``mirror`` for registry.terraform.io providers, without update checks."""
    path = json.dumps(str(mirror))  # an HCL string literal: JSON's escaping is valid HCL
    return (
        "# Written by stemforge env: providers come only from the local mirror, never from the network.\n"
        "disable_checkpoint = true\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {path}\n"
        f'    include = ["{AWS_PROVIDER}"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{_REGISTRY}/*/*"]\n'
        "  }\n"
        "}\n"
    )


def write_cli_config(path: Path, mirror: Path) -> Path:
    """Write :func:`cli_config_text` for ``mirror`` to ``path`` atomically; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(cli_config_text(mirror))
    tmp.replace(path)
    return path
