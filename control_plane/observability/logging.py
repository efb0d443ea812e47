"""Log lines for the service: one JSON object per line for collectors, or plain text for people.

A JSON line holds `time` (UTC, ISO 8601, milliseconds), `level`, `logger`, `message`, every
field the call passed in `extra=` (decision_id, flag, variant, ...), `trace_id`/`span_id` when
an OpenTelemetry span is active, and `exception` with the traceback when there is one.
uvicorn's access lines get `client`, `method`, `path`, `http_version` and `status` fields.

`logging_config(format, level)` is one `logging.config.dictConfig` dictionary for the root logger
and uvicorn's loggers, given to `uvicorn.run(log_config=...)` so that uvicorn's own lines come
out in the same format. `resolve_format("auto", stream)` is text on a terminal, JSON otherwise.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from opentelemetry import trace

__all__ = ["JsonFormatter", "LogFormat", "configure_logging", "logging_config", "resolve_format"]

LogFormat = Literal["auto", "json", "text"]

#: Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Chatty at INFO and said better elsewhere: httpx logs each backend call the dispatch line
#: already describes; alembic lists its plugins at every start. Quiet unless level is debug.
_QUIET_BELOW_DEBUG = ("httpx", "httpcore", "alembic.runtime.plugins")


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (
            record.name == "uvicorn.access"
            and isinstance(record.args, tuple)
            and len(record.args) == len(_ACCESS_FIELDS)
        ):
            entry.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


def resolve_format(log_format: LogFormat, stream: TextIO | None = None) -> Literal["json", "text"]:
    """`auto`: text when `stream` (stderr) is a terminal, where a person reads it; else JSON."""
    if log_format != "auto":
        return log_format
    stream = stream or sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or unusual stream
        return "json"


def logging_config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """A dictConfig for the root logger and uvicorn's loggers, all to stderr."""
    resolved = resolve_format(log_format)
    formatter: dict[str, Any] = (
        {"()": f"{JsonFormatter.__module__}.JsonFormatter"}
        if resolved == "json"
        else {"format": _TEXT}
    )
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    level_name = level.upper()
    quiet = {name: {"level": "WARNING"} for name in _QUIET_BELOW_DEBUG if level_name != "DEBUG"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn looks these two formatter names up when told to use colours.
        "formatters": {"default": formatter, "access": dict(formatter)},
        "handlers": {
            "default": {**handler, "formatter": "default"},
            "access": {**handler, "formatter": "access"},
        },
        "root": {"handlers": ["default"], "level": level_name},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            **quiet,
        },
    }


def configure_logging(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """Apply `logging_config` now (before the app starts); returns it for uvicorn to reuse."""
    config = logging_config(log_format, level)
    logging.config.dictConfig(config)
    return config
