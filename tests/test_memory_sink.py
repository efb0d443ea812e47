"""The writer's RecordSink seam with its shipped fake: the real BatchWriter and Journal over
MemorySink, through an outage, a replay and a record refused for its data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from control_plane.experiments.journal import Journal
from control_plane.experiments.memory_sink import MemorySink
from control_plane.experiments.records import EXPOSURES, Record
from control_plane.experiments.writer import BatchWriter


def _prepare(item: Any) -> Record:
    return Record(EXPOSURES, {"decision_id": item, "flag": "f", "variant": "a"})


def _writer(sink: MemorySink, directory: Path) -> BatchWriter:
    return BatchWriter(
        sink,
        Journal(directory),
        prepare=_prepare,
        journal_interval=0.01,
        flush_interval=0.01,
        retry_interval=0.02,
    )


def test_records_reach_the_sink_once_each(tmp_path: Path) -> None:
    """Offered records are stored; offered twice, a decision is stored once (natural key)."""
    sink = MemorySink()
    writer = _writer(sink, tmp_path)
    writer.start()
    try:
        for index in range(100):
            assert writer.offer(f"d{index}")
        assert writer.offer("d5")
        assert writer.flush(timeout=10)
    finally:
        writer.stop()
    assert sorted(row["decision_id"] for row in sink.stored(EXPOSURES)) == sorted(
        f"d{index}" for index in range(100)
    )


def test_an_outage_keeps_records_until_the_sink_is_back(tmp_path: Path) -> None:
    """With the sink down nothing is lost: records wait (journaled) and go in once it is up."""
    sink = MemorySink()
    sink.down = True
    writer = _writer(sink, tmp_path)
    writer.start()
    try:
        for index in range(50):
            writer.offer(f"o{index}")
        assert not writer.flush(timeout=0.5)  # cannot complete while down
        assert sink.stored(EXPOSURES) == []
        sink.down = False
        assert writer.flush(timeout=10)
    finally:
        writer.stop()
    assert len(sink.stored(EXPOSURES)) == 50


def test_a_record_refused_for_its_data_does_not_block_the_rest(tmp_path: Path) -> None:
    """One bad record is set aside (counted); every other record of its batch is stored."""
    sink = MemorySink(refuse=lambda record: record.row["decision_id"] == "bad")
    writer = _writer(sink, tmp_path)
    writer.start()
    try:
        for name in ("a", "bad", "b"):
            writer.offer(name)
        writer.flush(timeout=10)
    finally:
        writer.stop()
    assert sorted(row["decision_id"] for row in sink.stored(EXPOSURES)) == ["a", "b"]
