#!/usr/bin/env bash
# Install (with the browser and PostgreSQL where possible), then run the whole test suite (slow tier too,
# Hypothesis's "ci" profile). The quick tier alone: .venv/bin/python -m pytest -m "not slow".
set -uo pipefail
cd "$(dirname "$0")/.."
MICROTRIALS_SYSTEM_PACKAGES=1 bash scripts/install.sh || exit 1
HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} .venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"; exit 1
fi
exit "$status"
