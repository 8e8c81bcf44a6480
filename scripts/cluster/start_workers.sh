#!/usr/bin/env bash
# Start N sweep workers on THIS machine. Every worker is a plain `nbnet sweep` process joining the
# same Optuna study in PostgreSQL: run this script on as many machines as you like, with the same
# arguments; the study hands out the trials and stops at search.n_trials over all workers.
#
#   export MLFLOW_TRACKING_URI=http://mlflow-host:5000
#   scripts/cluster/start_workers.sh -n 4 -- digits --storage postgresql://nbnet:PW@db-host:5432/nbnet_optuna \
#       --study digits-v1 --trials 200
#
# Options (before the --):
#   -n N              worker processes on this machine [number of cores / 2, at least 1]
#   --log-dir DIR     one log per worker: DIR/worker-HOST-I.log [./sweep-logs]
#   --detach          start and return (pids in DIR/workers-HOST.pids); default: wait for all,
#                     forward Ctrl-C/SIGTERM to every worker, exit non-zero if any worker failed
#   --stop            stop the workers a --detach call started from this log directory
# Everything after -- is passed to `nbnet sweep` unchanged.
#
# Each worker runs in its own process group (so a stop reaches the processes it spawned) and gets
# NBNET_NUM_THREADS = cores / N unless it is already set, so N workers do not oversubscribe the cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -x "$ROOT/.venv/bin/nbnet" ] && export PATH="$ROOT/.venv/bin:$PATH"

cores="$(nproc 2>/dev/null || echo 2)"
N=$(( cores / 2 > 0 ? cores / 2 : 1 ))
LOGDIR=./sweep-logs
DETACH=0
STOP=0
die() { echo "start_workers: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --log-dir) LOGDIR="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --stop) STOP=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (the nbnet sweep arguments go after --; see --help)" ;;
  esac
done
HOST="$(hostname -s 2>/dev/null || hostname)"
PIDS="$LOGDIR/workers-$HOST.pids"

stop_groups() {  # stop_groups SIGNAL PGID...
  local sig="$1"; shift
  for g in "$@"; do kill "-$sig" -- "-$g" 2>/dev/null || true; done
}
if [ "$STOP" = 1 ]; then
  [ -f "$PIDS" ] || die "no $PIDS: no detached workers were started from $LOGDIR on $HOST"
  mapfile -t groups <"$PIDS"
  stop_groups INT "${groups[@]}"   # Ctrl-C: each worker closes its runs as KILLED and its trial as failed
  for _ in $(seq 1 150); do       # up to 30 s
    live=0; for g in "${groups[@]}"; do kill -0 -- "-$g" 2>/dev/null && live=1; done
    [ "$live" = 0 ] && break; sleep 0.2
  done
  [ "$live" = 1 ] && { echo "start_workers: workers still alive after 30 s; SIGKILL" >&2; stop_groups KILL "${groups[@]}"; }
  rm -f "$PIDS"
  echo "stopped ${#groups[@]} workers"
  exit 0
fi

[ $# -gt 0 ] || die "no sweep arguments: start_workers.sh -n N -- EXPERIMENT --storage URL --study NAME"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, got '$N'"
command -v nbnet >/dev/null || die "nbnet is not installed here: pip install 'nbnet[postgres]' (or run scripts/test.sh once)"
case " $* " in *" --storage "*|*" --storage="*) ;; *)
  echo "start_workers: warning: no --storage: the workers share this machine's default (file) store only" >&2 ;;
esac
[ -n "${MLFLOW_TRACKING_URI:-}" ] || echo "start_workers: warning: MLFLOW_TRACKING_URI is not set: runs go to this machine's local store" >&2
export NBNET_NUM_THREADS="${NBNET_NUM_THREADS:-$(( cores / N > 0 ? cores / N : 1 ))}"
# MLflow prints a "View run" URL for every run it closes on a tracking server: not in worker logs.
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="${MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT:-true}"

mkdir -p "$LOGDIR"
groups=()
for i in $(seq 1 "$N"); do
  # setsid: the worker leads its own process group (pgid == pid), so stops reach its children.
  setsid nbnet sweep "$@" >"$LOGDIR/worker-$HOST-$i.log" 2>&1 </dev/null &
  groups+=("$!")
done
printf '%s\n' "${groups[@]}" >"$PIDS"
echo "started $N workers on $HOST (NBNET_NUM_THREADS=$NBNET_NUM_THREADS, logs $LOGDIR/worker-$HOST-*.log)" >&2
[ "$DETACH" = 1 ] && exit 0

trap 'stop_groups INT "${groups[@]}"' INT
trap 'stop_groups TERM "${groups[@]}"' TERM
rc=0
for i in "${!groups[@]}"; do
  # `wait` returns early when a trapped signal arrives; wait again until the worker has exited.
  while true; do
    set +e; wait "${groups[$i]}"; s=$?; set -e
    kill -0 "${groups[$i]}" 2>/dev/null || break
  done
  if [ "$s" != 0 ]; then
    echo "start_workers: worker $((i + 1)) exited with status $s (log $LOGDIR/worker-$HOST-$((i + 1)).log)" >&2
    [ "$rc" = 0 ] && rc="$s"
  fi
done
rm -f "$PIDS"
exit "$rc"
