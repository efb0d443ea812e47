"""The experiment and canary parts of one control plane, built complete and started later.

    experiments = Experiments.build(settings, database=..., store=..., editor=..., registry=...)
    decider.listeners.append(experiments.recorder.on_decision)   # the app factory wires these
    experiments.start()   # in the app's startup: the writer process and canary controller
    experiments.stop()    # at shutdown: controller stopped, queue written out or journaled

Everything exists from `build` on (no None until startup, nothing created in a request).
Nothing here needs the database to answer (issue 9: routing never depends on it): the
targeting-key HMAC key may come later (control_plane.experiments.unit_key), and records wait in
the journal until the database takes them. This module knows nothing of HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.engine import Database, DatabaseTimeouts
from control_plane.experiments import repository
from control_plane.experiments.canary.controller import CanaryController
from control_plane.experiments.canary.intervals import IntervalAnalysis
from control_plane.experiments.canary.leadership import leadership_for
from control_plane.experiments.canary.service import CanaryService
from control_plane.experiments.events import EventParser
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.recorder import ExperimentRecorder
from control_plane.experiments.unit_key import UnitKeys
from control_plane.experiments.writer_process import ProcessWriter, WriterConfig
from control_plane.flagstore.editor import FlagEditor
from control_plane.flagstore.store import FlagStore
from control_plane.settings import Settings

__all__ = ["Experiments"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Experiments:
    """Recorder, writer, event parser and canary service/controller of one app."""

    settings: Settings
    database: Database
    store: FlagStore
    metrics: ExperimentMetrics
    keys: UnitKeys
    recorder: ExperimentRecorder
    #: The writer process's parent side (journal and database in a process of their own).
    writer: ProcessWriter
    parser: EventParser
    service: CanaryService
    controller: CanaryController
    started: bool = field(default=False, init=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        database: Database,
        store: FlagStore,
        editor: FlagEditor,
        registry: CollectorRegistry,
    ) -> Experiments:
        """Every part, unstarted: no thread, no file and no database connection yet."""
        metrics = ExperimentMetrics(registry)
        journal_dir = settings.exposure_spill_dir.resolve()
        keys = UnitKeys(
            settings.exposure_salt,
            database,
            journal_dir,
            retry_interval=settings.exposure_retry_interval,
        )
        recorder = ExperimentRecorder(None)

        def key() -> bytes | None:
            """The feeder asks until it is known: the targeting-key key for the writer."""
            if recorder.hasher is None:
                recorder.hasher = keys.load()
            return recorder.hasher.key if recorder.hasher is not None else None

        config = WriterConfig(
            database_url=settings.database_url,
            timeouts=DatabaseTimeouts.from_settings(settings),
            journal_dir=journal_dir,
            options={
                "queue_size": settings.exposure_queue_size,
                "batch_size": settings.exposure_batch_size,
                "journal_interval": settings.exposure_journal_interval,
                "flush_interval": settings.exposure_flush_interval,
                "buffer_limit": settings.exposure_buffer_limit,
                "retry_interval": settings.exposure_retry_interval,
                "write_timeout": settings.exposure_write_timeout,
            },
        )
        writer = ProcessWriter(
            config,
            key=key,
            queue_size=settings.exposure_queue_size,
            metrics=metrics,
            priority=settings.record_process_priority,
        )
        recorder.attach(writer)

        def track(flags: frozenset[str]) -> None:
            recorder.tracked_flags = flags

        service = CanaryService(
            database=database,
            store=store,
            editor=editor,
            metrics=metrics,
            on_tracked=track,
            analysis=IntervalAnalysis.from_settings(settings, registry),
        )
        # UnitKeys hashes like a UnitHasher once the key is known, and refuses (503) before.
        parser = EventParser(store, cast(UnitHasher, keys))
        return cls(
            settings=settings,
            database=database,
            store=store,
            metrics=metrics,
            keys=keys,
            recorder=recorder,
            writer=writer,
            parser=parser,
            service=service,
            controller=CanaryController(
                service,
                tick_interval=settings.canary_tick_interval,
                # one controller among control planes on one database (issue 15)
                leadership=leadership_for(database, registry=registry),
            ),
        )

    def start(self) -> None:
        """Start the writer and the canary controller (the app's startup has run)."""
        if self.started:
            return
        self.recorder.hasher = self.keys.load()  # None while the database is down: later
        try:
            with self.database.session() as session:
                self.parser.learn_kinds(repository.metric_kinds(session=session))
        except SQLAlchemyError as exc:  # events still validate; kinds are learned as they come
            log.warning("cannot read the metric kinds recorded so far: %s", exc)
        self.writer.start()
        self.controller.start()
        self.started = True

    def stop(self) -> None:
        """Stop the controller and write out (or journal) every queued record."""
        if not self.started:
            return
        self.controller.stop()
        self.writer.stop()
        self.started = False
