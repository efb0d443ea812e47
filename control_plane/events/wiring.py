"""Building the record pipeline from settings (None unless CP_EVENTS_URL is set).

    pipeline = build_pipeline(settings, recorder, keys=..., database=..., registry=...)
    pipeline.start() / pipeline.stop()       # in the app's startup / shutdown

A control plane gets a publisher (its own decisions) and a consumer (everyone's records into
its database); a replica (no database) a publisher only, hashing targeting keys with
CP_EXPOSURE_SALT. The recorder is attached to the publisher, so the in-process writer gets no
records from this process (it still replays what an earlier run left in its journal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from control_plane.db.engine import Database
from control_plane.experiments.hashing import UnitHasher
from control_plane.experiments.journal import Journal
from control_plane.experiments.recorder import ExperimentRecorder
from control_plane.experiments.sink import DatabaseSink
from control_plane.experiments.unit_key import UnitKeys
from control_plane.settings import Settings

if TYPE_CHECKING:  # nats-py (the `nats` extra) is imported only when CP_EVENTS_URL is set
    from control_plane.events.consumer import EventConsumer
    from control_plane.events.publisher import EventPublisher
    from control_plane.events.publisher_process import ProcessPublisher
    from control_plane.events.stream import StreamSettings

__all__ = ["EventPipeline", "build_pipeline", "build_replica_pipeline", "stream_settings"]

log = logging.getLogger(__name__)


def stream_settings(settings: Settings) -> StreamSettings:
    from control_plane.events.stream import StreamSettings

    return StreamSettings(
        stream=settings.events_stream,
        subject_prefix=settings.events_subject_prefix,
        consumer=settings.events_consumer,
        max_bytes=settings.events_stream_max_bytes,
        max_age=settings.events_stream_max_age,
        duplicate_window=settings.events_duplicate_window,
        replicas=settings.events_stream_replicas,
        ack_wait=settings.events_ack_wait,
    )


@dataclass(eq=False)
class EventPipeline:
    """This process's publisher and, in a control plane, its consumer."""

    publisher: EventPublisher | ProcessPublisher
    consumer: EventConsumer | None
    #: What feeds the publisher (a replica's own; a control plane's experiments recorder).
    recorder: ExperimentRecorder

    def start(self) -> None:
        self.publisher.start()
        if self.consumer is not None:
            self.consumer.start()

    def stop(self) -> None:
        self.publisher.stop()
        if self.consumer is not None:
            self.consumer.stop()


def build_pipeline(
    settings: Settings,
    recorder: ExperimentRecorder,
    *,
    keys: UnitKeys | None,
    database: Database | None,
    registry: CollectorRegistry,
) -> EventPipeline | None:
    """The pipeline for `settings`, unstarted, with `recorder` attached to its publisher."""
    if not settings.events_url:
        return None
    try:
        from control_plane.events.consumer import EventConsumer
        from control_plane.events.metrics import EventMetrics
        from control_plane.events.publisher import EventPublisher
        from control_plane.events.publisher_process import ProcessPublisher, PublisherConfig
    except ImportError as exc:
        raise RuntimeError(
            "CP_EVENTS_URL needs nats-py: pip install 'model-flag-control-plane[nats]'"
        ) from exc
    servers = [url.strip() for url in settings.events_url.split(",") if url.strip()]
    options: dict[str, Any] = {}
    if settings.events_token is not None:
        options["token"] = settings.events_token.get_secret_value()
    stream = stream_settings(settings)
    metrics = EventMetrics(registry)

    def ready() -> bool:
        """The publisher asks before preparing records: is the targeting-key key known?"""
        if recorder.hasher is None and keys is not None:
            recorder.hasher = keys.load()
        return recorder.hasher is not None

    publisher: EventPublisher | ProcessPublisher
    if settings.events_publisher_process:

        def key() -> bytes | None:
            """The feeder asks until it is known: the targeting-key key for the child."""
            return recorder.hasher.key if ready() and recorder.hasher is not None else None

        publisher = ProcessPublisher(
            PublisherConfig(
                servers,
                settings.events_journal_dir.resolve(),
                stream,
                options={
                    "queue_size": settings.events_queue_size,
                    "interval": settings.events_publish_interval,
                    "records_per_message": settings.events_records_per_message,
                },
                connect_options=options,
            ),
            key=key,
            queue_size=settings.events_queue_size,
            metrics=metrics,
            priority=settings.record_process_priority,
        )
    else:
        publisher = EventPublisher(
            servers,
            Journal(settings.events_journal_dir.resolve()),
            prepare=recorder.prepare,
            ready=ready,
            stream=stream,
            queue_size=settings.events_queue_size,
            interval=settings.events_publish_interval,
            records_per_message=settings.events_records_per_message,
            metrics=metrics,
            connect_options=options,
        )
    consumer = None
    if database is not None:
        consumer = EventConsumer(
            servers,
            DatabaseSink(database),
            stream=stream,
            batch_size=settings.events_batch_size,
            metrics=metrics,
            connect_options=options,
        )
    recorder.attach(publisher)
    log.info(
        "experiment records go to NATS JetStream at %s (stream %s)%s",
        ", ".join(_without_credentials(url) for url in servers),
        stream.stream,
        "; this control plane stores them" if consumer is not None else "",
    )
    return EventPipeline(publisher, consumer, recorder)


def build_replica_pipeline(
    settings: Settings, *, registry: CollectorRegistry
) -> EventPipeline | None:
    """A replica's pipeline: a recorder hashing with CP_EXPOSURE_SALT, and a publisher."""
    if not settings.events_url or settings.exposure_salt is None:
        return None  # the settings refuse CP_EVENTS_URL without a salt on a replica
    recorder = ExperimentRecorder(
        UnitHasher(settings.exposure_salt.get_secret_value().encode("utf-8"))
    )
    return build_pipeline(settings, recorder, keys=None, database=None, registry=registry)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
