"""TenantWeaviate with the real weaviate-client against the protocol-level fake Weaviate.

No Weaviate server can run here (see vh_weaviate_fake); the fake records every gRPC Search
request, so these tests assert the tenant and filters that actually went over the wire.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from vh_support import connect
from vh_weaviate_fake import FakeWeaviate
from weaviate import exceptions as wexc
from weaviate.classes.query import Filter
from weaviate.proto.v1 import base_pb2

from vector_hooks import build_pipeline
from vector_hooks.errors import (
    BackendError,
    BackendPermissionDenied,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    InvalidTenantId,
    UnsafeArgument,
)
from vector_hooks.weaviate import TenantWeaviate, translate_weaviate_error

pytest_plugins = ["vh_fixtures"]


TENANTS = ("acme", "globex", "initech")
OPS = {
    "near_vector": ([1.0, 0.2, 0.1], {}),
    "near_text": ("report", {}),
    "hybrid": ("report", {"vector": [1.0, 0.2, 0.1], "alpha": 0.5}),
    "bm25": ("report", {}),
    "fetch_objects": (None, {}),
}


def _seed(fake: FakeWeaviate) -> dict[str, list[uuid.UUID]]:
    fake.add_collection("Docs", multi_tenancy=True)
    fake.add_collection("Shared", multi_tenancy=False)
    ids: dict[str, list[uuid.UUID]] = {}
    for t, tenant in enumerate(TENANTS):
        for i in range(12):
            props = {
                "title": f"{tenant} report {i}",
                "lang": "en" if i % 2 else "de",
                "body": f"ask {tenant}{i}@example.org",
                "n": i,
            }
            vector = [1.0, (i + t) / 10, (i % 3) / 5]
            ids.setdefault(tenant, []).append(fake.add_object("Docs", props, vector, tenant=tenant))
            fake.add_object("Shared", {**props, "tenant_id": tenant}, vector)
    return ids


@pytest.fixture
def seeded(vh_fake_weaviate: FakeWeaviate) -> dict[str, list[uuid.UUID]]:
    return _seed(vh_fake_weaviate)


@pytest.fixture
def client(vh_fake_weaviate: FakeWeaviate, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real client, connected with its full start-up checks, all on loopback."""
    # The client checks PyPI for a newer release on connect; point it at the fake instead.
    monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", vh_fake_weaviate.pypi_url)
    connected = connect(vh_fake_weaviate)
    yield connected
    connected.close()


def _call(docs: TenantWeaviate, op: str, tenant: str, **kwargs: Any) -> Any:
    query, extra = OPS[op]
    method = getattr(docs, op)
    if query is None:
        return method(tenant, **extra, **kwargs)
    return method(tenant, query, **extra, **kwargs)


def test_the_client_starts_against_the_fake(client: Any, vh_fake_weaviate: FakeWeaviate) -> None:
    """The real client reads /v1/meta, pings gRPC health and sees the server ready."""
    assert "/v1/meta" in vh_fake_weaviate.rest_paths
    assert vh_fake_weaviate.health_checks >= 1
    assert client.is_ready()
    assert "/v1/.well-known/ready" in vh_fake_weaviate.rest_paths


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("tenant", ["acme", "initech"])
def test_native_multi_tenancy_sends_the_tenant_for_every_operation(
    client: Any,
    vh_fake_weaviate: FakeWeaviate,
    seeded: dict[str, list[uuid.UUID]],
    op: str,
    tenant: str,
) -> None:
    """Each query operation runs on the caller's tenant shard, with real object ids."""
    docs = TenantWeaviate(client.collections.get("Docs"))
    result = _call(docs, op, tenant, limit=4)
    sent = vh_fake_weaviate.search_requests[-1]
    assert sent.tenant == tenant
    assert not sent.HasField("filters")
    assert 1 <= len(result.objects) <= 4
    assert all(obj.properties["title"].startswith(f"{tenant} ") for obj in result.objects)
    assert {obj.uuid for obj in result.objects} <= set(seeded[tenant])


