"""Structural checks of flag documents and flags, after the official schema (flags.json).

A flag file is `{"flags": {...}, "$evaluators": {...}, "metadata": {...}}`. Only a document
that declares flagd's daemon schema (`"$schema": ".../flagd.json"`) may list its flags as an
array of objects with a `key`; it is turned into the usual map. A flag has exactly the members
the pinned evaluator reads (state, variants, defaultVariant, targeting, metadata): it refuses
any other, so an unknown member is an error here rather than a failed load at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control_plane.flagstore.issues import WARNING, Location, ValidationIssue
from control_plane.flagstore.targeting_rules import check_targeting

__all__ = [
    "FLAG_MEMBERS",
    "DocumentParts",
    "check_document",
    "check_flag_structure",
    "check_metadata",
    "variant_type",
]

FLAG_MEMBERS = ("state", "variants", "defaultVariant", "targeting", "metadata")
_DOCUMENT_MEMBERS = ("$schema", "flags", "$evaluators", "metadata")
_STATES = ("ENABLED", "DISABLED")


@dataclass
class DocumentParts:
    """A document's flags ((key, definition, where it is), in file order), evaluators and
    metadata. A key may repeat in the array form: keys are unique per flag set, not per file."""

    flags: list[tuple[str, Any, Location]] = field(default_factory=list)
    evaluators: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _error(issues: list[ValidationIssue], location: Location, message: str) -> None:
    issues.append(ValidationIssue.at(location, message))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def variant_type(value: Any) -> str:
    """The flagd flag type a variant value belongs to (boolean/string/number/object)."""
    return _type_name(value)


def check_metadata(metadata: Any, location: Location, issues: list[ValidationIssue]) -> None:
    if not isinstance(metadata, dict):
        _error(
            issues,
            location,
            f"metadata must be an object of string, number or boolean "
            f"values, got {_type_name(metadata)}",
        )
        return
    for key, value in metadata.items():
        if _type_name(value) not in ("string", "number", "boolean"):
            _error(
                issues,
                (*location, key),
                f"metadata values must be a string, number or boolean, got "
                f"{_type_name(value)}; flatten it or encode it as a string",
            )


def check_document(document: Any, issues: list[ValidationIssue]) -> DocumentParts:
    """Check the document's top level; return its parts for merging and per-flag checks."""
    parts = DocumentParts()
    if not isinstance(document, dict):
        _error(
            issues,
            (),
            f'a flag file holds a JSON object with a "flags" member, got {_type_name(document)}',
        )
        return parts
    for key in document:
        if key not in _DOCUMENT_MEMBERS:
            issues.append(
                ValidationIssue.at(
                    (key,),
                    f"unknown top-level member {key!r} is ignored by flagd; expected "
                    f"{', '.join(_DOCUMENT_MEMBERS)}",
                    severity=WARNING,
                )
            )
    schema = document.get("$schema")
    if schema is not None and not isinstance(schema, str):
        _error(issues, ("$schema",), "$schema must be a URL string")
    daemon_schema = isinstance(schema, str) and schema.rstrip("/").endswith("flagd.json")
    if "flags" not in document:
        _error(issues, (), 'the document has no "flags" member; add "flags": {...}')
    else:
        _collect_flags(document["flags"], daemon_schema, parts, issues)
    if "$evaluators" in document:
        evaluators = document["$evaluators"]
        if not isinstance(evaluators, dict):
            _error(
                issues,
                ("$evaluators",),
                "$evaluators must be an object mapping names to "
                f"rules, got {_type_name(evaluators)}",
            )
        else:
            for name, rule in evaluators.items():
                if not name:
                    _error(issues, ("$evaluators", name), "an evaluator name must not be empty")
                check_targeting(rule, ("$evaluators", name), issues)
                parts.evaluators[name] = rule
    if "metadata" in document:
        metadata = document["metadata"]
        check_metadata(metadata, ("metadata",), issues)
        if isinstance(metadata, dict):
            for member in ("flagSetId", "version"):
                if member in metadata and not isinstance(metadata[member], str):
                    _error(
                        issues,
                        ("metadata", member),
                        f"flag set metadata {member!r} must be a string",
                    )
            parts.metadata = dict(metadata)
    return parts


