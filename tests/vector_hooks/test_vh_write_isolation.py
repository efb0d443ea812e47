"""Tenant write isolation (issue 9, item 5): no write of one tenant reaches another's rows.

Milvus tests run on a real Milvus Lite; Weaviate tests use the real weaviate-client against the
protocol-level fake (vh_weaviate_fake), whose writes follow Weaviate's documented semantics:
REST insert refuses an existing UUID, batch insert replaces it, PUT replaces, PATCH merges,
native tenants are separate shards.
"""

from __future__ import annotations

import inspect
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymilvus import MilvusClient
from vh_support import connect
from vh_weaviate_fake import FakeWeaviate
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter
from weaviate.proto.v1 import base_pb2

from vector_hooks.errors import (
    InvalidFilter,
    RequestRefused,
    TenantOwnershipError,
    UnsafeArgument,
)
from vector_hooks.milvus import TenantMilvus, create_tenant_collection
from vector_hooks.tenancy import tenant_key
from vector_hooks.weaviate import TenantWeaviate

pytest_plugins = ["vh_fixtures"]

DIM = 4
GLOBEX_IDS = list(range(100, 150))


def _vec(i: int) -> list[float]:
    return [1.0, i / 100, (i % 7) / 7, 0.5]


def _rows(ids: list[Any], **extra: Any) -> list[dict[str, Any]]:
    return [{"id": i, "vector": _vec(n), **extra} for n, i in enumerate(ids)]


def _owners(client: MilvusClient, collection: str) -> dict[Any, str]:
    """Every stored row's id -> tenant, read with the raw client (what is really there)."""
    rows = client.query(
        collection,
        filter='tenant_id != "~"',
        output_fields=["tenant_id"],
        consistency_level="Strong",
    )
    return {row["id"]: row["tenant_id"] for row in rows}


@pytest.fixture
def writable(vh_milvus: MilvusClient, vh_collection: str) -> Iterator[str]:
    """An empty partition-key collection with integer primary keys."""
    create_tenant_collection(vh_milvus, vh_collection, dim=DIM, index_type="FLAT")
    yield vh_collection
    vh_milvus.drop_collection(vh_collection)


@pytest.fixture
def globex_50(vh_milvus: MilvusClient, writable: str) -> TenantMilvus:
    """The reproduction's starting point: globex owns ids 100-149."""
    docs = TenantMilvus(vh_milvus, writable)
    docs.insert("globex", _rows(GLOBEX_IDS, note="globex's"))
    return docs


# ------------------------------------------------------------------------------ Milvus


def test_milvus_lite_replaces_a_row_on_a_duplicate_key_insert(
    vh_milvus: MilvusClient, writable: str
) -> None:
    """The Lite semantics the check exists for: a raw insert of globex's ids takes globex to 0."""
    vh_milvus.insert(writable, _rows(GLOBEX_IDS, tenant_id="globex"))
    vh_milvus.insert(writable, _rows(GLOBEX_IDS, tenant_id="acme"))
    owners = _owners(vh_milvus, writable)
    assert sorted(owners.values()).count("globex") == 0
    assert len(owners) == 50


def test_the_reproduction_acme_inserting_globex_ids_leaves_globex_its_50_rows(
    vh_milvus: MilvusClient, globex_50: TenantMilvus, writable: str
) -> None:
    """acme inserting ids 100-149 is refused naming all 50; a delete by acme keeps globex's rows."""
    docs = globex_50
    with pytest.raises(TenantOwnershipError) as refused:
        docs.insert("acme", _rows(GLOBEX_IDS, note="acme's"))
    assert refused.value.ids == GLOBEX_IDS
    assert (refused.value.operation, refused.value.tenant) == ("insert", "acme")
    assert "globex" not in str(refused.value)  # the owner is not named to the caller
    assert len(docs.query("globex", filter="id >= 0")) == 50
    assert docs.query("acme", filter="id >= 0") == []

    docs.delete("acme", ids=GLOBEX_IDS)
    docs.delete("acme", filter="id >= 0")
    owners = _owners(vh_milvus, writable)
    assert owners == dict.fromkeys(GLOBEX_IDS, "globex")
    notes = {row["note"] for row in docs.query("globex", filter="id >= 0", output_fields=["note"])}
    assert notes == {"globex's"}


