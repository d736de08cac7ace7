"""``stemforge doctor``'s AWS/Terraform checks: the ``terraform`` binary, hashicorp/aws where a bare ``terraform``
and where ``stemforge env`` would find it, and the Python modules of the AWS work (boto3, moto with its server).

The framework and its contracts (bounded, no network, nothing changed) are :mod:`stemforge_base.checks`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from stemforge_base.checks import AWS_TERRAFORM, Check, CheckFn, Context, first_line, pip_fix, run
from terraform.discovery import (
    AWS_PROVIDER,
    TERRAFORM_CANDIDATE_DIRS,
    find_terraform,
    implied_mirror_dirs,
    provider_versions,
    read_terraform_cli_config,
    terraform_env,
    terraform_platform,
)
from terraform.mirror import ProviderNotFound, find_aws_provider

#: Python modules of the AWS work, imported together in one subprocess: (module, distribution).
AWS_MODULES = (("boto3", "boto3"), ("moto", "moto"), ("moto.server", "moto"))
#: Where an unconfigured provider mirror may have been unpacked (reported as a fix, never used silently).
MIRROR_CANDIDATE_GLOBS = ("/opt/*", "/opt/*/*", "/srv/*", "/usr/local/share/*", "/var/lib/*")


def check_terraform(ctx: Context) -> list[Check]:
    """A ``terraform`` binary and its version (``terraform version -json`` with the checkpoint disabled)."""
    opts = ctx.options
    exe, on_path = find_terraform(opts.path, opts.home)
    if exe is None:
        fix = ("unzip terraform_<version>_linux_amd64.zip from https://releases.hashicorp.com/terraform/ into "
               "/usr/local/bin (or apt-get install terraform from apt.releases.hashicorp.com)")
        return [Check("terraform", False, "no terraform binary on PATH or in " + ", ".join(TERRAFORM_CANDIDATE_DIRS),
                      fix, AWS_TERRAFORM)]
    status, out = run([exe, "version", "-json"], opts.timeout, env=terraform_env(opts.env))
    version = ""
    with contextlib.suppress(ValueError):
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1])
        version = f"Terraform v{doc['terraform_version']} ({doc.get('platform', '?')})"
    if not version:
        version = first_line(out) or f"terraform version exited {status}"
    if status != 0:
        return [Check("terraform", False, f"{exe}: {version}", f"reinstall {exe}", AWS_TERRAFORM)]
    where = f" at {exe}" + ("" if on_path else f" (not on PATH: export PATH=\"$PATH:{os.path.dirname(exe)}\")")
    return [Check("terraform", True, version + where, None, AWS_TERRAFORM)]


def _describe(found: Mapping[str, list[str]]) -> str:
    return ", ".join(f"{v} ({'/'.join(p)})" for v, p in found.items())


def check_aws_provider(ctx: Context, candidate_globs: Sequence[str] = MIRROR_CANDIDATE_GLOBS) -> list[Check]:
    """hashicorp/aws for this platform in a local filesystem mirror Terraform will actually use: the configured
    ``filesystem_mirror`` paths when a ``provider_installation`` block exists, else the implied directories.
    Plugin caches (``TF_PLUGIN_CACHE_DIR``/``plugin_cache_dir``) are reported but are no offline source:
    ``terraform init`` still asks the registry. A mirror found elsewhere (``candidate_globs``) is named in the
    fix."""
    opts = ctx.options
    config = read_terraform_cli_config(opts.home, opts.env)
    plat = terraform_platform()
    implied = implied_mirror_dirs(opts.home, opts.env, opts.cwd)
    used = list(config.mirrors) if config.explicit else implied
    usable: dict[Path, dict[str, list[str]]] = {}
    other: list[str] = []
    for d in used:
        versions = provider_versions(d)
        if any(plat in p for p in versions.values()):
            usable[d] = {v: p for v, p in versions.items() if plat in p}
        elif versions:
            other.append(f"{d}: {_describe(versions)} (not {plat})")
    if config.explicit:
        other += [f"{d}: {_describe(v)} (ignored: provider_installation is explicit)"
                  for d in implied if (v := provider_versions(d))]
    if config.plugin_cache_dir and (v := provider_versions(config.plugin_cache_dir)):
        other.append(f"plugin cache {config.plugin_cache_dir}: {_describe(v)} (a cache, not an offline source)")
    notes = []
    if config.override_missing:
        notes.append(f"TF_CLI_CONFIG_FILE names {config.main_file}, which does not exist")
    if usable:
        detail = "; ".join(f"{d}: {', '.join(v)}" for d, v in usable.items())
        return [Check("terraform aws provider", True, "; ".join([detail, *other, *notes]), None, AWS_TERRAFORM)]
    if config.explicit:
        searched = ("the filesystem_mirror " + ", ".join(str(d) for d in used) if used
                    else f"any mirror (the provider_installation in {', '.join(map(str, config.files))} has no "
                         "filesystem_mirror)")
    else:
        searched = ", ".join(str(d) for d in used)
    detail = f"no {AWS_PROVIDER} for {plat} in {searched}"
    if config.plugin_cache_dir is None:
        notes.append("no TF_PLUGIN_CACHE_DIR/plugin_cache_dir")
    candidates = [Path(d) for pattern in candidate_globs for d in sorted(glob.glob(pattern))
                  if Path(d) not in used and any(plat in p for p in provider_versions(Path(d)).values())]
    if candidates:
        mirror = candidates[0]
        other.insert(0, f"unconfigured mirror {mirror}: {_describe(provider_versions(mirror))}")
        block = f'provider_installation {{\\n  filesystem_mirror {{\\n    path = "{mirror}"\\n  }}\\n}}\\n'
        if config.explicit:
            fix = (f'add  filesystem_mirror {{ path = "{mirror}" }}  to the provider_installation block in '
                   f"{config.main_file}")
        else:
            prefix = "" if config.disable_checkpoint else "disable_checkpoint = true\\n"
            fix = f"printf '{prefix}{block}' >> {config.main_file}"
    else:
        fix = (f"where the registry is reachable: terraform providers mirror -platform={plat} DIR (in a directory "
               f"whose .tf requires hashicorp/aws); copy DIR here and point provider_installation "
               f"{{ filesystem_mirror {{ path = \"DIR\" }} }} in {config.main_file} at it")
    # optional: `stemforge env` finds a mirror by itself (check_env_provider); this is about a bare terraform.
    return [Check("terraform aws provider", False, "; ".join([detail, *other, *notes]), fix, AWS_TERRAFORM,
                  optional=True)]


def check_env_provider(ctx: Context) -> list[Check]:
    """hashicorp/aws where ``stemforge env`` looks at run time (``terraform.mirror.find_aws_provider``: the CLI
    config's mirrors, the plugin cache, the implied directories, then a bounded search); it writes a private CLI
    config for what it finds, so this, not the bare-Terraform check above, decides whether the AWS work can run."""
    opts = ctx.options
    try:
        found = find_aws_provider(env=opts.env, home=opts.home, cwd=opts.cwd)
    except ProviderNotFound as exc:
        return [Check("stemforge env provider", False, first_line(str(exc), 300), str(exc).rsplit("Fix: ", 1)[-1],
                      AWS_TERRAFORM)]
    detail = f"hashicorp/aws {found.version} ({found.platform}) in {found.path}, {found.source}"
    return [Check("stemforge env provider", True, detail, None, AWS_TERRAFORM)]


def check_aws_python(ctx: Context) -> list[Check]:
    """``moto`` with its server (``moto.server``, i.e. ``moto[server]``) and ``boto3``, importable by ``python``."""
    python = ctx.options.python
    found = ctx.imports(AWS_MODULES)
    moto, server, boto3 = (found.get(m, {"ok": False, "error": "not probed"}) for m in ("moto", "moto.server", "boto3"))
    if moto["ok"] and server["ok"]:
        moto_check = Check("moto", True, f"moto {moto.get('version', '')} with moto.server", None, AWS_TERRAFORM)
    elif moto["ok"]:
        moto_check = Check("moto", False, f"moto {moto.get('version', '')} without its server: {server['error']}",
                           pip_fix(python, "moto[server]"), AWS_TERRAFORM)
    else:
        moto_check = Check("moto", False, moto["error"], pip_fix(python, "moto[server]"), AWS_TERRAFORM)
    if boto3["ok"]:
        boto3_check = Check("boto3", True, f"boto3 {boto3.get('version', '')}", None, AWS_TERRAFORM)
    else:
        boto3_check = Check("boto3", False, boto3["error"], pip_fix(python, "boto3"), AWS_TERRAFORM)
    return [moto_check, boto3_check]


def checks() -> tuple[CheckFn, ...]:
    """This package's checks, in report order."""
    return (check_terraform, check_aws_provider, check_env_provider, check_aws_python)
