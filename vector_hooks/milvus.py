"""Short import path for the Milvus adapter: ``from vector_hooks.milvus import TenantMilvus``."""

from vector_hooks.backends.milvus import (
    TenantMilvus,
    create_tenant_collection,
    supports_filter_params,
    translate_milvus_error,
)

__all__ = [
    "TenantMilvus",
    "create_tenant_collection",
    "supports_filter_params",
    "translate_milvus_error",
]