def test_a_batch_with_one_foreign_id_writes_nothing(
    vh_milvus: MilvusClient, globex_50: TenantMilvus, writable: str
) -> None:
    """A refused insert or upsert is refused whole: the caller's own new rows are not written."""
    docs = globex_50
    for write in (docs.insert, docs.upsert):
        with pytest.raises(TenantOwnershipError, match=r"ids \[120\] belong to another tenant"):
            write("acme", _rows([1, 2, 120, 3]))
    assert _owners(vh_milvus, writable) == dict.fromkeys(GLOBEX_IDS, "globex")


def test_upsert_replaces_only_the_callers_own_rows(
    vh_milvus: MilvusClient, globex_50: TenantMilvus, writable: str
) -> None:
    """upsert of globex's ids by acme is refused; globex's own upsert and acme's new ids work."""
    docs = globex_50
    with pytest.raises(TenantOwnershipError, match="upsert refused for tenant 'acme'"):
        docs.upsert("acme", _rows(GLOBEX_IDS[:3], note="hijacked"))
    docs.upsert("globex", _rows(GLOBEX_IDS[:3], note="updated"))
    docs.upsert("acme", _rows([1, 2], note="acme's"))
    notes = {
        row["id"]: row["note"]
        for row in docs.query("globex", ids=GLOBEX_IDS[:4], output_fields=["note"])
    }
    assert notes == {100: "updated", 101: "updated", 102: "updated", 103: "globex's"}
    owners = _owners(vh_milvus, writable)
    assert [owners[i] for i in (1, 2)] == ["acme", "acme"]
    assert sum(1 for t in owners.values() if t == "globex") == 50


def test_rows_owned_by_no_tenant_are_refused_too(vh_milvus: MilvusClient, writable: str) -> None:
    """A row written around the wrapper with an empty tenant field is not the caller's to take."""
    vh_milvus.insert(writable, _rows([7], tenant_id=""))
    docs = TenantMilvus(vh_milvus, writable)
    with pytest.raises(TenantOwnershipError, match=r"ids \[7\]"):
        docs.insert("acme", _rows([7]))
    assert _owners(vh_milvus, writable) == {7: ""}


def test_many_ids_are_checked_in_chunks_and_the_message_stays_short(
    vh_milvus: MilvusClient, globex_50: TenantMilvus, writable: str
) -> None:
    """2,500 ids are all looked up (past one 1,000-key query); the error lists 20 and a count."""
    docs = globex_50
    ids = list(range(1000, 3450)) + GLOBEX_IDS
    with pytest.raises(TenantOwnershipError) as refused:
        docs.insert("acme", _rows(ids))
    assert refused.value.ids == GLOBEX_IDS
    assert "... (50 in all)" in str(refused.value)
    assert len(_owners(vh_milvus, writable)) == 50


@pytest.mark.parametrize(
    ("operation", "arguments", "option"),
    [
        ("insert", {"data": _rows([1])}, {"pks": [100]}),
        ("upsert", {"data": _rows([1])}, {"filter": 'tenant_id == "globex"'}),
        ("delete", {"ids": [1]}, {"pks": [100]}),
        ("delete", {"ids": [1]}, {"expr": 'tenant_id == "globex"'}),
        ("delete", {"filter": "id > 0"}, {"filter_params": {"x": 1}}),
    ],
)
def test_write_options_that_could_widen_a_write_are_refused(
    vh_milvus: MilvusClient,
    globex_50: TenantMilvus,
    writable: str,
    operation: str,
    arguments: dict[str, Any],
    option: dict[str, Any],
) -> None:
    """Keyword options other than timeout/partition_name/partial_update never reach Milvus."""
    with pytest.raises(UnsafeArgument, match=f"{operation} does not take {next(iter(option))}"):
        getattr(globex_50, operation)("acme", **arguments, **option)
    assert _owners(vh_milvus, writable) == dict.fromkeys(GLOBEX_IDS, "globex")


