"""The BOSH job's ``bin/cpi``: a script that runs stemforge-cpi under the director's stripped environment.

Form: a Python script the kernel starts through its ``#!`` line (:func:`render_direct`: ``#!/usr/bin/env -S
--block-signal=... <python> -I``, no shell in between, one ``exec`` less per call, ~3 ms of ``info``'s ~19), or,
when the interpreter's path cannot stand unquoted in a ``#!`` line or makes it too long, a POSIX sh script that
runs it with ``exec`` (:func:`render`). :func:`command` reads either back as one argv.

The director runs ``bin/cpi`` with only ``PATH=/usr/sbin:/usr/bin:/sbin:/bin`` (plus TMPDIR and HOME), so the script
names everything by absolute path: the interpreter (``sys.executable`` as is, not resolved, so that a virtualenv's
``python`` still finds its ``pyvenv.cfg`` and site-packages) and the config file. The interpreter runs in isolated
mode (``-I``: no ``PYTHON*`` variables, no user site, no current directory on ``sys.path``) when that still imports
the CPI and its dependencies, which :func:`probe_isolated` verifies under a stripped environment; ``-I`` also makes
Python write and use bytecode caches even if the caller's environment sets ``PYTHONDONTWRITEBYTECODE``.

Signals: when the host's ``env`` supports ``-S`` and ``--block-signal`` (GNU coreutils >= 8.31), the script's
interpreter line is ``#!/usr/bin/env -S --block-signal=TERM,INT,HUP /bin/sh``: the kernel starts ``env``, which
blocks those signals before it runs the shell, and the mask survives the ``exec`` of Python. A SIGTERM sent while
the shell and the interpreter start stays pending until ``cpi.main`` has installed its handler and unblocks it; the
call then answers ``CloudError`` (``ok_to_retry``) instead of dying without a response. The remaining window is
``env``'s own start (well under a millisecond). Without such an ``env`` the script is plain ``#!/bin/sh`` (a signal
in the first ~10 ms of the interpreter kills the process).

Config: the wrapper validates the config once (:func:`cpi.config.load`) and, when it is YAML, writes the parsed
document as JSON to ``<out_dir>/config/cpi.json`` (same permission bits as the source; it holds the same secrets)
and names that file in ``bin/cpi``, so the director's path parses JSON and never imports PyYAML (``info`` costs
~1.2x a bare interpreter start instead of ~2.9x). A JSON config is named as it is. Edit the YAML, then run the
wrapper again. With ``check_config=False`` the file is named as it is, whatever it holds.

Provider: the interpreter must also load the config's provider (its pip extra installed): :func:`probe_provider`
runs :func:`cpi.providers.load` under the same stripped environment and reports the missing extra.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The environment the director leaves a CPI.
DIRECTOR_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
#: What the interpreter must import for the CPI to work (the provider's own modules are checked by its callers).
PROBE_IMPORTS = "import cpi.main, cpi.dispatcher, cpi.config, jsonschema, yaml"
_ENTRY = "import sys; from cpi.main import main; sys.exit(main())"


def _entry(sys_path: list[str] | None) -> str:
    """The ``-c`` code of the CPI; with ``sys_path`` (run under ``-S``) it first sets ``sys.path`` to it."""
    return _ENTRY if sys_path is None else f"import sys; sys.path[:] = {sys_path!r}; " + _ENTRY.removeprefix(
        "import sys; ")


def _prelude(sys_path: list[str] | None) -> str:
    return "" if sys_path is None else f"import sys; sys.path[:] = {sys_path!r}\n"
#: ``env`` that holds the CPI's signals blocked across exec (see the module docstring).
ENV = "/usr/bin/env"
BLOCK_SIGNALS = "--block-signal=TERM,INT,HUP"


class WrapperError(Exception):
    """The wrapper cannot be generated (the message says why)."""


def interpreter() -> str:
    """The absolute path of the running interpreter, symlinks kept (a venv's ``bin/python`` must stay one)."""
    if not sys.executable:
        raise WrapperError("cannot determine the Python interpreter (sys.executable is empty)")
    return os.path.abspath(sys.executable)


def probe_isolated(python: str, flags: list[str], sys_path: list[str] | None = None) -> tuple[bool, str]:
    """Whether ``python <flags>`` imports the CPI under ``env -i PATH=<director PATH>`` (with ``sys.path`` set to
    ``sys_path`` first when given); ``(ok, stderr tail)``."""
    try:
        proc = subprocess.run(
            [python, *flags, "-c", _prelude(sys_path) + PROBE_IMPORTS],
            env={"PATH": DIRECTOR_PATH},
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stderr.strip()[-500:]


def probe_provider(python: str, flags: list[str], plugin: str, sys_path: list[str] | None = None,
                   ) -> tuple[bool, str]:
    """Whether ``python <flags>`` loads the provider ``plugin`` under the director's environment; ``(ok, message)``
    with the missing extra named (``cpi.extras.MissingExtra``) when it does not."""
    code = (_prelude(sys_path) + "import sys\nfrom cpi.providers import load\ntry:\n    load(sys.argv[1])\n"
            "except ImportError as exc:\n    sys.exit(str(exc))\n")
    try:
        proc = subprocess.run([python, *flags, "-c", code, plugin], env={"PATH": DIRECTOR_PATH}, cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stderr.strip()[-500:]


def json_problem(value: object, path: str = "") -> str | None:
    """What in a parsed YAML document JSON cannot carry (a timestamp, a set, a non-string key, NaN ...), naming
    its place (``cloud.properties.x``), or None."""
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                return f"{path or 'the top level'}: key {key!r} is not a string ({type(key).__name__})"
            found = json_problem(child, f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(value, list):
        for index, child in enumerate(value):
            found = json_problem(child, f"{path}[{index}]")
            if found:
                return found
        return None
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if value - value == 0 else f"{path}: {value!r} is not a JSON number"
    return f"{path}: a YAML {type(value).__name__} has no JSON form (quote it to make it a string)"


def write_json_config(document: dict[str, Any], source: str, out_dir: Path) -> Path:
    """Write ``document`` as ``<out_dir>/config/cpi.json`` atomically, with the permission bits of ``source`` (owner
    read/write at least), and return its path."""
    import json

    target = out_dir / "config" / "cpi.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = (os.stat(source).st_mode & 0o777) | 0o600
    temporary = target.with_name(f".cpi.json.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return target


def env_blocks_signals(env: str = ENV) -> bool:
    """Whether ``env`` supports ``-S`` and ``--block-signal`` (GNU coreutils >= 8.31)."""
    try:
        proc = subprocess.run([env, "-S", f"{BLOCK_SIGNALS} true"], env={"PATH": DIRECTOR_PATH},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def site_path(python: str, flags: list[str]) -> list[str] | None:
    """``sys.path`` as ``python <flags>`` has it after ``site`` ran, under the director's environment (None if the
    interpreter cannot tell). A ``bin/cpi`` that runs ``-S`` with this path skips ``site`` (its ``.pth`` files and
    directory scans: ~5 ms, a quarter of ``info``) on every call; the wrapper must be run again when a package
    adds a ``.pth`` path entry (an editable install), as it is after editing the config."""
    import json

    try:
        proc = subprocess.run([python, *flags, "-c", "import sys, json; print(json.dumps(sys.path))"],
                              env={"PATH": DIRECTOR_PATH}, cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)
        found = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not isinstance(found, list) or not all(isinstance(entry, str) and entry for entry in found):
        return None
    return found


def render(python: str, config_path: str, flags: list[str], *, block_signals: bool = False,
           sys_path: list[str] | None = None) -> str:
    """The script text: ``exec <python> <flags> -c <entry> --config <config>``, every part shell-quoted, run by
    ``/bin/sh`` (through ``env -S --block-signal=...`` with ``block_signals``)."""
    command = " ".join(shlex.quote(part) for part in [python, *flags, "-c", _entry(sys_path), "--config", config_path])
    shebang = f"#!{ENV} -S {BLOCK_SIGNALS} /bin/sh\n" if block_signals else "#!/bin/sh\n"
    return (
        shebang
        + "# Generated by `stemforge cpi wrapper`. Runs the stemforge BOSH CPI with an absolute interpreter and\n"
        "# config path, so it works under the director's stripped environment (PATH=/usr/sbin:/usr/bin:/sbin:/bin).\n"
        "# One JSON request on stdin, one JSON response on stdout, exit status 0.\n"
        f"exec {command}\n"
    )


#: What a ``#!`` line may hold without quoting (``env -S`` splits on blanks and treats ``=``, quotes, ``$``, ``#`` and
#: backslashes specially; the kernel splits at the first blank).
_SHEBANG_SAFE = re.compile(r"/[A-Za-z0-9_./+,:@%-]+")
#: Longest ``#!`` line every Linux kernel reads whole (BINPRM_BUF_SIZE was 128 before 5.1).
MAX_SHEBANG = 127


def render_direct(python: str, config_path: str, flags: list[str], *, block_signals: bool = False,
                  sys_path: list[str] | None = None) -> str | None:
    """The script text of a ``bin/cpi`` that is a Python script started by the kernel's ``#!`` line (through
    ``env -S --block-signal=...`` with ``block_signals``): no shell, one ``exec`` less on every call than
    :func:`render`. None when the interpreter's path or flags cannot stand in a ``#!`` line unquoted or the line
    would be too long (then :func:`render`'s shell script is used)."""
    if not _SHEBANG_SAFE.fullmatch(python) or any(not re.fullmatch(r"-[A-Za-z]+", flag) for flag in flags):
        return None
    # one argument: the kernel passes everything after the interpreter as one (python takes "-IS" as -I -S)
    command = f"{python} -{''.join(flag[1:] for flag in flags)}" if flags else python
    shebang = f"#!{ENV} -S {BLOCK_SIGNALS} {command}" if block_signals else f"#!{command}"
    if len(shebang.encode()) > MAX_SHEBANG:
        return None
    return (
        shebang + "\n"
        "# Generated by `stemforge cpi wrapper`. Runs the stemforge BOSH CPI with an absolute interpreter and\n"
        "# config path, so it works under the director's stripped environment (PATH=/usr/sbin:/usr/bin:/sbin:/bin).\n"
        "# A Python script the kernel starts through the line above (no shell in between).\n"
        "# One JSON request on stdin, one JSON response on stdout, exit status 0.\n"
        f"CONFIG = {config_path!r}\n"
        + ("" if sys_path is None else
           "# sys.path as `site` made it when this was written (-S skips site on every call)\n"
           f"SYS_PATH = {sys_path!r}\n"
           "import sys; sys.path[:] = SYS_PATH\n")
        + 'import sys; from cpi.main import main; sys.exit(main(["--config", CONFIG]))\n'
    )


def command(script: str | os.PathLike[str]) -> list[str]:
    """The command a ``bin/cpi`` written here runs, as one argv in :func:`render`'s form
    (``python [flags] -c <entry> --config <config>``), for either script form; WrapperError if it is neither."""
    import ast

    lines = Path(script).read_text(encoding="utf-8").splitlines()
    for line in reversed(lines):
        if line.startswith("exec "):
            return shlex.split(line[len("exec "):])
    config = next((line for line in lines if line.startswith("CONFIG = ")), None)
    sys_path = next((line for line in lines if line.startswith("SYS_PATH = ")), None)
    if lines and config is not None:
        words = lines[0].removeprefix("#!").split()
        if words[:3] == [ENV, "-S", BLOCK_SIGNALS]:
            words = words[3:]
        entry = _entry(None if sys_path is None else ast.literal_eval(sys_path.removeprefix("SYS_PATH = ")))
        return [*words, "-c", entry, "--config", ast.literal_eval(config.removeprefix("CONFIG = "))]
    raise WrapperError(f"{script}: not a bin/cpi written by stemforge cpi wrapper")


def write_wrapper(
    config: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    python: str | None = None,
    check_config: bool = True,
) -> Path:
    """Write ``<out_dir>/bin/cpi`` (mode 0755, atomically) for the config at ``config`` and return its path.
    With ``check_config`` the config must already load as a valid CPI config, the interpreter must load its
    provider, and a YAML config is written as ``<out_dir>/config/cpi.json``, which ``bin/cpi`` then names.
    Raises WrapperError when the config does not load or cannot be written as JSON, or the interpreter cannot
    import the CPI or its provider; nothing is written then."""
    config_path = os.path.abspath(os.fspath(config))
    out = Path(out_dir).absolute()
    loaded = None
    if check_config:
        from cpi import config as cpi_config
        from cpi.errors import CpiError
        from cpi.providers import PROVIDERS

        try:
            loaded = cpi_config.load(config_path, PROVIDERS)
        except CpiError as exc:
            raise WrapperError(exc.message) from None
        if loaded.syntax != "json":
            problem = json_problem(loaded.document)
            if problem:
                raise WrapperError(f"config {config_path}: cannot be written as JSON: {problem}")
    python = python or interpreter()
    flags = ["-I"]
    ok, detail = probe_isolated(python, flags)
    if not ok:
        flags = []
        ok, detail_plain = probe_isolated(python, flags)
        if not ok:
            raise WrapperError(f"{python} cannot import the CPI under a stripped environment: {detail_plain or detail}")
    sys_path = site_path(python, flags)
    if sys_path is not None and probe_isolated(python, [*flags, "-S"], sys_path)[0]:
        flags = [*flags, "-S"]
    else:
        sys_path = None
    if loaded is not None:
        ok, detail = probe_provider(python, flags, loaded.plugin, sys_path)
        if not ok:
            raise WrapperError(f"{python} cannot load the {loaded.plugin} provider: {detail}")
        if loaded.syntax != "json":
            try:
                config_path = str(write_json_config(loaded.document, config_path, out))
            except OSError as exc:
                raise WrapperError(f"cannot write {out / 'config' / 'cpi.json'}: {exc.strerror or exc}") from None
    target = out / "bin" / "cpi"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".cpi.{os.getpid()}.tmp")
    blocks = env_blocks_signals()
    text = render_direct(python, config_path, flags, block_signals=blocks, sys_path=sys_path) or render(
        python, config_path, flags, block_signals=blocks, sys_path=sys_path)
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o755)
    os.replace(temporary, target)
    return target
