"""TenantMilvus on a real Milvus Lite: isolation, filters, writes, hybrid search, errors."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import numpy as np
import pymilvus.exceptions as milvus_exceptions
import pytest
from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker
from vh_support import make_docs

from vector_hooks import BaseHook, HookKind, HookMetrics, HookRegistry, Pipeline, build_pipeline
from vector_hooks.backends._calls import verify_tenant
from vector_hooks.errors import (
    BackendError,
    BackendPermissionDenied,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    InvalidFilter,
    InvalidTenantId,
    TenantIsolationError,
    UnsafeArgument,
)
from vector_hooks.milvus import TenantMilvus, create_tenant_collection, translate_milvus_error
from vector_hooks.request import Hit, SearchRequest

pytest_plugins = ["vh_fixtures"]

DIM = 8
TENANTS = ("acme", "globex", "initech")
ROWS_PER_TENANT = 40


def _rows(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for t, tenant in enumerate(TENANTS):
        for i in range(ROWS_PER_TENANT):
            rows.append(
                {
                    "id": t * 1000 + i,
                    "vector": rng.random(DIM, dtype=np.float32).tolist(),
                    "tenant_id": tenant,
                    "lang": "en" if i % 2 else "de",
                    "n": i,
                    "body": f"write to {tenant}.{i}@example.com",
                    "updated_at": 1_700_000_000 + i * 3600,
                }
            )
    return rows


@pytest.fixture(scope="module")
def shared(vh_milvus: MilvusClient) -> Iterator[str]:
    """A read-only partition-key collection with three tenants."""
    name = "vh_shared_reads"
    if vh_milvus.has_collection(name):
        vh_milvus.drop_collection(name)
    make_docs(vh_milvus, name, _rows(np.random.default_rng(11)), dim=DIM)
    yield name
    vh_milvus.drop_collection(name)


@pytest.fixture
def writable(vh_milvus: MilvusClient, vh_collection: str) -> Iterator[str]:
    """An empty partition-key collection this test may write to."""
    create_tenant_collection(vh_milvus, vh_collection, dim=DIM, index_type="FLAT")
    yield vh_collection
    vh_milvus.drop_collection(vh_collection)


def _query_vector(seed: int = 3) -> list[float]:
    return np.random.default_rng(seed).random(DIM, dtype=np.float32).tolist()


@pytest.mark.parametrize("tenant", TENANTS)
def test_search_returns_only_the_callers_tenant(
    vh_milvus: MilvusClient, shared: str, tenant: str
) -> None:
    """Every hit of a search belongs to the tenant the search was made for."""
    docs = TenantMilvus(vh_milvus, shared)
    hits = docs.search(
        tenant=tenant, data=[_query_vector()], limit=15, output_fields=["tenant_id", "n"]
    )
    assert len(hits) == 1
    assert len(hits[0]) == 15
    assert {hit["entity"]["tenant_id"] for hit in hits[0]} == {tenant}
    distances = [hit["distance"] for hit in hits[0]]
    assert distances == sorted(distances, reverse=True)  # COSINE: most similar first


def test_the_callers_filter_is_anded_with_the_tenant(vh_milvus: MilvusClient, shared: str) -> None:
    """A caller filter narrows within the tenant; an OR in it cannot widen past the tenant."""
    docs = TenantMilvus(vh_milvus, shared)
    english = docs.search(
        "globex",
        data=[_query_vector()],
        limit=50,
        filter='lang == "en"',
        output_fields=["tenant_id", "lang"],
    )
    assert len(english[0]) == ROWS_PER_TENANT // 2
    assert {(h["entity"]["tenant_id"], h["entity"]["lang"]) for h in english[0]} == {
        ("globex", "en")
    }
    widened = docs.query(
        "globex", filter='n < 3 or tenant_id != "globex"', output_fields=["tenant_id", "n"]
    )
    assert sorted(row["n"] for row in widened) == [0, 1, 2]
    assert {row["tenant_id"] for row in widened} == {"globex"}


def test_a_naive_f_string_leaks_and_the_adapter_refuses_that_id(
    vh_milvus: MilvusClient, shared: str
) -> None:
    """The crafted id leaks every tenant through an f-string filter; TenantMilvus refuses it."""
    crafted = 't1" or tenant_id != "'
    leaked = vh_milvus.query(
        shared, filter=f'tenant_id == "{crafted}"', output_fields=["tenant_id"]
    )
    assert {row["tenant_id"] for row in leaked} == set(TENANTS)  # the fact the SDK guards against

    docs = TenantMilvus(vh_milvus, shared)
    with pytest.raises(InvalidTenantId, match=r"character '\"' at position 2 is not allowed"):
        docs.search(crafted, data=[_query_vector()], limit=5)
    with pytest.raises(InvalidTenantId):
        docs.query(crafted)


def test_filters_that_would_escape_their_parentheses_are_refused(
    vh_milvus: MilvusClient, shared: str
) -> None:
    """An unbalanced caller filter is refused before it reaches Milvus."""
    docs = TenantMilvus(vh_milvus, shared)
    with pytest.raises(InvalidFilter, match=r"unbalanced '\)' at column 13"):
        docs.search("acme", data=[_query_vector()], filter='lang == "en") or (tenant_id != "x"')


def test_query_by_ids_never_reaches_another_tenants_rows(
    vh_milvus: MilvusClient, shared: str
) -> None:
    """Querying by primary key returns only ids that belong to the caller's tenant."""
    docs = TenantMilvus(vh_milvus, shared)
    rows = docs.query("acme", ids=[0, 1, 1000, 2001], output_fields=["tenant_id"])
    assert sorted(row["id"] for row in rows) == [0, 1]
    assert docs.query("initech", ids=5, output_fields=["tenant_id"]) == []
    with pytest.raises(InvalidFilter, match="either ids or filter"):
        docs.query("acme", ids=[1], filter="n > 1")
    limited = docs.query("acme", filter="n >= 0", limit=4)
    assert len(limited) == 4
    assert {row["tenant_id"] for row in limited} == {"acme"}


