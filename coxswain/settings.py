"""Configuration, one slice per adapter, read from ``COXSWAIN_*`` environment variables.

Slices are built in the entry point and passed down; nothing reads the environment at import.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "COXSWAIN_"


class Slice(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)


class KafkaConfig(Slice):
    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    kafka_client_id: str = "coxswain"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_topic_partitions: int = Field(default=6, ge=1)
    kafka_topic_replication: int = Field(default=1, ge=1)
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=500,
        le=300_000,
        description="How soon a consumer that died (SIGKILL, lost host) loses its partitions to the others. "
        "Below the broker's group.min.session.timeout.ms (6000 by default) the group refuses the consumer; "
        "the local stack allows 1000 and runs with 1500 (docs/event-path.md).",
    )
    kafka_instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A name stable across restarts of this instance (a StatefulSet pod's name): its consumers "
        "join as static members and get their partitions back on restart without a rebalance. Unique per "
        "instance; a stopped static member keeps its partitions until the session timeout.",
    )


class RetentionConfig(Slice):
    inbox_retention_days: float = Field(
        default=14,
        gt=0,
        description="Dedupe records (inbox, webhook ids) older than this are pruned; refused unless longer than "
        "the consumed topics' retention.ms plus a day (coxswain/core/retention.py).",
    )
    retention_margin_hours: float = Field(
        default=24,
        gt=0,
        description="How much longer than the topics' retention dedupe records are kept (clock skew, a broker "
        "deleting segments late). Lower it only for a test stack whose topics keep minutes.",
    )
    alert_retention_days: float = Field(default=30, gt=0, description="Delivered or failed SLA alerts kept this long.")
    clock_retention_days: float = Field(
        default=30,
        gt=0,
        description="Decided SLA deadlines (met, breached, cancelled) and their fired or cancelled timers kept this "
        "long; reports read the facts, not these rows.",
    )
    crm_write_retention_days: float = Field(
        default=30,
        gt=0,
        description="crm_writes rows whose task was closed (reassigned, released) kept this long; an open task's row "
        "stays while the lead keeps its owner.",
    )
    fact_retention_months: int = Field(
        default=13,
        ge=1,
        description="Months of lead_facts (lead timelines) and intake_events kept; older months are dropped whole "
        "(monthly partitions, coxswain/core/partitions.py).",
    )
    report_retention_months: int = Field(
        default=25,
        ge=1,
        description="Months of report_facts kept; a dropped month's counts stay in report_history "
        "(GET /v1/reports/history).",
    )
    prune_every_seconds: float = Field(
        default=3600, gt=0, description="How often a running service prunes (one process at a time)."
    )


class OutboxConfig(Slice):
    outbox_lease_seconds: float = Field(
        default=3.0,
        ge=1.0,
        le=60.0,
        description="How long a relay holds its outbox buckets without renewing; a stalled relay's share "
        "is taken over after this (docs/event-path.md).",
    )
    outbox_relay_standby: bool | None = Field(
        default=None,
        description="A standby relay publishes only while no full relay is alive; full relays share the "
        "buckets among themselves. Unset: the process decides, a standby where its own loop is on a lead's "
        "way to its rep (intake, and consumers that fetch each record at once: scoring, crm-sync; the router "
        "when scoring does not route inline), a full relay elsewhere (docs/event-path.md).",
    )
    outbox_failpoint: Literal["", "after_publish"] = Field(
        default="",
        description="Crash tests only: hang after publishing a batch, before deleting it, so a test can kill the relay there.",
    )


class DatabaseConfig(Slice):
    database_url: str = "postgresql+asyncpg://coxswain:coxswain@127.0.0.1:15432/coxswain"
    database_pool_size: int = Field(default=5, ge=1)
    database_idle_in_transaction_seconds: float = Field(
        default=5.0,
        ge=0,
        description="PostgreSQL ends a session that sits this long inside a transaction (a frozen or "
        "paused process), releasing its row and advisory locks so other instances carry on; 0: never.",
    )
    database_pool_pre_ping: bool = Field(
        default=False,
        description="Test every pooled connection with a round trip before use. Off: a connection a "
        "database restart broke fails its first statement instead, the pool is invalidated, and the "
        "work is retried (a consumer batch is redelivered, a webhook answered 503 with Retry-After).",
    )


class AgreementConfig(Slice):
    agreement_file: Path = Path("examples/agreement.yaml")
    agreement_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often a service checks for a newly activated agreement version."
    )


class ScoringConfig(Slice):
    scoring_timer_max_sleep_seconds: float = Field(default=1.0, gt=0)
    scoring_timer_claim_batch: int = Field(default=500, ge=1)
    scoring_routes_inline: bool = Field(
        default=True,
        description="Route the leads a scoring batch qualifies in the same transaction (one hop fewer to a rep); "
        "the router still consumes leads.qualified.v1 and skips what was routed so.",
    )


class AdminConfig(Slice):
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token named 'admin' with every scope (coxswain/access.py); with no token configured, "
        "the admin, lead and roster endpoints refuse (403).",
    )
    tokens: SecretStr | None = Field(
        default=None,
        description='More named tokens with scopes, JSON: {"name": {"token": "...", "scopes": ["roster:write"]}}.',
    )
    tokens_file: Path | None = Field(default=None, description="The same JSON table in a file (a mounted secret).")


class ConsumerConfig(Slice):
    consumer_max_batch: int = Field(default=500, ge=1)
    consumer_handler_retries: int = Field(default=3, ge=0)
    consumer_gather_ms: int | None = Field(
        default=None,
        ge=0,
        le=5000,
        description="How long records may gather before this consumer fetches them (0: at once). Unset: the "
        "service's own choice, 0 for scoring and crm-sync, 100 ms for the router while scoring routes inline "
        "(else 0), 250 ms for the SLA monitor and reporting (docs/event-path.md).",
    )
    consumer_stall_seconds: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="A consumer whose loop has not come round, or whose group has not finished a rebalance, for this "
        "long (while Kafka and PostgreSQL answer) is stopped and started again, logged as an error with where it "
        "was stuck, counted in coxswain_consumer_stalls_total and reported by /readyz (docs/runbook.md).",
    )
    consumer_failpoint: Literal["", "before_db_commit", "after_db_commit"] = Field(
        default="",
        description="Crash tests only: hang at this point of the first batch so a test can SIGKILL the process there.",
    )


class IntakeConfig(Slice):
    intake_host: str = "127.0.0.1"
    intake_port: int = 8080
    webhook_secrets: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description='JSON: source -> active secrets, e.g. {"hubspot": ["whsec_..."]}; several allow rotation.',
    )
    webhook_tolerance_seconds: int = Field(default=300, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_events: int = Field(default=500, ge=1)
    webhook_secrets_file: Path | None = Field(
        default=None,
        description="JSON file like COXSWAIN_WEBHOOK_SECRETS (e.g. a mounted secret); merged with it at start.",
    )
    rate_limit_per_source: float = Field(
        default=0, ge=0, description="Webhooks per second per source (token bucket, per intake instance); 0: no limit."
    )
    rate_limit_burst: int = Field(default=0, ge=0, description="Bucket size; 0: one second of the rate (at least 1).")

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _one_secret_is_a_list(cls, value: object) -> object:
        if isinstance(value, dict):
            return {source: [s] if isinstance(s, str) else s for source, s in value.items()}
        return value


class SlaConfig(Slice):
    sla_max_sleep_seconds: float = Field(default=1.0, gt=0)
    sla_claim_batch: int = Field(default=1000, ge=1)
    sla_pacing_interval_seconds: float = Field(default=60.0, gt=0, description="How often MQL pacing is checked.")
    sla_default_metrics_port: int = Field(
        default=9102, ge=0, le=65535, description="The monitor's /metrics when COXSWAIN_METRICS_PORT is unset; 0: off."
    )
    alert_webhook_url: str | None = Field(default=None, description="POST every SLA alert here (optional).")
    alert_webhook_format: Literal["json", "slack"] = Field(
        default="json", description="json: the fact as generic JSON; slack: a Slack-compatible {text} message."
    )
    alert_webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    alert_webhook_max_attempts: int = Field(default=12, ge=1, description="Then the alert is marked failed.")
    sla_failpoint_pass: int = Field(
        default=0,
        ge=0,
        description="Crash tests only: hang before committing the Nth timer pass that fires anything (0: never).",
    )


class SendersConfig(Slice):
    """Native formats of marketing tools (HubSpot, Marketo, any mapped form); see docs/senders.md."""

    senders_file: Path | None = Field(
        default=None, description="YAML: field mapping per source for /v1/webhooks/{source}/mapped (and overrides)."
    )
    intake_public_url: str | None = Field(
        default=None,
        description="The URL senders post to, e.g. https://leads.example.com; HubSpot signs the full URL it called.",
    )
    sender_secrets: dict[str, list[SecretStr]] = Field(
        default_factory=dict,
        description='JSON: source -> HubSpot client secret(s) or shared token(s), e.g. {"hubspot": "..."}.',
    )

    @field_validator("sender_secrets", mode="before")
    @classmethod
    def _one_sender_secret_is_a_list(cls, value: object) -> object:
        if isinstance(value, dict):
            return {source: [s] if isinstance(s, str) else s for source, s in value.items()}
        return value


class HubSpotActivitiesConfig(Slice):
    """HubSpot webhook subscriptions read back as CRM activities (docs/integrators.md, "HubSpot activities")."""

    hubspot_api_url: str = Field(default="https://api.hubapi.com", description="HubSpot's API root (reads only).")
    hubspot_api_token: SecretStr | None = Field(
        default=None,
        description="Private app token with crm.objects.contacts.read and crm.objects.deals.read: intake reads "
        "the engagement or deal a webhook event names. Unset: engagement and deal events are answered 503.",
    )
    hubspot_api_token_file: Path | None = Field(
        default=None, description="A file holding the token (a mounted secret)."
    )
    hubspot_api_timeout_seconds: float = Field(
        default=3.0, gt=0, le=30, description="Per read; HubSpot waits 5 s for the webhook's answer."
    )
    hubspot_activity_mapping_file: Path | None = Field(
        default=None,
        description="YAML or JSON: which lead statuses, lifecycle stages, deal stages and engagements report which "
        "activity; unset: the defaults of docs/integrators.md.",
    )
    hubspot_crm_connection: str = Field(
        default="hubspot",
        description="The crm-sync connection (COXSWAIN_CRM_CONNECTION) whose crm_writes name the contacts' leads.",
    )
    hubspot_lead_sources: list[str] = Field(
        default_factory=list,
        description="Lead sources whose external_id is the HubSpot contact id (the HubSpot sender's sources); "
        "empty: the webhook's own source.",
    )


class ObservabilityConfig(Slice):
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus /metrics on this port (consumer services)."
    )
    log_format: Literal["text", "json"] = "text"


class ReportingConfig(Slice):
    reporting_host: str = "127.0.0.1"
    reporting_port: int = Field(default=8090, ge=1, le=65535)
    reporting_timezone: str = Field(default="UTC", description="Periods (day, week, month) start at midnight here.")
    reports_require_token: bool = Field(
        default=False,
        description="Reports API, scorecards and dashboard only for a token with scope reports:read "
        "(Bearer, or the token as the HTTP Basic password in a browser); /healthz and /readyz stay open.",
    )
    scorecard_cadence: Literal["day", "week", "month"] = Field(
        default="week", description="One scorecard per period; weeks start on Monday at midnight in the time zone."
    )
    scorecard_grace_seconds: float = Field(
        default=300, ge=0, description="Wait this long after a period ends, so late facts are in, then issue it."
    )
    scorecard_check_seconds: float = Field(default=60, gt=0, description="How often reporting looks for a due period.")
    scorecard_catch_up: int = Field(
        default=12, ge=1, le=1000, description="Most periods missed during downtime issued late (the latest ones)."
    )


class DeploymentConfig(Slice):
    env: Literal["development", "production"] = Field(
        default="development",
        description="production: refuse to start with a missing, empty or placeholder secret or admin token.",
    )


class HealthConfig(Slice):
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(
        default=None, ge=1, le=65535, description="Consumer services: serve /healthz and /readyz here; unset: off."
    )


class RouterConfig(Slice):
    router_retry_seconds: float = Field(default=5.0, gt=0, description="How often parked leads are retried.")
    router_retry_batch: int = Field(default=500, ge=1, description="Most parked leads tried per pass, oldest first.")


class RosterApiConfig(Slice):
    roster_api_host: str = "127.0.0.1"
    roster_api_port: int = Field(default=8081, ge=1, le=65535)


class CrmSyncConfig(Slice):
    """``coxswain run crm-sync``: one process per CRM connection (docs/integrators.md#hubspot,
    docs/integrators.md#salesforce)."""

    crm_kind: Literal["hubspot", "salesforce"] = Field(
        default="hubspot", description="The CRM this connector writes to."
    )
    crm_connection: str = Field(
        default="hubspot",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
        description="Names this CRM connection (one process per CRM account): its consumer group and inbox are "
        "crm_sync.<name> and its rows in crm_writes carry it.",
    )
    crm_base_url: str = Field(
        default="https://api.hubapi.com",
        description="The CRM's API root; for Salesforce the org's instance URL (https://<my-domain>.my.salesforce.com), "
        "unless the client-credentials flow supplies it.",
    )
    crm_token: SecretStr | None = Field(
        default=None, description="HubSpot private app access token, or a Salesforce OAuth 2.0 access token (Bearer)."
    )
    crm_token_file: Path | None = Field(
        default=None, description="The token in a file (a mounted secret); used when COXSWAIN_CRM_TOKEN is unset."
    )
    crm_max_attempts: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Tries per request (429, 5xx, connection errors), then the record is dead-lettered.",
    )
    crm_backoff_seconds: float = Field(
        default=0.5, gt=0, description="First wait after a 5xx or connection error; doubles."
    )
    crm_max_backoff_seconds: float = Field(default=20.0, gt=0, description="Longest wait between two tries.")
    crm_max_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A Retry-After longer than this is not waited out inside the batch: the batch is given back "
        "and redelivered, and nothing is sent to the CRM before Retry-After expires.",
    )
    crm_request_timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="Per HTTP request.")
    crm_max_batch: int = Field(
        default=20,
        ge=1,
        le=500,
        description="Most records per consumer batch (one transaction, held while the CRM is called for each).",
    )
    crm_salesforce_api_version: str = Field(
        default="v60.0", pattern=r"^v[0-9]{2,3}\.0$", description="Salesforce REST API version in request paths."
    )
    crm_salesforce_lead_external_id_field: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,36}__c$",
        description="A Lead external-id field holding the Coxswain lead id: Leads are upserted on it. Unset: Leads "
        "are found by Email (SOQL) and created when none matches.",
    )
    crm_salesforce_task_assignment_field: str = Field(
        default="Coxswain_Assignment_Id__c",
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,36}__c$",
        description="The Task custom field holding the assignment id: the task's idempotency key.",
    )
    crm_salesforce_task_open_status: str = Field(
        default="Not Started", min_length=1, description="Task Status of a new task (a value of the org's picklist)."
    )
    crm_salesforce_task_closed_status: str = Field(
        default="Completed", min_length=1, description="Task Status a reassignment or a release sets (a closed value)."
    )
    crm_salesforce_client_id: str | None = Field(
        default=None,
        description="Connected app consumer key: with the secret, crm-sync gets its token by the OAuth 2.0 "
        "client-credentials flow (and renews it after a 401) instead of COXSWAIN_CRM_TOKEN.",
    )
    crm_salesforce_client_secret: SecretStr | None = Field(default=None, description="Connected app consumer secret.")
    crm_salesforce_poll_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How often crm-sync polls Salesforce for Task, Event, Lead and Opportunity changes and "
        "publishes them to crm.activities.v1; 0: no polling.",
    )
    crm_salesforce_poll_lookback_seconds: float = Field(
        default=3600.0, ge=0, description="Where a connection's first poll starts: this long before it starts."
    )
    crm_salesforce_poll_overlap_seconds: float = Field(
        default=120.0,
        ge=0,
        description="Each poll reads again this far behind its cursor (a change committed late keeps an earlier "
        "SystemModstamp); activities already published are recognised by their keys.",
    )
    crm_salesforce_first_touch_task_subtypes: list[str] = Field(
        default=["Call", "Email"], description="Closed Tasks of these TaskSubtype values are a first touch."
    )
    crm_salesforce_automated_email_task_subtypes: list[str] = Field(
        default=["ListEmail"],
        description="Closed Tasks of these TaskSubtype values are automated_email (a response only if the "
        "agreement's SLA policy counts it).",
    )
    crm_salesforce_events_are_first_touch: bool = Field(
        default=True, description="An Event (a meeting booked) by a rep is a first touch."
    )
    crm_salesforce_sal_accepted_statuses: list[str] = Field(
        default=["Working - Contacted"], description="Lead Status values that mean sales accepted the lead (SAL)."
    )
    crm_salesforce_sal_rejected_statuses: dict[str, str] = Field(
        default_factory=dict,
        description="Lead Status values that mean sales rejected the lead, each with its rejection reason code "
        '(JSON, e.g. {"Closed - Not Converted": "no-response"}); codes from the agreement\'s rejection_reasons.',
    )
    crm_salesforce_rejection_reason_field: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,36}(__c)?$",
        description="A Lead field holding the rejection reason code; when filled it overrides the status's code.",
    )
    crm_salesforce_login_url: str | None = Field(
        default=None,
        description="Where the client-credentials token is asked for (POST <url>/services/oauth2/token): the org's "
        "My Domain URL. Unset: COXSWAIN_CRM_BASE_URL.",
    )


