"""Helpers shared by the vector_hooks tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pymilvus import MilvusClient

from vector_hooks.milvus import create_tenant_collection

if TYPE_CHECKING:
    import weaviate
    from vh_weaviate_fake import FakeWeaviate

__all__ = ["connect", "make_docs", "replace_file", "wait_until"]


def replace_file(path: Path, text: str) -> None:
    """Replace a file atomically and move its mtime forward, as an editor saving it would.

    The flagd file provider reloads when the mtime grows; bumping it by a second makes the
    change visible even on file systems with coarse timestamps.
    """
    before = path.stat().st_mtime if path.exists() else 0.0
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.replace(path)
    stamp = max(time.time(), before + 1.0)
    os.utime(path, (stamp, stamp))


def wait_until(condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def make_docs(
    client: MilvusClient,
    name: str,
    rows: list[dict[str, Any]],
    *,
    dim: int,
    metric: str = "COSINE",
) -> None:
    """Create a partition-key tenant collection and load `rows` into it, flushed."""
    create_tenant_collection(client, name, dim=dim, metric=metric, index_type="FLAT")
    client.insert(name, rows)
    client.flush(name)


def connect(fake: FakeWeaviate) -> weaviate.WeaviateClient:
    """The real weaviate-client connected to the fake (the caller redirects its PyPI check)."""
    import weaviate  # slow to import; only the Weaviate tests need it

    return weaviate.connect_to_custom(
        http_host="127.0.0.1",
        http_port=fake.http_port,
        http_secure=False,
        grpc_host="127.0.0.1",
        grpc_port=fake.grpc_port,
        grpc_secure=False,
    )
