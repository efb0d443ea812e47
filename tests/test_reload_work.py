"""An edit of one flag of many costs work for that flag only: counted (never timed) at each step
of a reload, from validation to the version row, the digest and the compiled evaluator."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import db_support
import pytest

from control_plane.db import Database, repository
from control_plane.db.json_text import JsonText, dump_json
from control_plane.distribution._document_text import DefaultViewTexts, dumps, dumps_by_member
from control_plane.distribution.selector import Selector
from control_plane.flagstore.db_recorder import DatabaseRecorder, flag_set_document
from control_plane.flagstore.flagset import FlagSet, content_hash
from control_plane.flagstore.store import FlagStore
from control_plane.flagstore.version_diff import describe_diff
from control_plane.routing.compiled_decisions import CompiledDecider
from control_plane.routing.decisions import DecisionIds
from providers.compiled import CompiledProvider

database_url = db_support.database_url
empty_database = db_support.empty_database
database = db_support.database

FILES = 10
PER_FILE = 20


def _flag(index: int, weight: int = 50) -> dict[str, Any]:
    return {
        "state": "ENABLED",
        "variants": {
            "a": {"backend": "a", "url": f"http://a/{index}"},
            "b": {"backend": "b", "url": f"http://b/{index}"},
        },
        "defaultVariant": "a",
        "targeting": {"fractional": [["a", weight], ["b", 100 - weight]]},
    }


def _write(directory: Path, number: int, edited: dict[int, int] | None = None) -> None:
    edited = edited or {}
    flags = {
        f"flag-{index}": _flag(index, edited.get(index, 50))
        for index in range(number * PER_FILE, (number + 1) * PER_FILE)
    }
    (directory / f"part-{number:02d}.flagd.json").write_text(json.dumps({"flags": flags}))


@pytest.fixture
def flags_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "flags"
    directory.mkdir()
    for number in range(FILES):
        _write(directory, number)
    return directory


def test_a_one_flag_edit_validates_hashes_and_stores_that_flag_alone(
    flags_dir: Path, database: Database
) -> None:
    """Of 200 flags in 10 files, an edit of one re-reads its file, checks one flag, looks at one
    file's checks, serialises one flag for the digest and one for the version row, and its
    diff names that flag alone."""
    recorder = DatabaseRecorder(database)
    store = FlagStore(flags_dir, recorder=recorder)
    first = store.reload()
    cache, hasher = store._cache, store._hasher
    read, checked, files = cache.files_read, cache.checks.checked, cache.checks.files_checked
    hashed, stored = hasher.encoded, recorder.texts.flags.encoded
    assert (hashed, stored) == (FILES * PER_FILE, FILES * PER_FILE)

    _write(flags_dir, 3, {65: 20})
    second = store.reload()

    assert second.version == first.version + 1
    assert cache.files_read - read == 1
    assert cache.checks.checked - checked == 1
    assert cache.checks.files_checked - files == 1
    assert hasher.encoded - hashed == 1
    assert recorder.texts.flags.encoded - stored == 1
    assert second.content_hash == content_hash(dict(second.flags), dict(second.evaluators))
    with database.session() as session:
        row = repository.get_version(session=session, version=second.version)
        assert row.document == json.loads(json.dumps(flag_set_document(second)))
        assert row.diff["summary"]["changed"] == ["flag-65"]
        assert describe_diff(row.diff) == [
            "~ flag-65 /targeting/fractional/0/1: 50 -> 20",
            "~ flag-65 /targeting/fractional/1/1: 50 -> 80",
        ]


def test_a_version_document_is_stored_as_the_text_it_carries(tmp_path: Path) -> None:
    """The engine stores a JsonText as its own text (no second serialisation); anything else
    is serialised as before, and a JsonText read back is the same document."""
    members = {"flags": {"f": {"state": "ENABLED"}}, "$evaluators": {}, "sources": {"f": "x"}}
    text = '{"$evaluators":{},"flags":{"f":{"state":"ENABLED"}},"sources":{"f":"x"}}'
    assert dump_json(JsonText(members, text)) is text
    assert json.loads(dump_json(members)) == members
    flag_set = FlagSet(
        version=0,
        flags=members["flags"],
        sources=members["sources"],
        content_hash=content_hash(members["flags"]),
    )
    recorder = DatabaseRecorder(Database.from_url(f"sqlite:///{tmp_path / 'v.db'}"))
    document = recorder.texts.document(flag_set)
    assert json.loads(document.text) == document == flag_set_document(flag_set)


def _serving(flags_dir: Path) -> tuple[FlagStore, CompiledDecider, CompiledProvider]:
    """A loaded store with the decide path and the OpenFeature provider listening, as served."""
    store = FlagStore(flags_dir)
    decider = CompiledDecider(store, ids=DecisionIds(), listeners=[])
    provider = CompiledProvider(store)
    store.subscribe(decider.update)
    provider.initialize(None)  # type: ignore[arg-type]  # the context is not read
    store.reload()
    return store, decider, provider


def test_the_decider_and_the_provider_share_one_compiled_flag_set(flags_dir: Path) -> None:
    """Both listeners are fed the store's one stamped document and compile it once; an edit of
    one flag recompiles that flag and reports it alone as changed."""
    store, decider, provider = _serving(flags_dir)
    first = decider.flag_set
    assert first is provider.flag_set

    _write(flags_dir, 7, {150: 10})
    store.reload()
    second = provider.flag_set
    assert second is decider.flag_set
    assert second.reused == FILES * PER_FILE - 1
    assert second.changed_keys(first) == ["flag-150"]
    assert second.evaluate("flag-150", "user-1").variant in {"a", "b"}
    provider.shutdown()


def test_reloads_leave_no_cyclic_garbage_and_versions_do_not_keep_each_other(
    flags_dir: Path,
) -> None:
    """What a reload replaces is freed by reference counting (so freezing the heap after a load
    leaks nothing), and a compiled version does not keep the one before it alive."""
    store, _decider, provider = _serving(flags_dir)
    oldest = weakref.ref(provider.flag_set)
    for edit in range(3):  # warm up: first-use caches
        _write(flags_dir, 2, {45: 10 + edit})
        store.reload()
        provider.flag_set.evaluate("flag-45", "user-1")
    gc.collect()
    gc.disable()
    try:
        for edit in range(10):
            _write(flags_dir, 2, {45: 30 + edit})
            store.reload()
            provider.flag_set.evaluate("flag-45", "user-1")
        assert oldest() is None
        assert gc.collect() == 0
    finally:
        gc.enable()
        provider.shutdown()


def test_a_store_without_its_watcher_leaves_the_collector_alone(flags_dir: Path) -> None:
    """Only a serving store (its watcher running) freezes the heap: a CLI or a test that
    reloads by hand does not."""
    frozen = gc.get_freeze_count()
    store = FlagStore(flags_dir)
    store.reload()
    _write(flags_dir, 1, {25: 5})
    store.reload()
    assert gc.get_freeze_count() == frozen


def test_the_sync_service_writes_the_same_text_flag_by_flag(flags_dir: Path) -> None:
    """The default view a replica receives is byte for byte the json.dumps of the document,
    with file metadata and evaluators, and after an edit of one flag only that flag is
    serialised again; any other selector's document is written member by member the same."""
    (flags_dir / "meta.flagd.json").write_text(
        json.dumps(
            {
                "metadata": {"team": "search", "ünicode": "ß"},
                "$evaluators": {"cn": {"==": [{"var": "region"}, "cn"]}},
                "flags": {
                    "inheriting": {**_flag(900), "metadata": {"owner": "x"}},
                    "with-ref": {**_flag(901), "targeting": {"if": [{"$ref": "cn"}, "b", "a"]}},
                },
            }
        )
    )
    store = FlagStore(flags_dir)
    texts = DefaultViewTexts()
    for edit in range(2):
        flag_set = store.reload()
        assert texts.text(flag_set) == dumps(flag_set.to_flagd())
        selected = Selector.parse("source=meta").document(flag_set)
        assert dumps_by_member(selected) == dumps(selected)
        _write(flags_dir, 4, {85: 40 + edit})
    assert texts.encoded == FILES * PER_FILE + 2 + 1
