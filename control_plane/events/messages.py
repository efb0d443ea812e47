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

import json

from control_plane.experiments.records import CALL_SAMPLES, OUTCOME_EVENTS, TABLES, Record

__all__ = ["MSG_ID_HEADER", "decode", "encode", "message_id", "subject"]

MSG_ID_HEADER = "Nats-Msg-Id"

#: Record.to_line's JSON, with one encoder made once: `json.dumps` with separators builds a
#: JSONEncoder per call (a fifth of encoding a record).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
#: `json.loads` spends more on its wrapper (type checks, whitespace regexes) than on parsing a
#: record; `raw_decode` on the decoded text is half the consumer's decoding cost.
_DECODER = json.JSONDecoder()


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
    """The bytes of `record.to_line()`."""
    return _ENCODER.encode({"table": record.table, "row": record.row}).encode("utf-8")


def decode(payload: bytes) -> Record:
    """The record of a message; ValueError when the payload is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("not UTF-8") from exc
    if text[:1].isspace():  # json.loads would take it
        text = text.lstrip()
    data, end = _DECODER.raw_decode(text)  # JSONDecodeError is a ValueError
    if text[end:].strip():
        raise ValueError("more than one JSON value")
    # Record.from_line's checks, on the parsed value.
    if (
        not isinstance(data, dict)
        or data.get("table") not in TABLES
        or not isinstance(data.get("row"), dict)
    ):
        raise ValueError("not a record")
    return Record(data["table"], data["row"])
