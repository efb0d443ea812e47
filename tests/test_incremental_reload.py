"""Incremental reload: reusing what the last reload read and checked changes no outcome.

Each test runs two flag stores over the same sequence of edits: one as shipped (incremental),
one whose reader and hasher redo everything from scratch every time; both must serve equal
flag sets and report equal issues, refusals and warnings after every edit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.errors import FlagValidationError
from control_plane.flagstore import FlagSet, FlagStore
from control_plane.flagstore.digest import ContentHasher
from control_plane.flagstore.flagset import content_hash
from control_plane.flagstore.incremental import ReloadCache
from control_plane.flagstore.loader import check_files, read_flag_files


class _FromScratch:
    """The store's cache and hasher, replaced by the plain functions they stand for."""

    def check_files(self, files: Any) -> Any:
        return check_files(files)

    def digest(self, *args: Any, **kwargs: Any) -> str:
        return content_hash(*args, **kwargs)


def _scratch_store(directory: Path) -> FlagStore:
    store = FlagStore(directory, deletion_settle=0)
    store._cache = _FromScratch()  # type: ignore[assignment]
    store._hasher = _FromScratch()  # type: ignore[assignment]
    return store


def _flag(index: int, variant: int = 0, *, ref: bool = False, meta: str = "") -> dict[str, Any]:
    targeting: Any = {"fractional": [["a", 50 + variant % 7], ["b", 50]]}
    if ref:
        targeting = {"if": [{"$ref": "testers"}, "b", "a"]}
    flag: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {
            name: {"backend": f"m-{name}", "url": f"http://127.0.0.1:{9000 + index}/{variant}"}
            for name in ("a", "b")
        },
        "defaultVariant": "a",
        "targeting": targeting,
    }
    if meta:
        flag["metadata"] = {"flagSetId": meta}
    return flag


def _write(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2))


def _same(left: FlagSet, right: FlagSet) -> None:
    assert left.content_hash == right.content_hash
    assert dict(left.flags) == dict(right.flags)
    assert {k: dict(v) for k, v in left.sets.items()} == {k: dict(v) for k, v in right.sets.items()}
    assert dict(left.sources) == dict(right.sources)
    assert dict(left.evaluators) == dict(right.evaluators)
    assert {k: dict(v) for k, v in left.file_metadata.items()} == {
        k: dict(v) for k, v in right.file_metadata.items()
    }
    assert left.to_flagd() == right.to_flagd()


def _reload_both(incremental: FlagStore, scratch: FlagStore) -> None:
    outcomes: list[list[dict[str, Any]] | None] = []
    for store in (incremental, scratch):
        try:
            store.reload()
            outcomes.append(None)
        except FlagValidationError as exc:
            outcomes.append([issue.to_dict() for issue in exc.issues])
    assert outcomes[0] == outcomes[1]
    if incremental.loaded or scratch.loaded:
        _same(incremental.current, scratch.current)
    left, right = incremental.status(), scratch.status()
    for member in ("lastAttemptAt", "lastSuccessAt", "directory"):
        left.pop(member)
        right.pop(member)
    assert left == right


