"""Short import path: ``from vector_hooks.weaviate import TenantWeaviate``."""

from vector_hooks.backends.weaviate import DEFAULT_LIMIT, TenantWeaviate, translate_weaviate_error

__all__ = ["DEFAULT_LIMIT", "TenantWeaviate", "translate_weaviate_error"]