@pytest.mark.parametrize("op", sorted(OPS))
def test_property_mode_ands_the_tenant_filter_with_the_callers(
    client: Any, vh_fake_weaviate: FakeWeaviate, seeded: dict[str, list[uuid.UUID]], op: str
) -> None:
    """Without native tenants, the wire filter is AND(tenant_id == t, caller filter)."""
    docs = TenantWeaviate(client.collections.get("Shared"), multi_tenancy=False)
    result = _call(
        docs,
        op,
        "globex",
        limit=6,
        filters=Filter.by_property("lang").equal("en"),
        return_properties=["title", "lang"],
    )
    sent = vh_fake_weaviate.search_requests[-1]
    assert sent.tenant == ""
    assert sent.filters.operator == base_pb2.Filters.OPERATOR_AND
    tenant_part, caller_part = sent.filters.filters
    assert (tenant_part.target.property, tenant_part.value_text) == ("tenant_id", "globex")
    assert (caller_part.target.property, caller_part.value_text) == ("lang", "en")
    assert "tenant_id" in sent.properties.non_ref_properties  # fetched to check each object
    assert result.objects
    for obj in result.objects:
        assert set(obj.properties) == {"title", "lang"}  # ... and stripped again
        assert obj.properties["title"].startswith("globex ")
        assert obj.properties["lang"] == "en"


def test_property_mode_without_caller_filters_sends_the_tenant_condition_alone(
    client: Any, vh_fake_weaviate: FakeWeaviate, seeded: dict[str, list[uuid.UUID]]
) -> None:
    """With no caller filters, the only wire filter is the tenant equality."""
    docs = TenantWeaviate(client.collections.get("Shared"), multi_tenancy=False)
    result = docs.fetch_objects("initech", limit=20)
    sent = vh_fake_weaviate.search_requests[-1].filters
    assert (sent.operator, sent.target.property, sent.value_text) == (
        base_pb2.Filters.OPERATOR_EQUAL,
        "tenant_id",
        "initech",
    )
    assert len(result.objects) == 12
    assert {obj.properties["tenant_id"] for obj in result.objects} == {"initech"}


def test_rerank_and_redact_run_around_weaviate(
    client: Any, vh_fake_weaviate: FakeWeaviate, seeded: dict[str, list[uuid.UUID]]
) -> None:
    """The pipeline over-fetches with vectors for MMR, returns the limit and masks e-mails."""
    pipeline = build_pipeline(
        {
            "hooks": [
                {"name": "redact", "config": {"mask": ["email"]}},
                {"name": "tenant-aware-rerank", "config": {"candidates": 10, "mmr_lambda": 0.5}},
                "tenant-filter",
            ]
        }
    )
    docs = TenantWeaviate(client.collections.get("Docs"), pipeline=pipeline)
    result = docs.near_vector(
        "globex", [1.0, 0.5, 0.2], limit=4, return_properties=["title", "body"]
    )
    sent = vh_fake_weaviate.search_requests[-1]
    assert (sent.limit, sent.metadata.vector, sent.metadata.distance) == (10, True, True)
    assert len(result.objects) == 4
    assert all(obj.vector == {} for obj in result.objects)  # fetched for MMR, not asked for
    assert all(obj.properties["body"].startswith("ask [redacted]") for obj in result.objects)
    with_vectors = docs.near_vector("globex", [1.0, 0.5, 0.2], limit=2, include_vector=True)
    assert all(len(obj.vector["default"]) == 3 for obj in with_vectors.objects)


def test_a_refused_tenant_id_never_reaches_weaviate(
    client: Any, vh_fake_weaviate: FakeWeaviate, seeded: dict[str, list[uuid.UUID]]
) -> None:
    """Ids outside the alphabet are refused before any request is sent."""
    docs = TenantWeaviate(client.collections.get("Docs"))
    with pytest.raises(InvalidTenantId):
        docs.near_vector('acme" OR 1=1', [1.0, 0.0, 0.0])
    with pytest.raises(UnsafeArgument, match="group_by"):
        docs.near_vector("acme", [1.0, 0.0, 0.0], group_by=object())
    assert vh_fake_weaviate.search_requests == []


