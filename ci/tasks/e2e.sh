#!/usr/bin/env bash
# e2e: template → AMI in the environment's region copied to $REGIONS → light stemcell with per-region ids → a VM
# through the CPI on the environment's subnet (the template's cpi-test post-processor) → nothing left behind.
. "$(dirname "$0")/common.sh"
load_metadata environment
VARS="$TASK_DIR/e2e-output/vars.json"
"$PY" - > "$VARS" <<'PY'
import json, os
env = lambda key: os.environ["STEMFORGE_ENV_" + key]
print(json.dumps({
    "region": env("REGION"),
    "ami_regions": os.environ.get("REGIONS", ""),
    "endpoint": os.environ["AWS_ENDPOINT"],
    "subnet_id": env("SUBNET_ID"),
    "security_group": json.loads(env("DEFAULT_SECURITY_GROUPS"))[0],
    "key_name": env("DEFAULT_KEY_NAME"),
    "out": os.path.join(os.getcwd(), "e2e-output"),
}, indent=1))
PY
say "stemforge build $TEMPLATE"
stemforge build -var-file "$VARS" "$SRC/$TEMPLATE"
say "e2e passed"