def _collect_flags(
    flags: Any, daemon_schema: bool, parts: DocumentParts, issues: list[ValidationIssue]
) -> None:
    if isinstance(flags, dict):
        for key, definition in flags.items():
            if not key:
                _error(issues, ("flags", key), "a flag key must not be empty")
            parts.flags.append((key, definition, ("flags", key)))
        return
    if isinstance(flags, list) and daemon_schema:
        for index, definition in enumerate(flags):
            where: Location = ("flags", index)
            key = definition.get("key") if isinstance(definition, dict) else None
            if not isinstance(key, str) or not key:
                _error(issues, where, 'in the array form every flag needs a non-empty "key" string')
                continue
            body = {name: value for name, value in definition.items() if name != "key"}
            parts.flags.append((key, body, where))
        return
    if isinstance(flags, list):
        _error(
            issues,
            ("flags",),
            '"flags" must be an object keyed by flag key; the array '
            "form is only for documents declaring flagd's daemon schema "
            '("$schema": "https://flagd.dev/schema/v0/flagd.json")',
        )
        return
    _error(
        issues, ("flags",), f'"flags" must be an object keyed by flag key, got {_type_name(flags)}'
    )


def check_flag_structure(flag: Any, location: Location, issues: list[ValidationIssue]) -> None:
    """Members and types of one flag definition (not yet what they mean together)."""
    if not isinstance(flag, dict):
        _error(
            issues,
            location,
            f"a flag is an object with state, variants and defaultVariant, got {_type_name(flag)}",
        )
        return
    for member in flag:
        if member not in FLAG_MEMBERS:
            _error(
                issues,
                (*location, member),
                f"unknown flag member {member!r}; a flag has {', '.join(FLAG_MEMBERS)} "
                '(put notes such as a description in "metadata")',
            )
    if "state" not in flag:
        _error(issues, location, 'the flag has no "state"; add "state": "ENABLED"')
    elif flag["state"] not in _STATES:
        _error(
            issues,
            (*location, "state"),
            f'state must be "ENABLED" or "DISABLED", got {flag["state"]!r}',
        )
    if "variants" not in flag:
        _error(
            issues,
            location,
            'the flag has no "variants"; add at least one, e.g. '
            '"variants": {"on": true, "off": false}',
        )
    else:
        _check_variants(flag["variants"], (*location, "variants"), issues)
    if "defaultVariant" in flag:
        default = flag["defaultVariant"]
        if default is not None and not isinstance(default, str):
            _error(
                issues,
                (*location, "defaultVariant"),
                f"defaultVariant must be a variant name (string) or null, got "
                f"{_type_name(default)}",
            )
    if "targeting" in flag:
        check_targeting(flag["targeting"], (*location, "targeting"), issues)
    if "metadata" in flag:
        check_metadata(flag["metadata"], (*location, "metadata"), issues)


def _check_variants(variants: Any, location: Location, issues: list[ValidationIssue]) -> None:
    if not isinstance(variants, dict):
        _error(
            issues,
            location,
            f"variants must be an object mapping variant names to "
            f"values, got {_type_name(variants)}",
        )
        return
    if not variants:
        _error(issues, location, "variants is empty; a flag needs at least one variant")
        return
    types: dict[str, list[str]] = {}
    for name, value in variants.items():
        if not name:
            _error(issues, (*location, name), "a variant name must not be empty")
        kind = variant_type(value)
        if kind in ("null", "array"):
            _error(
                issues,
                (*location, name),
                f"variant {name!r} is {kind}; a variant is a boolean, string, number or "
                "object (wrap a list in an object)",
            )
            continue
        types.setdefault(kind, []).append(name)
    if len(types) > 1:
        mix = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in types.items())
        _error(
            issues,
            location,
            f"variants mix types ({mix}); all variants of one flag must have the same type",
        )
