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
# The local CRMs' demo-only API token and the local HubSpot app's client secret (signs its webhooks).
for name in crm-token hubspot-client-secret; do
  if [[ ! -s "$RUN/$name" ]]; then
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$RUN/$name"
  fi
done
crm_token="$(cat "$RUN/crm-token")"
hubspot_secret="$(cat "$RUN/hubspot-client-secret")"
export COXSWAIN_WEBHOOK_SECRETS="{\"webform\": \"$secret\", \"crm\": \"$secret\"}"
export COXSWAIN_AGREEMENT_FILE="${COXSWAIN_AGREEMENT_FILE:-$ROOT/examples/agreement.yaml}"
export COXSWAIN_INTAKE_PORT="${COXSWAIN_INTAKE_PORT:-8080}"
export COXSWAIN_REPORTING_PORT="${COXSWAIN_REPORTING_PORT:-8090}"
HUBSPOT_PORT="${COXSWAIN_DEMO_HUBSPOT_PORT:-8093}"
SALESFORCE_PORT="${COXSWAIN_DEMO_SALESFORCE_PORT:-8094}"
HUBSPOT_URL="http://127.0.0.1:$HUBSPOT_PORT"
SALESFORCE_URL="http://127.0.0.1:$SALESFORCE_PORT"
# Intake verifies the local HubSpot's webhooks (source "hubspot") and reads the calls they name.
export COXSWAIN_SENDER_SECRETS="{\"hubspot\": \"$hubspot_secret\"}"
export COXSWAIN_HUBSPOT_API_URL="$HUBSPOT_URL"
export COXSWAIN_HUBSPOT_API_TOKEN="$crm_token"

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

# Local HubSpot and Salesforce (coxswain/demo_crm: the API subset Coxswain uses, in memory), one
# crm-sync per connection writing owners and tasks into them; the Salesforce one also polls the
# reps' calls back. The local HubSpot posts the calls logged in it to intake, signed.
COXSWAIN_DEMO_CRM_TOKEN="$crm_token" COXSWAIN_DEMO_HUBSPOT_CLIENT_SECRET="$hubspot_secret" "$COX" demo crm hubspot \
  --port "$HUBSPOT_PORT" --webhook-url "http://127.0.0.1:$COXSWAIN_INTAKE_PORT/v1/webhooks/hubspot/hubspot/crm-events" \
  >"$RUN/logs/crm-hubspot.log" 2>&1 &
pids+=("$!")
COXSWAIN_DEMO_CRM_TOKEN="$crm_token" "$COX" demo crm salesforce --port "$SALESFORCE_PORT" \
  >"$RUN/logs/crm-salesforce.log" 2>&1 &
pids+=("$!")
for url in "$HUBSPOT_URL" "$SALESFORCE_URL"; do
  for _ in $(seq 1 60); do
    curl -fsS "$url/demo/records" >/dev/null 2>&1 && break
    sleep 0.5
  done
done
COXSWAIN_CRM_KIND=hubspot COXSWAIN_CRM_CONNECTION=hubspot COXSWAIN_CRM_BASE_URL="$HUBSPOT_URL" \
  COXSWAIN_CRM_TOKEN="$crm_token" "$COX" run crm-sync >"$RUN/logs/crm-sync-hubspot.log" 2>&1 &
pids+=("$!")
COXSWAIN_CRM_KIND=salesforce COXSWAIN_CRM_CONNECTION=salesforce COXSWAIN_CRM_BASE_URL="$SALESFORCE_URL" \
  COXSWAIN_CRM_TOKEN="$crm_token" COXSWAIN_CRM_SALESFORCE_POLL_SECONDS="${DEMO_SALESFORCE_POLL_SECONDS:-2}" \
  "$COX" run crm-sync >"$RUN/logs/crm-sync-salesforce.log" 2>&1 &
pids+=("$!")

for _ in $(seq 1 60); do
  curl -fsS "http://127.0.0.1:$COXSWAIN_INTAKE_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done

COXSWAIN_DEMO_SECRET="$secret" COXSWAIN_DEMO_CRM_TOKEN="$crm_token" "$COX" demo traffic \
  --url "http://127.0.0.1:$COXSWAIN_INTAKE_PORT" --rate "${DEMO_RATE:-2}" \
  --hubspot-url "$HUBSPOT_URL" --salesforce-url "$SALESFORCE_URL" >"$RUN/logs/demo.log" 2>&1 &
pids+=("$!")

cat <<MSG

Coxswain is running.
  intake        http://127.0.0.1:$COXSWAIN_INTAKE_PORT  (OpenAPI: /docs, health: /readyz)
  dashboard     http://127.0.0.1:$COXSWAIN_REPORTING_PORT/dashboard  (reports: /v1/reports/*, OpenAPI: /docs)
  scorecard     http://127.0.0.1:$COXSWAIN_REPORTING_PORT/scorecard  (this week so far: /scorecard/current)
  service logs  $RUN/logs/{intake,scoring,router,sla-monitor,reporting,roster-api,demo}.log
  local HubSpot     $HUBSPOT_URL/demo/records  (contacts with their owner, tasks, the reps' calls)
  local Salesforce  $SALESFORCE_URL/demo/records  (Leads with their owner, tasks, the reps' Call tasks)
  CRM connectors    $RUN/logs/crm-sync-{hubspot,salesforce}.log  (CRM servers: $RUN/logs/crm-{hubspot,salesforce}.log)
  database      $COXSWAIN_DATABASE_URL
  roster API    http://127.0.0.1:8081/docs  (bearer token: $RUN/admin-token)
  webhook secret for sources "webform" and "crm": $RUN/webhook-secret
Demo leads arrive every $(awk "BEGIN{print 1/${DEMO_RATE:-2}}") s. A scripted CRM reads leads.routed.v1 and has the
assigned rep touch most leads in time, some only after the deadline and some never (hot leads breach
after 5 minutes), accept or reject them with the agreement's reasons and win or lose a few deals, so
every dashboard panel fills within minutes. About a third of the first touches are calls the rep logs
in the local HubSpot (its webhook reaches intake) and a third are Call tasks completed in the local
Salesforce (crm-sync polls them back); the rest, and every later step, go to intake directly. Following leads.routed.v1, sla.met.v1 and
sla.breached.v1 below (Ctrl-C stops everything):

MSG
"$COX" demo tail leads.routed.v1 sla.met.v1 sla.breached.v1
