"""What a flag's parts mean together: checks the schema cannot express.

- `defaultVariant` must name one of the variants (or be null / absent: the caller's default);
- a targeting rule that returns a variant name that does not exist, where that is known
  without a request (string or boolean literals in `if` branches, `fractional` bucket names,
  operators that always return true/false, also through `$ref` evaluators), is a warning, not
  an error: the branch may be unreachable, and flagd answers an error only when it is taken;
- every `$ref` must name an evaluator, and an evaluator may not `$ref` another (flagd expands
  `$ref` one level only, in an order that differs between SDKs);
- a routing flag (an object variant with a `backend` or `url`, or `"routing": true` in the flag
  metadata) must give every variant a backend and a well-formed http(s) URL.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from typing import Any

from control_plane.flagstore.issues import WARNING, Location, ValidationIssue
from control_plane.flagstore.targeting_rules import BOOLEAN_OPERATORS
from control_plane.routing.backends import backend_problem

__all__ = ["check_evaluator_refs", "check_flag_semantics", "is_routing_flag", "refs_in"]

_MAX_DEPTH = 64


def _error(issues: list[ValidationIssue], location: Location, message: str) -> None:
    issues.append(ValidationIssue.at(location, message))


def _names(variants: Mapping[str, Any]) -> str:
    listed = ", ".join(list(variants)[:8])
    return listed + (", ..." if len(variants) > 8 else "")


def refs_in(node: Any, location: Location) -> Iterator[tuple[str, Location]]:
    """Every `{"$ref": name}` inside `node`, with where it is."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and len(node) == 1:
            yield ref, location
            return
        for key, value in node.items():
            yield from refs_in(value, (*location, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from refs_in(item, (*location, index))


def is_routing_flag(flag: Mapping[str, Any]) -> bool:
    """Object variants naming a backend or URL, or flag metadata `"routing": true`."""
    metadata = flag.get("metadata")
    if isinstance(metadata, dict) and metadata.get("routing") is True:
        return True
    variants = flag.get("variants")
    return isinstance(variants, dict) and any(
        isinstance(value, dict) and ("backend" in value or "url" in value)
        for value in variants.values()
    )


def check_flag_semantics(
    flag: Any,
    location: Location,
    issues: list[ValidationIssue],
    *,
    evaluators: Mapping[str, Any] | None,
) -> None:
    """Cross-member checks of one flag; `evaluators=None` skips the `$ref` target checks."""
    if not isinstance(flag, dict):
        return
    variants = flag.get("variants")
    if not isinstance(variants, dict) or not variants:
        return  # the structural check already said what is wrong
    default = flag.get("defaultVariant")
    if isinstance(default, str) and default not in variants:
        hint = "" if default else " (use null for no default)"
        _error(
            issues,
            (*location, "defaultVariant"),
            f"defaultVariant {default!r} is not one of the variants ({_names(variants)}); "
            f"name one of them or set it to null{hint}",
        )
    targeting = flag.get("targeting")
    if isinstance(targeting, dict) and targeting:
        if evaluators is not None:
            for name, where in refs_in(targeting, (*location, "targeting")):
                if name not in evaluators:
                    _missing_evaluator(issues, name, where, evaluators)
        _check_results(targeting, (*location, "targeting"), variants, evaluators or {}, issues)
    if is_routing_flag(flag):
        for name, value in variants.items():
            problem = backend_problem(value)
            if problem is not None:
                _error(
                    issues,
                    (*location, "variants", name),
                    f"routing variant {name!r}: {problem}; each variant of a routing flag "
                    'is {"backend": "<name>", "url": "http://host:port"}',
                )


def _missing_evaluator(
    issues: list[ValidationIssue], name: str, where: Location, evaluators: Mapping[str, Any]
) -> None:
    known = ", ".join(sorted(evaluators)) or "none are defined"
    close = difflib.get_close_matches(name, list(evaluators), n=1)
    hint = f"did you mean {close[0]!r}? Else " if close else ""
    _error(
        issues,
        where,
        f"$ref {name!r} names no evaluator (known: {known}); {hint}define it "
        'under "$evaluators" or fix the name',
    )


def _check_results(
    targeting: dict[str, Any],
    location: Location,
    variants: Mapping[str, Any],
    evaluators: Mapping[str, Any],
    issues: list[ValidationIssue],
) -> None:
    reported: set[tuple[Location, str]] = set()
    for where, kind, value, via in _results(targeting, location, evaluators, None, 0):
        through = f" (through evaluator {via!r})" if via else ""
        if kind == "name" and value not in variants:
            message = (
                f"targeting returns {value!r} here{through}, but the flag has no variant "
                f"{value!r} (variants: {_names(variants)}); return one of them, or null "
                "to serve the default"
            )
        elif kind == "boolean" and not {"true", "false"} <= set(variants):
            missing = " or ".join(repr(name) for name in ("true", "false") if name not in variants)
            message = (
                f"this {value!r} rule returns true or false here{through}, which flagd "
                f'looks up as variants "true"/"false", but the flag has no variant '
                f'named {missing}; wrap it: {{"if": [<rule>, "<variant>", '
                '"<variant>"]}'
            )
        elif kind == "value":
            message = (
                f"targeting returns {value} here{through}, which cannot name a variant; "
                "return a variant name (a string) or null"
            )
        else:
            continue
        if (where, message) not in reported:
            reported.add((where, message))
            # A warning: the branch may never be taken (flagd answers an error only if it is).
            issues.append(
                ValidationIssue.at(
                    where,
                    message + "; flagd answers an error if this branch is reached",
                    severity=WARNING,
                )
            )


def _results(
    node: Any, location: Location, evaluators: Mapping[str, Any], via: str | None, depth: int
) -> Iterator[tuple[Location, str, str, str | None]]:
    """(where, kind, value, evaluator) for each statically known result of `node`.

    kind is "name" (a variant name), "boolean" (an operator returning true/false; value is the
    operator) or "value" (something that can never name a variant); dynamic results are skipped.
    """
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, str):
        yield location, "name", node, via
    elif isinstance(node, bool):
        yield location, "name", str(node).lower(), via
    elif isinstance(node, int):
        yield location, "name", str(node), via
    elif isinstance(node, float | list):
        yield location, "value", "an array" if isinstance(node, list) else str(node), via
    elif isinstance(node, dict) and len(node) == 1:
        operator, arguments = next(iter(node.items()))
        if operator == "$ref":
            target = evaluators.get(arguments) if isinstance(arguments, str) else None
            if target is not None:
                # Report at the $ref, where the flag's author can act; name the evaluator.
                for _, kind, value, _via in _results(
                    target, location, evaluators, via or str(arguments), depth + 1
                ):
                    yield location, kind, value, via or str(arguments)
        elif operator == "if" and isinstance(arguments, list):
            count = len(arguments)
            for index in range(1, count, 2):
                yield from _results(
                    arguments[index], (*location, "if", index), evaluators, via, depth + 1
                )
            if count % 2 == 1:
                yield from _results(
                    arguments[-1], (*location, "if", count - 1), evaluators, via, depth + 1
                )
        elif operator == "fractional" and isinstance(arguments, list):
            for index, bucket in enumerate(arguments):
                if isinstance(bucket, list) and bucket:
                    yield from _results(
                        bucket[0], (*location, "fractional", index, 0), evaluators, via, depth + 1
                    )
        elif operator in BOOLEAN_OPERATORS:
            yield location, "boolean", operator, via


def check_evaluator_refs(evaluators: Mapping[str, Any], issues: list[ValidationIssue]) -> None:
    """An evaluator may not `$ref` another: flagd expands `$ref` one level only."""
    for name, rule in evaluators.items():
        for target, where in refs_in(rule, ("$evaluators", name)):
            if target not in evaluators:
                _missing_evaluator(issues, target, where, evaluators)
            else:
                _error(
                    issues,
                    where,
                    f"evaluator {name!r} refers to evaluator {target!r}; "
                    "flagd expands $ref one level only (and in an order that "
                    f"differs between SDKs), so copy {target!r}'s rule here",
                )
