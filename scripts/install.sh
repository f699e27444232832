#!/usr/bin/env bash
# Install what microtrials needs into .venv (created with python3 if missing).
# With MICROTRIALS_SYSTEM_PACKAGES=1 (the test command sets it) and root + apt-get available, also
# Debian's chromium + chromium-driver (browser test) and postgresql (shared-storage test);
# tests that need them skip with a printed reason where they cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# setuptools notes every editable install of a layout like ours (src/microtrials beside pipelines/)
# with a 10-line "Editable installation" warning that asks nothing of anyone: silenced by its text only.
PYTHONWARNINGS="ignore:Editable installation" \
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
if [ "${MICROTRIALS_SYSTEM_PACKAGES:-0}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "note: could not install ${missing[*]}; the tests that need them will skip"
  fi
fi
