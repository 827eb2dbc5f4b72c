"""Configuration, one slice per adapter, read from ``COXSWAIN_*`` environment variables.

Slices are built in the entry point and passed down; nothing reads the environment at import.
"""

from __future__ import annotations

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


class DatabaseConfig(Slice):
    database_url: str = "postgresql+asyncpg://coxswain:coxswain@127.0.0.1:15432/coxswain"
    database_pool_size: int = Field(default=5, ge=1)


class AgreementConfig(Slice):
    agreement_file: Path = Path("examples/agreement.yaml")


class ConsumerConfig(Slice):
    consumer_max_batch: int = Field(default=500, ge=1)
    consumer_handler_retries: int = Field(default=3, ge=0)
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

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _one_secret_is_a_list(cls, value: object) -> object:
        if isinstance(value, dict):
            return {source: [s] if isinstance(s, str) else s for source, s in value.items()}
        return value


class SlaConfig(Slice):
    sla_max_sleep_seconds: float = Field(default=1.0, gt=0)
    sla_claim_batch: int = Field(default=1000, ge=1)


ALL_SLICES: tuple[type[Slice], ...] = (
    KafkaConfig,
    DatabaseConfig,
    AgreementConfig,
    ConsumerConfig,
    IntakeConfig,
    SlaConfig,
)


def environment_variable_names() -> frozenset[str]:
    return frozenset(PREFIX + name.upper() for config in ALL_SLICES for name in config.model_fields)
