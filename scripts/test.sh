#!/usr/bin/env bash
# The README's test command: creates .venv if missing, installs nbnet[dev,parity], runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" dev,parity
# The browser test (tests/test_ui_browser.py) drives Debian's chromium: install it once, when we can.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing chromium for the browser test" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "test.sh: could not install chromium; the browser test will be skipped" >&2
fi
exec python -m pytest "$@"
