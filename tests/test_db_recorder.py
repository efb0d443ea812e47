"""The database VersionRecorder: versions, attribution and diffs survive restarts, on SQLite and
PostgreSQL, and concurrent writers never share a version number."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import db_support

from control_plane.db import Database, repository
from control_plane.flagstore.db_recorder import DatabaseRecorder
from control_plane.flagstore.flagset import FlagSet, content_hash
from control_plane.flagstore.history import RecordRequest
from control_plane.flagstore.store import FlagStore

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database


def _flag(default: str, weight_a: int = 50) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {"a": "A", "b": "B"},
        "defaultVariant": default,
        "targeting": {"fractional": [["a", weight_a], ["b", 100 - weight_a]]},
    }


def _flag_set(
    flags: dict[str, Any], sources: dict[str, str], evaluators: dict[str, Any] | None = None
) -> FlagSet:
    return FlagSet(
        version=0,
        flags=flags,
        evaluators=evaluators or {},
        sources=sources,
        content_hash=content_hash(flags, evaluators or {}),
    )


def _write(directory: Path, name: str, flags: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps({"flags": flags}, indent=2), encoding="utf-8")


def test_record_stores_every_field(database: Database) -> None:
    """A recorded flag set keeps hash, source, actor, message, document and bucketing."""
    recorder = DatabaseRecorder(database)
    flag_set = _flag_set(
        {"f": _flag("a")}, {"f": "x.flagd.json"}, evaluators={"e": {"in": [1, [1]]}}
    )
    version = recorder.record(
        RecordRequest(flag_set=flag_set, source="api", actor="ops", message="why")
    )
    assert version == 1
    with database.session() as session:
        row = repository.get_version(session=session, version=1)
        assert (row.source, row.actor, row.message) == ("api", "ops", "why")
        assert row.content_hash == flag_set.content_hash
        assert row.document["flags"] == {"f": _flag("a")}
        assert row.document["$evaluators"] == {"e": {"in": [1, [1]]}}
        assert row.document["sources"] == {"f": "x.flagd.json"}
        assert row.bucketing == "flagd-fractional-v2"
        assert row.diff["summary"]["added"] == ["f"]
    latest = recorder.latest()
    assert latest is not None
    assert (latest.version, latest.content_hash) == (1, flag_set.content_hash)
    assert dict(latest.sources) == {"f": "x.flagd.json"}


def test_store_versions_survive_restart(database: Database, tmp_path: Path) -> None:
    """A second store over the same files and database keeps the version number (no new row)."""
    flags_dir = tmp_path / "flags"
    flags_dir.mkdir()
    _write(flags_dir, "a.flagd.json", {"f": _flag("a")})
    store = FlagStore(flags_dir, recorder=DatabaseRecorder(database))
    assert store.reload().version == 1
    _write(flags_dir, "a.flagd.json", {"f": _flag("a", weight_a=30)})
    assert store.reload().version == 2

    restarted = FlagStore(flags_dir, recorder=DatabaseRecorder(database))
    assert restarted.reload().version == 2
    _write(flags_dir, "a.flagd.json", {"f": _flag("b", weight_a=30)})
    assert restarted.reload().version == 3
    with database.session() as session:
        assert repository.count_versions(session=session) == 3
        row = repository.get_version(session=session, version=3)
        assert row.diff["flags"] == [
            {
                "key": "f",
                "change": "changed",
                "source": "a.flagd.json",
                "changes": [
                    {"op": "replace", "path": "/defaultVariant", "before": "a", "after": "b"}
                ],
            }
        ]


def test_same_content_records_once(database: Database) -> None:
    """Recording identical flags from the same files twice (a replica, a restart) reuses it."""
    recorder = DatabaseRecorder(database)
    flag_set = _flag_set({"f": _flag("a")}, {"f": "a.flagd.json"})
    first = recorder.record(RecordRequest(flag_set=flag_set, source="file", actor="w"))
    second = recorder.record(RecordRequest(flag_set=flag_set, source="file", actor="w"))
    assert first == second == 1


def test_rollback_content_gets_a_new_version(database: Database) -> None:
    """Going back to older content is a new version whose diff undoes the change."""
    recorder = DatabaseRecorder(database)
    old = _flag_set({"f": _flag("a")}, {"f": "a.flagd.json"})
    new = _flag_set({"f": _flag("a", 10)}, {"f": "a.flagd.json"})
    assert recorder.record(RecordRequest(flag_set=old, source="file", actor="w")) == 1
    assert recorder.record(RecordRequest(flag_set=new, source="api", actor="ops")) == 2
    assert recorder.record(RecordRequest(flag_set=old, source="rollback", actor="root")) == 3
    with database.session() as session:
        row = repository.get_version(session=session, version=3)
        assert row.content_hash == old.content_hash
        changes = row.diff["flags"][0]["changes"]
        assert {
            "op": "replace",
            "path": "/targeting/fractional/0/1",
            "before": 10,
            "after": 50,
        } in changes


def test_concurrent_records_get_distinct_numbers(database: Database) -> None:
    """Writers racing for the next number all succeed with distinct, consecutive versions."""
    recorders = [DatabaseRecorder(database) for _ in range(6)]
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(recorders))

    def record(index: int) -> None:
        flag_set = _flag_set({"f": _flag("a", index)}, {"f": "a.flagd.json"})
        barrier.wait()
        try:
            results.append(
                recorders[index].record(
                    RecordRequest(flag_set=flag_set, source="api", actor=f"w{index}")
                )
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(recorders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, len(recorders) + 1))


def test_an_edit_is_diffed_against_the_newest_version_even_when_another_process_wrote_it(
    database: Database,
) -> None:
    """The recorder diffs an edit against the version it last recorded, kept in memory, only
    while that is still the newest in the database: a version another control plane recorded
    meanwhile is read back, so every stored diff is against its real predecessor."""
    here, elsewhere = DatabaseRecorder(database), DatabaseRecorder(database)
    flags = {f"flag-{index}": _flag("a") for index in range(20)}
    sources = dict.fromkeys(flags, "f.flagd.json")
    first = here.record(RecordRequest(flag_set=_flag_set(flags, sources), source="file", actor="t"))
    edited = {**flags, "flag-3": _flag("b")}  # the other 19 are the very same objects
    second = here.record(
        RecordRequest(flag_set=_flag_set(edited, sources), source="file", actor="t")
    )
    by_other = {**edited, "flag-7": _flag("a", 10)}
    third = elsewhere.record(
        RecordRequest(flag_set=_flag_set(by_other, sources), source="api", actor="t")
    )
    last = {**by_other, "flag-3": _flag("a"), "flag-12": _flag("b")}
    fourth = here.record(RecordRequest(flag_set=_flag_set(last, sources), source="file", actor="t"))
    assert [first, second, third, fourth] == [1, 2, 3, 4]
    with database.session() as session:
        diffs = {
            version: repository.get_version(session=session, version=version).diff["summary"]
            for version in (2, 3, 4)
        }
    assert diffs[2]["changed"] == ["flag-3"]
    assert diffs[3]["changed"] == ["flag-7"]
    # Against version 3 (written by the other recorder), not version 2 held in memory here:
    # flag-7's change is already in, flag-3 goes back and flag-12 changes.
    assert diffs[4]["changed"] == ["flag-12", "flag-3"]
