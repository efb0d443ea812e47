"""Domain errors of the control plane; the HTTP edge maps each class to one problem type.

    ControlPlaneError
    ├── BadRequestInput            a request attribute (header or body) is malformed
    ├── FlagNotFound               no flag with that key in the serving flag set
    ├── NotARoutingFlag            the flag exists but its variants do not name backends
    ├── FlagsNotLoaded             no valid flag set has been loaded yet
    ├── FlagValidationError        a flag set (file or API edit) was refused; carries the issues
    ├── VersionNotFound            no stored flag set version with that number
    ├── AuthError
    │   ├── Unauthenticated        no or unknown bearer token (401)
    │   └── Forbidden              the token's role may not do this (403)
    └── UpstreamError              the chosen backend refused, timed out or failed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AuthError",
    "BadRequestInput",
    "ControlPlaneError",
    "FlagNotFound",
    "FlagValidationError",
    "FlagsNotLoaded",
    "Forbidden",
    "NotARoutingFlag",
    "Unauthenticated",
    "UpstreamError",
    "VersionNotFound",
]


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose."""

    #: Short, stable problem title; the edge turns it into a problem+json `title`.
    title = "Control plane error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequestInput(ControlPlaneError):
    title = "Malformed request attribute"

    def __init__(self, detail: str, *, source: str) -> None:
        super().__init__(detail, source=source)
        self.source = source


class FlagNotFound(ControlPlaneError):
    title = "Flag not found"


class NotARoutingFlag(ControlPlaneError):
    title = "Not a routing flag"


class FlagsNotLoaded(ControlPlaneError):
    title = "Flags not loaded"


class FlagValidationError(ControlPlaneError):
    title = "Flag validation failed"

    def __init__(self, detail: str, *, issues: Sequence[Any] = ()) -> None:
        super().__init__(detail)
        self.issues = list(issues)


class VersionNotFound(ControlPlaneError):
    title = "Flag set version not found"


class AuthError(ControlPlaneError):
    title = "Authentication failed"


class Unauthenticated(AuthError):
    title = "Unauthenticated"


class Forbidden(AuthError):
    title = "Forbidden"


class UpstreamError(ControlPlaneError):
    title = "Upstream failed"
