#!/usr/bin/env bash
# The README's first command. On a fresh machine: creates .venv if missing, installs nbnet, then
# runs the sweep of EXPERIMENT (default: digits, 20 trials, a minute or two on 2 cores) on the
# embedded store under mlruns/ (MLflow on SQLite + an Optuna journal file; MLFLOW_TRACKING_URI
# overrides the MLflow part), and prints the best trial, its metric, the registered model URI and
# the command that opens the UI.
#
#   scripts/sweep.sh                          # digits
#   scripts/sweep.sh wine --sampler grid      # experiments/NAME.toml or a shipped example, any `nbnet sweep` option
#   scripts/sweep.sh digits --study digits-2 --workers 2 --trials 40
#
# Running it again resumes the same study (only missing trials run); pass --study NAME for a new one.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
EXPERIMENT="${1:-digits}"
[ $# -gt 0 ] && shift
nbnet sweep "$EXPERIMENT" "$@"
echo
echo "next:  nbnet ui                     # MLflow UI on http://127.0.0.1:5000 (Ctrl-C stops it)"
echo "       nbnet best                   # the best trial again"
echo "       nbnet predict models:/$(basename "$EXPERIMENT" .toml)@champion INPUT.csv -o predictions.csv"
