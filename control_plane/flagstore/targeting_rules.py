"""Structural checks of flagd targeting rules, after the official schema (targeting.json).

A targeting rule is JSONLogic plus flagd's operators (`fractional`, `sem_ver`, `starts_with`,
`ends_with`). This module checks each operator's arguments the way targeting.json does, plus
what the pinned evaluator (openfeature-flagd-core 1.0.0) refuses at run time and the schema
cannot express: fractional weights written as decimals, or all zero.

Deliberate differences from the schema, each because every flagd evaluator accepts the form:
- `{"$ref": name}` may stand wherever a rule may (flagd substitutes it before evaluating);
- `sem_ver` accepts any rule as a version operand, not only `var`;
- a version literal such as `v1.0.0`, `1.2` or `1` is a warning, not an error: flagd
  normalises it, but it is not semver.org syntax (write `1.0.0`);
- a rule object must hold exactly one operator (JSONLogic would treat a two-key object as
  plain data, which is never what was meant);
- a loose comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) or arithmetic whose operands are all
  literals is refused when one of them is no number in JavaScript (`{"==": ["gold", 1]}`,
  `{"+": ["x", 1]}`): Node's evaluator (@openfeature/flagd-core 4, json-logic-engine 5) throws
  on it while loading the flag, so every evaluation there is PARSE_ERROR, while Python's
  evaluator reads it as false or NaN. (With a context value in place of a literal the same
  throw happens per evaluation; that difference is documented, not checkable here.)
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable
from typing import Any

from control_plane.flagstore.issues import WARNING, Location, ValidationIssue

__all__ = ["BOOLEAN_OPERATORS", "MAX_TOTAL_WEIGHT", "OPERATORS", "check_targeting"]

#: The evaluator refuses a fractional split whose weights add up to more than MaxInt32.
MAX_TOTAL_WEIGHT = 2_147_483_647

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
#: What flagd accepts after normalising: an optional v, one to three numbers, pre-release, build.
_LOOSE_SEMVER = re.compile(
    r"^[vV]?(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?)?"
    r"(?:-[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?$"
)
_SEMVER_OPERATORS = ("=", "!=", ">", "<", ">=", "<=", "~", "^")
_FLAGD_PROPERTIES = ("$flagd.timestamp", "$flagd.flagKey")

#: Operators whose result is always true or false (a flag returning one needs "true"/"false").
BOOLEAN_OPERATORS = frozenset(
    {
        "==",
        "===",
        "!=",
        "!==",
        ">",
        ">=",
        "<",
        "<=",
        "!",
        "!!",
        "in",
        "all",
        "none",
        "some",
        "starts_with",
        "ends_with",
        "sem_ver",
    }
)

_Check = Callable[[Any, Location, list[ValidationIssue]], None]

#: Operators that coerce operands to numbers; json-logic-engine 5 throws on a non-number.
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_ARITHMETIC = ("+", "-", "*", "/", "%")
#: What JavaScript's Number() reads as a number (surrounding blanks allowed, "" is 0).
_JS_NUMBER = re.compile(
    r"^\s*(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Infinity"
    r"|0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+)?\s*$"
)


def _error(issues: list[ValidationIssue], location: Location, message: str) -> None:
    issues.append(ValidationIssue.at(location, message))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def check_targeting(rule: Any, location: Location, issues: list[ValidationIssue]) -> None:
    """Check a flag's `targeting` (or an `$evaluators` entry): `{}` or one JSONLogic rule."""
    if not isinstance(rule, dict):
        _error(
            issues,
            location,
            f"targeting must be a JSON object (a JSONLogic rule, or {{}} "
            f"for none), got {_kind(rule)}",
        )
        return
    if rule:
        _check_rule(rule, location, issues)


