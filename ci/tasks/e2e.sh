#!/usr/bin/env bash
# e2e: template → AMI in the environment's region copied to every region of $REGIONS → light stemcell naming the
# AMI of each region → a VM from it through the CPI on the environment's subnet → VM, stemcell and AMIs removed.
. "$(dirname "$0")/common.sh"
load_metadata environment
[ -n "${AWS_ENDPOINT:-}" ] || fail "AWS_ENDPOINT is not set"
OUT="$TASK_DIR/e2e-output"
mkdir -p "$OUT"
TARBALL=$(ls "$TASK_DIR"/cpi-release/stemforge-cpi-*.tgz 2>/dev/null | head -1 || true)
[ -z "$TARBALL" ] || say "release $(basename "$TARBALL"): aws info: $(release_smoke "$TARBALL" aws \
  "{\"aws\": {\"region\": \"$STEMFORGE_ENV_REGION\", \"endpoint\": \"$AWS_ENDPOINT\"}}")"

# the template with ami_regions = $REGIONS (a list; template variables are strings) and the environment's values
"$PY" - "$SRC/$TEMPLATE" "$OUT" > "$OUT/template.json" <<'PY'
import json, os, sys
template, out = sys.argv[1:]
doc = json.load(open(template))
regions = [r.strip() for r in os.environ.get("REGIONS", "").split(",") if r.strip()]
for builder in doc["builders"]:
    if builder.get("type") == "amazon-ebs":
        builder["ami_regions"] = [r for r in regions if r != os.environ["STEMFORGE_ENV_REGION"]]
print(json.dumps(doc, indent=1))
PY
VARS="$OUT/vars.json"
"$PY" - "$OUT" > "$VARS" <<'PY'
import json, os, sys
env = lambda key: os.environ["STEMFORGE_ENV_" + key]
print(json.dumps({
    "region": env("REGION"),
    "endpoint": os.environ["AWS_ENDPOINT"],
    "subnet_id": env("SUBNET_ID"),
    "security_group": json.loads(env("DEFAULT_SECURITY_GROUPS"))[0],
    "out": sys.argv[1],
}, indent=1))
PY
say "stemforge build $TEMPLATE (regions: ${REGIONS:-none})"
stemforge build -var-file "$VARS" "$OUT/template.json"
STEMCELL=$(ls "$OUT"/*.tgz | head -1)
[ -n "$STEMCELL" ] || fail "the build wrote no stemcell"
say "stemcell $(basename "$STEMCELL")"
(cd "$SRC" && "$PY" -m ci.e2e_vm --stemcell "$STEMCELL" --metadata "$STEMFORGE_ENV_METADATA" --endpoint "$AWS_ENDPOINT")
say "e2e passed"
