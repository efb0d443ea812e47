"""Schema migration that never holds the service hostage: routing starts with the database down.

`BackgroundMigrator.start(wait)` makes the first attempt in a thread and waits up to `wait`
seconds for it (so a healthy database is migrated before the first flag set is recorded, as
before); if the database cannot be reached, the service starts anyway and the thread retries
every `retry_interval` until the schema is at head. Until then, whatever needs the database
(version records, admin API, experiment writes) fails and retries on its own, while routing,
which never touches the database, serves.
"""

from __future__ import annotations

import logging
import threading
import time

from control_plane.db.engine import Database

__all__ = ["BackgroundMigrator"]

log = logging.getLogger(__name__)

#: Seconds between two error lines while the database stays unreachable.
_LOG_EVERY = 30.0


class BackgroundMigrator:
    def __init__(self, database: Database, *, retry_interval: float = 2.0) -> None:
        self.database = database
        self.retry_interval = retry_interval
        self.migrated = threading.Event()
        self._attempted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait: float) -> bool:
        """Start migrating; True when the schema is at head within `wait` seconds."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="db-migrate", daemon=True)
            self._thread.start()
        self._attempted.wait(wait)
        if not self.migrated.is_set():
            log.error(
                "the database %s cannot be migrated now; serving without it and "
                "retrying every %.0fs",
                self.database.url,
                self.retry_interval,
            )
        return self.migrated.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        last_logged = 0.0
        while not self._stop.is_set():
            try:
                self.database.migrate()
            except Exception as exc:  # any failure: keep serving, keep trying
                now = time.monotonic()
                if now - last_logged > _LOG_EVERY:
                    last_logged = now
                    log.warning(
                        "database migration failed (%s); retrying",
                        str(exc).strip().splitlines()[0]
                        if str(exc).strip()
                        else type(exc).__name__,
                    )
                self._attempted.set()
                self._stop.wait(self.retry_interval)
                continue
            if self._attempted.is_set():
                log.warning("the database %s answers again; schema migrated", self.database.url)
            self.migrated.set()
            self._attempted.set()
            return