def test_hybrid_search_puts_the_tenant_in_every_sub_request(
    vh_milvus: MilvusClient, shared: str
) -> None:
    """Both sub-requests of a hybrid search are tenant-scoped; bad sub-filters are refused."""
    docs = TenantMilvus(vh_milvus, shared)
    reqs = [
        AnnSearchRequest([_query_vector(1)], "vector", {}, limit=10, expr='lang == "de"'),
        AnnSearchRequest([_query_vector(2)], "vector", {}, limit=10),
    ]
    hits = docs.hybrid_search(
        "initech", reqs, RRFRanker(), limit=8, output_fields=["tenant_id", "lang"]
    )
    assert len(hits[0]) == 8
    assert {hit["entity"]["tenant_id"] for hit in hits[0]} == {"initech"}
    bad = [
        reqs[0],
        AnnSearchRequest([_query_vector(2)], "vector", {}, limit=10, expr="n > 1) or (n > 0"),
    ]
    with pytest.raises(InvalidFilter, match=r"reqs\[1\]: unbalanced"):
        docs.hybrid_search("initech", bad, RRFRanker(), limit=8)


def test_insert_stamps_the_tenant_and_refuses_rows_of_another(
    vh_milvus: MilvusClient, writable: str
) -> None:
    """insert writes the call's tenant into every row and refuses rows naming another."""
    docs = TenantMilvus(vh_milvus, writable)
    docs.insert(
        "acme",
        [
            {"id": 1, "vector": _query_vector(1)},
            {"id": 2, "vector": _query_vector(2), "tenant_id": "acme"},
        ],
    )
    with pytest.raises(UnsafeArgument, match="row 0 has tenant_id='globex'"):
        docs.insert("acme", {"id": 3, "vector": _query_vector(3), "tenant_id": "globex"})
    vh_milvus.flush(writable)
    stored = vh_milvus.query(writable, filter="id >= 0", output_fields=["tenant_id"])
    assert sorted((row["id"], row["tenant_id"]) for row in stored) == [(1, "acme"), (2, "acme")]


def test_upsert_refuses_to_overwrite_another_tenants_ids(
    vh_milvus: MilvusClient, writable: str
) -> None:
    """upsert of an id owned by another tenant is refused; the owner's row is untouched."""
    docs = TenantMilvus(vh_milvus, writable)
    docs.insert("acme", {"id": 7, "vector": _query_vector(1), "note": "acme's"})
    vh_milvus.flush(writable)
    with pytest.raises(UnsafeArgument, match=r"ids \[7\] belong to another tenant"):
        docs.upsert("globex", {"id": 7, "vector": _query_vector(2), "note": "hijacked"})
    docs.upsert("acme", {"id": 7, "vector": _query_vector(3), "note": "updated"})
    vh_milvus.flush(writable)
    assert [row["note"] for row in docs.query("acme", ids=[7], output_fields=["note"])] == [
        "updated"
    ]


