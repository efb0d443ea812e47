"""flagd's custom JSONLogic operators (`starts_with`, `ends_with`, `sem_ver`), as in flagd-core.

Written here rather than imported from openfeature-flagd-core so the evaluator keeps its semantics
when the provider (and the flagd-core it pulls in) is upgraded. The JSONLogic built-ins come from
panzi-json-logic, the interpreter flagd-core itself uses, so comparisons with mixed types, `in`,
`cat` and `var` behave exactly as they do there. flagd-core logs its operator errors; these don't
(they run on the decision hot path), they return the same `None`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import semver

__all__ = [
    "SEMVER_COMPARATORS",
    "ends_with",
    "normalize_version",
    "parse_version",
    "sem_ver",
    "starts_with",
]

#: sem_ver's operators: (left version, right version) -> bool.
SEMVER_COMPARATORS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "=": lambda v1, v2: v1 == v2,
    "!=": lambda v1, v2: v1 != v2,
    "<": lambda v1, v2: v1 < v2,
    "<=": lambda v1, v2: v1 <= v2,
    ">": lambda v1, v2: v1 > v2,
    ">=": lambda v1, v2: v1 >= v2,
    "^": lambda v1, v2: v1.major == v2.major,
    "~": lambda v1, v2: v1.major == v2.major and v1.minor == v2.minor,
}

#: Parsed versions by their text (None: not a version). Bounded: cleared when full.
_VERSIONS: dict[str, semver.Version | None] = {}
_VERSIONS_MAX = 4096


def normalize_version(arg: Any) -> semver.Version:
    """flagd's version reading: an optional v/V prefix, partial versions padded ("1" -> 1.0.0)."""
    version = str(arg)
    if version.startswith(("v", "V")):
        version = version[1:]
    numeric_part = version.split("-")[0].split("+")[0]
    dot_count = numeric_part.count(".")
    if dot_count < 2:
        version = numeric_part + ".0" * (2 - dot_count) + version[len(numeric_part) :]
    return semver.Version.parse(version)


def parse_version(arg: Any) -> semver.Version | None:
    """`normalize_version`, None instead of ValueError, remembered per text (parsing is slow)."""
    text = arg if type(arg) is str else str(arg)
    try:
        return _VERSIONS[text]
    except KeyError:
        pass
    try:
        version: semver.Version | None = normalize_version(text)
    except ValueError:
        version = None
    if len(_VERSIONS) >= _VERSIONS_MAX:
        _VERSIONS.clear()
    _VERSIONS[text] = version
    return version


def sem_ver(data: Any, *args: Any) -> bool | None:
    """`{"sem_ver": [version, op, version]}`: None on wrong arity, bad versions or unknown op."""
    if len(args) != 3:
        return None
    arg1, op, arg2 = args
    v1 = parse_version(arg1)
    v2 = parse_version(arg2)
    if v1 is None or v2 is None:
        return None
    comparator = SEMVER_COMPARATORS.get(op) if isinstance(op, str) else None
    return None if comparator is None else comparator(v1, v2)


def starts_with(data: Any, *args: Any) -> bool | None:
    """`{"starts_with": [string, prefix]}`: None unless exactly two strings."""
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].startswith(args[1])


def ends_with(data: Any, *args: Any) -> bool | None:
    """`{"ends_with": [string, suffix]}`: None unless exactly two strings."""
    if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], str):
        return None
    return args[0].endswith(args[1])
