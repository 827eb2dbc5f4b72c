"""Named tokens with scopes: the table read from COXSWAIN_TOKENS or a file, and who holds a token."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from coxswain.access import SCOPES, TokenTable, TokenTableError, parse_tokens, presented_token
from coxswain.security import production_problems, token_table
from coxswain.settings import AdminConfig, DatabaseConfig, KafkaConfig

ROSTER_BOT = "r" * 12 + "oster-bot-secret-1"
REVOPS = "v" * 12 + "revops-secret-2345"


def table(**entries: object) -> str:
    return orjson.dumps(entries).decode()


def test_a_table_names_each_token_and_its_scopes() -> None:
    tokens = parse_tokens(
        table(
            **{
                "roster-bot": {"token": ROSTER_BOT, "scopes": ["roster:write"]},
                "revops": {"token": REVOPS, "scopes": ["agreements:write", "leads:read"]},
            }
        ),
        "COXSWAIN_TOKENS",
    )
    found = TokenTable.of("admin-token-of-at-least-24-chars", tokens)
    assert [(t.name, sorted(t.scopes)) for t in found.tokens] == [
        ("admin", sorted(SCOPES)),
        ("roster-bot", ["roster:write"]),
        ("revops", ["agreements:write", "leads:read"]),
    ]
    holder = found.holder(REVOPS)
    assert holder is not None and holder.name == "revops"
    assert found.holder("admin-token-of-at-least-24-chars") == found.tokens[0]
    assert found.holder(REVOPS[:-1]) is None and found.holder("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "COXSWAIN_TOKENS: not JSON"),
        ("[]", 'COXSWAIN_TOKENS: expected an object {"name"'),
        (table(bot={"token": "x" * 30}), "COXSWAIN_TOKENS: 'bot' needs exactly 'token' and 'scopes'"),
        (table(bot={"token": "  ", "scopes": ["roster:write"]}), "COXSWAIN_TOKENS: 'bot' has an empty token"),
        (table(bot={"token": "x" * 30, "scopes": []}), "COXSWAIN_TOKENS: 'bot' needs a list of scopes"),
        (
            table(bot={"token": "x" * 30, "scopes": ["roster:write", "roster:admin"]}),
            "COXSWAIN_TOKENS: 'bot' has unknown scope(s) roster:admin; known: agreements:write, roster:write",
        ),
        (
            table(a={"token": "x" * 30, "scopes": ["roster:write"]}, b={"token": "x" * 30, "scopes": ["leads:read"]}),
            "tokens 'a' and 'b' are the same secret",
        ),
    ],
)
def test_a_bad_table_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TokenTableError) as refused:
        parse_tokens(text, "COXSWAIN_TOKENS")
    assert str(refused.value).startswith(message)


def test_the_admin_name_and_secret_are_taken() -> None:
    same = parse_tokens(table(bot={"token": "admin-secret-long-enough-123", "scopes": ["roster:write"]}), "T")
    with pytest.raises(TokenTableError, match="tokens 'admin' and 'bot' are the same secret"):
        TokenTable.of("admin-secret-long-enough-123", same)
    named = parse_tokens(table(admin={"token": "x" * 30, "scopes": ["roster:write"]}), "T")
    with pytest.raises(TokenTableError, match="'admin' is COXSWAIN_ADMIN_TOKEN's"):
        TokenTable.of("admin-secret-long-enough-123", named)


def test_tokens_come_from_a_mounted_file_as_well(tmp_path: Path) -> None:
    mounted = tmp_path / "tokens.json"
    mounted.write_text(table(**{"roster-bot": {"token": ROSTER_BOT, "scopes": ["roster:write"]}}))
    settings = AdminConfig(
        admin_token=None,
        tokens=SecretStr(table(revops={"token": REVOPS, "scopes": ["leads:read"]})),
        tokens_file=mounted,
    )
    found = token_table(settings)
    assert [token.name for token in found.tokens] == ["revops", "roster-bot"]

    twice = AdminConfig(
        admin_token=None,
        tokens=SecretStr(table(**{"roster-bot": {"token": REVOPS, "scopes": ["leads:read"]}})),
        tokens_file=mounted,
    )
    with pytest.raises(TokenTableError, match="the token name 'roster-bot' is given twice"):
        token_table(twice)

    missing = AdminConfig(admin_token=None, tokens=None, tokens_file=tmp_path / "absent.json")
    with pytest.raises(TokenTableError, match=r"COXSWAIN_TOKENS_FILE .*absent.json: cannot read it"):
        token_table(missing)
    mounted.write_text("{")
    with pytest.raises(TokenTableError, match=r"COXSWAIN_TOKENS_FILE .*tokens.json: not JSON"):
        token_table(AdminConfig(admin_token=None, tokens=None, tokens_file=mounted))


def test_production_refuses_a_weak_named_token() -> None:
    settings = AdminConfig(
        admin_token=None,
        tokens=SecretStr(table(bot={"token": "changeme", "scopes": ["roster:write"]})),
        tokens_file=None,
    )
    problems = production_problems(DatabaseConfig(), KafkaConfig(), settings)
    assert "token 'bot' is a placeholder" in problems


@pytest.mark.parametrize(
    ("header", "basic", "token"),
    [
        ("Bearer s3cret", False, "s3cret"),
        ("bearer   s3cret  ", False, "s3cret"),
        ("Basic " + base64.b64encode(b"anyone:s3cret").decode(), True, "s3cret"),
        ("Basic " + base64.b64encode(b"anyone:pa:ss").decode(), True, "pa:ss"),
        ("Basic " + base64.b64encode(b"anyone:s3cret").decode(), False, None),
        ("Basic " + base64.b64encode(b"no-password:").decode(), True, None),
        ("Basic not*base64", True, None),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), True, None),
        ("Bearer", False, None),
        ("Token s3cret", True, None),
        (None, True, None),
    ],
)
def test_the_token_a_header_presents(header: str | None, basic: bool, token: str | None) -> None:
    assert presented_token(header, basic=basic) == token
