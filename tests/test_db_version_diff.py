"""Diffs between flag set versions: per-flag changes with JSON-pointer paths, readable lines."""

from __future__ import annotations

from control_plane.flagstore.version_diff import describe_diff, diff_documents, diff_values, pointer


def test_pointer_escapes_tilde_and_slash() -> None:
    """Keys holding '~' or '/' are escaped as RFC 6901 says."""
    assert pointer(["flags", "a/b", "c~d", 0]) == "/flags/a~1b/c~0d/0"


def test_leaf_changes_have_paths_and_values() -> None:
    """A changed weight, an added key and a removed key each give one entry."""
    before = {"targeting": {"fractional": [["a", 50], ["b", 50]]}, "metadata": {"x": 1}}
    after = {"targeting": {"fractional": [["a", 30], ["b", 70]]}, "state": "ENABLED"}
    assert diff_values(before, after) == [
        {"op": "replace", "path": "/targeting/fractional/0/1", "before": 50, "after": 30},
        {"op": "replace", "path": "/targeting/fractional/1/1", "before": 50, "after": 70},
        {"op": "remove", "path": "/metadata", "before": {"x": 1}},
        {"op": "add", "path": "/state", "after": "ENABLED"},
    ]


def test_lists_growing_and_shrinking() -> None:
    """Extra list items are adds, missing ones removes, by index."""
    assert diff_values({"l": [1, 2]}, {"l": [1, 2, 3]}) == [
        {"op": "add", "path": "/l/2", "after": 3}
    ]
    assert diff_values({"l": [1, 2, 3]}, {"l": [1]}) == [
        {"op": "remove", "path": "/l/1", "before": 2},
        {"op": "remove", "path": "/l/2", "before": 3},
    ]


def test_true_and_one_differ() -> None:
    """A variant value changed from 1 to true is a change, although 1 == True in Python."""
    assert diff_values({"v": 1}, {"v": True}) == [
        {"op": "replace", "path": "/v", "before": 1, "after": True}
    ]


def test_document_diff_summarises_flags_and_evaluators() -> None:
    """Added, removed, changed and moved flags and changed evaluators are all reported."""
    before = {
        "flags": {"keep": {"v": 1}, "gone": {"v": 1}, "edit": {"v": 1}, "move": {"v": 1}},
        "$evaluators": {"e": {"in": [1, [1]]}},
        "sources": {
            "keep": "a.flagd.json",
            "gone": "a.flagd.json",
            "edit": "a.flagd.json",
            "move": "a.flagd.json",
        },
    }
    after = {
        "flags": {"keep": {"v": 1}, "edit": {"v": 2}, "move": {"v": 1}, "new": {"v": 1}},
        "$evaluators": {"e": {"in": [2, [1]]}},
        "sources": {
            "keep": "a.flagd.json",
            "edit": "a.flagd.json",
            "move": "b.flagd.json",
            "new": "api.flagd.json",
        },
    }
    diff = diff_documents(before, after)
    assert diff["summary"] == {
        "added": ["new"],
        "removed": ["gone"],
        "changed": ["edit"],
        "moved": ["move"],
    }
    assert {
        "key": "move",
        "change": "moved",
        "source": "b.flagd.json",
        "previousSource": "a.flagd.json",
    } in diff["flags"]
    assert diff["evaluators"] == [
        {
            "key": "e",
            "change": "changed",
            "changes": [{"op": "replace", "path": "/in/0", "before": 1, "after": 2}],
        }
    ]
    assert describe_diff(diff) == [
        "~ edit /v: 1 -> 2",
        "- gone removed",
        "> move moved a.flagd.json -> b.flagd.json",
        "+ new added (api.flagd.json)",
        "~ $evaluators.e /in/0: 1 -> 2",
    ]


def test_first_version_adds_everything() -> None:
    """The first version's diff (no previous one) lists every flag as added."""
    diff = diff_documents(None, {"flags": {"a": {}, "b": {}}, "sources": {"a": "x", "b": "y"}})
    assert diff["summary"]["added"] == ["a", "b"]
    assert diff["flags"][0] == {"key": "a", "change": "added", "source": "x"}
