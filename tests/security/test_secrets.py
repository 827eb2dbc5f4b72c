"""Secrets come from the environment or files, and production mode refuses what nobody chose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from coxswain.security import InsecureConfiguration, production_problems, require_safe_configuration
from coxswain.settings import AdminConfig, DatabaseConfig, DeploymentConfig, IntakeConfig, KafkaConfig
from services.intake.signatures import SecretsError, load_secrets

STRONG = "whsec_" + "c3Ryb25nLXByb2R1Y3Rpb24tc2VjcmV0LTAxMjM0NTY3"
ROTATED = "whsec_" + "bmV4dC1wcm9kdWN0aW9uLXNlY3JldC0wMTIzNDU2Nzg5"
DEFAULT_DATABASE = DatabaseConfig.model_fields["database_url"].default
REAL_DATABASE = "postgresql+asyncpg://coxswain:s3cret-from-vault@db.internal:5432/coxswain"
STRONG_TOKEN = "adm_" + "k3Jd8s0Qm2Lx7Pv4Zt9Rw1Yb"


def test_secrets_from_a_file_join_those_from_the_environment(tmp_path: Path) -> None:
    secrets_file = tmp_path / "webhook-secrets.json"
    secrets_file.write_text(f'{{"hubspot": "{STRONG}", "webform": ["{ROTATED}", "{STRONG}"]}}')
    config = IntakeConfig(webhook_secrets={"webform": [STRONG]}, webhook_secrets_file=secrets_file)
    assert load_secrets(config) == {"webform": [STRONG, ROTATED], "hubspot": [STRONG]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the webhook secrets file"),
        ("{not json", "not JSON"),
        ('["whsec_x"]', "expected a JSON object"),
        ('{"hubspot": 42}', "source 'hubspot': expected a secret or a list of secrets"),
        ('{"hubspot": []}', "source 'hubspot' has no secret"),
        ('{"hubspot": "whsec_"}', "source 'hubspot', secret #1 is not usable"),
    ],
)
def test_a_secrets_file_that_cannot_be_used_is_refused_with_the_reason(
    tmp_path: Path, content: str | None, message: str
) -> None:
    secrets_file = tmp_path / "webhook-secrets.json"
    if content is not None:
        secrets_file.write_text(content)
    with pytest.raises(SecretsError, match=message.replace("(", r"\(")):
        load_secrets(IntakeConfig(webhook_secrets_file=secrets_file))


def test_development_mode_starts_with_the_defaults() -> None:
    require_safe_configuration(DeploymentConfig(), DatabaseConfig(), KafkaConfig(), AdminConfig(), {})


def test_production_accepts_real_secrets() -> None:
    require_safe_configuration(
        DeploymentConfig(env="production"),
        DatabaseConfig(database_url=REAL_DATABASE),
        KafkaConfig(
            kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="cox", kafka_sasl_password=SecretStr("kP9s-2mQ")
        ),
        AdminConfig(admin_token=SecretStr(STRONG_TOKEN)),
        {"hubspot": [STRONG, ROTATED]},
    )


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("changeme", "is a placeholder"),
        ("whsec_...", "is a placeholder"),
        ("<your-secret>", "is a placeholder"),
        ("whsec_xxxxxxxxxxxxxxxxxxxxxxxx", "is a placeholder (one repeated character)"),
        ("whsec_not*base64*at*all", "is not base64 ('whsec_' + base64 of the key)"),
        ("whsec_c2hvcnQ=", "is too short (5 bytes; at least 16)"),
    ],
)
def test_production_refuses_empty_placeholder_and_weak_webhook_secrets(secret: str, reason: str) -> None:
    problems = production_problems(
        DatabaseConfig(database_url=REAL_DATABASE),
        KafkaConfig(),
        AdminConfig(admin_token=None),
        {"hubspot": [STRONG, secret]},
    )
    assert problems == [f"webhook secrets: source 'hubspot', secret #2 {reason}"]


def test_production_lists_every_problem_at_once() -> None:
    with pytest.raises(InsecureConfiguration) as refused:
        require_safe_configuration(
            DeploymentConfig(env="production"),
            DatabaseConfig(database_url=DEFAULT_DATABASE),
            KafkaConfig(kafka_sasl_mechanism="PLAIN"),
            AdminConfig(admin_token=SecretStr("changeme")),
            {},
        )
    assert refused.value.problems == [
        "COXSWAIN_DATABASE_URL is the built-in development default; set the real one",
        "COXSWAIN_ADMIN_TOKEN is a placeholder",
        "COXSWAIN_KAFKA_SASL_USERNAME is not set but a SASL mechanism is",
        "COXSWAIN_KAFKA_SASL_PASSWORD is empty",
        "no webhook secrets: set COXSWAIN_WEBHOOK_SECRETS or COXSWAIN_WEBHOOK_SECRETS_FILE",
    ]


def test_a_short_admin_token_is_refused_in_production() -> None:
    problems = production_problems(
        DatabaseConfig(database_url=REAL_DATABASE), KafkaConfig(), AdminConfig(admin_token=SecretStr("short-token"))
    )
    assert problems == ["COXSWAIN_ADMIN_TOKEN is too short (at least 24 characters)"]


def _coxswain(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COXSWAIN_")}
    return subprocess.run(
        [sys.executable, "-m", "coxswain_app", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_intake_process_refuses_to_start_in_production_with_a_placeholder_secret() -> None:
    result = _coxswain(
        "run",
        "intake",
        COXSWAIN_ENV="production",
        COXSWAIN_DATABASE_URL=REAL_DATABASE,
        COXSWAIN_WEBHOOK_SECRETS='{"hubspot": "changeme"}',
    )
    assert result.returncode != 0
    assert "intake refuses to start: webhook secrets: source 'hubspot', secret #1 is a placeholder" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_consumer_process_refuses_to_start_in_production_on_the_development_database_url() -> None:
    result = _coxswain("run", "router", COXSWAIN_ENV="production", COXSWAIN_ADMIN_TOKEN="")
    assert result.returncode != 0
    assert "router refuses to start: COXSWAIN_DATABASE_URL is the built-in development default" in result.stderr
    assert "COXSWAIN_ADMIN_TOKEN is empty" in result.stderr
    assert "Traceback" not in result.stderr
