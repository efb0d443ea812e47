"""Tester tokens: the credential that lets a tester pin a model version through the gateway.

A pin (`x-canary-version: v3`) steers one request past every rule, so a client must not be able
to send one on its own. Header rules marked `tester_only` take effect only when the request
also carries `x-tester-token: <token>`, a token signed by the control plane, with an expiry and
optionally limited to some flags. Without a valid one the pin is ignored and the decision says
why (`ignored` in the JSON answer, `X-Route-Ignored` as a header).

Format: `tt1.<payload>.<signature>`, both base64url without padding; the payload is compact
JSON `{"sub": subject, "exp": unix seconds, "flags": [keys] (optional)}` and the signature is
HMAC-SHA256 over `tt1.<payload>` with the `tester_token_key` setting. Tokens are stateless (a
gateway node can verify them without a database); to revoke all of them, rotate the key.

    >>> tokens = TesterTokens("k" * 32)
    >>> token, _ = tokens.issue("alice", ttl_seconds=3600, now=1_000_000)
    >>> tokens.verify(token, "canary-router", now=1_000_100).subject
    'alice'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_TTL_SECONDS", "InvalidTesterToken", "TesterClaim", "TesterTokens"]

_PREFIX = "tt1."
#: Longest validity a token may be issued with (seven days).
MAX_TTL_SECONDS = 7 * 24 * 3600
_SUBJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_MAX_TOKEN_CHARS = 2048


class InvalidTesterToken(Exception):
    """The token cannot be honoured; `reason` is short enough for a response header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TesterClaim:
    __test__ = False  # pytest would collect Test* classes imported into test modules

    subject: str
    expires_at: int
    flags: tuple[str, ...] = ()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TesterTokens:
    """Issues and verifies tester tokens with one HMAC key."""

    __test__ = False  # pytest would collect Test* classes imported into test modules

    def __init__(self, key: str) -> None:
        if len(key) < 32:
            raise ValueError("a tester token key must be at least 32 characters long")
        self._key = key.encode()

    def _sign(self, signed_part: str) -> str:
        return _b64(hmac.new(self._key, signed_part.encode("ascii"), hashlib.sha256).digest())

    def issue(
        self, subject: str, *, ttl_seconds: int, flags: Sequence[str] = (), now: float | None = None
    ) -> tuple[str, int]:
        """A token for `subject`, valid `ttl_seconds` (at most seven days), and its expiry."""
        if not _SUBJECT.fullmatch(subject):
            raise ValueError("a tester subject is 1-128 letters, digits or ._@+- characters")
        if not 0 < ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"a tester token lives 1 to {MAX_TTL_SECONDS} seconds")
        expires_at = int(time.time() if now is None else now) + int(ttl_seconds)
        claims: dict[str, object] = {"sub": subject, "exp": expires_at}
        if flags:
            claims["flags"] = sorted(set(flags))
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signed_part = _PREFIX + payload
        return f"{signed_part}.{self._sign(signed_part)}", expires_at

    def verify(self, token: str, flag_key: str | None, *, now: float | None = None) -> TesterClaim:
        """The claim of a valid token for `flag_key`; InvalidTesterToken saying why not."""
        if len(token) > _MAX_TOKEN_CHARS or not token.startswith(_PREFIX):
            raise InvalidTesterToken("not a tester token")
        signed_part, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(signed_part).encode()):
            raise InvalidTesterToken("bad signature")
        try:
            claims = json.loads(_unb64(signed_part[len(_PREFIX) :]))
            claim = TesterClaim(
                subject=str(claims["sub"]),
                expires_at=int(claims["exp"]),
                flags=tuple(str(key) for key in claims.get("flags", ())),
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise InvalidTesterToken("malformed token") from None
        if claim.expires_at <= (time.time() if now is None else now):
            raise InvalidTesterToken("expired")
        if claim.flags and flag_key not in claim.flags:
            raise InvalidTesterToken("not valid for this flag")
        return claim
