"""What changed between two flag set versions, per flag, as JSON-pointer paths an operator reads.

A version document is `{"flags": {key: definition}, "$evaluators": {...}, "sources": {key: file}}`.
The diff lists each added, removed, changed or moved flag (and shared evaluator); a changed one
carries RFC 6901 paths with the values before and after, e.g.
`{"op": "replace", "path": "/targeting/fractional/0/1", "before": 50, "after": 30}`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

__all__ = ["describe_diff", "diff_documents", "diff_values", "pointer"]

#: Values longer than this (as JSON) are shortened in `describe_diff` lines.
_SHOWN_CHARS = 60


def pointer(parts: list[str | int]) -> str:
    """RFC 6901 JSON pointer for a path (`~` and `/` escaped)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _same(a: Any, b: Any) -> bool:
    # 1 == True in Python; in a flag file they are different values.
    return type(a) is type(b) and a == b


def diff_values(
    before: Any, after: Any, path: list[str | int] | None = None
) -> list[dict[str, Any]]:
    """Leaf-level changes that turn `before` into `after` (add / remove / replace)."""
    path = path or []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        changes: list[dict[str, Any]] = []
        for key in before:
            if key not in after:
                changes.append(
                    {"op": "remove", "path": pointer([*path, key]), "before": before[key]}
                )
            else:
                changes.extend(diff_values(before[key], after[key], [*path, key]))
        for key in after:
            if key not in before:
                changes.append({"op": "add", "path": pointer([*path, key]), "after": after[key]})
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for index in range(min(len(before), len(after))):
            changes.extend(diff_values(before[index], after[index], [*path, index]))
        for index in range(len(after), len(before)):
            changes.append(
                {"op": "remove", "path": pointer([*path, index]), "before": before[index]}
            )
        for index in range(len(before), len(after)):
            changes.append({"op": "add", "path": pointer([*path, index]), "after": after[index]})
        return changes
    if _same(before, after):
        return []
    return [{"op": "replace", "path": pointer(path), "before": before, "after": after}]


def _entries(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    sources_before: Mapping[str, str],
    sources_after: Mapping[str, str],
    kind: str,
    changed: AbstractSet[str] | None = None,
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    # Only keys that can have an entry: added or removed, possibly changed, or moved (set
    # operations, so an edit of one flag of 10,000 compares one flag, not every key).
    keys = set(after) if changed is None else set(changed)
    if before.keys() != after.keys():
        keys |= before.keys() ^ after.keys()
    if kind == "flag" and sources_before != sources_after:
        keys |= {key for key, _ in sources_before.items() ^ sources_after.items()}
    for key in sorted(keys):
        if key not in before and key not in after:
            continue  # only in the sources
        entry: dict[str, Any] = {"key": key}
        if key not in before:
            entry["change"] = "added"
        elif key not in after:
            entry["change"] = "removed"
        else:
            same = changed is not None and key not in changed
            changes = [] if same else diff_values(before[key], after[key])
            if changes:
                entry["change"] = "changed"
                entry["changes"] = changes
            elif kind == "flag" and sources_before.get(key) != sources_after.get(key):
                entry["change"] = "moved"
            else:
                continue
        if kind == "flag":
            if key in sources_after:
                entry["source"] = sources_after[key]
            if key in sources_before and sources_before.get(key) != sources_after.get(key):
                entry["previousSource"] = sources_before[key]
        entries.append(entry)
    return entries


def diff_documents(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any],
    *,
    changed_flags: Collection[str] | None = None,
) -> dict[str, Any]:
    """The diff of two version documents; `before` None (the first version) adds everything.

    `changed_flags`: when given, every other flag in both documents is known to be identical
    (the flag store hands unchanged flags on as the same objects), so only these flags are
    compared value by value (every flag was half a second of an edit of one at 10,000 flags)."""
    previous = before or {}
    flags = _entries(
        previous.get("flags", {}),
        after.get("flags", {}),
        previous.get("sources", {}),
        after.get("sources", {}),
        "flag",
        None if changed_flags is None else frozenset(changed_flags),
    )
    evaluators = _entries(
        previous.get("$evaluators", {}), after.get("$evaluators", {}), {}, {}, "evaluator"
    )
    summary = {
        change: [e["key"] for e in flags if e["change"] == change]
        for change in ("added", "removed", "changed", "moved")
    }
    return {"summary": summary, "flags": flags, "evaluators": evaluators}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def describe_diff(diff: Mapping[str, Any]) -> list[str]:
    """One readable line per change: `~ ab-test-router /targeting/fractional/0/1: 50 -> 30`."""
    lines: list[str] = []
    marks = {"added": "+", "removed": "-", "changed": "~", "moved": ">"}
    for kind, entries in (
        ("flag", diff.get("flags", [])),
        ("evaluator", diff.get("evaluators", [])),
    ):
        for entry in entries:
            label = entry["key"] if kind == "flag" else f"$evaluators.{entry['key']}"
            mark = marks[entry["change"]]
            if entry["change"] == "changed":
                for change in entry["changes"]:
                    if change["op"] == "replace":
                        what = f"{_short(change['before'])} -> {_short(change['after'])}"
                    elif change["op"] == "add":
                        what = f"added {_short(change['after'])}"
                    else:
                        what = f"removed {_short(change['before'])}"
                    lines.append(f"{mark} {label} {change['path'] or '/'}: {what}")
            elif entry["change"] == "moved":
                lines.append(
                    f"{mark} {label} moved {entry.get('previousSource')} -> {entry.get('source')}"
                )
            else:
                where = f" ({entry['source']})" if entry.get("source") else ""
                lines.append(f"{mark} {label} {entry['change']}{where}")
    return lines
