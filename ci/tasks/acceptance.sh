#!/usr/bin/env bash
# acceptance: a provider end to end. The candidate release's bin/cpi answers `info`; then (libvirt) the demo builds
# the test stemcell, deploys a VM through the real CPI process under the director's environment and waits for the
# guest agent's reports; then the provider's end-to-end tests run (bare metal: the emulated lab).
. "$(dirname "$0")/common.sh"
[ -n "${PROVIDER:-}" ] || fail "PROVIDER is not set"
TARBALL=$(ls "$TASK_DIR"/cpi-release/stemforge-cpi-*.tgz 2>/dev/null | head -1)
[ -n "$TARBALL" ] || fail "cpi-release/ holds no stemforge-cpi-*.tgz"
say "release $(basename "$TARBALL"): $PROVIDER info: $(release_smoke "$TARBALL" "$PROVIDER")"

if [ "${DEMO:-false}" = true ]; then
  [ "$PROVIDER" = libvirt ] || fail "DEMO runs on libvirt only"
  WORKDIR=$(mktemp -d)
  trap 'rm -rf "$WORKDIR"' EXIT
  say "stemforge demo"
  stemforge demo --workdir "$WORKDIR"
fi
if [ -n "${TEST_FILES:-}" ]; then
  # shellcheck disable=SC2086
  run_pytest "$MARKERS" $TEST_FILES
fi
[ "${DEMO:-false}" = true ] || [ -n "${TEST_FILES:-}" ] || fail "nothing to run: set DEMO or TEST_FILES"
say "$PROVIDER acceptance passed"
