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
    # PostgreSQL runs on this machine: connect through its Unix socket (the directory postgres.sh
    # gives it), not TCP over loopback. Every statement is a round trip, and a socket round trip
    # costs the service, the server and the kernel less CPU: about a tenth of a lead's CPU on the
    # local stack (docs/benchmarks.md). A database on another host is reached over TCP as usual.
    state_dir="${COXSWAIN_STATE_DIR:-$(cd "$HERE/../.." && pwd)/.local}"
    case "$state_dir" in /*) ;; *) state_dir="$PWD/$state_dir" ;; esac  # a socket is a path, not a host
    # Quoted: the value holds '?' and '&', which a shell's eval must not read.
    echo "COXSWAIN_DATABASE_URL='postgresql+asyncpg://coxswain:coxswain@/coxswain?host=$state_dir/postgres/run&port=$PG_PORT'"
    ;;
  *)
    echo "usage: $0 {up|down|status|env}" >&2
    exit 2
    ;;
esac
