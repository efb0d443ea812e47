"""What travels on the stream: one message per record, on a subject per table, with the
record's natural key as its JetStream message id.

    subject     <prefix>.<table>                  e.g. cp.records.exposures
    Nats-Msg-Id <table>:<natural key>             e.g. exposures:9f2c..., call_samples:9f2c...:v2
    payload     Record.to_line() (UTF-8 JSON)     {"table": "exposures", "row": {...}}

The table is part of the id because an exposure and its call sample share a decision id and
JetStream deduplicates per stream, not per subject. A record published twice within the
stream's duplicate window is stored once in the stream; past it, the database insert skips it.
"""

from __future__ import annotations

from control_plane.experiments.records import CALL_SAMPLES, OUTCOME_EVENTS, Record

__all__ = ["MSG_ID_HEADER", "decode", "encode", "message_id", "subject"]

MSG_ID_HEADER = "Nats-Msg-Id"


def subject(prefix: str, record: Record) -> str:
    return f"{prefix}.{record.table}"


def message_id(record: Record) -> str:
    """The record's natural key (the key its table's insert skips on), prefixed by the table."""
    row = record.row
    if record.table == OUTCOME_EVENTS:
        return f"{OUTCOME_EVENTS}:{row['id']}"
    if record.table == CALL_SAMPLES:
        return f"{CALL_SAMPLES}:{row['decision_id']}:{row['variant']}"
    return f"{record.table}:{row['decision_id']}"


def encode(record: Record) -> bytes:
    return record.to_line().encode("utf-8")


def decode(payload: bytes) -> Record:
    """The record in `payload`; ValueError when it is none (not UTF-8, not a record)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8") from exc
    return Record.from_line(text)
