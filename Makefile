# The two commands: `make run` (whole stack + demo traffic) and `make test` (whole suite).
.PHONY: run test unit lint typecheck schemas stop clean chaos chaos-restore bench bench-quick soak

VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh

run: $(VENV)/.installed
	scripts/run-stack.sh

# Tests start their own Kafka and PostgreSQL (separate ports and state dir from `make run`); then
# the CI-sized chaos run (its own stack again) must report zero lost, duplicated or missed, and so
# must the restore run.
test: $(VENV)/.installed
	$(MAKE) --no-print-directory lint typecheck schemas
	$(PY) -m pytest -p no:cacheprovider
	$(MAKE) --no-print-directory chaos
	$(MAKE) --no-print-directory chaos-restore

unit: $(VENV)/.installed
	$(PY) -m pytest -p no:cacheprovider tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

schemas: $(VENV)/.installed
	$(VENV)/bin/coxswain schemas generate --check

# Leads through the running stack while services, the broker and the database are killed; then a
# ledger of what survived. Own stack under .local/chaos (ports from CHAOS_PORT_BASE, default 24500).
# CHAOS_LEADS=100000 make chaos is the full run (docs/chaos.md).
chaos: $(VENV)/.installed
	$(PY) -m chaos

# The database lost while leads flow and restored from a base backup taken during the load plus the
# WAL streamed since (deploy/local/pitr.sh); the same ledger must read zero. Own stack under
# .local/chaos-restore (docs/operations.md#backup-and-restore).
chaos-restore: $(VENV)/.installed
	$(PY) -m chaos --scenario restore --leads $${CHAOS_RESTORE_LEADS:-1500}

# Throughput, latency and timer lag against baselines measured in the same run; the last line of
# output is one JSON object (docs/benchmarks.md). Own stack under .local/bench (ports from
# COXSWAIN_BENCH_PORT_BASE, default 22000). Never part of `make test`.
bench: $(VENV)/.installed
	$(PY) -m bench

bench-quick: $(VENV)/.installed
	$(PY) -m bench --quick

# A steady rate (SOAK_RATE leads/s, default 20) for SOAK_MINUTES (default 30) with retention on at
# a scale of minutes; per 5-minute window the memory of every process, table sizes, the outbox
# backlog and webhook -> routed p99, then a verdict (memory flat, tables bounded) and one JSON
# line. Own stack under .local/soak (ports from SOAK_PORT_BASE, default 25500); result in
# .local/soak/result.json (docs/operations.md). Never part of `make test`.
soak: $(VENV)/.installed
	$(PY) -m chaos.soak

stop:
	deploy/local/stack.sh down
	for dir in .local/test-*; do \
	  [ -d "$$dir" ] || continue; base=$${dir##*-}; \
	  COXSWAIN_STATE_DIR=$(CURDIR)/$$dir KAFKA_PORT=$$((base + 92)) KAFKA_CONTROLLER_PORT=$$((base + 93)) \
	    PG_PORT=$$((base + 432)) deploy/local/stack.sh down; \
	done

clean: stop
	rm -rf .local
