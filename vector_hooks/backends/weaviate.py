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

This is the only module of `vector_hooks` that imports weaviate; it translates
weaviate-client exceptions into `vector_hooks.errors.BackendError` subclasses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from weaviate.classes.query import Filter, MetadataQuery
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


def translate_weaviate_error(exc: WeaviateBaseError) -> BackendError:
    """The most specific `BackendError` for a weaviate-client exception."""
    message = f"Weaviate: {exc}"
    if isinstance(exc, WeaviateTimeoutError):
        return BackendTimeout(message)
    if isinstance(exc, InsufficientPermissionsError | AuthenticationFailedError
                  | MissingScopeError):
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
        self.collection = collection
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
        self, tenant: str, query: str | Sequence[str], *, principal: str | None = None,
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
            collection=str(getattr(self.collection, "name", "")),
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
            target = self.collection.with_tenant(request.tenant)
            filters = caller_filters
        else:
            target = self.collection
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
