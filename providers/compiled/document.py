"""Read a flagd flag-configuration document the way openfeature-flagd-core 1.0.0 reads it.

The same acceptance rules (a document flagd-core refuses is refused here, whole), the same
`$ref` substitution (flagd-core rewrites the JSON text of the flags with one regular expression
per evaluator, so its quirks are kept: only `{"$ref": "name"}` objects are replaced, in the
order the evaluators are declared), plus the bucketing generation the flag set declares
(`metadata.bucketing`, or `bucketing` in the `controlPlane` facts member the project's flag
store writes; v2 when neither says).

Each flag comes out as its own private copy (parsed back from its JSON text) with that text, so
a compiled flag can be reused by any later version whose text for the flag is the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import and_, is_, is_not, not_
from typing import Any

from providers.compiled.bucketing import Generation, parse_generation

__all__ = ["FlagDefinition", "FlagDocument", "InvalidFlagSet", "read_document"]

_ABSENT = object()  # no flag is this object
_FIELDS = frozenset({"state", "variants", "default_variant", "targeting", "metadata"})


class InvalidFlagSet(ValueError):
    """The document is not one flagd-core would load; the previous flag set keeps serving."""


@dataclass(frozen=True)
class FlagDefinition:
    """One flag as flagd-core's Flag model holds it ($refs already substituted)."""

    key: str
    #: The flag's JSON text after $ref substitution: equal texts compile to equal rules.
    text: str
    state: str
    variants: Mapping[str, Any]
    default_variant: str | bool | None
    targeting: Any
    metadata: Any


@dataclass(frozen=True)
class FlagDocument:
    flags: dict[str, FlagDefinition]
    metadata: dict[str, Any]
    generation: Generation
    #: The document's own object for each flag that uses no $ref: a next document holding
    #: that very object (the flag store passes unchanged flags on as they are) has the same
    #: flag, and it is not serialised again to find out.
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Keys whose definition is not the one `known` held (new or changed flags).
    fresh: tuple[str, ...] = ()


def _check_metadata(key: Any, value: Any) -> None:
    if key is None or not isinstance(key, str) or not key:
        raise InvalidFlagSet(f"metadata key {key!r} must be a non-empty string")
    if value is None or not isinstance(value, float | int | str | bool):
        raise InvalidFlagSet(f"metadata value for key {key} must be a float, int, str or bool")


def _substitutions(evaluators: Any) -> list[tuple[re.Pattern[str], str]]:
    if not evaluators:
        return []
    if not isinstance(evaluators, dict):
        raise InvalidFlagSet("`$evaluators` must be an object")
    substitutions = []
    for name, rule in evaluators.items():
        pattern = re.compile(rf"{{\s*\"\$ref\":\s*\"{re.escape(name)}\"\s*}}")
        replacement = json.dumps(rule)
        try:
            pattern.sub(replacement, "")  # flagd-core fails on a bad replacement, used or not
        except re.error as exc:
            raise InvalidFlagSet(f"evaluator {name!r} cannot be substituted: {exc}") from exc
        substitutions.append((pattern, replacement))
    return substitutions


