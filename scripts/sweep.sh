#!/usr/bin/env bash
# The README's first command. On a fresh machine: creates .venv if missing, installs nbnet, then
# runs the sweep of EXPERIMENT (default: digits, 20 trials, a minute or two on 2 cores) on the
# embedded stores of this folder (MLflow on SQLite in ./mlflow.db, MLflow's own default location,
# with the artifacts and the Optuna journal under mlruns/; MLFLOW_TRACKING_URI overrides the
# MLflow part), and prints the best trial, its metric, the registered model URI and the commands
# that look at the results, nbnet's and MLflow's/Optuna's own.
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
NAME="$(basename "$EXPERIMENT" .toml)"
echo "next:  nbnet ui                     # MLflow UI on http://127.0.0.1:5000 (Ctrl-C stops it); or: mlflow ui"
echo "       nbnet best                   # the best trial again"
echo "       nbnet predict models:/$NAME@champion INPUT.csv -o predictions.csv"
echo "       mlflow models serve -m models:/$NAME@champion -p 5001 --env-manager local   # MLflow's own tools"
echo "       optuna-dashboard mlruns/optuna/$NAME.log                                # work here too"
