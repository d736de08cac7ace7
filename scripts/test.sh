#!/usr/bin/env bash
# The test suite: set-up (idempotent, no demo), then ruff, mypy, lint-imports (the layer contracts) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-demo
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== lint-imports"; .venv/bin/lint-imports --no-cache  # contracts: pyproject.toml [tool.importlinter]
echo "== pytest"
set +e
# two workers (the machine's cores): much of the suite waits on guests, Terraform and moto. Modules that share
# host-global state are scheduled as one unit (tests/conftest.py); STEMFORGE_TEST_WORKERS=0 runs serially.
.venv/bin/pytest -p no:cacheprovider -ra --durations=25 \
  -n "${STEMFORGE_TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure of the suite, not a pass
exit $status
