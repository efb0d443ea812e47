"""`TenantWeaviate`: a weaviate-client v4 collection whose every query is scoped to one tenant.

Two isolation modes:

- native multi-tenancy (``multi_tenancy=True``, the default): every query runs on
  ``collection.with_tenant(tenant)``, so Weaviate itself only reads that tenant's shard;
- a tenant property (``multi_tenancy=False``): ``Filter.by_property(tenant_property)
  .equal(tenant)`` is ANDed with the caller's filters, and every returned object must carry
  the tenant in that property, or the answer is withheld.

`near_vector`, `near_text`, `hybrid`, `bm25` and `fetch_objects` take the client's own
arguments plus a required ``tenant`` and return a `QueryReturn`, with the tenant's hook
pipeline run around the call. ``limit`` defaults to 10 (Weaviate's default) so an
over-fetching reranker knows what to cut back to. ``group_by`` is refused: grouped answers
cannot be reranked or rechecked per object.

Writes (`insert`, `insert_many`, `replace`, `update`, `delete_by_id`, `delete_many`) never
touch an object of another tenant:

- native multi-tenancy: every write runs on ``collection.with_tenant(tenant)``. Each tenant is
  its own shard, so a UUID names a different object in every tenant; Weaviate itself confines
  the write, nothing else is relied on.
- a tenant property: one shard holds every tenant, and a UUID names one object whatever its
  tenant. Weaviate's REST insert refuses an existing UUID, but batch import (`insert_many`)
  *replaces* it, ``replace`` (PUT) overwrites it and ``update`` (PATCH) merges into it. So the
  adapter stamps the tenant property (refusing another value), looks up the owners of the
  UUIDs being written (QUORUM consistency, 100 per query) and refuses with
  `TenantOwnershipError` if any is stored under another tenant or none. Deletes are one
  ``delete_many`` whose filter is ``tenant == me AND (ids / caller filter)``. References are
  refused in this mode (their targets are not checked).

The wrapped collection is not a public attribute and nothing is forwarded to it by name.
Residual race (property mode only): look-up and write are two calls; within one process they
run under a per-collection lock, across processes two tenants writing the same new UUID at
once can both pass (then the later batch replaces the earlier object). Derive UUIDs from
tenant-prefixed keys (``generate_uuid5(tenant_key(tenant, key))``) so honest writers never
collide, or use native multi-tenancy, which has no such race.

This is the only module of `vector_hooks` that imports weaviate; it translates
weaviate-client exceptions into `vector_hooks.errors.BackendError` subclasses.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast
from uuid import UUID

from weaviate.classes.config import ConsistencyLevel
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.collections.classes.batch import BatchObjectReturn, DeleteManyReturn
from weaviate.collections.classes.filters import _Filters
from weaviate.collections.classes.internal import Object, QueryReturn
from weaviate.exceptions import (
    AuthenticationFailedError,
    InsufficientPermissionsError,
    InvalidDataModelError,
    MissingScopeError,
    ObjectAlreadyExistsError,
    SchemaValidationError,
    UnexpectedStatusCodeError,
    WeaviateAddInvalidPropertyError,
    WeaviateBaseError,
    WeaviateBatchValidationError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertInvalidPropertyError,
    WeaviateInvalidInputError,
    WeaviateQueryError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
    WeaviateUnsupportedFeatureError,
)

from vector_hooks.backends._calls import run_call, verify_tenant
from vector_hooks.errors import (
    BackendError,
    BackendPermissionDenied,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    TenantOwnershipError,
    UnsafeArgument,
)
from vector_hooks.metrics import DEFAULT_METRICS, HookMetrics
from vector_hooks.pipeline import Pipeline
from vector_hooks.request import Hit, Hits, SearchRequest
from vector_hooks.selector import PipelineSelector, as_selector
from vector_hooks.tenancy import validate_tenant_id

__all__ = ["DEFAULT_LIMIT", "TenantWeaviate", "translate_weaviate_error"]

#: Weaviate's own default result limit, used when the caller gives none.
DEFAULT_LIMIT = 10
#: Operations whose metadata carries a distance (lower is better); the others carry a score.
_DISTANCE_OPERATIONS = frozenset({"near_vector", "near_text"})
_SCORE_OPERATIONS = frozenset({"hybrid", "bm25"})
#: UUIDs per ownership look-up query.
_LOOKUP_CHUNK = 100
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def translate_weaviate_error(exc: WeaviateBaseError) -> BackendError:
    """The most specific `BackendError` for a weaviate-client exception."""
    message = f"Weaviate: {exc}"
    if isinstance(exc, WeaviateTimeoutError):
        return BackendTimeout(message)
    if isinstance(
        exc, InsufficientPermissionsError | AuthenticationFailedError | MissingScopeError
    ):
        return BackendPermissionDenied(message)
    if isinstance(exc, UnexpectedStatusCodeError) and exc.status_code in (401, 403):
        return BackendPermissionDenied(message)
    if isinstance(
        exc,
        WeaviateConnectionError
        | WeaviateGRPCUnavailableError
        | WeaviateStartUpError
        | WeaviateClosedClientError
        | WeaviateRetryError,
    ):
        return BackendUnavailable(message)
    if isinstance(
        exc,
        WeaviateQueryError
        | WeaviateInvalidInputError
        | UnexpectedStatusCodeError
        | WeaviateUnsupportedFeatureError
        | SchemaValidationError
        | ObjectAlreadyExistsError
        | InvalidDataModelError
        | WeaviateInsertInvalidPropertyError
        | WeaviateAddInvalidPropertyError
        | WeaviateBatchValidationError,
    ):
        return BackendRequestError(message)
    return BackendError(message)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except WeaviateBaseError as exc:
        raise translate_weaviate_error(exc) from exc


def _property_names(value: Any) -> list[Any] | None:
    """Normalise return_properties: None = all non-reference properties."""
    if value is None or value is True:
        return None
    if value is False:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def _with_metadata(value: Any, operation: str) -> Any:
    """The caller's return_metadata plus what ranking needs (distance or score)."""
    wanted = (
        "distance"
        if operation in _DISTANCE_OPERATIONS
        else "score"
        if operation in _SCORE_OPERATIONS
        else None
    )
    if wanted is None:
        return value
    if value is None:
        return MetadataQuery(**{wanted: True})
    if isinstance(value, MetadataQuery):
        return value.model_copy(update={wanted: True})
    names = list(value)
    if wanted not in names:
        names.append(wanted)
    return names


