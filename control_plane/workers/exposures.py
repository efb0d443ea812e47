"""A worker's experiment records: the same recorder and writer as the primary's, its own journal.

Decisions a worker makes are exposures like the primary's, with the same durability rules:
`Experiments.build` (control_plane.experiments.runtime) makes the recorder and the writer with
the worker's journal directory (`<spill>/worker-<i>`, so no two processes share a journal) and
the primary's database (SQLite takes one writer at a time; each waits its busy timeout, which
the writer's batches fit in; PostgreSQL takes them all). Only the recorder and the writer
start here: the canary controller runs on the primary alone. Canary flags' backend calls are
recorded on every process, so the worker re-reads the active canaries every
`canary_tick_interval` as the primary's controller does.
"""

from __future__ import annotations

import logging
import threading

from control_plane.db import Database
from control_plane.db.engine import DatabaseTimeouts
from control_plane.experiments import repository
from control_plane.experiments.runtime import Experiments
from control_plane.flagstore.editor import FlagEditor
from control_plane.http.components import RoutingComponents

__all__ = ["WorkerExposures"]

log = logging.getLogger(__name__)


class WorkerExposures:
    """Recorder + writer of one worker, attached to its decider's and dispatcher's listeners."""

    def __init__(self, components: RoutingComponents) -> None:
        settings = components.settings
        self.database = Database.from_url(
            settings.database_url, timeouts=DatabaseTimeouts.from_settings(settings)
        )
        # The editor is never used (a worker edits nothing); Experiments wants one.
        self.experiments = Experiments.build(
            settings,
            database=self.database,
            store=components.store,
            editor=FlagEditor(components.store),
            registry=components.metrics.registry,
        )
        recorder = self.experiments.recorder
        # The worker's listeners, next to those build_replica_components attached.
        components.decider.listeners.append(recorder.on_decision)
        components.dispatcher.listeners.append(recorder.on_dispatch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        experiments = self.experiments
        experiments.recorder.hasher = experiments.keys.load()  # None until the key is known
        experiments.writer.start()
        self._thread = threading.Thread(target=self._track, name="worker-canary-flags", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write out (or journal) what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.experiments.writer.stop()
        self.database.dispose()

    def _track(self) -> None:
        interval = self.experiments.settings.canary_tick_interval
        while not self._stop.is_set():
            try:  # the canary flags only (the controller's gauges stay on the primary)
                with self.database.session() as session:
                    runs = repository.active_runs(session=session)
                    flags = frozenset(run.flag for run in runs)
                self.experiments.recorder.tracked_flags = flags
            except Exception as exc:  # the database may be down: the last set stays
                log.debug("worker: cannot read the active canaries: %s", exc)
            self._stop.wait(interval)
