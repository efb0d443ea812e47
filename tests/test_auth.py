"""Tokens and roles: bearer parsing, settings and database tokens (hashed at rest), the role
order, the gateway token, and settings that never echo a secret."""

from __future__ import annotations

import hashlib
import hmac

import db_support
import pytest
from pydantic import ValidationError
from sqlalchemy import text

from control_plane import auth, cli
from control_plane.auth import (
    Authenticator,
    GatewayTokenChecker,
    Principal,
    Role,
    bearer_token,
    check_gateway_token,
    hash_token,
    new_token,
)
from control_plane.db import Database, repository
from control_plane.errors import Forbidden, Unauthenticated
from control_plane.settings import Settings

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

ADMIN = "admin-secret-0123456789"
VIEWER = "viewer-secret-0123456789"
GATEWAY = "gateway-secret-0123456789"


def _settings(**values: object) -> Settings:
    return Settings(admin_tokens=[f"root:admin:{ADMIN}", f"ci:viewer:{VIEWER}"], **values)


def test_roles_are_ordered() -> None:
    """viewer < operator < admin, and role names parse case-insensitively."""
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.parse("Operator") is Role.OPERATOR
    with pytest.raises(ValueError, match="unknown role 'boss'"):
        Role.parse("boss")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        (b"Bearer abc", "abc"),
    ],
)
def test_bearer_token_is_read(header: str | bytes, token: str) -> None:
    """The token is taken from 'Bearer <token>' (any case, bytes or text)."""
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   ", "abc"])
def test_missing_or_malformed_header_is_unauthenticated(header: str | None) -> None:
    """No header, another scheme, or no token is 401 material."""
    with pytest.raises(Unauthenticated):
        bearer_token(header)


def test_settings_tokens_authenticate_with_their_role() -> None:
    """A settings token resolves to its name and role; an unknown one is refused."""
    authenticator = Authenticator.from_settings(_settings())
    assert authenticator.authenticate(f"Bearer {ADMIN}") == Principal(
        "root", Role.ADMIN, "settings"
    )
    assert authenticator.authenticate(f"Bearer {VIEWER}").role is Role.VIEWER
    with pytest.raises(Unauthenticated, match="not known"):
        authenticator.authenticate(f"Bearer {ADMIN}x")


def test_authorize_refuses_lower_roles_with_a_clear_message() -> None:
    """A viewer may read but not edit; the 403 message names both roles."""
    viewer = Principal("ci", Role.VIEWER, "settings")
    Authenticator.authorize(viewer, Role.VIEWER)
    with pytest.raises(Forbidden, match="role viewer; this needs operator or higher"):
        Authenticator.authorize(viewer, Role.OPERATOR)
    Authenticator.authorize(Principal("root", Role.ADMIN, "settings"), Role.OPERATOR)


def test_every_settings_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A match on the first token still compares against all of them (no early exit)."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authenticator = Authenticator.from_settings(_settings())
    authenticator.authenticate(f"Bearer {ADMIN}")
    assert len(calls) == 2


def test_database_tokens_are_hashed_at_rest(database: Database) -> None:
    """A database token works by its SHA-256; the secret itself is stored nowhere."""
    secret = new_token()
    assert secret.startswith("cpt_")
    with database.session() as session:
        repository.add_token(
            session=session,
            name="deploy-bot",
            role="operator",
            token_hash=hash_token(secret),
            created_by="root",
        )
    authenticator = Authenticator.from_settings(_settings(), database)
    principal = authenticator.authenticate(f"Bearer {secret}")
    assert principal == Principal("deploy-bot", Role.OPERATOR, "database")
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM api_tokens")).all()
    dumped = repr(rows)
    assert secret not in dumped
    assert hashlib.sha256(secret.encode()).hexdigest() in dumped


def test_revoked_database_token_is_refused(database: Database) -> None:
    """After revocation the token is unknown (401), though its row stays for the audit trail."""
    secret = new_token()
    with database.session() as session:
        repository.add_token(
            session=session,
            name="old",
            role="admin",
            token_hash=hash_token(secret),
            created_by="root",
        )
        repository.revoke_token(session=session, name="old", actor="root")
    authenticator = Authenticator.from_settings(_settings(), database)
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(f"Bearer {secret}")
    with database.session() as session:
        row = repository.token_by_name(session=session, name="old")
        assert row is not None
        assert row.revoked_by == "root"


def test_gateway_checker_passes_everything_when_unset() -> None:
    """With no gateway token configured, the routing API stays open."""
    checker = GatewayTokenChecker.from_settings(Settings())
    assert not checker.enabled
    checker(None)


def test_gateway_checker_requires_a_configured_token() -> None:
    """With gateway tokens set, only those pass; bytes headers (raw ASGI) work too."""
    checker = GatewayTokenChecker.from_settings(
        Settings(gateway_tokens=f"{GATEWAY},next-gateway-secret-0123")
    )
    assert checker.enabled
    checker(f"Bearer {GATEWAY}".encode())
    checker("Bearer next-gateway-secret-0123")
    for header in (None, "Bearer wrong-token", f"Basic {GATEWAY}"):
        with pytest.raises(Unauthenticated):
            checker(header)
    check_gateway_token(f"Bearer {GATEWAY}", [GATEWAY])
    with pytest.raises(Unauthenticated):
        check_gateway_token("Bearer nope", [GATEWAY])


def test_tokens_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CP_ADMIN_TOKENS takes name:role:token lists (comma or JSON), CP_GATEWAY_TOKENS a list."""
    monkeypatch.setenv("CP_ADMIN_TOKENS", f"root:admin:{ADMIN}, ci:viewer:{VIEWER}")
    monkeypatch.setenv("CP_GATEWAY_TOKENS", GATEWAY)
    settings = Settings()
    assert [(s.name, s.role) for s in settings.admin_tokens] == [
        ("root", "admin"),
        ("ci", "viewer"),
    ]
    assert settings.gateway_tokens[0].get_secret_value() == GATEWAY
    assert ADMIN not in repr(settings)
    assert GATEWAY not in repr(settings)
    monkeypatch.setenv(
        "CP_ADMIN_TOKENS", f'[{{"name": "root", "role": "operator", "token": "{ADMIN}"}}]'
    )
    assert Settings().admin_tokens[0].role == "operator"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("root:admin:short-secret", "at least 16 characters"),
        ("root:boss:long-enough-secret-123", "'viewer', 'operator' or 'admin'"),
        ("no-colons-long-enough-secret-123", "name:role:token"),
        ("a:admin:long-enough-secret-123,a:viewer:long-enough-secret-456", "given twice"),
    ],
)
def test_bad_token_settings_are_refused_without_echoing_secrets(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    """A malformed CP_ADMIN_TOKENS stops start-up naming the rule, never the secret."""
    monkeypatch.setenv("CP_ADMIN_TOKENS", value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    text_of_error = str(caught.value)
    assert message in text_of_error
    assert "secret" not in text_of_error


def test_cli_reports_bad_token_setting_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints which setting is wrong (exit 2), not its value."""
    monkeypatch.setenv("CP_ADMIN_TOKENS", "root:admin:tiny-secret")
    assert cli.main(["history", "--database-url", "sqlite:///nonexistent.db"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting admin_tokens.0.token" in err
    assert "tiny-secret" not in err
