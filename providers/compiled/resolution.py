"""What one evaluation answers, without OpenFeature objects: the compiled evaluator's result type.

Reasons and error codes are the OpenFeature/flagd names as plain strings (they compare equal to
`openfeature.flag_evaluation.Reason` and `openfeature.exception.ErrorCode` members).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT",
    "DISABLED",
    "EMPTY_METADATA",
    "ERROR",
    "FLAG_NOT_FOUND",
    "GENERAL",
    "PARSE_ERROR",
    "STATIC",
    "TARGETING_MATCH",
    "TYPE_MISMATCH",
    "Resolution",
]

STATIC = "STATIC"
TARGETING_MATCH = "TARGETING_MATCH"
DEFAULT = "DEFAULT"
DISABLED = "DISABLED"
ERROR = "ERROR"

FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
PARSE_ERROR = "PARSE_ERROR"
TYPE_MISMATCH = "TYPE_MISMATCH"
GENERAL = "GENERAL"

EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class Resolution(NamedTuple):
    """One flag evaluation, as flagd answers it.

    `variant` is None when no variant was chosen (DISABLED, DEFAULT without a default variant,
    errors); `value` is then the caller's default. Resolutions are shared between evaluations
    (one per flag-set version, flag and variant), so `value` and `metadata` must not be mutated.
    """

    value: Any
    variant: str | None
    reason: str
    error_code: str | None = None
    error_message: str | None = None
    metadata: Mapping[str, Any] = EMPTY_METADATA
