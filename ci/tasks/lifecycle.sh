#!/usr/bin/env bash
# integration: one provider's CPI lifecycle. The candidate release's bin/cpi answers `info` for the provider under
# the director's stripped environment; for aws the CPI is then driven against the Terraform environment
# (environment/metadata: subnet, security group, key pair); then the provider's lifecycle tests run.
. "$(dirname "$0")/common.sh"
[ -n "${PROVIDER:-}" ] || fail "PROVIDER is not set"
[ -n "${TEST_FILES:-}" ] || fail "TEST_FILES is not set"
TARBALL=$(ls "$TASK_DIR"/cpi-release/stemforge-cpi-*.tgz 2>/dev/null | head -1)
[ -n "$TARBALL" ] || fail "cpi-release/ holds no stemforge-cpi-*.tgz"

EXTRA='{}'
if [ "$PROVIDER" = aws ]; then
  load_metadata environment
  [ -n "${AWS_ENDPOINT:-}" ] || fail "AWS_ENDPOINT is not set"
  EXTRA=$("$PY" -c '
import json, os
print(json.dumps({"aws": {"region": os.environ["STEMFORGE_ENV_REGION"], "endpoint": os.environ["AWS_ENDPOINT"],
                          "credentials_source": "env_or_profile",
                          "default_key_name": os.environ["STEMFORGE_ENV_DEFAULT_KEY_NAME"],
                          "default_security_groups": json.loads(os.environ["STEMFORGE_ENV_DEFAULT_SECURITY_GROUPS"]),
                          "max_retries": 2}}))')
fi
say "release $(basename "$TARBALL"): $PROVIDER info: $(release_smoke "$TARBALL" "$PROVIDER" "$EXTRA")"

if [ "$PROVIDER" = aws ]; then
  CONFIG=$(mktemp)
  trap 'rm -f "$CONFIG"' EXIT
  "$PY" -c 'import json, sys; print(json.dumps({"cloud": {"plugin": "aws", "properties": json.loads(sys.argv[1])}}))' \
    "$EXTRA" > "$CONFIG"
  ANSWER=$(stemforge cpi call has_vm '["i-0000000000000000f"]' --config "$CONFIG")
  echo "$ANSWER" | "$PY" -c 'import json, sys; r = json.load(sys.stdin); sys.exit(0 if r.get("result") is False else f"has_vm: {r}")' \
    || fail "has_vm against environment $(cat "$TASK_DIR/environment/name")"
  say "has_vm of an unknown instance in the environment: false"
fi

# shellcheck disable=SC2086 # TEST_FILES is a list of globs
run_pytest "$MARKERS" $TEST_FILES
say "$PROVIDER lifecycle passed"
