#!/usr/bin/env bash
# README's test command: set up the pinned environment, lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(bash scripts/setup_venv.sh)"
"${venv}/bin/ruff" check .
"${venv}/bin/ruff" format --check .
"${venv}/bin/python" -m pytest "$@"
