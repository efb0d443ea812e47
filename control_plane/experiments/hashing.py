"""Targeting keys are stored as HMAC-SHA256 digests: units can be counted and joined, not read.

The key is `CP_EXPOSURE_SALT` when set (recommended: keep it out of the database), else a random
key made once and kept in the `experiment_keys` table, so every replica sharing the database
hashes a targeting key to the same unit.
"""

from __future__ import annotations

import hashlib
import secrets

from pydantic import SecretStr

from control_plane.db.engine import Database
from control_plane.experiments import repository

__all__ = ["UnitHasher", "load_unit_hasher"]

_KEY_NAME = "targeting-key-hmac"


class UnitHasher:
    """targeting key -> 64 hex characters: HMAC-SHA256 (RFC 2104) with the experiment key.

    The inner and outer SHA-256 states of the padded key are computed once and copied per
    call, which halves the cost of `hmac.digest` (the writer thread hashes every exposure).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the targeting key HMAC key must be at least 16 bytes")
        #: The key as given, so the writer process can be handed the same hasher.
        self.key = key
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def __call__(self, targeting_key: str) -> str:
        inner = self._inner.copy()
        inner.update(targeting_key.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def load_unit_hasher(salt: SecretStr | None, database: Database) -> UnitHasher:
    """The configured salt, or the key stored in the database (made on first use)."""
    if salt is not None:
        return UnitHasher(salt.get_secret_value().encode("utf-8"))
    with database.session() as session:
        value = repository.get_or_create_key(
            session=session, name=_KEY_NAME, value=secrets.token_hex(32)
        )
    return UnitHasher(bytes.fromhex(value))
