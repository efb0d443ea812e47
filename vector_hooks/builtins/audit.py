"""`audit`: one structured record per search: who searched what, for which tenant, how many hits.

Each record is a dict logged as JSON on the ``vector_hooks.audit`` logger (INFO for
successes, WARNING for refusals and errors) with the dict itself in the log record's
``vector_hooks_audit`` attribute; pass ``sink=`` in code to send records elsewhere. Config:
``{"logger": "name", "include_ids": false}``. The query vectors are never recorded.

It is a SECURITY hook: a search that cannot be audited is not answered. List it first in the
pipeline so its after-phase sees the final hits.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from vector_hooks.errors import HookConfigError, RequestRefused
from vector_hooks.hooks import BaseHook, HookKind
from vector_hooks.request import UNLIMITED, Hits, SearchRequest

__all__ = ["AuditHook", "AuditRecord"]

AuditRecord = dict[str, Any]
_STARTED = "audit.started"


class AuditHook(BaseHook):
    """Record every search and its outcome."""

    name: ClassVar[str] = "audit"
    kind: ClassVar[HookKind] = HookKind.SECURITY

    def __init__(
        self,
        *,
        sink: Callable[[AuditRecord], None] | None = None,
        logger_name: str = "vector_hooks.audit",
        include_ids: bool = False,
    ) -> None:
        self._logger = logging.getLogger(logger_name)
        self._sink = sink or self._log
        self.include_ids = include_ids

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AuditHook:
        unknown = sorted(set(config) - {"logger", "include_ids"})
        if unknown:
            raise HookConfigError(f"unknown key(s) {unknown}; allowed: include_ids, logger")
        logger_name = config.get("logger", "vector_hooks.audit")
        include_ids = config.get("include_ids", False)
        if not isinstance(logger_name, str) or not logger_name:
            raise HookConfigError(f"logger must be a logger name, got {logger_name!r}")
        if not isinstance(include_ids, bool):
            raise HookConfigError(f"include_ids must be true or false, got {include_ids!r}")
        return cls(logger_name=logger_name, include_ids=include_ids)

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        request.attributes[_STARTED] = time.perf_counter()
        return None

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        record = self._record(request, "ok")
        record["hits"] = sum(len(group) for group in hits)
        if self.include_ids:
            record["hit_ids"] = [[_plain(hit.id) for hit in group] for group in hits]
        self._sink(record)
        return None

    def on_error(self, request: SearchRequest, error: BaseException) -> None:
        record = self._record(request, "refused" if isinstance(error, RequestRefused) else "error")
        record["error"] = f"{type(error).__name__}: {error}"
        self._sink(record)

    def _record(self, request: SearchRequest, outcome: str) -> AuditRecord:
        started = request.attributes.get(_STARTED)
        caller_filter = request.params.get("filter") or request.params.get("filters")
        text_query = request.params.get("query")
        return {
            "event": "vector_search",
            "outcome": outcome,
            "tenant": request.tenant,
            "principal": request.principal,
            "backend": request.backend,
            "operation": request.operation,
            "collection": request.collection,
            "filter": None if caller_filter is None else str(caller_filter),
            # Text queries (bm25, hybrid, near_text) say what was searched; vectors do not.
            "query": text_query[:200] if isinstance(text_query, str) else None,
            "limit": None if request.limit >= UNLIMITED else request.limit,
            "duration_ms": None
            if started is None
            else round((time.perf_counter() - started) * 1000, 3),
        }

    def _log(self, record: AuditRecord) -> None:
        level = logging.INFO if record["outcome"] == "ok" else logging.WARNING
        self._logger.log(
            level, json.dumps(record, default=str), extra={"vector_hooks_audit": record}
        )


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | str) else str(value)
