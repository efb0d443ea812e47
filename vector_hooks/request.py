"""The backend-neutral search request and hit that hooks read and rewrite.

Adapters translate their client's call into a `SearchRequest`, run the pipeline around the real
call, and translate the resulting `Hit` lists back into what the client would have returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UNLIMITED", "Hit", "Hits", "SearchRequest", "TenantIsolation"]

#: `SearchRequest.limit` of calls the caller did not limit (e.g. Milvus query without `limit`).
UNLIMITED = 2**31 - 1


@dataclass(frozen=True)
class TenantIsolation:
    """The promise a security hook made: this request only reads rows of `tenant`.

    Adapters refuse to run a request whose isolation is missing or names another tenant.
    """

    tenant: str


@dataclass
class SearchRequest:
    """One read call (search, query, hybrid, ...) on one collection for one tenant.

    `limit` is what the caller gets back per query; `fetch_limit` is what the backend is asked
    for (a reranker raises it to over-fetch candidates). `params` holds the remaining
    backend-native arguments (query vectors, the caller's filter, search params) and may be
    rewritten by hooks; the adapter adds the tenant condition only after every hook has run.
    """

    tenant: str
    backend: str
    operation: str
    collection: str
    limit: int
    fetch_limit: int
    params: dict[str, Any] = field(default_factory=dict)
    #: Fields to return; None means every field the backend returns by default (adapters turn
    #: a "no fields" default, like Milvus search's, into an empty list before hooks run).
    output_fields: list[str] | None = None
    principal: str | None = None
    isolation: TenantIsolation | None = None
    #: Set by hooks that need each candidate's vector (e.g. MMR).
    want_vectors: bool = False
    #: Scratch space for hooks (e.g. audit start time), never sent to the backend.
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Fields hooks or the adapter added that the caller did not ask for; stripped at the end.
    extra_fields: set[str] = field(default_factory=set)

    def require_fields(self, *names: str) -> None:
        """Make the backend return `names` even if the caller did not ask for them."""
        if self.output_fields is None or "*" in self.output_fields:
            return  # every field comes back already
        for name in names:
            if name not in self.output_fields:
                self.output_fields.append(name)
                self.extra_fields.add(name)


@dataclass
class Hit:
    """One result row: `score` is higher-is-better whatever the backend metric."""

    id: Any
    score: float
    fields: dict[str, Any] = field(default_factory=dict)
    #: The backend's own distance or score, as it reported it.
    distance: float | None = None
    vector: Sequence[float] | None = None
    #: Set by a reranker: the fused score the final order is based on.
    rerank_score: float | None = None
    #: The backend's native object, so the adapter can rebuild its return type.
    raw: Any = None


#: One list of hits per query vector (query/fetch calls have exactly one list).
Hits = list[list[Hit]]
