"""The JetStream stream and durable consumer of the record pipeline, made idempotently at start.

Both the publisher and the consumer call `ensure_stream` when they connect, so whichever comes
first makes it; an existing stream whose configuration differs (limits changed in settings) is
updated in place. The defaults, and why:

- retention `workqueue`: a message is deleted once the consumer acknowledges it (after the
  database committed it), so the stream holds only the backlog that is not in the database yet;
- `max_bytes` (CP_EVENTS_STREAM_MAX_BYTES, 1 GiB) with discard `new`: a full stream refuses
  new messages instead of deleting unstored ones; publishers then keep records in their local
  journal until there is room, so a long database outage fills disks, never loses records;
- `max_age` (CP_EVENTS_STREAM_MAX_AGE, 7 days; 0 = none): the one limit that does drop records,
  for backlogs nobody came to store within a week;
- `duplicate_window` (CP_EVENTS_DUPLICATE_WINDOW, 2 minutes): a republished message id inside
  it is acknowledged and dropped by the server; later duplicates are skipped by the inserts;
- file storage, one replica (a single nats-server; set CP_EVENTS_STREAM_REPLICAS=3 on a cluster).

The consumer is one durable pull consumer (CP_EVENTS_CONSUMER) shared by every control plane:
each fetch takes messages no other fetch holds, explicit acks, `ack_wait`
(CP_EVENTS_ACK_WAIT) before an unacknowledged message is delivered again.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

__all__ = ["StreamSettings", "ensure_consumer", "ensure_stream"]


@dataclass(frozen=True)
class StreamSettings:
    """Names and limits of the stream and its consumer (see the module docstring)."""

    stream: str = "CP_RECORDS"
    subject_prefix: str = "cp.records"
    consumer: str = "cp-records-writer"
    max_bytes: int = 1 << 30
    max_age: float = 7 * 24 * 3600.0
    duplicate_window: float = 120.0
    replicas: int = 1
    ack_wait: float = 30.0
    max_ack_pending: int = 50_000

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            description="Experiment records (exposures, outcome events, backend call samples)",
            subjects=[f"{self.subject_prefix}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            max_bytes=self.max_bytes,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
        )

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer,
            description="Writes experiment records to the control plane database",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            filter_subject=f"{self.subject_prefix}.>",
        )


async def ensure_stream(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the stream, or bring an existing one to `settings`."""
    config = settings.stream_config()
    try:
        await js.stream_info(settings.stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            pass  # made meanwhile by another process: update it below
    await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create the durable consumer, or bring an existing one to `settings`."""
    await js.add_consumer(settings.stream, settings.consumer_config())