def test_weaviate_errors_are_translated_with_their_cause(
    client: Any, vh_fake_weaviate: FakeWeaviate, seeded: dict[str, list[uuid.UUID]]
) -> None:
    """An unknown tenant is the server's error, raised as BackendRequestError from the client's."""
    docs = TenantWeaviate(client.collections.get("Docs"))
    with pytest.raises(BackendRequestError, match="tenant not found") as caught:
        docs.bm25("unknown-tenant", "report")
    assert isinstance(caught.value.__cause__, wexc.WeaviateQueryError)


def _instance(cls: type[Exception]) -> Exception:
    """Build any weaviate exception from its constructor's parameter names."""
    request = httpx.Request("GET", "http://127.0.0.1/v1/x")
    values = {
        "message": "boom",
        "res": httpx.Response(500, request=request),
        "response": httpx.Response(500, request=request),
        "location": "here",
        "protocol_type": "GRPC",
        "count": 3,
        "feature": "x",
        "current": "1",
        "minimum": "2",
        "type_": "x",
        "url": "http://x",
        "data": {},
        "additional_dict": "a",
        "additional_dataclass": "b",
        "weaviate_version": "1.30.5",
    }
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    return cls(**{p.name: values[p.name] for p in params if p.name in values})


_EXPECTED = {
    "WeaviateTimeoutError": BackendTimeout,
    "InsufficientPermissionsError": BackendPermissionDenied,
    "AuthenticationFailedError": BackendPermissionDenied,
    "MissingScopeError": BackendPermissionDenied,
    "WeaviateConnectionError": BackendUnavailable,
    "WeaviateGRPCUnavailableError": BackendUnavailable,
    "WeaviateStartUpError": BackendUnavailable,
    "WeaviateClosedClientError": BackendUnavailable,
    "WeaviateRetryError": BackendUnavailable,
    "WeaviateQueryError": BackendRequestError,
    "WeaviateBatchError": BackendRequestError,
    "WeaviateDeleteManyError": BackendRequestError,
    "WeaviateTenantGetError": BackendRequestError,
    "WeaviateInvalidInputError": BackendRequestError,
    "UnexpectedStatusCodeError": BackendRequestError,
    "WeaviateUnsupportedFeatureError": BackendRequestError,
    "SchemaValidationError": BackendRequestError,
    "ObjectAlreadyExistsError": BackendRequestError,
    "InvalidDataModelError": BackendRequestError,
    "WeaviateInsertInvalidPropertyError": BackendRequestError,
    "WeaviateAddInvalidPropertyError": BackendRequestError,
    "WeaviateBatchValidationError": BackendRequestError,
}
_CLASSES = sorted(
    {
        cls
        for _, cls in inspect.getmembers(wexc, inspect.isclass)
        if issubclass(cls, wexc.WeaviateBaseError)
    },
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("cls", _CLASSES, ids=lambda cls: cls.__name__)
def test_every_weaviate_exception_maps_to_a_backend_error(cls: type[Exception]) -> None:
    """Each weaviate-client exception class translates to the most specific BackendError."""
    translated = translate_weaviate_error(_instance(cls))  # type: ignore[arg-type]
    assert type(translated) is _EXPECTED.get(cls.__name__, BackendError)


def test_http_401_and_403_are_permission_errors() -> None:
    """An unexpected 401/403 status from the REST API means the credentials were refused."""
    request = httpx.Request("GET", "http://127.0.0.1/v1/schema")
    denied = wexc.UnexpectedStatusCodeError("schema", httpx.Response(403, request=request))
    assert type(translate_weaviate_error(denied)) is BackendPermissionDenied
