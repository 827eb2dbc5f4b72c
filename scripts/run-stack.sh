#!/usr/bin/env bash
# `make run`: Kafka, PostgreSQL, migrations, topics, every service as its own process and demo
# traffic; then follows the routing and SLA topics until Ctrl-C, which stops the services.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${COXSWAIN_STATE_DIR:-$ROOT/.local}"
RUN="$STATE/run"
COX="$ROOT/.venv/bin/coxswain"
mkdir -p "$RUN/logs"

"$ROOT/deploy/local/stack.sh" up
set -a
eval "$("$ROOT/deploy/local/stack.sh" env)"
set +a

# A demo-only webhook secret, made once per state dir; production reads secrets from the environment.
if [[ ! -s "$RUN/webhook-secret" ]]; then
  echo "whsec_$(head -c 24 /dev/urandom | base64)" >"$RUN/webhook-secret"
fi
secret="$(cat "$RUN/webhook-secret")"
if [[ ! -s "$RUN/admin-token" ]]; then
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$RUN/admin-token"
fi
export COXSWAIN_ADMIN_TOKEN="$(cat "$RUN/admin-token")"
export COXSWAIN_WEBHOOK_SECRETS="{\"webform\": \"$secret\", \"crm\": \"$secret\"}"
export COXSWAIN_AGREEMENT_FILE="${COXSWAIN_AGREEMENT_FILE:-$ROOT/examples/agreement.yaml}"
export COXSWAIN_INTAKE_PORT="${COXSWAIN_INTAKE_PORT:-8080}"
export COXSWAIN_REPORTING_PORT="${COXSWAIN_REPORTING_PORT:-8090}"

"$COX" db upgrade
"$COX" topics create

pids=()
stop_all() {
  trap - EXIT INT TERM
  echo "stopping services..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop_all EXIT INT TERM

for service in intake scoring router sla-monitor reporting roster-api; do
  "$COX" run "$service" >"$RUN/logs/$service.log" 2>&1 &
  pids+=("$!")
done

for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$COXSWAIN_INTAKE_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done

COXSWAIN_DEMO_SECRET="$secret" "$COX" demo traffic --url "http://127.0.0.1:$COXSWAIN_INTAKE_PORT" \
  --rate "${DEMO_RATE:-2}" >"$RUN/logs/demo.log" 2>&1 &
pids+=("$!")

cat <<MSG

Coxswain is running.
  intake        http://127.0.0.1:$COXSWAIN_INTAKE_PORT  (OpenAPI: /docs, health: /readyz)
  dashboard     http://127.0.0.1:$COXSWAIN_REPORTING_PORT/dashboard  (reports: /v1/reports/*, OpenAPI: /docs)
  scorecard     http://127.0.0.1:$COXSWAIN_REPORTING_PORT/scorecard  (this week so far: /scorecard/current)
  service logs  $RUN/logs/{intake,scoring,router,sla-monitor,reporting,roster-api,demo}.log
  database      $COXSWAIN_DATABASE_URL
  roster API    http://127.0.0.1:8081/docs  (bearer token: $RUN/admin-token)
  webhook secret for sources "webform" and "crm": $RUN/webhook-secret
Demo leads arrive every $(awk "BEGIN{print 1/${DEMO_RATE:-2}}") s. A scripted CRM reads leads.routed.v1 and has the
assigned rep touch most leads in time, some only after the deadline and some never (hot leads breach
after 5 minutes), accept or reject them with the agreement's reasons and win or lose a few deals, so
every dashboard panel fills within minutes. Following leads.routed.v1, sla.met.v1 and
sla.breached.v1 below (Ctrl-C stops everything):

MSG
"$COX" demo tail leads.routed.v1 sla.met.v1 sla.breached.v1
