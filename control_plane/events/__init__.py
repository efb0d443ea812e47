"""The experiment record pipeline on NATS JetStream (opt-in: `CP_EVENTS_URL=nats://...`).

    replica or control plane          NATS JetStream           control plane
    recorder --offer()--> EventPublisher --cp.records.<table>--> stream --pull--> EventConsumer
        publisher: in a process of its own (ProcessPublisher; or a thread of the serving
        process), bounded queue, local journal while NATS is down
        stream: deduplicates by Nats-Msg-Id (the record's natural key)
        consumer: batch -> DatabaseSink, acknowledged after the commit

`EventPublisher.offer` has the shape of `BatchWriter.offer`, so the recorder feeds either one.
Delivery is at least once (a record is republished until JetStream acknowledges it, and a
message is redelivered until the consumer acknowledges it after its commit) and storage exactly
once (the message id is the record's natural key, and inserts skip existing keys).

Modules: `messages` (subjects, message ids, payloads), `stream` (stream and consumer setup),
`publisher`, `publisher_process` (the publisher in a child process), `consumer` (its batches
from `_pull`), `metrics`, `loop` (an asyncio loop on its own thread), `wiring` (building both
from settings). Only this package imports nats-py.
"""

from __future__ import annotations

__all__: list[str] = []