ALL_SLICES: tuple[type[Slice], ...] = (
    KafkaConfig,
    DatabaseConfig,
    AgreementConfig,
    ScoringConfig,
    AdminConfig,
    ConsumerConfig,
    IntakeConfig,
    SlaConfig,
    DeploymentConfig,
    HealthConfig,
    SendersConfig,
    ObservabilityConfig,
    ReportingConfig,
    RouterConfig,
    RosterApiConfig,
    CrmSyncConfig,
)


def environment_variable_names() -> frozenset[str]:
    return frozenset(PREFIX + name.upper() for config in ALL_SLICES for name in config.model_fields)


class Settings:
    """Every slice one process uses, each read from the environment once, when first asked for.

    The entry point builds one and passes it down, so a process does not read the environment
    again halfway through (and a test can hand a process settings of its own)."""

    @cached_property
    def kafka(self) -> KafkaConfig:
        return KafkaConfig()

    @cached_property
    def database(self) -> DatabaseConfig:
        return DatabaseConfig()

    @cached_property
    def agreement(self) -> AgreementConfig:
        return AgreementConfig()

    @cached_property
    def scoring(self) -> ScoringConfig:
        return ScoringConfig()

    @cached_property
    def admin(self) -> AdminConfig:
        return AdminConfig()

    @cached_property
    def consumer(self) -> ConsumerConfig:
        return ConsumerConfig()

    @cached_property
    def intake(self) -> IntakeConfig:
        return IntakeConfig()

    @cached_property
    def hubspot_activities(self) -> HubSpotActivitiesConfig:
        return HubSpotActivitiesConfig()

    @cached_property
    def sla(self) -> SlaConfig:
        return SlaConfig()

    @cached_property
    def senders(self) -> SendersConfig:
        return SendersConfig()

    @cached_property
    def observability(self) -> ObservabilityConfig:
        return ObservabilityConfig()

    @cached_property
    def reporting(self) -> ReportingConfig:
        return ReportingConfig()

    @cached_property
    def deployment(self) -> DeploymentConfig:
        return DeploymentConfig()

    @cached_property
    def health(self) -> HealthConfig:
        return HealthConfig()

    @cached_property
    def router(self) -> RouterConfig:
        return RouterConfig()

    @cached_property
    def roster_api(self) -> RosterApiConfig:
        return RosterApiConfig()

    @cached_property
    def crm_sync(self) -> CrmSyncConfig:
        return CrmSyncConfig()

    @cached_property
    def retention(self) -> RetentionConfig:
        return RetentionConfig()

    @cached_property
    def outbox(self) -> OutboxConfig:
        return OutboxConfig()
