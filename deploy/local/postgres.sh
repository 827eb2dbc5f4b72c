#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for local development (trust auth, loopback only).
# Usage: deploy/local/postgres.sh {start|stop|status}
set -euo pipefail

PG_PORT="${PG_PORT:-15432}"
# Server libraries loaded at start, comma-separated: the bench's --db-statements asks for
# pg_stat_statements. Read when the cluster starts; a running cluster keeps what it has.
PG_PRELOAD_LIBRARIES="${PG_PRELOAD_LIBRARIES:-}"
# on: each commit's time is kept (pg_xact_commit_timestamp), for the bench's --hops breakdown.
PG_TRACK_COMMIT_TIMESTAMP="${PG_TRACK_COMMIT_TIMESTAMP:-off}"
DB_NAME=coxswain
DB_USER=coxswain
DB_PASSWORD=coxswain

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${COXSWAIN_STATE_DIR:-$REPO_ROOT/.local}"
PGDIR="$STATE_DIR/postgres"
DATA="$PGDIR/data"
SOCK="$PGDIR/run"
LOG_FILE="$PGDIR/postgres.log"

die() { echo "postgres: ERROR: $*" >&2; exit 1; }
log() { echo "postgres: $*"; }

# initdb/postgres refuse to run as root: as root, act as the postgres OS user.
as_pg() {
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Debian keeps initdb/pg_ctl out of PATH, under /usr/lib/postgresql/<ver>/bin.
find_bindir() {
  local d
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    # Resolve symlinks (e.g. /usr/local/bin) to find psql next to pg_ctl.
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  # Newest installed major version first.
  while read -r d; do
    [[ -x $d/pg_ctl && -x $d/initdb ]] && { echo "$d"; return 0; }
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  return 1
}

ensure_bindir() {
  if ! BIN="$(find_bindir)"; then
    [[ $EUID -eq 0 ]] \
      || die "PostgreSQL server binaries not found; install them: sudo apt-get install postgresql"
    log "installing Debian's postgresql package..."
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    BIN="$(find_bindir)" || die "postgresql installed but initdb/pg_ctl still not found"
  fi
}

running() {
  [[ -f $DATA/postmaster.pid ]] && as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

init_cluster() {
  if [[ $EUID -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing (apt-get install postgresql creates it)"
    # postgres must be able to reach its dirs under a root-owned tree.
    chown postgres: "$PGDIR"
  fi
  log "initdb in $DATA"
  # Trust on loopback/socket is fine: throwaway cluster, bound to 127.0.0.1 only.
  as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$PGDIR/initdb.log" 2>&1 || { cat "$PGDIR/initdb.log" >&2; die "initdb failed"; }
  echo "include 'coxswain.conf'" >>"$DATA/postgresql.conf"
}

write_config() {
  # Rewritten on each start so PG_PORT overrides apply to an existing cluster.
  as_pg tee "$DATA/coxswain.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 256MB
# Durability is under test: keep fsync and synchronous_commit on.
fsync = on
synchronous_commit = on
shared_preload_libraries = '$PG_PRELOAD_LIBRARIES'
track_commit_timestamp = $PG_TRACK_COMMIT_TIMESTAMP
EOF
}

# A library the server cannot find stops it from starting, with the reason deep in its log.
check_preload_libraries() {
  local lib dir found pkglib=""
  [[ -x $BIN/pg_config ]] && pkglib="$("$BIN/pg_config" --pkglibdir)"
  for lib in ${PG_PRELOAD_LIBRARIES//,/ }; do
    found=""
    for dir in "$BIN/../lib" "$pkglib"; do
      [[ -n $dir && -f $dir/$lib.so ]] && found=1
    done
    [[ -n $found ]] || die "PG_PRELOAD_LIBRARIES: no $lib.so in $BIN/../lib${pkglib:+ or $pkglib}"
  done
}

# Idempotent, so it is also run against an already running cluster.
create_app_db() {
  "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -U postgres -d postgres <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN
    CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $DB_NAME OWNER $DB_USER'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
EOF
}

start() {
  ensure_bindir
  if running; then
    create_app_db
    log "already running on 127.0.0.1:$PG_PORT"
    return 0
  fi
  mkdir -p "$PGDIR"
  [[ -f $DATA/PG_VERSION ]] || init_cluster
  as_pg mkdir -p "$SOCK"
  check_preload_libraries
  [[ $PG_TRACK_COMMIT_TIMESTAMP == on || $PG_TRACK_COMMIT_TIMESTAMP == off ]] \
    || die "PG_TRACK_COMMIT_TIMESTAMP: on or off, not '$PG_TRACK_COMMIT_TIMESTAMP'"
  write_config
  if [[ $EUID -eq 0 ]]; then touch "$LOG_FILE" && chown postgres: "$LOG_FILE"; fi
  as_pg "$BIN/pg_ctl" start -D "$DATA" -l "$LOG_FILE" -w -t 60 >/dev/null \
    || { tail -n 30 "$LOG_FILE" >&2; die "server did not start (see $LOG_FILE)"; }
  create_app_db
  log "ready on 127.0.0.1:$PG_PORT (db $DB_NAME, user $DB_USER)"
}

stop() {
  ensure_bindir
  if ! running; then
    log "not running"
    return 0
  fi
  # fast = roll back open transactions and shut down cleanly (no recovery needed).
  as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >/dev/null
  log "stopped"
}

status() {
  ensure_bindir
  if running; then
    log "running on 127.0.0.1:$PG_PORT"
  else
    log "not running"
    return 1
  fi
}

case "${1:-}" in
  start | stop | status) "$1" ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
