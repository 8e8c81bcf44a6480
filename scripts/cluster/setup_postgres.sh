#!/usr/bin/env bash
# Prepare the PostgreSQL server that holds a scale-out sweep: one role, the Optuna study database
# and the MLflow tracking database. Run it as root (or as the postgres user) ON THE DATABASE MACHINE,
# with Debian/Ubuntu's postgresql package installed (`apt-get install -y postgresql`). Idempotent:
# run it again to change the password, add a database or open the server to another subnet.
#
#   scripts/cluster/setup_postgres.sh --password SECRET                     # local only
#   scripts/cluster/setup_postgres.sh --password SECRET --listen '*' --allow 10.0.0.0/24
#
# Options (defaults in brackets):
#   --role NAME           login role owning the databases [nbnet]
#   --password PW         its password [$NBNET_PG_PASSWORD; required]
#   --database NAME       a database to create, owned by the role; repeatable [nbnet_optuna nbnet_mlflow]
#   --createdb            let the role create databases (the tests create a fresh pair per run)
#   --listen ADDRS        listen_addresses, e.g. '*' or '10.0.0.5' [unchanged: localhost]
#   --allow CIDR          accept password logins of the role from this network; repeatable
#   --max-connections N   max_connections (each worker holds ~2, each MLflow server worker ~5-10) [unchanged: 100]
#   --stat-statements     load pg_stat_statements (counts statements; used by the capacity measurement)
#
# Prints one line per database: the SQLAlchemy URL to pass to `nbnet sweep --storage` or
# `mlflow server --backend-store-uri` (the host is 127.0.0.1: replace it with this machine's address).
set -euo pipefail

ROLE=nbnet
PASSWORD="${NBNET_PG_PASSWORD:-}"
DATABASES=()
CREATEDB=0
LISTEN=""
ALLOW=()
MAXCONN=""
STATS=0
die() { echo "setup_postgres: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE="$2"; shift 2 ;;
    --password) PASSWORD="$2"; shift 2 ;;
    --database) DATABASES+=("$2"); shift 2 ;;
    --createdb) CREATEDB=1; shift ;;
    --listen) LISTEN="$2"; shift 2 ;;
    --allow) ALLOW+=("$2"); shift 2 ;;
    --max-connections) MAXCONN="$2"; shift 2 ;;
    --stat-statements) STATS=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[ ${#DATABASES[@]} -gt 0 ] || DATABASES=(nbnet_optuna nbnet_mlflow)
[ -n "$PASSWORD" ] || die "no password: pass --password SECRET or set NBNET_PG_PASSWORD"
ident='^[a-z_][a-z0-9_]{0,62}$'
[[ "$ROLE" =~ $ident ]] || die "role name '$ROLE' must match $ident"
for db in "${DATABASES[@]}"; do [[ "$db" =~ $ident ]] || die "database name '$db' must match $ident"; done
command -v pg_lsclusters >/dev/null || die "PostgreSQL is not installed: apt-get install -y postgresql"

# The first cluster Debian's postgresql-common knows about (created by the package install).
read -r PGVER PGNAME PGPORT PGSTATUS _ < <(pg_lsclusters -h | head -n 1) \
  || die "no PostgreSQL cluster: create one with pg_createcluster <version> main"
CONFDIR="/etc/postgresql/$PGVER/$PGNAME"

as_postgres() {
  # (cd /: the postgres user may not be allowed into the caller's directory)
  if [ "$(id -un)" = postgres ]; then (cd / && "$@"); else (cd / && runuser -u postgres -- "$@"); fi
}
psql_admin() {  # psql_admin DB SQL
  as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PGPORT" -d "$1" -tA -c "SET client_min_messages = warning" -c "$2"
}

# --- server settings (a restart is needed for listen/max_connections/preload, a reload for pg_hba)
restart=0
reload=0
CONF="$CONFDIR/conf.d/nbnet.conf"
declare -A SET=()
order=()
setting() { [ -n "${SET[$1]+x}" ] || order+=("$1"); SET[$1]="$2"; }
if [ -f "$CONF" ]; then  # keep what an earlier call wrote and this call does not mention
  while IFS= read -r line; do
    [[ "$line" =~ ^([a-z_.]+)\ =\ (.*)$ ]] && setting "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
  done <"$CONF"
fi
[ -n "$LISTEN" ] && setting listen_addresses "'$LISTEN'"
[ -n "$MAXCONN" ] && setting max_connections "$MAXCONN"
if [ "$STATS" = 1 ]; then
  setting shared_preload_libraries "'pg_stat_statements'"
fi
if [ ${#order[@]} -gt 0 ]; then
  { echo "# written by nbnet scripts/cluster/setup_postgres.sh"
    for k in "${order[@]}"; do echo "$k = ${SET[$k]}"; done; } >"$CONF.tmp"
  if ! cmp -s "$CONF.tmp" "$CONF"; then
    chown postgres:postgres "$CONF.tmp" 2>/dev/null || true
    mv "$CONF.tmp" "$CONF"; restart=1
  else
    rm -f "$CONF.tmp"
  fi
fi
HBA="$CONFDIR/pg_hba.conf"
for cidr in "${ALLOW[@]+"${ALLOW[@]}"}"; do
  line="host    all             $ROLE             $cidr            scram-sha-256"
  if ! grep -qF "$line" "$HBA"; then echo "$line" >>"$HBA"; reload=1; fi
done

status="$(pg_lsclusters -h | awk -v v="$PGVER" -v n="$PGNAME" '$1==v && $2==n {print $4}')"
if [ "$status" != online ]; then
  pg_ctlcluster "$PGVER" "$PGNAME" start
elif [ "$restart" = 1 ]; then
  pg_ctlcluster "$PGVER" "$PGNAME" restart
elif [ "$reload" = 1 ]; then
  pg_ctlcluster "$PGVER" "$PGNAME" reload
fi
pg_isready -q -h 127.0.0.1 -p "$PGPORT" -t 60 || die "PostgreSQL $PGVER/$PGNAME did not accept connections on port $PGPORT within 60 s (see /var/log/postgresql/postgresql-$PGVER-$PGNAME.log)"

# --- role and databases
pw_sql="${PASSWORD//\'/\'\'}"
attrs="LOGIN"
[ "$CREATEDB" = 1 ] && attrs+=" CREATEDB"
if [ "$(psql_admin postgres "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" = 1 ]; then
  psql_admin postgres "ALTER ROLE $ROLE WITH $attrs PASSWORD '$pw_sql'" >/dev/null
else
  psql_admin postgres "CREATE ROLE $ROLE WITH $attrs PASSWORD '$pw_sql'" >/dev/null
fi
# pg_read_all_stats lets the role read pg_stat_statements / pg_stat_activity of every database.
psql_admin postgres "GRANT pg_read_all_stats TO $ROLE" >/dev/null
for db in "${DATABASES[@]}"; do
  if [ "$(psql_admin postgres "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql_admin postgres "CREATE DATABASE $db OWNER $ROLE" >/dev/null
  fi
  if [ "$STATS" = 1 ]; then
    psql_admin "$db" "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
  fi
done

enc_pw="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PASSWORD")"
for db in "${DATABASES[@]}"; do
  echo "postgresql://$ROLE:$enc_pw@127.0.0.1:$PGPORT/$db"
done
