#!/usr/bin/env bash
# Start (or stop) the MLflow tracking server of a scale-out sweep: runs, metrics and the model
# registry in PostgreSQL, artifacts (models, figures) stored on this machine and served to every
# worker through the server itself (--serve-artifacts), so workers need no shared file system.
#
#   scripts/cluster/start_tracking_server.sh --backend postgresql://nbnet:PW@DBHOST:5432/nbnet_mlflow \
#       --artifacts /srv/nbnet/mlartifacts --host 0.0.0.0 --port 5000 --allowed-hosts 'mlflow-host,10.0.0.*'
#   scripts/cluster/start_tracking_server.sh --stop
#
# Options (defaults in brackets):
#   --backend URL         backend (and registry) store [$NBNET_MLFLOW_BACKEND; required]
#   --artifacts DIR|URI   where served artifacts are stored [./mlartifacts]
#   --host ADDR           interface to bind; 0.0.0.0 for other machines [127.0.0.1]
#   --port N              [5000]
#   --allowed-hosts LIST  Host headers accepted, e.g. 'mlflow.lan,10.0.0.*' (MLflow answers 403 to
#                         others); default: MLflow's (localhost and private IP ranges)
#   --workers N           uvicorn worker processes [4]
#   --run-dir DIR         where the pid file and server.log go [./mlflow-server]
#   --timeout S           seconds to wait for /health (a fresh database is migrated first) [120]
#   --no-jobs             do not start MLflow's job runner (GenAI scorers, periodic tasks): a
#                         training-only server then runs 2 processes fewer per host and no periodic writes
#   --foreground          run in the foreground (for systemd or a terminal); Ctrl-C stops it
#   --stop                stop the server started from this run directory (its whole process group)
#
# The server runs in its own process group (it spawns uvicorn workers, a job runner and task
# consumers): --stop signals the group, so nothing is left behind. Prints the tracking URI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ -x "$ROOT/.venv/bin/mlflow" ] && export PATH="$ROOT/.venv/bin:$PATH"  # mlflow starts uvicorn from PATH

BACKEND="${NBNET_MLFLOW_BACKEND:-}"
ARTIFACTS="./mlartifacts"
HOST=127.0.0.1
PORT=5000
ALLOWED=""
WORKERS=4
RUNDIR="./mlflow-server"
TIMEOUT=120
FOREGROUND=0
STOP=0
NOJOBS=0
die() { echo "start_tracking_server: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND="$2"; shift 2 ;;
    --artifacts) ARTIFACTS="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --allowed-hosts) ALLOWED="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --run-dir) RUNDIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --no-jobs) NOJOBS=1; shift ;;
    --foreground) FOREGROUND=1; shift ;;
    --stop) STOP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
PIDFILE="$RUNDIR/server.pid"

alive() { kill -0 -- "-$1" 2>/dev/null; }
if [ "$STOP" = 1 ]; then
  [ -f "$PIDFILE" ] || die "no $PIDFILE: nothing started from run directory $RUNDIR"
  pgid="$(cat "$PIDFILE")"
  if alive "$pgid"; then
    kill -TERM -- "-$pgid"
    for _ in $(seq 1 100); do alive "$pgid" || break; sleep 0.2; done  # up to 20 s to shut down
    if alive "$pgid"; then echo "start_tracking_server: group $pgid ignored SIGTERM; killing it" >&2; kill -KILL -- "-$pgid" || true; fi
  fi
  rm -f "$PIDFILE"
  echo "stopped MLflow server (process group $pgid)"
  exit 0
fi

[ -n "$BACKEND" ] || die "no backend store: pass --backend postgresql://USER:PW@HOST:5432/DB or set NBNET_MLFLOW_BACKEND"
command -v mlflow >/dev/null || die "mlflow is not installed here: pip install 'nbnet[postgres]' (or run scripts/test.sh once)"
case "$BACKEND" in
  postgresql://*|postgresql+psycopg://*) python -c 'import psycopg' 2>/dev/null || die "the PostgreSQL driver is missing: pip install 'psycopg[binary]'" ;;
esac
case "$ARTIFACTS" in
  *://*) ;;
  *) mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)" ;;
esac

args=(server --backend-store-uri "$BACKEND" --serve-artifacts --artifacts-destination "$ARTIFACTS"
      --host "$HOST" --port "$PORT" --workers "$WORKERS")
[ -n "$ALLOWED" ] && args+=(--allowed-hosts "$ALLOWED")
[ "$NOJOBS" = 1 ] && export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
if [ "$FOREGROUND" = 1 ]; then exec mlflow "${args[@]}"; fi

mkdir -p "$RUNDIR"
if [ -f "$PIDFILE" ] && alive "$(cat "$PIDFILE")"; then
  die "a server started from $RUNDIR is still running (process group $(cat "$PIDFILE")); stop it with --stop"
fi
# setsid: the server leads a new process group (its pgid is its pid), detached from this shell.
setsid mlflow "${args[@]}" >"$RUNDIR/server.log" 2>&1 </dev/null &
pgid=$!
echo "$pgid" >"$PIDFILE"

probe_host="$HOST"
case "$HOST" in 0.0.0.0|::|"[::]") probe_host=127.0.0.1 ;; esac
url="http://$probe_host:$PORT"
deadline=$((SECONDS + TIMEOUT))
until python - "$url/health" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
do
  if ! alive "$pgid"; then
    tail -n 20 "$RUNDIR/server.log" >&2
    die "the MLflow server exited during start-up (log: $RUNDIR/server.log)"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 20 "$RUNDIR/server.log" >&2
    die "no answer from $url/health within $TIMEOUT s (log: $RUNDIR/server.log); it is still running: --stop to end it"
  fi
  sleep 0.5
done
echo "MLflow server up (process group $pgid, log $RUNDIR/server.log). On the workers:"
[ "$probe_host" = "$HOST" ] || url="http://$(hostname -f 2>/dev/null || hostname):$PORT"
echo "export MLFLOW_TRACKING_URI=$url"
