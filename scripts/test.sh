#!/usr/bin/env bash
# The README's test command: creates .venv if missing, installs nbnet[dev,parity], runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" dev,parity
exec python -m pytest "$@"