class TenantWeaviate:
    """A weaviate-client v4 `Collection` scoped per call to one tenant."""

    def __init__(
        self,
        collection: Any,
        *,
        multi_tenancy: bool = True,
        tenant_property: str = "tenant_id",
        pipeline: Pipeline | PipelineSelector | None = None,
        metrics: HookMetrics | None = None,
    ) -> None:
        self._collection = collection
        #: The collection's name (the collection itself is deliberately not exposed).
        self.name = str(getattr(collection, "name", ""))
        self.multi_tenancy = multi_tenancy
        self.tenant_property = tenant_property
        self._selector = as_selector(pipeline)
        self._metrics = metrics or DEFAULT_METRICS

    def near_vector(
        self, tenant: str, near_vector: Any, *, principal: str | None = None, **kwargs: Any
    ) -> QueryReturn[Any, Any]:
        """`collection.query.near_vector` for one tenant."""
        return self._query("near_vector", tenant, {"near_vector": near_vector}, principal, kwargs)

    def near_text(
        self,
        tenant: str,
        query: str | Sequence[str],
        *,
        principal: str | None = None,
        **kwargs: Any,
    ) -> QueryReturn[Any, Any]:
        """`collection.query.near_text` for one tenant."""
        return self._query("near_text", tenant, {"query": query}, principal, kwargs)

    def hybrid(
        self, tenant: str, query: str | None, *, principal: str | None = None, **kwargs: Any
    ) -> QueryReturn[Any, Any]:
        """`collection.query.hybrid` for one tenant."""
        return self._query("hybrid", tenant, {"query": query}, principal, kwargs)

    def bm25(
        self, tenant: str, query: str | None, *, principal: str | None = None, **kwargs: Any
    ) -> QueryReturn[Any, Any]:
        """`collection.query.bm25` for one tenant."""
        return self._query("bm25", tenant, {"query": query}, principal, kwargs)

    def fetch_objects(
        self, tenant: str, *, principal: str | None = None, **kwargs: Any
    ) -> QueryReturn[Any, Any]:
        """`collection.query.fetch_objects` for one tenant."""
        return self._query("fetch_objects", tenant, {}, principal, kwargs)

    # ----------------------------------------------------------------- writes

    def insert(
        self,
        tenant: str,
        properties: Mapping[str, Any],
        *,
        uuid: UUID | str | None = None,
        vector: Any = None,
        references: Any = None,
    ) -> UUID:
        """`collection.data.insert` for one tenant; refuses a UUID another tenant owns."""
        tenant = validate_tenant_id(tenant)
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
            with _translated():
                return UUID(str(data.insert(properties, references, uuid, vector)))
        self._refuse_references("insert", references)
        stamped = self._stamped(tenant, properties, "insert")
        with self._owned("insert", tenant, [] if uuid is None else [uuid]), _translated():
            return UUID(str(self._collection.data.insert(stamped, None, uuid, vector)))

    def insert_many(
        self, tenant: str, objects: Sequence[Mapping[str, Any] | DataObject[Any, Any]]
    ) -> BatchObjectReturn:
        """`collection.data.insert_many` for one tenant; refuses UUIDs another tenant owns.

        Weaviate's batch import replaces an object whose UUID exists, so in tenant-property
        mode the whole batch is refused if any UUID is stored under another tenant.
        """
        tenant = validate_tenant_id(tenant)
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
            with _translated():
                return cast(BatchObjectReturn, data.insert_many(list(objects)))
        batch: list[DataObject[Any, Any]] = []
        for index, obj in enumerate(objects):
            where = f"insert_many: object {index}"
            if isinstance(obj, DataObject):
                self._refuse_references(where, obj.references)
                batch.append(
                    DataObject(
                        properties=self._stamped(tenant, obj.properties or {}, where),
                        uuid=obj.uuid,
                        vector=obj.vector,
                    )
                )
            else:
                batch.append(DataObject(properties=self._stamped(tenant, obj, where)))
        uuids = [obj.uuid for obj in batch if obj.uuid is not None]
        with self._owned("insert_many", tenant, uuids), _translated():
            return cast(BatchObjectReturn, self._collection.data.insert_many(batch))

    def replace(
        self,
        tenant: str,
        uuid: UUID | str,
        properties: Mapping[str, Any],
        *,
        vector: Any = None,
        references: Any = None,
    ) -> None:
        """`collection.data.replace` (PUT) of one of the tenant's objects."""
        tenant = validate_tenant_id(tenant)
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
            with _translated():
                data.replace(uuid, properties, references, vector)
            return
        self._refuse_references("replace", references)
        stamped = self._stamped(tenant, properties, "replace")
        with self._owned("replace", tenant, [uuid]), _translated():
            self._collection.data.replace(uuid, stamped, None, vector)

    def update(
        self,
        tenant: str,
        uuid: UUID | str,
        properties: Mapping[str, Any] | None = None,
        *,
        vector: Any = None,
        references: Any = None,
    ) -> None:
        """`collection.data.update` (PATCH, properties merged) of one of the tenant's objects."""
        tenant = validate_tenant_id(tenant)
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
            with _translated():
                data.update(uuid, properties, references, vector)
            return
        self._refuse_references("update", references)
        stamped = self._stamped(tenant, properties or {}, "update")
        with self._owned("update", tenant, [uuid]), _translated():
            self._collection.data.update(uuid, stamped, None, vector)

    def delete_by_id(self, tenant: str, uuid: UUID | str) -> bool:
        """Delete one of the tenant's objects; a UUID of another tenant matches nothing."""
        tenant = validate_tenant_id(tenant)
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
            with _translated():
                return bool(data.delete_by_id(uuid))
        result = self.delete_many(tenant, Filter.by_id().equal(uuid))
        return result.successful > 0

    def delete_many(
        self, tenant: str, where: _Filters, *, verbose: bool = False, dry_run: bool = False
    ) -> DeleteManyReturn[Any]:
        """`collection.data.delete_many` of the tenant's objects matching `where`."""
        tenant = validate_tenant_id(tenant)
        if not isinstance(where, _Filters):
            raise UnsafeArgument("delete_many needs a weaviate Filter as where=")
        if self.multi_tenancy:
            data = self._collection.with_tenant(tenant).data
        else:
            data = self._collection.data
            where = Filter.all_of([self._own(tenant), where])
        with _translated():
            result = data.delete_many(where, verbose=verbose, dry_run=dry_run)
        return cast(DeleteManyReturn[Any], result)

    def _own(self, tenant: str) -> _Filters:
        return Filter.by_property(self.tenant_property).equal(tenant)

    @staticmethod
    def _refuse_references(operation: str, references: Any) -> None:
        if references:
            raise UnsafeArgument(
                f"{operation}: references are not accepted on a tenant-property collection "
                "(their targets could belong to another tenant)"
            )

    def _stamped(
        self, tenant: str, properties: Mapping[str, Any], operation: str
    ) -> dict[str, Any]:
        if not isinstance(properties, Mapping):
            raise UnsafeArgument(f"{operation}: properties must be a mapping")
        owner = properties.get(self.tenant_property, tenant)
        if owner != tenant:
            raise UnsafeArgument(
                f"{operation}: {self.tenant_property}={owner!r} but the call is for tenant "
                f"{tenant!r}"
            )
        return {**properties, self.tenant_property: tenant}

    @contextmanager
    def _owned(self, operation: str, tenant: str, uuids: Sequence[UUID | str]) -> Iterator[None]:
        """Hold the collection's write lock; refuse if any of `uuids` is not the tenant's."""
        try:
            wanted = list(dict.fromkeys(UUID(str(u)) for u in uuids))
        except ValueError as exc:
            raise UnsafeArgument(f"{operation}: {exc}") from exc
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(self.name, threading.Lock())
        with lock:
            foreign = self._foreign(tenant, wanted)
            if foreign:
                raise TenantOwnershipError(operation, tenant, [str(u) for u in foreign])
            yield

    def _foreign(self, tenant: str, uuids: list[UUID]) -> list[UUID]:
        """Those of `uuids` stored under another tenant (or none): owners read, never returned."""
        reader = self._collection.with_consistency_level(ConsistencyLevel.QUORUM).query
        foreign: set[UUID] = set()
        for start in range(0, len(uuids), _LOOKUP_CHUNK):
            chunk = uuids[start : start + _LOOKUP_CHUNK]
            with _translated():
                found = reader.fetch_objects(
                    filters=Filter.by_id().contains_any(chunk),
                    limit=len(chunk),
                    return_properties=[self.tenant_property],
                )
            foreign.update(
                UUID(str(obj.uuid))
                for obj in found.objects
                if (obj.properties or {}).get(self.tenant_property) != tenant
            )
        return [u for u in uuids if u in foreign]

    # ----------------------------------------------------------------- reads

    def _query(
        self,
        operation: str,
        tenant: str,
        positional: dict[str, Any],
        principal: str | None,
        kwargs: dict[str, Any],
    ) -> QueryReturn[Any, Any]:
        tenant = validate_tenant_id(tenant)
        if kwargs.get("group_by") is not None:
            raise UnsafeArgument(
                "group_by is not supported: grouped answers cannot be reranked or checked "
                "object by object"
            )
        kwargs.pop("group_by", None)
        limit = kwargs.pop("limit", None)
        limit = DEFAULT_LIMIT if limit is None else limit
        caller_vector = kwargs.pop("include_vector", False)
        request = SearchRequest(
            tenant=tenant,
            backend="weaviate",
            operation=operation,
            collection=self.name,
            limit=limit,
            fetch_limit=limit,
            params={**positional, **kwargs},
            output_fields=_property_names(kwargs.pop("return_properties", None)),
            principal=principal,
        )
        request.params.pop("return_properties", None)
        request.attributes["weaviate.include_vector"] = caller_vector
        if not self.multi_tenancy:
            request.require_fields(self.tenant_property)
        _, hits = run_call(self._selector, request, self._execute, self._metrics)
        objects = []
        for group in hits:
            for hit in group:
                obj = hit.raw
                objects.append(
                    Object(
                        uuid=obj.uuid,
                        metadata=obj.metadata,
                        properties=hit.fields,
                        references=obj.references,
                        vector=obj.vector if caller_vector else {},
                        collection=obj.collection,
                    )
                )
        return QueryReturn(objects=objects)

    def _execute(self, request: SearchRequest) -> Hits:
        params = dict(request.params)
        caller_filters = params.pop("filters", None)
        if self.multi_tenancy:
            target = self._collection.with_tenant(request.tenant)
            filters = caller_filters
        else:
            target = self._collection
            own = Filter.by_property(self.tenant_property).equal(request.tenant)
            filters = own if caller_filters is None else Filter.all_of([own, caller_filters])
        caller_vector = request.attributes.get("weaviate.include_vector", False)
        include_vector = caller_vector or request.want_vectors
        properties = request.output_fields
        query = getattr(target.query, request.operation)
        metadata = _with_metadata(params.pop("return_metadata", None), request.operation)
        with _translated():
            result = query(
                **params,
                limit=request.fetch_limit,
                filters=filters,
                return_properties=properties,
                return_metadata=metadata,
                include_vector=include_vector,
            )
        hits: list[Hit] = []
        target_vector = params.get("target_vector")
        for obj in result.objects:
            meta = obj.metadata
            if meta is not None and meta.distance is not None:
                score, raw_score = -float(meta.distance), float(meta.distance)
            elif meta is not None and meta.score is not None:
                score, raw_score = float(meta.score), float(meta.score)
            else:
                score, raw_score = 0.0, None
            vectors = obj.vector or {}
            vector = vectors.get(target_vector) if isinstance(target_vector, str) else None
            if vector is None and vectors:
                vector = next(iter(vectors.values()))
            hits.append(
                Hit(
                    id=obj.uuid,
                    score=score,
                    fields=dict(obj.properties or {}),
                    distance=raw_score,
                    vector=vector,
                    raw=obj,
                )
            )
        grouped: Hits = [hits]
        if not self.multi_tenancy:
            verify_tenant(grouped, self.tenant_property, request.tenant)
        return grouped
