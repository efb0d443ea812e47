"""The JetStream publisher in a process of its own, so publishing never takes the serving
process's CPU or GIL.

    request path --offer()--> deque --feeder thread, every feed_interval--> pipe (marshalled
        batches) --> publisher process: EventPublisher (NATS, journal while it is away;
        control_plane.events.publisher) --status every status_interval--> parent (metrics)

In the serving process's own thread the publisher cost about 35 us of that process's CPU per
decision (bench/events.py); here the request path appends a tuple to a deque and the feeder
marshals a batch now and then. The plumbing is the experiment writer's
(control_plane.experiments.writer_process.ProcessWriter) with the same crash rules:

- The serving process is killed (`kill -9`): the publisher process reads the pipe to its end,
  publishes (or journals) what it got, and exits. Lost: at most one `feed_interval` of records
  still in the deque.
- The publisher process dies: the feeder starts another after `restart_delay`; the new one
  replays what the dead one journaled; what was in the pipe is lost and logged.
- Stop: the feeder sends everything queued and closes the pipe; the publisher process stops
  its EventPublisher (publish, replay the journal while NATS answers, journal the rest).

The serving process keeps the `control_plane_events_*` publisher series, fed by the child's
status messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.events.metrics import EventMetrics
from control_plane.events.publisher import PublisherCounts
from control_plane.events.stream import StreamSettings
from control_plane.experiments.writer_process import ChildSink, ProcessWriter

__all__ = ["ProcessPublisher", "PublisherConfig"]

log = logging.getLogger(__name__)

_PUBLISHED = "control_plane_events_published"


@dataclass(frozen=True)
class PublisherConfig:
    """Everything the publisher process needs to build its EventPublisher (picklable)."""

    servers: list[str]
    journal_dir: Path
    stream: StreamSettings
    #: EventPublisher keyword arguments (queue_size, interval, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: nats.connect keyword arguments (a token), never logged.
    connect_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def open(self, recorder: Any) -> ChildSink:
        """In the child: the EventPublisher, preparing records with `recorder`."""
        return _PublisherChild(self, recorder)


class _PublisherChild:
    def __init__(self, config: PublisherConfig, recorder: Any) -> None:
        from prometheus_client import CollectorRegistry

        from control_plane.events.publisher import EventPublisher
        from control_plane.experiments.journal import Journal

        # The child's own registry: its counters go to the parent as status, by table.
        self._registry = CollectorRegistry()
        self._publisher = EventPublisher(
            config.servers,
            Journal(config.journal_dir),
            prepare=recorder.prepare,
            ready=recorder.ready,
            stream=config.stream,
            metrics=EventMetrics(self._registry),
            connect_options=config.connect_options,
            **config.options,
        )

    def start(self) -> None:
        self._publisher.start()

    def offer(self, item: Any) -> bool:
        return self._publisher.offer(item)

    def flush(self, timeout: float) -> bool:
        return self._publisher.flush(timeout)

    def status(self) -> dict[str, Any]:
        publisher = self._publisher
        tables: dict[tuple[str, str], int] = {}
        for family in self._registry.collect():
            if family.name == _PUBLISHED:
                for sample in family.samples:
                    if sample.name == f"{_PUBLISHED}_total":
                        key = (sample.labels["table"], sample.labels["result"])
                        tables[key] = int(sample.value)
        return {
            "connected": publisher.connected,
            "pending": publisher.pending,
            "queued": publisher.queued,
            "counts": publisher.counts.as_dict(),
            "tables": tables,
        }

    def stop(self) -> None:
        self._publisher.stop()


class ProcessPublisher(ProcessWriter):
    """The parent side of the publisher process; `offer`, `flush`, `start`, `stop`, `counts`,
    `connected` and `pending` as EventPublisher has them."""

    role = "the event publisher process"
    counts: PublisherCounts  # type: ignore[assignment]

    def __init__(
        self,
        config: PublisherConfig,
        *,
        key: Callable[[], bytes | None],
        queue_size: int = 100_000,
        metrics: EventMetrics | None = None,
        feed_interval: float = 0.05,
        restart_delay: float = 1.0,
        priority: str = "batch",
    ) -> None:
        super().__init__(
            config,
            key=key,
            queue_size=queue_size,
            feed_interval=feed_interval,
            restart_delay=restart_delay,
            priority=priority,
        )
        self.counts = PublisherCounts()
        self._status = {"connected": False, "pending": 0, "queued": 0}
        self._event_metrics = metrics
        if metrics is not None:
            metrics.queued.set_function(lambda: float(self.queued))
            metrics.journal_pending.set_function(lambda: float(self.pending))
            metrics.connected.labels("publisher").set_function(
                lambda: 1.0 if self.connected else 0.0
            )

    @property
    def connected(self) -> bool:
        """Whether the publisher process is connected to NATS (as of its last status)."""
        return bool(self._status.get("connected"))

    @property
    def pending(self) -> int:
        """Records in the publisher process's journal (or memory) waiting for NATS."""
        return int(self._status.get("pending", 0))

    @property
    def queued(self) -> int:
        """Records on their way: in this process's queue, or queued in the child."""
        return len(self._queue) + int(self._status.get("queued", 0))

    def _records_counter(self) -> Any:
        metrics = self._event_metrics
        return metrics.published if metrics is not None else None
