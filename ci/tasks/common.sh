# shellcheck shell=bash
# Sourced by every ci/tasks/*.sh. The scripts run the same in a Concourse container and on a workstation given the
# same directories: the current directory holds the task's inputs and outputs by name, and the stemforge source tree
# is the one holding this script (the stemforge-src input).
set -euo pipefail

TASK_STARTED=$(date +%s)
TASK_DIR=$(pwd)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# A line with the task's elapsed time.
say() { printf '[%5ss] %s\n' "$(($(date +%s) - TASK_STARTED))" "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }

# The interpreter: the source tree's venv (scripts/setup.sh makes it), else python3 on PATH.
if [ -x "$SRC/.venv/bin/python" ]; then PY="$SRC/.venv/bin/python"; else PY=$(command -v python3); fi
BIN=$(dirname "$PY")
export PYTHONDONTWRITEBYTECODE=1

stemforge() { (cd "$SRC" && "$PY" -m stemforge.cli "$@"); }

# Words of $PYTEST_ARGS (a param: narrows a run, e.g. "-k info tests/cpi/test_cpi_config.py").
pytest_extra() { read -r -a PYTEST_EXTRA <<< "${PYTEST_ARGS:-}"; }

# run_pytest MARKERS FILE_GLOB...: pytest on the files that exist, selected by marker, plus $PYTEST_ARGS.
# No file or no collected test is a failure: a task that tests nothing must not pass.
run_pytest() {
  local markers=$1; shift
  local files=() pattern path
  for pattern in "$@"; do
    for path in $(cd "$SRC" && compgen -G "$pattern" || true); do files+=("$path"); done
  done
  [ "${#files[@]}" -gt 0 ] || fail "no test files match: $*"
  pytest_extra
  say "pytest -m '$markers' ${files[*]} ${PYTEST_EXTRA[*]:-}"
  (cd "$SRC" && "$PY" -m pytest -p no:cacheprovider -q -rs -m "$markers" "${files[@]}" ${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"})
}

# load_metadata DIR: the Terraform environment's flat metadata (terraform output values) as STEMFORGE_ENV_* variables
# and STEMFORGE_ENV_METADATA (the file), when DIR/metadata exists.
load_metadata() {
  local file="$TASK_DIR/$1/metadata"
  [ -f "$file" ] || fail "$1/metadata is missing (the environment put's output)"
  export STEMFORGE_ENV_METADATA="$file"
  eval "$("$PY" - "$file" <<'PY'
import json, re, shlex, sys
data = json.load(open(sys.argv[1]))
for key, value in sorted(data.items()):
    name = "STEMFORGE_ENV_" + re.sub(r"[^A-Za-z0-9]", "_", key).upper()
    text = value if isinstance(value, str) else json.dumps(value)
    print(f"export {name}={shlex.quote(text)}")
PY
)"
  say "environment $(cat "$TASK_DIR/$1/name" 2>/dev/null || echo '?'): $(cd "$TASK_DIR/$1" && "$PY" -c 'import json; print(", ".join(sorted(json.load(open("metadata")))))')"
}

# release_smoke TARBALL PLUGIN [PROPERTIES_JSON]: render the stemforge_cpi job of the release tarball for PLUGIN (with
# this machine's interpreter and a scratch job dir) and ask the rendered bin/cpi for `info` the way the director
# does: `env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin`. Prints the stemcell formats; fails unless there are some.
release_smoke() {
  local tarball=$1 plugin=$2 extra=${3:-"{}"}
  local job; job=$(mktemp -d)
  mkdir -p "$job/log"
  "$PY" - "$plugin" "$PY" "$job" "$extra" > "$job/properties.json" <<'PY'
import json, sys
plugin, python, job, extra = sys.argv[1:]
props = {"stemforge_cpi": {"plugin": plugin, "python": python, "job_dir": job, "log_dir": job + "/log",
                           "state_dir": job + "/state"}}
props.update(json.loads(extra))
print(json.dumps(props))
PY
  (cd "$SRC" && "$PY" -m ci.bosh_release render --release "$tarball" --properties "$job/properties.json" --out "$job" >/dev/null)
  local response
  response=$(echo '{"method":"info","arguments":[],"context":{"director_uuid":"ci"}}' \
    | env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$job/bin/cpi")
  rm -rf "$job"
  echo "$response" | "$PY" -c '
import json, sys
r = json.load(sys.stdin)
formats = (r.get("result") or {}).get("stemcell_formats")
if r.get("error") or not formats:
    sys.exit(f"info through the rendered bin/cpi failed: {r}")
print(", ".join(formats))' || fail "release smoke ($plugin)"
}
