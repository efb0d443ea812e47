"""Where the targeting key hasher comes from when the database may be down.

`CP_EXPOSURE_SALT`, when set, is the key and nothing else is needed. Otherwise the key lives in
the database (control_plane.experiments.hashing), which may be unreachable at start; so each
key read from the database is also kept in a file of the journal directory (`unit-key.hex`,
mode 0600: it is as secret as the database row), and a start with the database down uses that
copy. Only a first start with neither a salt nor that copy has to wait for the database; until
then `hasher` is None and the writer keeps the raw records queued (bounded, counted if dropped).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.engine import Database
from control_plane.errors import EventQueueFull
from control_plane.experiments import repository
from control_plane.experiments.hashing import UnitHasher

__all__ = ["UnitKeys"]

log = logging.getLogger(__name__)

_CACHE_NAME = "unit-key.hex"
#: The `experiment_keys` row of the key (the one hashing.load_unit_hasher reads).
_KEY_NAME = "targeting-key-hmac"
#: Seconds between two warnings that the key is still unknown.
_WARN_EVERY = 30.0


class UnitKeys:
    """The hasher, loaded once: salt, else the database (copied locally), else the copy."""

    def __init__(
        self,
        salt: SecretStr | None,
        database: Database,
        directory: Path,
        *,
        retry_interval: float = 1.0,
    ) -> None:
        self._salt = salt
        self._database = database
        self._cache = directory / _CACHE_NAME
        self._retry_interval = retry_interval
        self._next_try = 0.0
        self._last_warning = -_WARN_EVERY
        self.hasher: UnitHasher | None = None
        if salt is not None:
            self.hasher = UnitHasher(salt.get_secret_value().encode("utf-8"))

    def load(self) -> UnitHasher | None:
        """Try to get the hasher (at most once per retry interval); None while unknown."""
        if self.hasher is not None or time.monotonic() < self._next_try:
            return self.hasher
        self._next_try = time.monotonic() + self._retry_interval
        try:
            with self._database.session() as session:
                key = repository.get_or_create_key(
                    session=session, name=_KEY_NAME, value=secrets.token_hex(32)
                )
        except SQLAlchemyError as exc:
            hasher = self._from_cache()
            if hasher is None:
                if time.monotonic() - self._last_warning > _WARN_EVERY:
                    self._last_warning = time.monotonic()
                    log.warning(
                        "the targeting key HMAC key is kept in the database, which cannot "
                        "be read (%s), and no local copy exists; exposures wait in memory "
                        "until it answers (set CP_EXPOSURE_SALT to never wait)",
                        str(exc).splitlines()[0],
                    )
            else:
                log.warning(
                    "database unreachable: hashing targeting keys with the local copy "
                    "of the key in %s",
                    self._cache,
                )
        else:
            hasher = UnitHasher(bytes.fromhex(key))
            self._store_cache(key)
        self.hasher = hasher
        return hasher

    def __call__(self, targeting_key: str) -> str:
        """Hash with the loaded key; EventQueueFull (503: retry later) while it is unknown."""
        hasher = self.hasher or self.load()
        if hasher is None:
            raise EventQueueFull(
                "the targeting key HMAC key is not available yet (it is kept "
                "in the database, which cannot be reached); retry later"
            )
        return hasher(targeting_key)

    def _from_cache(self) -> UnitHasher | None:
        try:
            text = self._cache.read_text(encoding="ascii").strip()
            return UnitHasher(bytes.fromhex(text))
        except (OSError, ValueError):
            return None

    def _store_cache(self, key: str) -> None:
        try:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            staging = self._cache.with_name(_CACHE_NAME + ".tmp")
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(key)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self._cache)
        except OSError as exc:
            log.warning(
                "cannot keep a local copy of the targeting key HMAC key in %s: %s", self._cache, exc
            )
            with contextlib.suppress(OSError):
                self._cache.with_name(_CACHE_NAME + ".tmp").unlink()
