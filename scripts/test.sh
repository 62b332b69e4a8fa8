#!/usr/bin/env bash
# The whole test suite: lint, types, import layering, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "== ruff" && .venv/bin/ruff check src tests bench
echo "== mypy (strict, src/)" && .venv/bin/mypy
echo "== import-linter" && .venv/bin/lint-imports
echo "== pytest" && exec .venv/bin/python -m pytest -q "$@"
