#!/usr/bin/env bash
# Local dev stack for Coxswain: PostgreSQL + Kafka.
# Usage: deploy/local/stack.sh {up|down|status|env}
# `env` prints NAME=value lines (dotenv style). To use them in a shell:
#   set -a; eval "$(deploy/local/stack.sh env)"; set +a
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_PORT="${KAFKA_PORT:-19092}"
PG_PORT="${PG_PORT:-15432}"
export KAFKA_PORT PG_PORT   # same ports for the child scripts and for `env`

case "${1:-}" in
  up)
    "$HERE/postgres.sh" start
    "$HERE/kafka.sh" start
    ;;
  down)
    # Stop both even if one fails.
    rc=0
    "$HERE/kafka.sh" stop || rc=$?
    "$HERE/postgres.sh" stop || rc=$?
    exit "$rc"
    ;;
  status)
    rc=0
    "$HERE/postgres.sh" status || rc=1
    "$HERE/kafka.sh" status || rc=1
    exit "$rc"
    ;;
  env)
    echo "COXSWAIN_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT"
    echo "COXSWAIN_KAFKA_SESSION_TIMEOUT_MS=1500"
    echo "COXSWAIN_DATABASE_URL=postgresql+asyncpg://coxswain:coxswain@127.0.0.1:$PG_PORT/coxswain"
    ;;
  *)
    echo "usage: $0 {up|down|status|env}" >&2
    exit 2
    ;;
esac