def test_the_wrapper_exposes_no_raw_write(vh_milvus: MilvusClient, writable: str) -> None:
    """No attribute leads to the raw client, and every public method takes the tenant first."""
    docs = TenantMilvus(vh_milvus, writable)
    assert not hasattr(docs, "client")
    assert all(
        value is not vh_milvus for name, value in vars(docs).items() if not name.startswith("_")
    )
    for name, method in inspect.getmembers(TenantMilvus, inspect.isfunction):
        if not name.startswith("_"):
            params = list(inspect.signature(method).parameters)
            assert params[:2] == ["self", "tenant"], name
    with pytest.raises(AttributeError):
        docs.drop_collection  # type: ignore[attr-defined]  # noqa: B018


def test_delete_needs_ids_or_a_filter(vh_milvus: MilvusClient, globex_50: TenantMilvus) -> None:
    """A delete without ids or filter is refused rather than read as 'everything'."""
    with pytest.raises(InvalidFilter, match="needs ids or a filter"):
        globex_50.delete("acme")


def test_tenant_prefixed_keys_are_enforced_when_asked(
    vh_milvus: MilvusClient, vh_collection: str
) -> None:
    """With tenant_prefixed_ids, only 'tenant:key' primary keys of the caller are written."""
    create_tenant_collection(vh_milvus, vh_collection, dim=DIM, string_ids=True, index_type="FLAT")
    try:
        docs = TenantMilvus(vh_milvus, vh_collection, tenant_prefixed_ids=True)
        docs.insert("acme", _rows([tenant_key("acme", "doc-1"), "acme:doc-2"]))
        for bad in ("globex:doc-1", "doc-1", "acme:", "acme-eu:doc-1"):
            with pytest.raises(UnsafeArgument, match="only tenant-prefixed primary keys"):
                docs.upsert("acme", _rows([bad]))
        assert _owners(vh_milvus, vh_collection) == {"acme:doc-1": "acme", "acme:doc-2": "acme"}
    finally:
        vh_milvus.drop_collection(vh_collection)


def test_two_tenants_racing_for_the_same_new_ids_in_one_process_never_share_one(
    vh_milvus: MilvusClient, writable: str
) -> None:
    """Concurrent inserts of the same new id by two tenants: one wins, the other is refused."""
    docs = TenantMilvus(vh_milvus, writable)
    outcomes: dict[str, list[str]] = {"acme": [], "globex": []}
    rounds = 15

    def writer(tenant: str, barrier: threading.Barrier, pk: int) -> None:
        barrier.wait()
        try:
            docs.insert(tenant, _rows([pk], note=tenant))
            outcomes[tenant].append("won")
        except TenantOwnershipError:
            outcomes[tenant].append("refused")

    for pk in range(rounds):
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=writer, args=(t, barrier, pk)) for t in ("acme", "globex")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    owners = _owners(vh_milvus, writable)
    assert len(owners) == rounds
    wins = outcomes["acme"].count("won") + outcomes["globex"].count("won")
    refusals = outcomes["acme"].count("refused") + outcomes["globex"].count("refused")
    assert (wins, refusals) == (rounds, rounds)
    assert sum(1 for t in owners.values() if t == "acme") == outcomes["acme"].count("won")
    notes = {
        row["id"]: row["note"]
        for row in vh_milvus.query(writable, filter="id >= 0", output_fields=["note", "tenant_id"])
    }
    assert all(notes[pk] == owners[pk] for pk in owners)  # the winner's row, not a mix


# ---------------------------------------------------------------------------- Weaviate