def check_argument(value: Any, location: Location, issues: list[ValidationIssue]) -> None:
    """Any operand: a rule, a $ref, or a JSON value (objects inside arrays are rules too)."""
    if isinstance(value, dict):
        if value:
            _check_rule(value, location, issues)
        else:  # the official schema refuses it, and the evaluators disagree on what it means
            _error(
                issues,
                location,
                "an empty object {} is not a rule (flagd's schema refuses "
                "it; the Python evaluator reads it as true, Node's as "
                "false); write the condition, or true/false",
            )
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_argument(item, (*location, index), issues)


def _check_rule(rule: dict[str, Any], location: Location, issues: list[ValidationIssue]) -> None:
    if "$ref" in rule:
        if len(rule) != 1:
            others = ", ".join(repr(key) for key in rule if key != "$ref")
            _error(issues, location, f'a $ref object holds only "$ref"; remove {others}')
        elif not isinstance(rule["$ref"], str) or not rule["$ref"]:
            _error(
                issues,
                (*location, "$ref"),
                f"$ref must name an evaluator (a string), got {_kind(rule['$ref'])}",
            )
        return
    if len(rule) != 1:
        keys = ", ".join(repr(key) for key in rule)
        _error(
            issues,
            location,
            f"a rule object holds exactly one operator, found {keys}; "
            'combine conditions with "and" / "or"',
        )
        return
    operator, arguments = next(iter(rule.items()))
    check = OPERATORS.get(operator)
    if check is None:
        close = difflib.get_close_matches(operator, OPERATORS, n=1)
        hint = (
            f"; did you mean {close[0]!r}?"
            if close
            else "; see https://flagd.dev/reference/flag-definitions/#targeting-rules"
        )
        _error(issues, (*location, operator), f"unknown operator {operator!r}{hint}")
        return
    check(arguments, (*location, operator), issues)


def _operands(
    operator: str,
    arguments: Any,
    location: Location,
    issues: list[ValidationIssue],
    minimum: int,
    maximum: int | None = None,
) -> list[Any] | None:
    """The operand list if its length fits, else one issue and None."""
    if not isinstance(arguments, list):
        _error(issues, location, f"{operator!r} takes an array of operands, got {_kind(arguments)}")
        return None
    count = len(arguments)
    if count < minimum or (maximum is not None and count > maximum):
        if maximum == minimum:
            wanted = f"exactly {minimum}"
        elif maximum is None:
            wanted = f"at least {minimum}"
        else:
            wanted = f"{minimum} to {maximum}"
        _error(issues, location, f"{operator!r} takes {wanted} operands, got {count}")
        return None
    return arguments


