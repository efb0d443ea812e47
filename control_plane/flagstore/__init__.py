"""Flag lifecycle: load, validate, version and serve the flag directory."""

from control_plane.flagstore.flagset import BUCKETING_GENERATION, FlagSet
from control_plane.flagstore.issues import ValidationIssue
from control_plane.flagstore.store import FlagStore, ReloadOutcome, ReloadStats
from control_plane.flagstore.validate import (
    ValidationResult,
    validate_contents,
    validate_document,
    validate_flag,
)

__all__ = [
    "BUCKETING_GENERATION",
    "FlagSet",
    "FlagStore",
    "ReloadOutcome",
    "ReloadStats",
    "ValidationIssue",
    "ValidationResult",
    "validate_contents",
    "validate_document",
    "validate_flag",
]
