"""What the experiment writer stores: a table name and one JSON-ready row.

Rows are plain dicts of column values with times as epoch seconds, so the same record can be
inserted into the database or written as one line of a spill file and read back unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["CALL_SAMPLES", "EXPOSURES", "OUTCOME_EVENTS", "TABLES", "Record"]

EXPOSURES = "exposures"
OUTCOME_EVENTS = "outcome_events"
CALL_SAMPLES = "call_samples"
TABLES = (EXPOSURES, OUTCOME_EVENTS, CALL_SAMPLES)

#: json.dumps with separators builds a new encoder per call: half the cost of a journal line.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Record:
    table: str
    row: dict[str, Any]

    def to_line(self) -> str:
        return _encode({"table": self.table, "row": self.row})

    @classmethod
    def from_line(cls, line: str) -> Record:
        """Parse one spill line; ValueError when it is not a record (a torn last line)."""
        data = json.loads(line)
        if (
            not isinstance(data, dict)
            or data.get("table") not in TABLES
            or not isinstance(data.get("row"), dict)
        ):
            raise ValueError("not a record")
        return cls(data["table"], data["row"])