_EDITS = (
    "flag",
    "flag",
    "flag",
    "evaluator",
    "file-metadata",
    "delete-flag",
    "add-flag",
    "rename-file",
    "invalid-flag",
    "syntax-error",
    "duplicate-key",
    "flag-set-id",
    "unsafe-text",
    "whitespace",
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1), edits=st.lists(st.sampled_from(_EDITS), min_size=1, max_size=8)
)
def test_incremental_reload_serves_what_a_full_reload_serves(
    tmp_path_factory: pytest.TempPathFactory, seed: int, edits: list[str]
) -> None:
    """After any sequence of edits (a changed flag, evaluator or file-level metadata, a deleted
    or added flag, a renamed file, invalid flags, broken files), the incremental store serves
    the same flag set and reports the same issues as one that re-reads everything."""
    rng = random.Random(seed)
    directory = tmp_path_factory.mktemp("flags")
    documents: dict[str, dict[str, Any]] = {
        f"f{number}.flagd.json": {
            "metadata": {"owner": f"team-{number}"},
            "flags": {f"k{number}-{index}": _flag(index, ref=index % 3 == 0) for index in range(6)},
        }
        for number in range(3)
    }
    documents["f0.flagd.json"]["$evaluators"] = {
        "testers": {"in": [{"var": "targetingKey"}, ["alice"]]}
    }
    for name, document in documents.items():
        _write(directory / name, document)
    incremental, scratch = FlagStore(directory, deletion_settle=0), _scratch_store(directory)
    _reload_both(incremental, scratch)
    for step, edit in enumerate(edits):
        name = rng.choice(sorted(documents))
        document = documents[name]
        flags = document.setdefault("flags", {})
        key = rng.choice(sorted(flags)) if flags else None
        raw: str | None = None
        if edit == "flag" and key:
            flags[key] = _flag(rng.randrange(50), step + 1, ref=rng.random() < 0.3)
        elif edit == "evaluator":
            name = next((n for n in sorted(documents) if "$evaluators" in documents[n]), name)
            document = documents[name]
            document["$evaluators"] = {
                "testers": {"in": [{"var": "targetingKey"}, [f"user-{step}"]]}
            }
        elif edit == "file-metadata":
            document["metadata"] = {"owner": f"owner-{step}"}
        elif edit == "delete-flag" and key:
            del flags[key]
        elif edit == "add-flag":
            flags[f"new-{step}"] = _flag(step)
        elif edit == "rename-file":
            (directory / name).unlink()
            name = f"renamed-{step}-{name}"
            documents[name] = documents.pop(next(n for n in documents if documents[n] is document))
        elif edit == "invalid-flag" and key:
            flags[key] = {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "zzz"}
        elif edit == "syntax-error":
            raw = json.dumps(document, indent=2)[:-3]
        elif edit == "duplicate-key" and key:
            text = json.dumps(document, indent=2)
            raw = text.replace(f'"{key}": {{', f'"{key}": {{"state": "DISABLED", ', 1)
        elif edit == "flag-set-id" and key:
            flags[key] = _flag(3, step, meta=rng.choice(("alpha", "beta")))
        elif edit == "unsafe-text" and key:
            flags[key] = {**_flag(4, step), "metadata": {"description": "bad\u0001text"}}
        elif edit == "whitespace":
            raw = json.dumps(document, indent=4)
        _write(directory / name, document) if raw is None else (directory / name).write_text(raw)
        _reload_both(incremental, scratch)


def test_content_hasher_matches_content_hash() -> None:
    """The per-flag hasher gives the digest the one-shot content_hash gives, also after edits
    that replace, add and remove flags, named sets and file metadata."""
    hasher = ContentHasher()
    flags = {f"k{index}": _flag(index) for index in range(20)}
    evaluators = {"testers": {"in": [1, [1]]}}
    sets = {"": flags, "alpha": {"x": _flag(1)}}
    metadata = {"a.flagd.json": {"owner": "me"}, "b.flagd.json": {}}
    assert hasher.digest(flags, evaluators, sets=sets, file_metadata=metadata) == content_hash(
        flags, evaluators, sets=sets, file_metadata=metadata
    )
    flags = {**flags, "k3": _flag(3, 9), "zz": _flag(5)}
    del flags["k4"]
    assert hasher.digest(flags, evaluators, sets={"": flags}, file_metadata={}) == content_hash(
        flags, evaluators, sets={"": flags}, file_metadata={}
    )
    assert hasher.digest(flags) == content_hash(flags)


def test_one_flag_edit_reads_one_flag(tmp_path: Path) -> None:
    """Editing one flag of a many-flag file re-checks that flag only and re-reads that file
    only, decoding just the edited flag."""
    for number in range(3):
        _write(
            tmp_path / f"f{number}.flagd.json",
            {"flags": {f"k{number}-{index}": _flag(index) for index in range(50)}},
        )
    cache = ReloadCache()
    cache.check_files(read_flag_files(tmp_path))
    checked, read = cache.checks.checked, cache.files_read
    document = json.loads((tmp_path / "f1.flagd.json").read_text())
    document["flags"]["k1-7"] = _flag(7, 3)
    _write(tmp_path / "f1.flagd.json", document)
    result = cache.check_files(read_flag_files(tmp_path))
    assert result == check_files(read_flag_files(tmp_path))
    assert cache.checks.checked - checked == 1
    assert cache.files_read - read == 1
