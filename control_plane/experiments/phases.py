"""Phases of an experiment: runs of flag set versions that give the flag the same definition.

Changing an experiment's weights or targeting mid-way changes who gets which variant; units
counted across both configurations break the sample ratio check (the expected split is neither
the old one nor the new) and mix two experiments into one result. So the report is per phase.

Design: every exposure already stores the flag set version it was decided with, and every
recorded version keeps its full document (flag_set_versions), so a phase needs no new column.
A version's definition hash is the SHA-256 of the flag's canonical JSON without `metadata`
(descriptions, guardrails and directions are not the assignment), plus the shared `$evaluators`
its targeting references and the fractional bucketing generation the version was served with.
Consecutive versions (in version order) with the same hash form one phase; the serving version
starts a new (still empty) phase as soon as its hash differs. An exposure whose version is not
stored (served unrecorded while the database was down) belongs with the nearest earlier known
version (else the nearest later one): the store only makes a new version for a new document.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Definition", "Phase", "definition_hash", "split_phases"]


@dataclass(frozen=True, slots=True)
class Definition:
    """The flag as one version defined it (None: the version did not have the flag)."""

    flag: Mapping[str, Any] | None
    evaluators: Mapping[str, Any]
    bucketing: str


@dataclass(slots=True)
class Phase:
    number: int
    versions: list[int]
    definition_hash: str | None
    definition: Definition | None
    started_at: datetime | None = None
    last_exposure_at: datetime | None = None
    exposures: int = 0
    ended_at: datetime | None = None  # when the next phase's first exposure came
    notes: list[str] = field(default_factory=list)


def _references(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref)
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for value in node:
            _references(value, found)


def definition_hash(definition: Definition) -> str:
    """SHA-256 of what assigns units: the flag without metadata, evaluators it uses, bucketing."""
    flag = dict(definition.flag or {})
    flag.pop("metadata", None)
    names: set[str] = set()
    _references(flag.get("targeting"), names)
    used = {name: definition.evaluators.get(name) for name in sorted(names)}
    text = json.dumps(
        {"flag": flag, "evaluators": used, "bucketing": definition.bucketing},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class VersionSpan:
    """Exposures of one flag set version: when the first and last were, how many."""

    version: int
    first_at: datetime
    last_at: datetime
    exposures: int


def split_phases(
    spans: Sequence[VersionSpan], definitions: Mapping[int, Definition], serving_version: int | None
) -> list[Phase]:
    """Phases (oldest first) from the versions with exposures and the known definitions.

    `definitions` holds the stored definition of each version that has one, and the serving
    version's live definition; `serving_version` gets a phase of its own when it differs from
    the last one, even before its first exposure.
    """
    by_version = {span.version: span for span in spans}
    versions = sorted(
        set(by_version) | ({serving_version} if serving_version is not None else set())
    )
    hashes: list[str | None] = [
        definition_hash(definitions[v]) if v in definitions else None for v in versions
    ]
    # Unknown versions take the hash of the nearest earlier known one, else the later one.
    for index in range(1, len(hashes)):
        if hashes[index] is None:
            hashes[index] = hashes[index - 1]
    for index in range(len(hashes) - 2, -1, -1):
        if hashes[index] is None:
            hashes[index] = hashes[index + 1]
    phases: list[Phase] = []
    for version, digest in zip(versions, hashes, strict=True):
        if not phases or phases[-1].definition_hash != digest:
            phases.append(Phase(len(phases) + 1, [], digest, None))
        phase = phases[-1]
        phase.versions.append(version)
        if version in definitions:
            phase.definition = definitions[version]  # the newest known one of the phase
        span = by_version.get(version)
        if span is not None:
            phase.exposures += span.exposures
            phase.started_at = (
                span.first_at if phase.started_at is None else min(phase.started_at, span.first_at)
            )
            phase.last_exposure_at = (
                span.last_at
                if phase.last_exposure_at is None
                else max(phase.last_exposure_at, span.last_at)
            )
    for earlier, later in itertools.pairwise(phases):
        earlier.ended_at = later.started_at
    return phases
