"""Experiment records as journal lines: an exposure's line is the one json.dumps makes, byte
for byte, and every line reads back as the record it was made from."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.experiments.records import CALL_SAMPLES, EXPOSURES, OUTCOME_EVENTS, Record


def _exposure(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "decision_id": "0a1b2c3d4e5f000000000001",
        "flag": "ab-test-router",
        "variant": "model-a",
        "unit": "f" * 64,
        "flag_set_version": 3,
        "reason": "TARGETING_MATCH",
        "at": 1764650000.123456,
    }
    row.update(changes)
    return row


ROWS = [
    (EXPOSURES, _exposure()),
    (EXPOSURES, _exposure(unit=None)),
    (EXPOSURES, _exposure(flag='a "quoted" \\ flag\n\t', variant="é ☃ \ud800 \u2028")),
    (EXPOSURES, _exposure(flag_set_version=0, at=1e-7)),
    (EXPOSURES, _exposure(flag_set_version=10**20, at=2.5e10)),
    # Shapes the recorder does not make take json.dumps's own path.
    (EXPOSURES, _exposure(flag_set_version=True)),
    (EXPOSURES, _exposure(at=1764650000)),
    (EXPOSURES, _exposure(at=float("nan"))),
    (EXPOSURES, _exposure(unit=7)),
    (EXPOSURES, _exposure(extra="x")),
    (EXPOSURES, {key: _exposure()[key] for key in reversed(_exposure())}),
    (OUTCOME_EVENTS, {"id": "e1", "metric": "m", "value": 1.5, "at": 1.0, "unit": None}),
    (CALL_SAMPLES, {"decision_id": "d", "variant": "a", "seconds": 0.01, "at": 2.0}),
]


@pytest.mark.parametrize(("table", "row"), ROWS)
def test_a_line_is_what_json_dumps_makes_and_reads_back(table: str, row: dict[str, Any]) -> None:
    """Every record's line equals json.dumps of {"table", "row"} and parses back to it."""
    line = Record(table, row).to_line()
    assert line == json.dumps({"table": table, "row": row}, separators=(",", ":"))
    back = Record.from_line(line)
    assert back.table == table
    assert json.dumps(back.row) == json.dumps(row)
