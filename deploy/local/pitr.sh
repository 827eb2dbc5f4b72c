#!/usr/bin/env bash
# Point-in-time recovery for the local PostgreSQL cluster: the procedure docs/operations.md
# describes, as commands (the chaos run's restore scenario uses them).
#
#   deploy/local/pitr.sh stream     start streaming WAL to $STATE/pitr/wal (pg_receivewal, synchronous:
#                                   a commit returns only once its WAL is in the archive)
#   deploy/local/pitr.sh base       take a base backup into $STATE/pitr/base while the cluster runs
#   deploy/local/pitr.sh lose       the disaster: SIGKILL the server and delete its data directory
#   deploy/local/pitr.sh restore    a fresh data directory from the base backup, replaying every
#                                   archived WAL record, then start it and stream again
#   deploy/local/pitr.sh stop       stop streaming
set -euo pipefail

PG_PORT="${PG_PORT:-15432}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${COXSWAIN_STATE_DIR:-$REPO_ROOT/.local}"
PGDIR="$STATE_DIR/postgres"
DATA="$PGDIR/data"
PITR="$STATE_DIR/pitr"
WAL="$PITR/wal"
BASE="$PITR/base"
SLOT=coxswain_archive
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "pitr: ERROR: $*" >&2; exit 1; }
log() { echo "pitr: $*"; }
as_pg() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

BIN="$(dirname "$(readlink -f "$(command -v pg_ctl 2>/dev/null || true)")" 2>/dev/null || true)"
if [[ ! -x $BIN/pg_receivewal ]]; then
  BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r | head -n 1)"
fi
[[ -x $BIN/pg_receivewal ]] || die "pg_receivewal not found (install PostgreSQL's server package)"

sql() { as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"; }

own_pitr_dir() {
  mkdir -p "$PITR"
  if [[ $EUID -eq 0 ]]; then chown postgres: "$PITR"; fi
}

stream() {
  own_pitr_dir
  as_pg mkdir -p "$WAL"
  sql "SELECT pg_create_physical_replication_slot('$SLOT') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT')" >/dev/null
  # --no-loop: it ends with the server instead of reconnecting to whatever comes back.
  as_pg "$BIN/pg_receivewal" -D "$WAL" -h 127.0.0.1 -p "$PG_PORT" -U postgres --slot "$SLOT" --synchronous --no-loop \
    >>"$PITR/receivewal.log" 2>&1 &
  echo $! >"$PITR/receivewal.pid"
  for _ in $(seq 1 100); do
    if [[ $(sql "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg_receivewal' AND state = 'streaming'") == 1 ]]; then
      # Commits wait for the archive's flush: nothing acknowledged can be missing from it.
      sql "ALTER SYSTEM SET synchronous_standby_names = 'pg_receivewal'" && sql "SELECT pg_reload_conf()" >/dev/null
      log "streaming WAL to $WAL (synchronous)"
      return 0
    fi
    sleep 0.1
  done
  die "pg_receivewal did not start streaming (see $PITR/receivewal.log)"
}

stop_stream() {
  if [[ -f $PITR/receivewal.pid ]]; then
    kill "$(cat "$PITR/receivewal.pid")" 2>/dev/null || true
    rm -f "$PITR/receivewal.pid"
  fi
}

base() {
  own_pitr_dir
  as_pg rm -rf "$BASE"
  # -X stream: the backup holds the WAL it needs to be consistent; the archive holds the rest.
  as_pg "$BIN/pg_basebackup" -D "$BASE" -h 127.0.0.1 -p "$PG_PORT" -U postgres -X stream -c fast
  log "base backup in $BASE"
}

lose() {
  local pid
  pid="$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)"
  [[ -n $pid ]] || die "no running server in $DATA"
  kill -KILL "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  # Its children notice the postmaster is gone and exit within moments.
  sleep 1
  rm -rf "$DATA"
  log "server killed, data directory deleted"
}

restore() {
  [[ -f $BASE/PG_VERSION ]] || die "no base backup in $BASE"
  [[ ! -e $DATA ]] || die "$DATA exists: restore goes into a fresh data directory"
  stop_stream
  as_pg cp -a "$BASE" "$DATA"
  # The segment being written when the server died is kept as .partial: recovery reads it under
  # its own name. A copy, so the archive stays as it was.
  as_pg rm -rf "$PITR/replay" && as_pg cp -a "$WAL" "$PITR/replay"
  for partial in "$PITR"/replay/*.partial; do
    [[ -e $partial ]] && as_pg mv "$partial" "${partial%.partial}"
  done
  # Replay everything archived, then open for writes on a new timeline. The restored cluster must
  # not wait for a synchronous archive that is not streaming yet.
  as_pg sed -i '/synchronous_standby_names/d' "$DATA/postgresql.auto.conf"
  # hot_standby off: no service connects before the end of recovery (it would meet a read-only
  # database and count its writes as failures).
  as_pg tee -a "$DATA/postgresql.auto.conf" >/dev/null <<EOF
restore_command = 'cp $PITR/replay/%f %p'
recovery_target_timeline = 'latest'
hot_standby = off
EOF
  as_pg touch "$DATA/recovery.signal"
  as_pg "$BIN/pg_ctl" start -D "$DATA" -l "$PGDIR/postgres.log" -W >/dev/null
  # pg_ctl's own wait can end before the replay does: wait until it accepts writes.
  for _ in $(seq 1 3000); do
    [[ $(sql "SELECT NOT pg_is_in_recovery()" 2>/dev/null) == t ]] && break
    sleep 0.2
  done
  [[ $(sql "SELECT NOT pg_is_in_recovery()") == t ]] || die "recovery did not finish (see $PGDIR/postgres.log)"
  "$HERE/postgres.sh" start
  # The recovery settings have done their work; a later start must not look for them again.
  as_pg sed -i '/^restore_command\|^recovery_target_timeline\|^hot_standby/d' "$DATA/postgresql.auto.conf"
  log "restored from $BASE and $(find "$PITR/replay" -type f | wc -l) WAL segments"
  as_pg rm -rf "$WAL" && stream
}

case "${1:-}" in
  stream) stream ;;
  base) base ;;
  lose) lose ;;
  restore) restore ;;
  stop) stop_stream ;;
  *) echo "usage: $0 {stream|base|lose|restore|stop}" >&2; exit 2 ;;
esac
