#!/usr/bin/env bash
# One `stemforge build` of a template: the image factory's build, test (cpi-test on a hardware plan), publish
# (fanout) steps are each a template. Variables: $VARS, plus `out` (this task's output directory), `image` (the
# image input's *.qcow2/*.raw/*.img when given) and `env_*` (the environment's metadata when given); only those the
# template declares are passed.
. "$(dirname "$0")/common.sh"
[ -n "${TEMPLATE:-}" ] || fail "TEMPLATE is not set"
[ ! -d "$TASK_DIR/environment" ] || load_metadata environment
VAR_FILE="$TASK_DIR/out/.vars.json"
"$PY" - "$TASK_DIR" "$SRC/$TEMPLATE" > "$VAR_FILE" <<'PY'
import glob, json, os, sys
import yaml
task, template = sys.argv[1:]
with open(template) as handle:
    declared = set((yaml.safe_load(handle) or {}).get("variables") or {})
values = json.loads(os.environ.get("VARS") or "{}")
values["out"] = os.path.join(task, "out")
images = sorted(p for ext in ("qcow2", "raw", "img") for p in glob.glob(os.path.join(task, "image", "**", "*." + ext), recursive=True))
if images:
    values.setdefault("image", images[0])
for key, value in os.environ.items():
    if key.startswith("STEMFORGE_ENV_") and key != "STEMFORGE_ENV_METADATA":
        values.setdefault("env_" + key[len("STEMFORGE_ENV_"):].lower(), value)
# a template rejects variables it does not declare: pass only those it does
print(json.dumps({k: v for k, v in values.items() if k in declared}, indent=1))
PY
ARGS=(-var-file "$VAR_FILE")
[ -z "${ONLY:-}" ] || ARGS+=(-only "$ONLY")
say "stemforge build $TEMPLATE"
stemforge build "${ARGS[@]}" "$SRC/$TEMPLATE"
rm -f "$VAR_FILE"
say "build of $TEMPLATE passed"
