"""Tenant-isolated, flag-selected hook pipelines around Milvus and Weaviate searches.

Services that serve many tenants from one collection wrap their existing client::

    from pymilvus import MilvusClient
    from vector_hooks.milvus import TenantMilvus
    docs = TenantMilvus(MilvusClient("./docs.db"), collection="docs", tenant_field="tenant_id")
    hits = docs.search(tenant="acme", data=[vec], limit=10, filter='lang == "en"')

The adapters live in `vector_hooks.milvus` and `vector_hooks.weaviate` and are not imported
here, so importing `vector_hooks` never imports pymilvus or weaviate-client. This package
never imports the control plane, FastAPI or SQLAlchemy.
"""

from vector_hooks.builder import build_pipeline
from vector_hooks.builtins import AuditHook, RedactHook, TenantAwareRerankHook, TenantFilterHook
from vector_hooks.errors import (
    BackendError,
    ConfigurationError,
    InvalidFilter,
    InvalidTenantId,
    RequestRefused,
    SecurityHookFailed,
    TenantIsolationError,
    TenantOwnershipError,
    UnsafeArgument,
    VectorHooksError,
)
from vector_hooks.hooks import BaseHook, Hook, HookKind
from vector_hooks.metrics import DEFAULT_METRICS, HookMetrics
from vector_hooks.pipeline import Pipeline
from vector_hooks.registry import ENTRY_POINT_GROUP, HookRegistry, default_registry, register
from vector_hooks.request import Hit, Hits, SearchRequest, TenantIsolation
from vector_hooks.selector import FlagPipelineSelector, PipelineSelector, StaticSelector
from vector_hooks.spec import DEFAULT_PIPELINE, HookSpec, PipelineSpec
from vector_hooks.tenancy import (
    TENANT_ID_ALPHABET,
    TENANT_ID_MAX_LENGTH,
    TENANT_ID_PATTERN,
    is_tenant_key,
    tenant_key,
    validate_tenant_id,
)

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_PIPELINE",
    "ENTRY_POINT_GROUP",
    "TENANT_ID_ALPHABET",
    "TENANT_ID_MAX_LENGTH",
    "TENANT_ID_PATTERN",
    "AuditHook",
    "BackendError",
    "BaseHook",
    "ConfigurationError",
    "FlagPipelineSelector",
    "Hit",
    "Hits",
    "Hook",
    "HookKind",
    "HookMetrics",
    "HookRegistry",
    "HookSpec",
    "InvalidFilter",
    "InvalidTenantId",
    "Pipeline",
    "PipelineSelector",
    "PipelineSpec",
    "RedactHook",
    "RequestRefused",
    "SearchRequest",
    "SecurityHookFailed",
    "StaticSelector",
    "TenantAwareRerankHook",
    "TenantFilterHook",
    "TenantIsolation",
    "TenantIsolationError",
    "TenantOwnershipError",
    "UnsafeArgument",
    "VectorHooksError",
    "build_pipeline",
    "default_registry",
    "is_tenant_key",
    "register",
    "tenant_key",
    "validate_tenant_id",
]
