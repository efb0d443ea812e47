"""Bearer tokens and roles for the admin API, and the optional gateway token of the routing API.

Roles are ordered viewer < operator < admin: viewers read, operators edit flags, admins roll
back and manage tokens. Tokens come from settings (`CP_ADMIN_TOKENS`) or from the database,
where only their SHA-256 is stored. A presented token is hashed and compared with
`hmac.compare_digest` against every configured one (no early exit), so the time taken does not
depend on how much of a secret matched. Tokens are never logged; only token names are.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from pydantic import SecretStr

from control_plane.db import repository
from control_plane.db.engine import Database
from control_plane.errors import Forbidden, Unauthenticated
from control_plane.settings import Settings, TokenSpec

__all__ = [
    "Authenticator",
    "GatewayTokenChecker",
    "Principal",
    "Role",
    "bearer_token",
    "check_gateway_token",
    "hash_token",
    "new_token",
]

#: Prefix of generated tokens, so a leaked one is recognisable (secret scanners, logs review).
TOKEN_PREFIX = "cpt_"  # noqa: S105 - a public marker, not a secret


class Role(IntEnum):
    """Admin API roles; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; use viewer, operator or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name (the audit actor), its role, where it is defined."""

    name: str
    role: Role
    source: str  # "settings" or "database"


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: what the database stores and what lookups compare."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer_token(authorization: bytes | str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; Unauthenticated otherwise."""
    if authorization is None:
        raise Unauthenticated("this endpoint needs an Authorization: Bearer <token> header")
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token


def _matches_any(presented_digest: bytes, digests: Iterable[bytes]) -> int:
    """Index of the matching digest or -1; compares with every digest, always."""
    found = -1
    for index, digest in enumerate(digests):
        if hmac.compare_digest(presented_digest, digest) and found < 0:
            found = index
    return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Authenticator:
    """Resolves a bearer token to a Principal (settings first, then the database)."""

    def __init__(self, tokens: Sequence[TokenSpec], database: Database | None = None) -> None:
        self._specs = tuple(tokens)
        self._digests = tuple(_digest(spec.token.get_secret_value()) for spec in self._specs)
        self.database = database

    @classmethod
    def from_settings(cls, settings: Settings, database: Database | None = None) -> Authenticator:
        return cls(settings.admin_tokens, database)

    @property
    def settings_tokens(self) -> tuple[TokenSpec, ...]:
        return self._specs

    def authenticate(self, authorization: bytes | str | None) -> Principal:
        token = bearer_token(authorization)
        presented = _digest(token)
        index = _matches_any(presented, self._digests)
        if index >= 0:
            spec = self._specs[index]
            return Principal(spec.name, Role.parse(spec.role), "settings")
        if self.database is not None:
            stored_hash = presented.hex()
            with self.database.session() as session:
                row = repository.token_by_hash(session=session, token_hash=stored_hash)
                # The lookup is by hash, so timing reveals nothing about the secret; the
                # digest comparison guards against a database with case-folding collations.
                if row is not None and hmac.compare_digest(row.token_hash, stored_hash):
                    return Principal(row.name, Role.parse(row.role), "database")
        raise Unauthenticated("the bearer token is not known (or was revoked)")

    @staticmethod
    def authorize(principal: Principal, needed: Role) -> None:
        """Forbidden unless the principal's role is at least `needed`."""
        if principal.role < needed:
            raise Forbidden(
                f"token {principal.name!r} has role {principal.role.label}; "
                f"this needs {needed.label} or higher"
            )


def check_gateway_token(
    authorization_header: bytes | str | None, tokens: Sequence[SecretStr | str]
) -> None:
    """Raise Unauthenticated unless the header carries one of `tokens` (no-op when none set)."""
    GatewayTokenChecker(tokens)(authorization_header)


class GatewayTokenChecker:
    """The routing API's gateway token check, with digests computed once (hot path).

    `checker(authorization_header)` returns None when the request may pass and raises
    Unauthenticated when it may not; with no tokens configured every request passes.
    """

    def __init__(self, tokens: Sequence[SecretStr | str]) -> None:
        self._digests = tuple(
            _digest(token.get_secret_value() if isinstance(token, SecretStr) else token)
            for token in tokens
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayTokenChecker:
        return cls(settings.gateway_tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __call__(self, authorization_header: bytes | str | None) -> None:
        if not self._digests:
            return
        token = bearer_token(authorization_header)
        if _matches_any(_digest(token), self._digests) < 0:
            raise Unauthenticated("the gateway token is not valid")
