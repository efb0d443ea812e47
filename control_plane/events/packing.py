"""Grouping records into messages: packs of up to `records` records of one table, under a byte
limit well below the server's max_payload; one message each (control_plane.events.messages).

    records --pack()--> packs, each one message: greedily, per table, in order
                    --> oversized: records whose message alone would exceed max_payload

Packing takes the records it is given and never waits for more, so a trickle is published as
small packs at once, a burst as full ones. Per-message costs (nats-server's store, dedup and
PubAck, nats-py's publish, fetch and ack: 25-30 us of CPU a message, bench/events.py) are then
paid once per pack.

`repack` re-forms packs as they were when they were sent (a `Layout` the publisher keeps for
its journal segments), so a pack whose PubAck was lost is sent again with the same message id
and the stream drops the copy it holds; records never sent, or a layout unknown (a dead
publisher's segments), are packed anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from control_plane.events.messages import encode, header_bytes, message_id, pack_id
from control_plane.experiments.records import Record

__all__ = ["PACK_BYTES", "Layout", "Pack", "PackLimits", "pack", "repack"]

#: Payload bytes of a pack of several records, at most (and at most a quarter of the server's
#: max_payload): a pack is stored, delivered and decoded whole, and 100 exposures take ~23 KB.
PACK_BYTES = 256 << 10

#: How a journal segment's records were grouped, in order: n > 0 for a pack of n records as it
#: was made to be sent (it may be in the stream: re-formed as it was, so the stream drops the
#: copy), -n for n records journaled before they were packed (packed anew).
Layout = list[int]


@dataclass(frozen=True)
class PackLimits:
    """Records per message, payload bytes of a pack of several, and the server's max_payload
    (headers and payload of any one message, a pack of one included)."""

    records: int
    bytes: int
    max_payload: int

    @classmethod
    def for_server(cls, records: int, max_payload: int) -> PackLimits:
        return cls(records, min(PACK_BYTES, max_payload // 4), max_payload)


@dataclass(eq=False, slots=True)
class Pack:
    """The records of one message (all of one table), its payload and its message id."""

    table: str
    records: list[Record]
    payload: bytes
    msg_id: str

    @classmethod
    def of(
        cls, table: str, records: list[Record], lines: list[bytes], keys: list[str] | None = None
    ) -> Pack:
        """The pack of `records`, their `lines` and their message ids (`keys`, made here when
        not given: `pack` has them from its size check)."""
        if keys is None:
            keys = [message_id(record) for record in records]
        return cls(table, records, b"\n".join(lines), pack_id(table, keys))

    def fits(self, limits: PackLimits) -> bool:
        size = len(self.payload)
        if size + header_bytes(self.msg_id) > limits.max_payload:
            return False
        return len(self.records) == 1 or (
            len(self.records) <= limits.records and size <= limits.bytes
        )


def pack(records: Sequence[Record], limits: PackLimits) -> tuple[list[Pack], list[Record]]:
    """`records` in packs (per table, in their order), and the records too large to send."""
    tables: dict[str, list[Record]] = {}
    for record in records:
        tables.setdefault(record.table, []).append(record)
    packs: list[Pack] = []
    oversized: list[Record] = []
    for table, rows in tables.items():
        members: list[Record] = []
        lines: list[bytes] = []
        keys: list[str] = []
        size = -1  # bytes of the payload so far (the first line has no separator)
        for record in rows:
            line = encode(record)
            key = message_id(record)
            if len(line) + header_bytes(key) > limits.max_payload:
                oversized.append(record)
                continue
            if members and (len(members) >= limits.records or size + 1 + len(line) > limits.bytes):
                packs.append(Pack.of(table, members, lines, keys))
                members, lines, keys, size = [], [], [], -1
            members.append(record)
            lines.append(line)
            keys.append(key)
            size += 1 + len(line)
        if members:
            packs.append(Pack.of(table, members, lines, keys))
    return packs, oversized


def repack(
    records: Sequence[Record], layout: Layout | None, limits: PackLimits
) -> tuple[list[Pack], list[Record]]:
    """The packs `layout` describes, re-formed as they were sent (each that still fits
    `limits`, of one table); the rest packed anew. No layout, or one that does not add up to
    `records` (a line of the segment was unreadable): all packed anew."""
    if layout is None or sum(abs(count) for count in layout) != len(records):
        return pack(records, limits)
    packs: list[Pack] = []
    oversized: list[Record] = []
    start = 0
    for count in layout:
        members = list(records[start : start + abs(count)])
        start += abs(count)
        if count > 0 and all(record.table == members[0].table for record in members):
            sent = Pack.of(members[0].table, members, [encode(record) for record in members])
            if sent.fits(limits):
                packs.append(sent)
                continue
        more, large = pack(members, limits)
        packs += more
        oversized += large
    return packs, oversized
