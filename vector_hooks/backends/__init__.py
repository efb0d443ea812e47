"""Adapters wrapping a vector database client: `milvus` (pymilvus) and `weaviate` (v4 client).

Nothing is imported here, so a service using one backend never imports the other's client.
"""

__all__: list[str] = []
