"""`tenant-filter`: the security hook that pins a request to one validated tenant.

Its ``before_search`` validates the tenant id (see `vector_hooks.tenancy`) and records a
`TenantIsolation` on the request. The adapters turn that record into the backend's own
isolation (a Milvus expression ANDed around the caller's filter, a Weaviate tenant or property
filter) after every hook has run, refuse any request without it, and check every returned row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from vector_hooks.errors import HookConfigError, TenantIsolationError
from vector_hooks.hooks import BaseHook, HookKind
from vector_hooks.request import SearchRequest, TenantIsolation
from vector_hooks.tenancy import validate_tenant_id

__all__ = ["TenantFilterHook"]


class TenantFilterHook(BaseHook):
    """Validate the tenant id and mark the request as isolated to it (fails closed)."""

    name: ClassVar[str] = "tenant-filter"
    kind: ClassVar[HookKind] = HookKind.SECURITY

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TenantFilterHook:
        if config:
            raise HookConfigError(f"takes no configuration (got keys {sorted(config)})")
        return cls()

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        tenant = validate_tenant_id(request.tenant)
        if request.isolation is not None and request.isolation.tenant != tenant:
            raise TenantIsolationError(
                f"request for tenant {tenant!r} was already pinned to another tenant"
            )
        request.isolation = TenantIsolation(tenant)
        return None
