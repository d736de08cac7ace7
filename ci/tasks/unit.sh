#!/usr/bin/env bash
# unit: lint (ruff, mypy, lint-imports) and the fast tests. Pipeline-run tests are left out: they run jobs of this
# pipeline.
. "$(dirname "$0")/common.sh"

if [ "${LINT:-true}" = true ]; then
  say "ruff check"; (cd "$SRC" && "$BIN/ruff" check .)
  say "mypy"; (cd "$SRC" && "$PY" -m mypy)
  say "lint-imports"; (cd "$SRC" && "$BIN/lint-imports" --no-cache)
fi
pytest_extra
say "pytest -m '$MARKERS' ${PYTEST_EXTRA[*]:-tests}"
(cd "$SRC" && "$PY" -m pytest -p no:cacheprovider -q -rs -m "$MARKERS" --ignore-glob='tests/ci/test_pipeline_run*.py' \
  ${PYTEST_EXTRA[@]+"${PYTEST_EXTRA[@]}"})
say "unit passed"
