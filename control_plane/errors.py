"""Domain errors of the control plane; the HTTP edge maps each class to one problem type.

ControlPlaneError
├── BadRequestInput            a request attribute (header or body) is malformed
├── PayloadTooLarge            a request body over the endpoint's limit (413)
├── FlagNotFound               no flag with that key in the serving flag set
├── NotARoutingFlag            the flag exists but its variants do not name backends
├── FlagsNotLoaded             no valid flag set has been loaded yet
├── FlagValidationError        a flag set (file or API edit) was refused; carries the issues
├── VersionNotFound            no stored flag set version with that number
├── TokenNotFound              no stored API token with that name
├── Conflict                   the request clashes with existing state (a token name)
├── PreconditionFailed         If-Match / If-None-Match does not hold (412, current ETag)
├── InvalidEvents              outcome events refused; carries one error per bad item
├── ExperimentNotFound         the flag is not an experiment and has no exposures
├── CanaryNotFound             no canary run for that flag
├── InvalidCanary              a canary spec that cannot run on its flag
├── EventQueueFull             the experiment writer cannot take more records now
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
    "CanaryNotFound",
    "Conflict",
    "ControlPlaneError",
    "EventQueueFull",
    "ExperimentNotFound",
    "FlagNotFound",
    "FlagValidationError",
    "FlagsNotLoaded",
    "Forbidden",
    "InvalidCanary",
    "InvalidEvents",
    "NotARoutingFlag",
    "PayloadTooLarge",
    "PreconditionFailed",
    "TokenNotFound",
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

    @property
    def metric_source(self) -> str:
        """`source` cut to a bounded vocabulary, for a metric label.

        Header sources are header names from the declared rules; body sources may name any
        key a client sent (`body.context.<key>`), so only their first two parts are kept.
        """
        if self.source.startswith("body"):
            return ".".join(self.source.split(".", 2)[:2]).split("[", 1)[0].split(" ", 1)[0]
        return self.source


class PayloadTooLarge(ControlPlaneError):
    title = "Payload too large"


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


class TokenNotFound(ControlPlaneError):
    title = "Token not found"


class Conflict(ControlPlaneError):
    title = "Conflict"


class PreconditionFailed(ControlPlaneError):
    """The write's If-Match / If-None-Match does not hold for the flag as it is now (412)."""

    title = "Precondition failed"


class InvalidEvents(ControlPlaneError):
    title = "Invalid events"

    def __init__(self, detail: str, *, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__(detail, errors=list(errors))


class ExperimentNotFound(ControlPlaneError):
    title = "Experiment not found"


class CanaryNotFound(ControlPlaneError):
    title = "Canary not found"


class InvalidCanary(ControlPlaneError):
    title = "Invalid canary"


class EventQueueFull(ControlPlaneError):
    title = "Event queue full"


class AuthError(ControlPlaneError):
    title = "Authentication failed"


class Unauthenticated(AuthError):
    title = "Unauthenticated"


class Forbidden(AuthError):
    title = "Forbidden"


class UpstreamError(ControlPlaneError):
    title = "Upstream failed"