def _fixed(minimum: int, maximum: int | None) -> Callable[[str], _Check]:
    def for_operator(operator: str) -> _Check:
        def check(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
            operands = _operands(operator, arguments, location, issues, minimum, maximum)
            for index, operand in enumerate(operands or ()):
                check_argument(operand, (*location, index), issues)

        return check

    return for_operator


def _check_var(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
    name = arguments[0] if isinstance(arguments, list) and arguments else arguments
    if isinstance(arguments, list) and not arguments:
        _error(issues, location, "'var' needs the name of a context attribute")
        return
    if isinstance(name, str) and name.startswith("$flagd.") and name not in _FLAGD_PROPERTIES:
        where = (*location, 0) if isinstance(arguments, list) else location
        _error(
            issues,
            where,
            f"flagd provides only {', '.join(_FLAGD_PROPERTIES)}; {name!r} does not exist",
        )
    check_argument(arguments, location, issues)


def _check_unary(operator: str) -> _Check:
    def check(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
        if isinstance(arguments, list):
            _fixed(1, 1)(operator)(arguments, location, issues)
        else:
            check_argument(arguments, location, issues)

    return check


def _check_missing(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
    if not isinstance(arguments, list):
        _error(
            issues, location, f"'missing' takes an array of attribute names, got {_kind(arguments)}"
        )
        return
    for index, name in enumerate(arguments):
        if not isinstance(name, str):
            _error(
                issues,
                (*location, index),
                f"'missing' takes attribute names (strings), got {_kind(name)}",
            )


def _check_missing_some(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
    operands = _operands("missing_some", arguments, location, issues, 2, 2)
    if operands is None:
        return
    if isinstance(operands[0], bool) or not isinstance(operands[0], int | float):
        _error(
            issues,
            (*location, 0),
            "the first operand of 'missing_some' is how many "
            f"attributes must be present (a number), got "
            f"{_kind(operands[0])}",
        )
    _check_missing(operands[1], (*location, 1), issues)


def _check_string_compare(operator: str) -> _Check:
    def check(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
        operands = _operands(operator, arguments, location, issues, 2, 2)
        for index, operand in enumerate(operands or ()):
            if isinstance(operand, dict) and operand:
                _check_rule(operand, (*location, index), issues)
            elif not isinstance(operand, str):
                _error(
                    issues,
                    (*location, index),
                    f"{operator!r} compares strings: operand {index + 1} must be a string "
                    f'or a rule such as {{"var": "email"}}, got {_kind(operand)}',
                )

    return check


def _check_sem_ver(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
    operands = _operands("sem_ver", arguments, location, issues, 3, 3)
    if operands is None:
        return
    comparison = operands[1]
    if comparison not in _SEMVER_OPERATORS:
        _error(
            issues,
            (*location, 1),
            f"sem_ver compares with one of {' '.join(_SEMVER_OPERATORS)}, got {_kind(comparison)}",
        )
    for index in (0, 2):
        operand = operands[index]
        where = (*location, index)
        if isinstance(operand, dict) and operand:
            _check_rule(operand, where, issues)
        elif not isinstance(operand, str):
            _error(
                issues,
                where,
                f'a sem_ver version must be a string like "1.2.3" or a rule '
                f'such as {{"var": "version"}}, got {_kind(operand)}',
            )
        elif not _SEMVER.match(operand):
            if _LOOSE_SEMVER.match(operand):
                issues.append(
                    ValidationIssue.at(
                        where,
                        f"{operand!r} is not a full semantic version; flagd reads it, but "
                        'write MAJOR.MINOR.PATCH (for example "1.0.0") to follow the '
                        "flagd schema",
                        severity=WARNING,
                    )
                )
            else:
                _error(
                    issues,
                    where,
                    f"{operand!r} is not a semantic version; write "
                    'MAJOR.MINOR.PATCH, for example "2.0.0"',
                )


def _check_fractional(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
    if not isinstance(arguments, list) or not arguments:
        _error(
            issues,
            location,
            "fractional takes an array of [variant, weight] buckets, "
            "optionally after a bucketing rule",
        )
        return
    first = arguments[0]
    start = 0
    if isinstance(first, dict):
        if first:
            _check_rule(first, (*location, 0), issues)
        else:
            _error(
                issues,
                (*location, 0),
                'the bucketing rule is empty; use for example {"var": "email"}',
            )
        start = 1
    elif not isinstance(first, list):
        _error(
            issues,
            (*location, 0),
            f"the first item of fractional must be a bucketing rule such as "
            f'{{"var": "email"}} or a [variant, weight] bucket, got {_kind(first)}',
        )
        start = 1
    buckets = arguments[start:]
    if not buckets:
        _error(issues, location, "fractional needs at least one [variant, weight] bucket")
        return
    total = 0
    dynamic = False
    broken = False
    for offset, bucket in enumerate(buckets, start):
        where = (*location, offset)
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            got = f"{len(bucket)} items" if isinstance(bucket, list) else _kind(bucket)
            _error(
                issues, where, f"a fractional bucket is [variant] or [variant, weight], got {got}"
            )
            broken = True
            continue
        check_argument(bucket[0], (*where, 0), issues)
        if len(bucket) == 1:
            total += 1
            continue
        weight = bucket[1]
        weight_at = (*where, 1)
        if isinstance(weight, dict) and weight:
            _check_rule(weight, weight_at, issues)
            dynamic = True
        elif isinstance(weight, bool) or not isinstance(weight, int | float):
            _error(
                issues,
                weight_at,
                f"a weight is a whole number >= 0 or a rule computing one, got {_kind(weight)}",
            )
            broken = True
        elif isinstance(weight, float):
            hint = (
                f"write {int(weight)}"
                if weight.is_integer()
                else "scale every weight of this split by 10 (or 100) "
                f"({weight:g} -> {weight * 10:g})"
            )
            _error(
                issues,
                weight_at,
                f"weight {weight} is not a whole number; flagd only "
                f"accepts integer weights, so {hint}",
            )
            broken = True
        elif weight < 0:
            _error(
                issues,
                weight_at,
                f"weight {weight} is negative; weights are whole numbers "
                ">= 0 (0 sends no traffic to this bucket)",
            )
            broken = True
        else:
            total += weight
    if broken:
        return
    if not dynamic and total == 0:
        _error(
            issues,
            location,
            "every weight is 0, so no user falls in any bucket and every "
            "evaluation falls back to the default; give at least one "
            "bucket a positive weight",
        )
    elif total > MAX_TOTAL_WEIGHT:
        _error(
            issues,
            location,
            f"the weights add up to {total}, more than flagd's limit of "
            f"{MAX_TOTAL_WEIGHT}; use smaller numbers in the same ratio",
        )


def _js_numeric(value: Any) -> bool:
    """Whether json-logic-engine 5 accepts `value` where it needs a number."""
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and bool(_JS_NUMBER.match(value))


def _literal(value: Any) -> bool:
    if isinstance(value, list):
        return all(_literal(item) for item in value)
    return not isinstance(value, dict)


def _node_refuses(operator: str, operands: list[Any]) -> bool:
    """Whether Node's evaluator throws on these all-literal operands (as it folds them)."""
    if not all(_literal(operand) for operand in operands):
        return False
    if operator in _ARITHMETIC:
        return not all(_js_numeric(operand) for operand in operands)
    for left, right in itertools.pairwise(operands):
        if all(side is None or isinstance(side, str) for side in (left, right)):
            continue  # compared as strings
        if not (_js_numeric(left) and _js_numeric(right)):
            return True
    return False


def _numeric(operator: str, check: _Check) -> _Check:
    def checked(arguments: Any, location: Location, issues: list[ValidationIssue]) -> None:
        check(arguments, location, issues)
        if isinstance(arguments, list) and arguments and _node_refuses(operator, arguments):
            shown = ", ".join(_kind(operand) for operand in arguments)
            _error(
                issues,
                location,
                f"{operator!r} over {shown}: Node's flagd evaluator refuses the flag (it "
                "throws on an operand that is no number) while Python's reads it as false; "
                'compare strings with "===" or "!==", or write numbers',
            )

    return checked


def _operator_table() -> dict[str, _Check]:
    table: dict[str, _Check] = {
        "var": _check_var,
        "missing": _check_missing,
        "missing_some": _check_missing_some,
        "sem_ver": _check_sem_ver,
        "fractional": _check_fractional,
    }
    for operator in (
        "==",
        "===",
        "!=",
        "!==",
        ">",
        ">=",
        "%",
        "/",
        "map",
        "filter",
        "all",
        "none",
        "some",
        "in",
    ):
        table[operator] = _fixed(2, 2)(operator)
    for operator in ("substr", "<", "<="):
        table[operator] = _fixed(2, 3)(operator)
    table["reduce"] = _fixed(3, 3)("reduce")
    table["*"] = _fixed(2, None)("*")
    for operator in ("if", "or", "and", "+", "-", "max", "min", "merge", "cat"):
        table[operator] = _fixed(1, None)(operator)
    for operator in ("!", "!!"):
        table[operator] = _check_unary(operator)
    for operator in ("starts_with", "ends_with"):
        table[operator] = _check_string_compare(operator)
    for operator in (*_COMPARISONS, *_ARITHMETIC):
        table[operator] = _numeric(operator, table[operator])
    return table


#: Every operator flagd's targeting schema knows, with the check of its operands.
OPERATORS: dict[str, _Check] = _operator_table()
