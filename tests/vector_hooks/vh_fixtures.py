"""Fixtures of the vector_hooks tests, loaded by each test module through `pytest_plugins`.

Not a conftest.py on purpose: other test modules import helpers with `from conftest import ...`,
and a second conftest.py would take that module name. Fixture names start with `vh_` so they
never collide with fixtures of tests/conftest.py (which would take precedence in this folder).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from openfeature import api as openfeature_api
from pymilvus import MilvusClient

from vector_hooks.metrics import HookMetrics

if TYPE_CHECKING:
    from vh_weaviate_fake import FakeWeaviate

_names = itertools.count()


@pytest.fixture(autouse=True)
def vh_no_leaked_providers() -> Iterator[None]:
    """Each test ends with no OpenFeature provider left running (providers are global)."""
    yield
    openfeature_api.clear_providers()


@pytest.fixture(scope="session")
def vh_milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    """One real Milvus Lite for the session (starting one takes about a second)."""
    path = tmp_path_factory.mktemp("milvus") / "vector_hooks.db"
    client = MilvusClient(str(path))
    yield client
    client.close()


@pytest.fixture
def vh_collection() -> str:
    """A collection name no other test uses."""
    return f"vh_{next(_names)}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def vh_metrics() -> HookMetrics:
    """Fresh counters, so assertions do not see other tests' counts."""
    return HookMetrics()


@pytest.fixture
def vh_domain() -> str:
    """A unique OpenFeature domain, so providers of different tests never meet."""
    return f"vh-test-{uuid.uuid4().hex}"


@pytest.fixture
def vh_fake_weaviate() -> Iterator[FakeWeaviate]:
    """A started fake Weaviate (REST + gRPC on loopback ports)."""
    from vh_weaviate_fake import FakeWeaviate  # weaviate-client is slow to import

    fake = FakeWeaviate()
    fake.start()
    yield fake
    fake.stop()
