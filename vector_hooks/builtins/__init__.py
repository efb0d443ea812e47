"""The built-in hooks: tenant-filter, tenant-aware-rerank, redact and audit."""

from __future__ import annotations

from vector_hooks.builtins.audit import AuditHook
from vector_hooks.builtins.redact import RedactHook
from vector_hooks.builtins.rerank import RerankConfig, TenantAwareRerankHook
from vector_hooks.builtins.tenant_filter import TenantFilterHook

__all__ = [
    "BUILTIN_HOOKS",
    "AuditHook",
    "RedactHook",
    "RerankConfig",
    "TenantAwareRerankHook",
    "TenantFilterHook",
]

#: Registry name -> hook class; also declared as entry points of group `vector_hooks.hooks`.
BUILTIN_HOOKS: dict[str, type] = {
    TenantFilterHook.name: TenantFilterHook,
    TenantAwareRerankHook.name: TenantAwareRerankHook,
    RedactHook.name: RedactHook,
    AuditHook.name: AuditHook,
}
