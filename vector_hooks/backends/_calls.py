"""What every adapter does around a backend call: pick the pipeline, enforce isolation, tidy up.

Isolation is enforced here, independent of hook configuration: a request reaches the backend
only if a security hook pinned it to the caller's tenant, and every returned row that carries
the tenant field must belong to that tenant, or the whole answer is withheld.
"""

from __future__ import annotations

from collections.abc import Callable

from vector_hooks.errors import RequestRefused, TenantIsolationError, VectorHooksError
from vector_hooks.metrics import HookMetrics
from vector_hooks.request import UNLIMITED, Hits, SearchRequest
from vector_hooks.selector import PipelineSelector

__all__ = ["UNLIMITED", "require_isolation", "run_call", "verify_tenant"]


def require_isolation(request: SearchRequest, tenant: str) -> None:
    """Refuse a request no security hook pinned to `tenant`."""
    if request.isolation is None:
        raise TenantIsolationError(
            "no hook isolated this request to its tenant; the pipeline must include "
            f"'tenant-filter' (pipeline ran for tenant {tenant!r})"
        )
    if request.isolation.tenant != tenant or request.tenant != tenant:
        raise TenantIsolationError(
            f"a hook changed the tenant of a request for {tenant!r}; refused"
        )


def verify_tenant(hits: Hits, field: str, tenant: str) -> None:
    """Withhold the whole answer if any row carries another tenant in `field`."""
    for group in hits:
        for hit in group:
            owner = hit.fields.get(field, tenant)
            if owner != tenant:
                raise TenantIsolationError(
                    f"the backend returned row {hit.id!r} of another tenant for tenant "
                    f"{tenant!r}; the answer was withheld"
                )


def run_call(
    selector: PipelineSelector,
    request: SearchRequest,
    execute: Callable[[SearchRequest], Hits],
    metrics: HookMetrics,
) -> tuple[SearchRequest, Hits]:
    """Run the tenant's pipeline around `execute`; cut to `limit`, strip helper fields."""
    final: list[SearchRequest] = [request]
    limit = request.limit  # the caller's; hooks may over-fetch but never return more

    def guarded(req: SearchRequest) -> Hits:
        require_isolation(req, request.tenant)
        final[0] = req
        return execute(req)

    pipeline = selector.select(request.tenant)
    try:
        hits = pipeline.run(request, guarded)
    except RequestRefused:
        metrics.search_done(request.operation, "refused")
        raise
    except VectorHooksError:
        metrics.search_done(request.operation, "error")
        raise
    last = final[0]
    extra = last.extra_fields
    for group in hits:
        del group[limit:]
        if extra:
            for hit in group:
                if extra & hit.fields.keys():
                    hit.fields = {k: v for k, v in hit.fields.items() if k not in extra}
    metrics.search_done(request.operation, "ok")
    return last, hits
