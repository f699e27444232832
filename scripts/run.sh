#!/usr/bin/env bash
# Install, then run the whole pipeline on the bundled sample extracts (data/extracts/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/microtrials run "$@"
