#!/usr/bin/env bash
# Install (with the browser and PostgreSQL where possible), then run the test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
MICROTRIALS_SYSTEM_PACKAGES=1 bash scripts/install.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"; exit 1
fi
exit "$status"
