#!/usr/bin/env bash
# CI services for the scale-out test (tests/test_scaleout.py): a real PostgreSQL from Debian's
# packages on 127.0.0.1, with a role that may create databases (the test creates a fresh Optuna
# database and a fresh MLflow database per run) and pg_stat_statements loaded (the test measures
# the database writes of a sweep with it).
#
# Needs root. Idempotent: installs `postgresql` only if it is missing, starts the cluster only if it
# is down, restarts it only when its settings change.
#
# Prints shell `export` lines on stdout, for `eval "$(bash scripts/ci_services.sh)"`:
#   NBNET_TEST_PG_URL=postgresql://nbnet_test:nbnet_test@127.0.0.1:PORT/nbnet_test   on success
#   NBNET_TEST_PG_UNAVAILABLE="why"                                                on failure
# and exits 0 in both cases (the test then runs, or skips with that reason). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

ROLE=nbnet_test
PASSWORD=nbnet_test   # a throwaway role on a server that listens on localhost only
DB=nbnet_test

say() { echo "ci_services: $*" >&2; }
unavailable() {
  say "PostgreSQL unavailable: $*"
  printf 'export NBNET_TEST_PG_UNAVAILABLE=%q\n' "$*"
  exit 0
}

if [ "$(id -u)" != 0 ] && command -v psql >/dev/null 2>&1 \
   && PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -U "$ROLE" -d "$DB" -tAc 'SELECT 1' >/dev/null 2>&1; then
  # Not root, but an earlier root run already set the server up: use it as it is.
  say "PostgreSQL already set up for $ROLE on 127.0.0.1:5432"
  printf 'export NBNET_TEST_PG_URL=%q\n' "postgresql://$ROLE:$PASSWORD@127.0.0.1:5432/$DB"
  exit 0
fi
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || unavailable "PostgreSQL is not installed and this is not root (run: sudo apt-get install -y postgresql)"
  command -v apt-get >/dev/null 2>&1 || unavailable "PostgreSQL is not installed and there is no apt-get"
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  if ! timeout 900 apt-get install -y -q postgresql >&2; then
    say "apt-get install failed; refreshing the package lists once"
    timeout 300 apt-get update -q >&2 || unavailable "apt-get update failed (no access to the Debian mirror?)"
    timeout 900 apt-get install -y -q postgresql >&2 || unavailable "apt-get install -y postgresql failed"
  fi
fi
command -v pg_lsclusters >/dev/null 2>&1 || unavailable "pg_lsclusters not found after installing postgresql"
[ "$(id -u)" = 0 ] || unavailable "starting PostgreSQL needs root (run: sudo scripts/ci_services.sh)"

if [ -z "$(pg_lsclusters -h)" ]; then
  ver="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
  say "creating cluster $ver/main"
  pg_createcluster "$ver" main >&2 || unavailable "pg_createcluster $ver main failed"
fi

urls="$(bash scripts/cluster/setup_postgres.sh --role "$ROLE" --password "$PASSWORD" --createdb \
          --database "$DB" --stat-statements)" \
  || unavailable "scripts/cluster/setup_postgres.sh failed (see the messages above)"
url="$(tail -n 1 <<<"$urls")"
say "PostgreSQL ready: $url"
printf 'export NBNET_TEST_PG_URL=%q\n' "$url"
