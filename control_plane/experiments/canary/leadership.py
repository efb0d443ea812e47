"""Which control plane runs the canary controller when several share one database.

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) held on a connection of its
own for as long as this process leads. Why a lock and not a lease row:

- it needs no table, no migration and no clock: the lock belongs to the database session, and
  the server releases it the moment that session ends; a `kill -9`ed or crashed holder's
  connection is closed by its kernel, so another instance takes over at its next try
  (`retry_interval`), without waiting for a lease to expire;
- a holder that is alive but hung (stopped, swapping, partitioned) would keep its session,
  and with it the lock, for ever; so the lock session sets `idle_session_timeout` to
  `lease_seconds`: the leader pings it every `renew_interval`, and a holder that stops
  pinging has its session ended by the server after `lease_seconds`, which releases the lock.
  That is the lease, kept by the server's clock alone;
- fencing: `confirm()` runs on the lock session itself right before each step (the hook in
  CanaryController.tick), so a holder whose session was ended cannot step again: the query
  fails and it knows it lost. What remains is a holder that hangs for longer than
  `lease_seconds` after its last confirmation and before its step commits; the run's
  revision (each step updates the run `WHERE revision = <read>`) still makes only one of two
  concurrent steps of one run stick, so a step event is never recorded twice.

The lock key is a 64-bit hash of `control-plane:<name>:<current schema>`, so control planes
in different schemas of one database (separate deployments, the test suite) do not contend.

SQLite (and any other database): one process per database file is the only supported shape,
so that process always leads (`AlwaysLeader`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from control_plane.db.engine import Database

__all__ = ["AdvisoryLockLeadership", "AlwaysLeader", "Leadership", "leadership_for"]

log = logging.getLogger(__name__)

_KEY = "hashtextextended('control-plane:' || :name || ':' || current_schema(), 0)"


class Leadership(Protocol):
    """Whether this process may run the canary controller now."""

    @property
    def leader(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def confirm(self) -> bool:
        """Check with the database, now, that this process still leads (before a step)."""
        ...


class AlwaysLeader:
    """The one instance on SQLite: it leads from start to stop."""

    leader = True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def confirm(self) -> bool:
        return True


class AdvisoryLockLeadership:
    """Leadership by a PostgreSQL session-level advisory lock; see the module docstring."""

    def __init__(
        self,
        database: Database,
        *,
        name: str = "canary-controller",
        retry_interval: float = 1.0,
        lease_seconds: float = 10.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if retry_interval * 2 > lease_seconds:
            raise ValueError("lease_seconds must be at least twice the retry interval")
        # One connection, never pooled: the lock lives and dies with it.
        self._database = database.derive(poolclass=NullPool)
        self.name = name
        self.retry_interval = retry_interval
        self.lease_seconds = lease_seconds
        self._on_change = on_change
        self._connection: Connection | None = None
        self._leader = False
        self._lock = threading.Lock()  # one statement at a time on the lock connection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Times this process became the leader, since start.
        self.acquired = 0

    @property
    def leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._try()  # lead from the first tick when nobody else does
        self._thread = threading.Thread(target=self._run, name="canary-leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Give the lead up (closing the session releases the lock)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._drop()
        self._database.dispose()

    def confirm(self) -> bool:
        if not self._leader:
            return False
        with self._lock:
            connection = self._connection
            if connection is None:
                return False
            try:
                held = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND pid = pg_backend_pid() AND granted"
                    )
                ).scalar_one()
                connection.commit()  # idle outside a transaction: the idle timeout applies
            except SQLAlchemyError as exc:
                log.warning("canary leadership lost: the lock session is gone (%s)", exc)
                self._drop()
                return False
            if not held:
                self._drop()
            return bool(held)

    # -- the leadership thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.retry_interval):
            if self._leader:
                self.confirm()  # the ping that keeps the session (and the lock) alive
            else:
                self._try()

    def _try(self) -> None:
        with self._lock:
            try:
                if self._connection is None:
                    connection = self._database.engine.connect()
                    self._connection = connection
                    timeout_ms = int(self.lease_seconds * 1000)
                    for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
                        connection.execute(text(f"SET {setting} = {timeout_ms}"))
                    connection.commit()
                got = self._connection.execute(
                    text(f"SELECT pg_try_advisory_lock({_KEY})"), {"name": self.name}
                ).scalar_one()
                self._connection.commit()  # outside a transaction: the idle timeout applies
            except SQLAlchemyError as exc:
                log.warning("canary leadership: cannot reach the database (%s)", exc)
                self._drop()
                return
            if got:
                self.acquired += 1
                log.warning("this control plane leads the canary controller now")
                self._set(True)

    def _drop(self) -> None:
        """Forget the lock session (under `_lock`): closing it releases any lock it held."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except SQLAlchemyError:
                pass
        if self._leader:
            log.warning("this control plane no longer leads the canary controller")
        self._set(False)

    def _set(self, leader: bool) -> None:
        changed = leader != self._leader
        self._leader = leader
        if changed and self._on_change is not None:
            self._on_change(leader)


def leadership_for(
    database: Database,
    *,
    registry: CollectorRegistry | None = None,
    retry_interval: float = 1.0,
    lease_seconds: float = 10.0,
    on_change: Callable[[bool], None] | None = None,
) -> Leadership:
    """Advisory-lock leadership on PostgreSQL, else (SQLite) the one instance always leads.

    With `registry`, `control_plane_canary_controller_leader` says 1 while this process leads.
    """
    if registry is not None:
        gauge = Gauge(
            "control_plane_canary_controller_leader",
            "1 while this control plane leads the canary controller (steps canaries), 0 while "
            "another instance on the same database does.",
            registry=registry,
        )
        outer = on_change

        def on_change(leader: bool) -> None:
            gauge.set(1 if leader else 0)
            if outer is not None:
                outer(leader)

        on_change(False)
    if database.engine.dialect.name == "postgresql":
        return AdvisoryLockLeadership(
            database,
            retry_interval=retry_interval,
            lease_seconds=lease_seconds,
            on_change=on_change,
        )
    if on_change is not None:
        on_change(True)
    return AlwaysLeader()


def wait_for_leader(leadership: Leadership, timeout: float) -> bool:
    """True once `leadership` leads, False after `timeout` seconds (for tools and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if leadership.leader:
            return True
        time.sleep(0.05)
    return leadership.leader