def test_delete_only_removes_the_callers_rows(vh_milvus: MilvusClient, writable: str) -> None:
    """delete by id or filter never touches another tenant's rows."""
    docs = TenantMilvus(vh_milvus, writable)
    docs.insert("acme", [{"id": i, "vector": _query_vector(i), "n": i} for i in range(3)])
    docs.insert("globex", [{"id": 10 + i, "vector": _query_vector(i), "n": i} for i in range(3)])
    vh_milvus.flush(writable)
    docs.delete("globex", ids=[0, 1, 10])
    docs.delete("globex", filter="n >= 2")
    vh_milvus.flush(writable)
    remaining = vh_milvus.query(writable, filter="id >= 0", output_fields=["tenant_id"])
    assert sorted(row["id"] for row in remaining) == [0, 1, 2, 11]
    with pytest.raises(InvalidFilter, match="needs ids or a filter"):
        docs.delete("globex")


def test_a_partition_key_collection_is_one_call(
    vh_milvus: MilvusClient, vh_collection: str
) -> None:
    """TenantMilvus.create makes the tenant field the partition key and wraps the collection."""
    docs = TenantMilvus.create(vh_milvus, vh_collection, dim=DIM, index_type="FLAT")
    try:
        fields = {f["name"]: f for f in vh_milvus.describe_collection(vh_collection)["fields"]}
        assert fields["tenant_id"].get("is_partition_key") is True
        docs.insert("acme", {"id": 1, "vector": _query_vector(), "title": "hello"})
        vh_milvus.flush(vh_collection)
        hits = docs.search("acme", data=[_query_vector()], limit=3, output_fields=["title"])
        assert [hit["entity"] for hit in hits[0]] == [{"title": "hello"}]
    finally:
        vh_milvus.drop_collection(vh_collection)


def test_milvus_lite_gets_quoted_literals_not_filter_params(
    vh_milvus: MilvusClient, shared: str
) -> None:
    """On Milvus Lite (which rejects filter_params) the tenant goes as a literal; callers'
    filter_params are refused with a clear error instead of a parse failure."""
    docs = TenantMilvus(vh_milvus, shared)
    assert docs._filter_params_supported() is False
    with pytest.raises(InvalidFilter, match="does not support filter_params"):
        docs.search("acme", data=[_query_vector()], filter="n > {low}", filter_params={"low": 3})


def test_arguments_that_bypass_isolation_are_refused(vh_milvus: MilvusClient, shared: str) -> None:
    """Search by primary key and the legacy expr= argument are refused with the reason."""
    docs = TenantMilvus(vh_milvus, shared)
    with pytest.raises(UnsafeArgument, match="search by primary key"):
        docs.search("acme", ids=[1000], limit=3)
    with pytest.raises(UnsafeArgument, match="not expr="):
        docs.search("acme", data=[_query_vector()], expr='tenant_id != ""')


def test_rerank_over_fetches_then_returns_the_limit(vh_milvus: MilvusClient, shared: str) -> None:
    """With rerank, 30 candidates are fetched (with vectors) and 10 diverse ones returned,
    without the helper fields the caller did not ask for."""
    pipeline = build_pipeline(
        {
            "hooks": [
                {
                    "name": "tenant-aware-rerank",
                    "config": {
                        "candidates": 30,
                        "mmr_lambda": 0.6,
                        "recency": {"field": "updated_at", "half_life_s": 86400, "weight": 0.1},
                    },
                },
                "tenant-filter",
            ]
        }
    )
    docs = TenantMilvus(vh_milvus, shared, pipeline=pipeline)
    hits = docs.search("acme", data=[_query_vector()], limit=10, output_fields=["n"])
    assert len(hits[0]) == 10
    assert len({hit["id"] for hit in hits[0]}) == 10
    assert all(set(hit["entity"]) == {"n"} for hit in hits[0])
    plain = TenantMilvus(vh_milvus, shared).search("acme", data=[_query_vector()], limit=30)
    assert {hit["id"] for hit in hits[0]} <= {hit["id"] for hit in plain[0]}


def test_l2_distances_are_ranked_smallest_first(
    vh_milvus: MilvusClient, vh_collection: str
) -> None:
    """For L2 the adapter treats smaller distances as better, so rerank keeps Milvus order."""
    rows = [{"id": i, "vector": [float(i)] * DIM, "tenant_id": "acme"} for i in range(6)]
    make_docs(vh_milvus, vh_collection, rows, dim=DIM, metric="L2")
    try:
        pipeline = build_pipeline({"hooks": ["tenant-aware-rerank", "tenant-filter"]})
        docs = TenantMilvus(vh_milvus, vh_collection, pipeline=pipeline)
        hits = docs.search("acme", data=[[0.0] * DIM], limit=3)
        assert [hit["id"] for hit in hits[0]] == [0, 1, 2]
    finally:
        vh_milvus.drop_collection(vh_collection)


class _Broken(BaseHook):
    name: ClassVar[str] = "broken-quality"
    kind: ClassVar[HookKind] = HookKind.QUALITY

    def after_search(self, request: SearchRequest, hits: list[list[Hit]]) -> None:
        raise ZeroDivisionError("scoring model unavailable")