def _flag(key: str, text: str) -> FlagDefinition:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidFlagSet(f"flag {key}: $ref substitution made invalid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidFlagSet(f"flag {key} must be an object")
    data = dict(raw)
    if "defaultVariant" in data:
        default = data.pop("defaultVariant")
        data["default_variant"] = None if default == "" else default
    data.pop("source", None)
    data.pop("selector", None)
    unknown = sorted(set(data) - _FIELDS)
    if unknown or "state" not in data or "variants" not in data:
        raise InvalidFlagSet(f"flag {key}: unexpected fields {unknown} or no state/variants")
    state, variants = data["state"], data["variants"]
    default_variant = data.get("default_variant")
    metadata = data.get("metadata")
    if not state or not (state == "ENABLED" or state == "DISABLED"):
        raise InvalidFlagSet(f"flag {key}: incorrect 'state' value")
    if not variants or not isinstance(variants, dict):
        raise InvalidFlagSet(f"flag {key}: incorrect 'variants' value")
    if default_variant and not isinstance(default_variant, str | bool):
        raise InvalidFlagSet(f"flag {key}: incorrect 'defaultVariant' value")
    if metadata:
        if not isinstance(metadata, dict):
            raise InvalidFlagSet(f"flag {key}: metadata is not an object")
        for name, value in metadata.items():
            _check_metadata(name, value)
    return FlagDefinition(
        key=key,
        text=text,
        state=state,
        variants=variants,
        default_variant=default_variant,
        targeting=data.get("targeting"),
        metadata=metadata,
    )


def _declared_generation(document: Mapping[str, Any], metadata: Mapping[str, Any]) -> Any:
    """`metadata.bucketing`, else the control plane's own facts member (`controlPlane`)."""
    if "bucketing" in metadata:
        return metadata["bucketing"]
    facts = document.get("controlPlane")
    return facts.get("bucketing") if isinstance(facts, Mapping) else None


def read_document(
    document: Mapping[str, Any],
    known: Mapping[str, FlagDefinition] | None = None,
    known_raw: Mapping[str, Any] | None = None,
) -> FlagDocument:
    """Parse `document`; flags whose text equals their entry in `known` reuse that entry, and
    so do flags whose object is the one `known_raw` (the previous FlagDocument.raw) holds: a
    caller must not change a flag's object in place between two documents."""
    if not isinstance(document, Mapping):
        raise InvalidFlagSet("a flag configuration must be an object")
    flags = document.get("flags", {})
    metadata = document.get("metadata", {})
    substitutions = _substitutions(document.get("$evaluators"))
    if not isinstance(flags, dict):
        raise InvalidFlagSet("`flags` key of configuration must be a dictionary")
    if not isinstance(metadata, dict):
        raise InvalidFlagSet("`metadata` key of configuration must be a dictionary")
    for name, value in metadata.items():
        _check_metadata(name, value)
    try:
        generation = parse_generation(_declared_generation(document, metadata))
    except ValueError as exc:
        raise InvalidFlagSet(str(exc)) from exc
    known = known or {}
    known_raw = known_raw or {}
    keys = list(flags)
    # Flags whose object `known_raw` holds are taken as they were, found with C-level maps (a
    # Python loop over 10,000 flags was most of an edit's compile); the rest are read below.
    if known_raw and keys == list(known):
        # The same keys in the same order (an edit of definitions only): copy the previous
        # maps (one C clone each) and replace what changed.
        same = map(is_, map(flags.__getitem__, keys), map(known_raw.get, keys, repeat(_ABSENT)))
        changed = list(compress(keys, map(not_, same)))
        parsed: dict[str, FlagDefinition] = dict(known)
        raws: dict[str, Any] = dict(known_raw)
    elif known_raw:
        objects = list(map(flags.__getitem__, keys))
        definitions = list(map(known.get, keys))
        same = map(is_, objects, map(known_raw.get, keys, repeat(_ABSENT)))
        kept = map(and_, same, map(is_not, definitions, repeat(None)))
        changed = list(compress(keys, map(not_, kept)))
        parsed = dict(zip(keys, definitions, strict=True))  # type: ignore[arg-type]  # every None is replaced below
        raws = dict(zip(keys, objects, strict=True))
    else:
        changed, parsed, raws = keys, {}, {}
    fresh: list[str] = []
    for key in changed:
        raw = flags[key]
        previous = known.get(key)
        raws.pop(key, None)
        try:
            text = json.dumps(raw)
        except (TypeError, ValueError) as exc:
            raise InvalidFlagSet(f"flag {key} is not JSON: {exc}") from exc
        if '"$ref"' in text:  # its meaning changes with $evaluators: not remembered by object
            for pattern, replacement in substitutions:
                text = pattern.sub(replacement, text)
        else:
            raws[key] = raw
        if previous is not None and previous.text == text:
            parsed[key] = previous
        else:
            parsed[key] = _flag(key, text)
            fresh.append(key)
    return FlagDocument(
        flags=parsed,
        metadata=dict(metadata),
        generation=generation,
        raw=raws,
        fresh=tuple(fresh),
    )
