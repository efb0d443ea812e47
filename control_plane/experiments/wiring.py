"""Wiring experiments and canaries into one app: one call in the app factory.

    experiments = install_experiments(app, components, database=database)

creates the (unstarted) parts, includes the `/v1/events`, `/v1/experiments` and `/v1/canaries`
routes, and hooks `Experiments.start` into the app's lifespan, right after the app's own
startup (the dispatcher and the migrated database exist by then). Start loads the targeting key
HMAC key, attaches the decision and dispatch listeners, starts the writer and the canary
controller threads, and registers `stop` in `components.closers`, so shutdown flushes the
queue (what the database does not take stays in the journal for the next start).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.engine import Database
from control_plane.experiments import repository
from control_plane.experiments.canary.controller import CanaryController
from control_plane.experiments.canary.intervals import IntervalAnalysis
from control_plane.experiments.canary.service import CanaryService
from control_plane.experiments.events import EventParser
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.journal import Journal
from control_plane.experiments.metrics import ExperimentMetrics
from control_plane.experiments.recorder import ExperimentRecorder
from control_plane.experiments.sink import DatabaseSink
from control_plane.experiments.unit_key import UnitKeys
from control_plane.experiments.writer import BatchWriter
from control_plane.flagstore.editor import FlagEditor
from control_plane.http.components import Components

__all__ = ["Experiments", "install_experiments"]

log = logging.getLogger(__name__)


class Experiments:
    """The experiment and canary parts of one app; on `app.state.experiments`."""

    def __init__(self, app: FastAPI, components: Components, database: Database,
                 editor: FlagEditor | None = None) -> None:
        self.app = app
        self.components = components
        self.database = database
        self._editor = editor
        self.metrics = ExperimentMetrics(components.metrics.registry)
        self.hasher: UnitHasher | None = None
        self.recorder: ExperimentRecorder | None = None
        self.writer: BatchWriter | None = None
        self.parser: EventParser | None = None
        self.service: CanaryService | None = None
        self.controller: CanaryController | None = None
        self.started = False

    def start(self) -> None:
        """Start recording and the canary controller (the app's startup has run).

        Nothing here needs the database to answer (issue 9: routing never depends on it):
        the targeting key may come later (control_plane.experiments.unit_key), and records
        wait in the journal until the database takes them.
        """
        if self.started:
            return
        settings = self.components.settings
        journal_dir = settings.exposure_spill_dir.resolve()
        keys = UnitKeys(settings.exposure_salt, self.database, journal_dir,
                        retry_interval=settings.exposure_retry_interval)
        hasher = keys.load()
        recorder = ExperimentRecorder(hasher)

        def ready() -> bool:
            if recorder.hasher is None:
                recorder.hasher = self.hasher = keys.load()
            return recorder.hasher is not None

        writer = BatchWriter(
            DatabaseSink(self.database), Journal(journal_dir),
            prepare=recorder.prepare, queue_size=settings.exposure_queue_size,
            batch_size=settings.exposure_batch_size,
            journal_interval=settings.exposure_journal_interval,
            flush_interval=settings.exposure_flush_interval,
            buffer_limit=settings.exposure_buffer_limit,
            retry_interval=settings.exposure_retry_interval,
            write_timeout=settings.exposure_write_timeout, metrics=self.metrics, ready=ready)
        recorder.attach(writer)
        try:
            with self.database.session() as session:
                kinds = repository.metric_kinds(session=session)
        except SQLAlchemyError as exc:  # events still validate; kinds are learned as they come
            log.warning("cannot read the metric kinds recorded so far: %s", exc)
            kinds = {}
        editor = self._editor or _admin_editor(self.app) or FlagEditor(self.components.store)

        def track(flags: frozenset[str]) -> None:
            recorder.tracked_flags = flags

        service = CanaryService(database=self.database, store=self.components.store,
                                editor=editor, metrics=self.metrics, on_tracked=track,
                                analysis=IntervalAnalysis.from_settings(
                                    settings, self.components.metrics.registry))
        controller = CanaryController(service, tick_interval=settings.canary_tick_interval)
        self.hasher, self.recorder, self.writer = hasher, recorder, writer
        # UnitKeys hashes like a UnitHasher once the key is known, and refuses (503) before.
        self.parser = EventParser(self.components.store, hasher or cast(UnitHasher, keys),
                                  kinds)
        self.service, self.controller = service, controller

        writer.start()
        self.components.decider.listeners.append(recorder.on_decision)
        if self.components.dispatcher is not None:
            self.components.dispatcher.listeners.append(recorder.on_dispatch)
        else:
            log.warning("no dispatcher at experiments start: backend calls are not recorded")
        controller.start()
        self.components.closers.append(self.stop)
        self.started = True

    def stop(self) -> None:
        """Stop the controller, detach the listeners, write out (or spill) every record."""
        if not self.started:
            return
        assert self.controller is not None
        assert self.writer is not None
        assert self.recorder is not None
        self.controller.stop()
        _discard(self.components.decider.listeners, self.recorder.on_decision)
        if self.components.dispatcher is not None:
            _discard(self.components.dispatcher.listeners, self.recorder.on_dispatch)
        self.writer.stop()
        self.started = False


def install_experiments(app: FastAPI, components: Components, *, database: Database,
                        editor: FlagEditor | None = None,
                        start_with_app: bool = True) -> Experiments:
    """Create the parts, include the routes, and (by default) start them with the app.

    `editor` defaults to the admin API's (`app.state.admin.editor`) when installed, so flag
    writes of operators and canaries are serialised by one editor.
    """
    from control_plane.http import canary_api, experiments_api

    experiments = Experiments(app, components, database, editor)
    app.state.experiments = experiments
    app.include_router(experiments_api.router)
    app.include_router(canary_api.router)
    if start_with_app:
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(application: Any) -> AsyncIterator[Any]:
            async with inner(application) as state:
                experiments.start()
                yield state

        app.router.lifespan_context = lifespan
    return experiments


def _admin_editor(app: FastAPI) -> FlagEditor | None:
    admin = getattr(app.state, "admin", None)
    editor = getattr(admin, "editor", None)
    return editor if isinstance(editor, FlagEditor) else None


def _discard(listeners: list[Any], listener: Any) -> None:
    if listener in listeners:
        listeners.remove(listener)
