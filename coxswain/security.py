"""Production mode: refuse to start with a secret nobody chose.

Secrets come only from the environment or from files (``COXSWAIN_WEBHOOK_SECRETS_FILE``); none
has a usable default. With ``COXSWAIN_ENV=production`` a service checks, before it starts, that
every secret it would use is set, not empty and not a placeholder, and that the database URL is
not the built-in development default (whose password is public). Everything wrong is reported at
once, with the variable to fix.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from coxswain.access import Token, TokenTable, TokenTableError, parse_tokens
from coxswain.settings import AdminConfig, DatabaseConfig, DeploymentConfig, KafkaConfig

PLACEHOLDERS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "password", "placeholder", "example", "test", "todo", "xxx"}
)
MIN_SECRET_BYTES = 16
MIN_TOKEN_CHARS = 24


class InsecureConfiguration(ValueError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def placeholder_reason(value: str) -> str | None:
    stripped = value.strip()
    if not stripped:
        return "is empty"
    bare = stripped.removeprefix("whsec_").strip().lower()
    if not bare or bare in PLACEHOLDERS or "..." in bare or (bare.startswith("<") and bare.endswith(">")):
        return "is a placeholder"
    if len(set(bare)) == 1:
        return "is a placeholder (one repeated character)"
    return None


def _webhook_secret_reason(secret: str) -> str | None:
    reason = placeholder_reason(secret)
    if reason:
        return reason
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return "is not base64 ('whsec_' + base64 of the key)"
    if len(key) < MIN_SECRET_BYTES:
        return f"is too short ({len(key)} bytes; at least {MIN_SECRET_BYTES})"
    return None


def _token_reason(token: str) -> str | None:
    short = len(token.strip()) < MIN_TOKEN_CHARS
    return placeholder_reason(token) or (f"is too short (at least {MIN_TOKEN_CHARS} characters)" if short else None)


def extra_tokens(admin: AdminConfig) -> tuple[Token, ...]:
    """The named tokens of ``COXSWAIN_TOKENS`` and ``COXSWAIN_TOKENS_FILE`` (both may be set)."""
    tokens: list[Token] = []
    if admin.tokens is not None:
        tokens += parse_tokens(admin.tokens.get_secret_value(), "COXSWAIN_TOKENS")
    if admin.tokens_file is not None:
        where = f"COXSWAIN_TOKENS_FILE {admin.tokens_file}"
        try:
            text = admin.tokens_file.read_bytes()
        except OSError as exc:
            raise TokenTableError(f"{where}: cannot read it ({exc.strerror})") from None
        tokens += parse_tokens(text, where)
    return tuple(tokens)


def token_table(admin: AdminConfig) -> TokenTable:
    """Every token the APIs accept; ``TokenTableError`` says what to fix before a service starts."""
    admin_token = admin.admin_token.get_secret_value() if admin.admin_token is not None else None
    return TokenTable.of(admin_token, extra_tokens(admin))


def production_problems(
    database: DatabaseConfig,
    kafka: KafkaConfig,
    admin: AdminConfig,
    webhook_secrets: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """What production mode refuses; ``webhook_secrets`` only for the intake, which uses them."""
    problems = []
    if database.database_url == DatabaseConfig.model_fields["database_url"].default:
        problems.append("COXSWAIN_DATABASE_URL is the built-in development default; set the real one")
    if admin.admin_token is not None:
        reason = _token_reason(admin.admin_token.get_secret_value())
        if reason:
            problems.append(f"COXSWAIN_ADMIN_TOKEN {reason}")
    try:
        for token in extra_tokens(admin):
            reason = _token_reason(token.secret.decode())
            if reason:
                problems.append(f"token {token.name!r} {reason}")
    except TokenTableError as exc:
        problems.append(str(exc))
    if kafka.kafka_sasl_mechanism is not None:
        if not kafka.kafka_sasl_username:
            problems.append("COXSWAIN_KAFKA_SASL_USERNAME is not set but a SASL mechanism is")
        password = kafka.kafka_sasl_password.get_secret_value() if kafka.kafka_sasl_password else ""
        reason = placeholder_reason(password)
        if reason:
            problems.append(f"COXSWAIN_KAFKA_SASL_PASSWORD {reason}")
    if webhook_secrets is not None:
        if not webhook_secrets:
            problems.append("no webhook secrets: set COXSWAIN_WEBHOOK_SECRETS or COXSWAIN_WEBHOOK_SECRETS_FILE")
        for source, secrets in webhook_secrets.items():
            if not secrets:
                problems.append(f"webhook secrets: source {source!r} has no secret")
            for number, secret in enumerate(secrets, 1):
                reason = _webhook_secret_reason(secret)
                if reason:
                    problems.append(f"webhook secrets: source {source!r}, secret #{number} {reason}")
    return problems


def require_safe_configuration(
    deployment: DeploymentConfig,
    database: DatabaseConfig,
    kafka: KafkaConfig,
    admin: AdminConfig,
    webhook_secrets: Mapping[str, Sequence[str]] | None = None,
) -> None:
    if deployment.env != "production":
        return
    problems = production_problems(database, kafka, admin, webhook_secrets)
    if problems:
        raise InsecureConfiguration(problems)
