"""The experiment record pipeline on NATS JetStream (opt-in: `CP_EVENTS_URL=nats://...`).

    replica or control plane          NATS JetStream           control plane
    recorder --offer()--> EventPublisher --cp.records.<table>--> stream --pull--> EventConsumer
        publisher: in a process of its own (ProcessPublisher; or a thread of the serving
        process), bounded queue, records packed up to CP_EVENTS_RECORDS_PER_MESSAGE per
        message, local journal while NATS is down
        stream: deduplicates by Nats-Msg-Id (a digest of the pack's record keys; the record's
        natural key for a pack of one)
        consumer: unpack, batch -> DatabaseSink, each message acknowledged after the commit

`EventPublisher.offer` has the shape of `BatchWriter.offer`, so the recorder feeds either one.
Delivery is at least once (a record is republished until JetStream acknowledges it, and a
message is redelivered until the consumer acknowledges it after its commit) and storage exactly
once (a pack sent again has the same message id, and inserts skip existing keys, whatever
pack a record comes in).

Modules: `messages` (subjects, message ids, payloads), `packing` (records into messages),
`stream` (stream and consumer setup), `publisher`, `publisher_process` (the publisher in a
child process), `consumer` (its batches from `_pull`), `metrics`, `loop` (an asyncio loop on
its own thread), `wiring` (building both from settings). Only this package imports nats-py.
"""

from __future__ import annotations

__all__: list[str] = []
