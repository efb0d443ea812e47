"""Partial acceptance: what goes live when an edit holds some invalid flags.

flagd loads the flags it can; so does the store (unless `flags_strict`). An invalid flag is
refused on its own and keeps its last good definition (or stays absent if it is new); a file
that cannot be read or parsed, or whose document-level parts (its `metadata`, `$evaluators`)
are invalid, is refused as a whole and all of its flags, evaluators and metadata keep their
last good definitions. Everything else of the edit goes live.

A kept definition must still make sense next to the new ones: a kept or accepted flag whose
`$ref` names no evaluator of the result is dropped (and listed) rather than served broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.flagstore.flagset import FlagSet
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.semantics import refs_in
from control_plane.flagstore.validate import Refusal, ValidationResult

__all__ = ["Composed", "RefusedPart", "compose"]


@dataclass(frozen=True)
class RefusedPart:
    """A refused flag (or file), why, and what serves in its place."""

    file: str
    key: str | None
    flag_set_id: str
    issues: tuple[ValidationIssue, ...]
    #: "previous" (its last good definition keeps serving) or "absent" (nothing serves).
    serving: str

    def to_dict(self, version: int | None) -> dict[str, Any]:
        what = f"flag {self.key!r}" if self.key else f"file {self.file}"
        if self.serving == "previous":
            status = f"its last good definition (version {version}) keeps serving"
        else:
            status = "nothing serves it (it is new, or its last good definition is gone)"
        return {
            "file": self.file,
            "flag": self.key,
            "flagSetId": self.flag_set_id,
            "serving": self.serving,
            "message": f"{what} was refused; {status}",
            "issues": [issue.to_dict() for issue in self.issues],
        }


@dataclass(frozen=True)
class Composed:
    """The parts of the flag set that goes live, and what was refused."""

    sets: dict[str, dict[str, dict[str, Any]]]
    set_sources: dict[str, dict[str, str]]
    evaluators: dict[str, Any]
    evaluator_sources: dict[str, str]
    file_metadata: dict[str, dict[str, Any]]
    refused: tuple[RefusedPart, ...]

    @property
    def flag_count(self) -> int:
        return sum(len(flags) for flags in self.sets.values())


def compose(result: ValidationResult, previous: FlagSet | None) -> Composed:
    """`result`'s accepted parts plus, for each refused part, its definition in `previous`."""
    sets = {set_id: dict(flags) for set_id, flags in result.sets.items()}
    set_sources = {set_id: dict(found) for set_id, found in result.set_sources.items()}
    evaluators = dict(result.evaluators)
    evaluator_sources = dict(result.evaluator_sources)
    file_metadata = dict(result.file_metadata)

    def keep(set_id: str, key: str, definition: Any, source: str) -> bool:
        if key in sets.get(set_id, {}):
            return False  # the edit defines it (elsewhere) and that definition is valid
        sets.setdefault(set_id, {})[key] = definition  # the same object: its hash is reused
        set_sources.setdefault(set_id, {})[key] = source
        return True

    refused: list[RefusedPart] = []
    for item in result.refused:
        serving = "absent"
        if previous is not None and item.key is None:
            serving = _keep_file(item, previous, keep, evaluators, evaluator_sources, file_metadata)
        elif previous is not None and item.key is not None:
            definition = previous.sets.get(item.flag_set_id, {}).get(item.key)
            source = previous.source_of(item.flag_set_id, item.key) or item.file
            if definition is not None and keep(item.flag_set_id, item.key, definition, source):
                serving = "previous"
        refused.append(RefusedPart(item.file, item.key, item.flag_set_id, item.issues, serving))
    if result.refused:
        # Without refusals every flag was checked against exactly these evaluators, so none
        # can name a missing one (that flag would have been refused).
        refused.extend(_drop_dangling_refs(sets, set_sources, evaluators))
    return Composed(
        sets=sets,
        set_sources=set_sources,
        evaluators=evaluators,
        evaluator_sources=evaluator_sources,
        file_metadata=file_metadata,
        refused=tuple(refused),
    )


def _keep_file(
    item: Refusal,
    previous: FlagSet,
    keep: Any,
    evaluators: dict[str, Any],
    evaluator_sources: dict[str, str],
    file_metadata: dict[str, dict[str, Any]],
) -> str:
    """Keep everything `previous` served from the refused file; "previous" if anything."""
    served = False
    for set_id, sources in previous.set_sources.items():
        for key, source in sources.items():
            if source == item.file:
                served |= bool(keep(set_id, key, previous.sets[set_id][key], source))
    for name, source in previous.evaluator_sources.items():
        if source == item.file and name not in evaluators:
            evaluators[name] = previous.evaluators[name]
            evaluator_sources[name] = source
            served = True
    if item.file in previous.file_metadata:
        file_metadata[item.file] = dict(previous.file_metadata[item.file])
    return "previous" if served else "absent"


def _drop_dangling_refs(
    sets: dict[str, dict[str, dict[str, Any]]],
    set_sources: dict[str, dict[str, str]],
    evaluators: Mapping[str, Any],
) -> list[RefusedPart]:
    dropped: list[RefusedPart] = []
    for set_id, flags in sets.items():
        for key in list(flags):
            targeting = flags[key].get("targeting")
            missing = sorted(
                {
                    name
                    for name, _ in refs_in(targeting, ("flags", key, "targeting"))
                    if name not in evaluators
                }
            )
            if not missing:
                continue
            source = set_sources[set_id].pop(key, "")
            del flags[key]
            message = (
                f"$ref {', '.join(map(repr, missing))} names an evaluator that was "
                "refused with its file; the flag cannot serve until it is fixed"
            )
            issue = ValidationIssue.at(("flags", key, "targeting"), message, file=source)
            dropped.append(RefusedPart(source, key, set_id, (issue,), "absent"))
    return dropped