@pytest.fixture
def weaviate_client(
    vh_fake_weaviate: FakeWeaviate, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The real weaviate-client connected to the fake, all on loopback."""
    monkeypatch.setattr("weaviate.connect.v4.PYPI_PACKAGE_URL", vh_fake_weaviate.pypi_url)
    connected = connect(vh_fake_weaviate)
    yield connected
    connected.close()


@pytest.fixture
def globex_objects(vh_fake_weaviate: FakeWeaviate) -> list[uuid.UUID]:
    """globex owns five objects in "Shared" (tenant property) and the same UUIDs in "Docs"."""
    vh_fake_weaviate.add_collection("Shared", multi_tenancy=False)
    vh_fake_weaviate.add_collection("Docs", multi_tenancy=True)
    vh_fake_weaviate.add_tenant("Docs", "acme")
    ids = [uuid.uuid4() for _ in range(5)]
    for n, object_id in enumerate(ids):
        props = {"title": f"globex {n}", "n": n}
        vh_fake_weaviate.add_object(
            "Shared", {**props, "tenant_id": "globex"}, _vec(n), object_id=object_id
        )
        vh_fake_weaviate.add_object("Docs", props, _vec(n), tenant="globex", object_id=object_id)
    return ids


def _globex_intact(fake: FakeWeaviate, ids: list[uuid.UUID]) -> bool:
    stored = fake.objects("Shared")
    return all(
        stored[i].properties == {"title": f"globex {n}", "n": n, "tenant_id": "globex"}
        for n, i in enumerate(ids)
    )


def _sent(fake: FakeWeaviate, prefix: str) -> list[Any]:
    return [request for what, request in fake.write_requests if what.startswith(prefix)]


def test_weaviate_batch_import_replaces_an_existing_uuid(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """The Weaviate semantics the check exists for: a raw batch with globex's UUID replaces it."""
    raw = weaviate_client.collections.get("Shared")
    raw.data.insert_many([DataObject(properties={"tenant_id": "acme"}, uuid=globex_objects[0])])
    assert vh_fake_weaviate.objects("Shared")[globex_objects[0]].properties == {"tenant_id": "acme"}


def test_property_mode_insert_many_of_globex_uuids_is_refused_before_sending(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """acme batch-importing globex's UUIDs is refused naming them; no batch reaches Weaviate."""
    docs = TenantWeaviate(weaviate_client.collections.get("Shared"), multi_tenancy=False)
    batch = [DataObject(properties={"title": "acme's"}, uuid=i) for i in globex_objects]
    batch.insert(0, DataObject(properties={"title": "acme new"}, uuid=uuid.uuid4()))
    with pytest.raises(TenantOwnershipError) as refused:
        docs.insert_many("acme", batch)
    assert refused.value.ids == [str(i) for i in globex_objects]
    assert _sent(vh_fake_weaviate, "BatchObjects") == []
    assert _globex_intact(vh_fake_weaviate, globex_objects)
    assert len(vh_fake_weaviate.objects("Shared")) == 5


def test_property_mode_own_writes_are_stamped_and_stored(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """acme's own insert, batch, replace and update land with tenant_id=acme."""
    docs = TenantWeaviate(weaviate_client.collections.get("Shared"), multi_tenancy=False)
    one = docs.insert("acme", {"title": "a"}, uuid=uuid.uuid4(), vector=_vec(1))
    batch = docs.insert_many("acme", [{"title": "b"}, DataObject(properties={"title": "c"})])
    assert not batch.has_errors
    docs.replace("acme", one, {"title": "a2", "n": 7})
    docs.update("acme", one, {"n": 8})
    stored = vh_fake_weaviate.objects("Shared")
    assert stored[one].properties == {"title": "a2", "n": 8, "tenant_id": "acme"}
    acme = [o for o in stored.values() if o.properties["tenant_id"] == "acme"]
    assert sorted(o.properties["title"] for o in acme) == ["a2", "b", "c"]
    assert _globex_intact(vh_fake_weaviate, globex_objects)


@pytest.mark.parametrize("operation", ["insert", "replace", "update"])
def test_property_mode_single_writes_to_a_globex_uuid_are_refused(
    weaviate_client: Any,
    vh_fake_weaviate: FakeWeaviate,
    globex_objects: list[uuid.UUID],
    operation: str,
) -> None:
    """insert/replace/update by acme of a UUID globex owns: refused, nothing sent, globex intact."""
    docs = TenantWeaviate(weaviate_client.collections.get("Shared"), multi_tenancy=False)
    target = globex_objects[2]
    writes: dict[str, Any] = {
        "insert": lambda: docs.insert("acme", {"title": "hijacked"}, uuid=target),
        "replace": lambda: docs.replace("acme", target, {"title": "hijacked"}),
        "update": lambda: docs.update("acme", target, {"title": "hijacked"}),
    }
    with pytest.raises(TenantOwnershipError, match=f"{operation} refused for tenant 'acme'"):
        writes[operation]()
    assert [w for w, _ in vh_fake_weaviate.write_requests] == []
    assert _globex_intact(vh_fake_weaviate, globex_objects)


def test_property_mode_deletes_are_constrained_to_the_callers_tenant(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """delete_by_id/delete_many by acme send tenant_id == acme AND ..., so globex keeps all five."""
    docs = TenantWeaviate(weaviate_client.collections.get("Shared"), multi_tenancy=False)
    mine = docs.insert("acme", {"title": "acme 0", "n": 0})
    assert docs.delete_by_id("acme", globex_objects[0]) is False
    sent = _sent(vh_fake_weaviate, "BatchDelete")[-1].filters
    assert sent.operator == base_pb2.Filters.OPERATOR_AND
    assert (sent.filters[0].target.property, sent.filters[0].value_text) == ("tenant_id", "acme")
    deleted = docs.delete_many("acme", Filter.by_property("n").greater_or_equal(0))
    assert (deleted.matches, deleted.successful) == (1, 1)
    assert mine not in vh_fake_weaviate.objects("Shared")
    assert _globex_intact(vh_fake_weaviate, globex_objects)
    assert docs.delete_by_id("globex", globex_objects[0]) is True
    assert len(vh_fake_weaviate.objects("Shared")) == 4


def test_property_mode_refuses_other_tenant_values_orphans_and_references(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """A tenant_id of another tenant, an object with no tenant, and references are refused."""
    orphan = vh_fake_weaviate.add_object("Shared", {"title": "nobody's"}, _vec(0))
    docs = TenantWeaviate(weaviate_client.collections.get("Shared"), multi_tenancy=False)
    with pytest.raises(UnsafeArgument, match="tenant_id='globex' but the call is for tenant"):
        docs.insert("acme", {"title": "x", "tenant_id": "globex"})
    with pytest.raises(TenantOwnershipError, match=str(orphan)):
        docs.update("acme", orphan, {"title": "mine now"})
    with pytest.raises(UnsafeArgument, match="references are not accepted"):
        docs.insert("acme", {"title": "x"}, references={"rel": globex_objects[0]})
    with pytest.raises(UnsafeArgument, match="needs a weaviate Filter"):
        docs.delete_many("acme", "n > 0")  # type: ignore[arg-type]
    assert vh_fake_weaviate.write_requests == []
    assert vh_fake_weaviate.objects("Shared")[orphan].properties == {"title": "nobody's"}


def test_native_tenants_confine_every_write_to_the_callers_shard(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """With native multi-tenancy, acme writing globex's UUIDs writes acme's own objects only."""
    docs = TenantWeaviate(weaviate_client.collections.get("Docs"))
    shared_id = globex_objects[0]
    docs.insert("acme", {"title": "acme 0"}, uuid=shared_id)
    docs.insert_many("acme", [DataObject(properties={"title": "acme 1"}, uuid=globex_objects[1])])
    docs.replace("acme", shared_id, {"title": "acme 0 replaced"})
    docs.update("acme", globex_objects[1], {"n": 1})
    assert docs.delete_by_id("acme", globex_objects[2]) is False
    docs.delete_many("acme", Filter.by_property("n").equal(1))
    acme = vh_fake_weaviate.objects("Docs", "acme")
    assert {i: o.properties for i, o in acme.items()} == {shared_id: {"title": "acme 0 replaced"}}
    globex = vh_fake_weaviate.objects("Docs", "globex")
    assert {i: o.properties["title"] for i, o in globex.items()} == {
        i: f"globex {n}" for n, i in enumerate(globex_objects)
    }
    tenants = set()
    for what, request in vh_fake_weaviate.write_requests:
        if what == "BatchObjects":
            tenants |= {obj.tenant for obj in request.objects}
        elif what == "BatchDelete":
            tenants.add(request.tenant)
        else:
            tenants.add(request["tenant"])
    assert tenants == {"acme"}


def test_the_weaviate_wrapper_exposes_no_raw_collection(
    weaviate_client: Any, vh_fake_weaviate: FakeWeaviate, globex_objects: list[uuid.UUID]
) -> None:
    """No public attribute leads to the raw collection; every public method takes the tenant."""
    raw = weaviate_client.collections.get("Shared")
    docs = TenantWeaviate(raw, multi_tenancy=False)
    assert not hasattr(docs, "collection")
    assert all(value is not raw for name, value in vars(docs).items() if not name.startswith("_"))
    for name, method in inspect.getmembers(TenantWeaviate, inspect.isfunction):
        if not name.startswith("_"):
            assert list(inspect.signature(method).parameters)[:2] == ["self", "tenant"], name
    assert isinstance(TenantOwnershipError("insert", "acme", []), RequestRefused)