def test_a_failing_quality_hook_keeps_milvus_order(
    vh_milvus: MilvusClient, shared: str, vh_metrics: HookMetrics
) -> None:
    """A quality hook that fails on a real search leaves Milvus' results, counted once."""
    registry = HookRegistry(entry_point_group=None)
    registry.register("broken-quality", _Broken)
    pipeline = build_pipeline(
        {"hooks": ["broken-quality", "tenant-filter"]}, registry=registry, metrics=vh_metrics
    )
    hooked = TenantMilvus(vh_milvus, shared, pipeline=pipeline, metrics=vh_metrics)
    plain = TenantMilvus(vh_milvus, shared)
    expected = plain.search("globex", data=[_query_vector()], limit=5)
    assert hooked.search("globex", data=[_query_vector()], limit=5) == expected
    assert vh_metrics.hook_failures("broken-quality", outcome="open") == 1
    assert vh_metrics.snapshot()["searches"] == {"search,ok": 1}


def test_a_pipeline_without_tenant_isolation_never_reaches_milvus(
    vh_milvus: MilvusClient, shared: str, vh_metrics: HookMetrics
) -> None:
    """If no hook pinned the request to its tenant, the adapter refuses to run it."""
    docs = TenantMilvus(vh_milvus, shared, pipeline=Pipeline([]), metrics=vh_metrics)
    with pytest.raises(TenantIsolationError, match="must include 'tenant-filter'"):
        docs.search("acme", data=[_query_vector()], limit=3)
    assert vh_metrics.snapshot()["searches"] == {"search,refused": 1}


def test_rows_of_another_tenant_in_an_answer_withhold_it() -> None:
    """verify_tenant withholds a whole answer containing a foreign row."""
    verify_tenant([[Hit(1, 1.0, {"tenant_id": "acme"})]], "tenant_id", "acme")
    with pytest.raises(TenantIsolationError, match="row 2 of another tenant"):
        verify_tenant(
            [[Hit(1, 1.0, {"tenant_id": "acme"}), Hit(2, 0.9, {"tenant_id": "b"})]],
            "tenant_id",
            "acme",
        )


def test_milvus_errors_are_translated_with_their_cause(vh_milvus: MilvusClient) -> None:
    """A search on a missing collection raises BackendRequestError from the MilvusException."""
    docs = TenantMilvus(vh_milvus, "vh_does_not_exist", metric="COSINE", anns_field="vector")
    with pytest.raises(BackendRequestError) as caught:
        docs.search("acme", data=[_query_vector()], limit=3)
    assert isinstance(caught.value.__cause__, milvus_exceptions.MilvusException)


_MILVUS_EXCEPTIONS = [
    cls
    for _, cls in inspect.getmembers(milvus_exceptions, inspect.isclass)
    if issubclass(cls, milvus_exceptions.MilvusException)
]
_EXPECTED_KIND = {
    "ConnectError": BackendUnavailable,
    "MilvusUnavailableException": BackendUnavailable,
    "ConnectionNotExistException": BackendUnavailable,
    "ConnectionConfigException": BackendUnavailable,
    "MilvusException": BackendError,
}


@pytest.mark.parametrize("cls", _MILVUS_EXCEPTIONS, ids=lambda c: c.__name__)
def test_every_pymilvus_exception_maps_to_a_backend_error(cls: type[Exception]) -> None:
    """Each pymilvus exception class translates to the most specific BackendError."""
    translated = translate_milvus_error(cls(message="boom"))
    assert type(translated) is _EXPECTED_KIND.get(cls.__name__, BackendRequestError)
    assert "boom" in str(translated)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), BackendTimeout),
        (_RpcError(grpc.StatusCode.PERMISSION_DENIED), BackendPermissionDenied),
        (_RpcError(grpc.StatusCode.UNAUTHENTICATED), BackendPermissionDenied),
        (_RpcError(grpc.StatusCode.UNAVAILABLE), BackendUnavailable),
        (_RpcError(grpc.StatusCode.INVALID_ARGUMENT), BackendRequestError),
        (
            milvus_exceptions.MilvusException(grpc.StatusCode.UNAVAILABLE, "retry run out"),
            BackendUnavailable,
        ),
        (milvus_exceptions.MilvusException(1, "[search] Retry timeout: 2s"), BackendTimeout),
        (milvus_exceptions.MilvusException(100, "collection not found"), BackendRequestError),
    ],
)
def test_grpc_status_codes_map_to_backend_errors(
    error: Exception, expected: type[BackendError]
) -> None:
    """gRPC errors pymilvus lets through (and retry give-ups) map by status code."""
    assert type(translate_milvus_error(error)) is expected
