"""Anonymous requests are normal traffic, not errors: quiet flagd-core's fractional about them.

flagd-core (openfeature-flagd-core 1.0.0) logs two ERROR lines on the `openfeature.contrib`
logger whenever `fractional` meets a context without a targeting key ("No targetingKey provided
for fractional shorthand syntax.", "No hashKey value resolved"), then serves the default
variant, which is exactly what anonymous traffic should get. 300 anonymous requests made 600
ERROR lines. This filter demotes those two messages, and only those, to DEBUG; every other
record of that logger passes unchanged.
"""

from __future__ import annotations

import logging

__all__ = ["FLAGD_CORE_LOGGER", "AnonymousFractionalFilter", "quiet_anonymous_fractional"]

FLAGD_CORE_LOGGER = "openfeature.contrib"
_MESSAGES = frozenset(
    {"No targetingKey provided for fractional shorthand syntax.", "No hashKey value resolved"}
)


class AnonymousFractionalFilter(logging.Filter):
    """Rewrites flagd-core's "no targeting key" errors as DEBUG records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.msg in _MESSAGES:
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
            # Handlers compare levels after this filter: an INFO handler now drops the record.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_anonymous_fractional() -> None:
    """Install the filter once on flagd-core's logger (idempotent)."""
    logger = logging.getLogger(FLAGD_CORE_LOGGER)
    if not any(isinstance(existing, AnonymousFractionalFilter) for existing in logger.filters):
        logger.addFilter(AnonymousFractionalFilter())
