"""`TenantMilvus`: a pymilvus `MilvusClient` whose every read and write is scoped to one tenant.

Reads (`search`, `query`, `hybrid_search`) take the client's own arguments plus a required
``tenant`` and run the tenant's hook pipeline around the call. The tenant condition is ANDed
around the caller's filter in parentheses (and into every `hybrid_search` sub-request), after
every hook ran. On servers that support ``filter_params`` (Milvus >= 2.5, not Milvus Lite 3.x,
which rejects them) the tenant travels as a template parameter; elsewhere as a quoted literal
of an id already validated against the tenant alphabet. Every row a read returns is checked to
carry the caller's tenant.

Writes never touch another tenant's rows:

- `insert` and `upsert` stamp the tenant field, then look up the primary keys being written
  (one Strong-consistency query per 1,000 keys) and refuse with `TenantOwnershipError`, naming
  the keys, if any is stored under another tenant (or under none). What that relies on: Milvus
  Lite (3.x) *replaces* the row on a duplicate primary key, even on ``insert``; a Milvus
  server (2.x) does not check primary keys on ``insert`` (a second row with the same key is
  stored), ``upsert`` deletes by primary key and inserts. Either way the write would reach the
  other tenant's key, so it must not be sent.
- `delete` sends ``tenant == me and (ids / filter)``: ids of other tenants match nothing. A
  Milvus server resolves a delete expression to primary keys and deletes by key, so this relies
  on no key being shared by two tenants, which the two checks above keep true.
- Only ``timeout``, ``partition_name`` (and ``partial_update`` for upsert) are forwarded to the
  client; ``pks=``, ``expr=`` and anything else are refused. The wrapped client is not an
  attribute of the wrapper, and nothing is forwarded to it by name.

Residual race: the look-up and the write are two calls. Within one process they run under a
per-collection lock; two processes writing the same new key for two tenants at once can both
pass the check (then Lite keeps the later row, a server keeps both). Tenant-prefixed string
keys (`vector_hooks.tenancy.tenant_key`: ``"acme:doc-1"``) make that impossible; with
``tenant_prefixed_ids=True`` the wrapper refuses any other key.

This is the only module of `vector_hooks` that imports pymilvus; it translates pymilvus
exceptions into `vector_hooks.errors.BackendError` subclasses.

Example::

    from pymilvus import MilvusClient
    from vector_hooks.milvus import TenantMilvus
    docs = TenantMilvus(MilvusClient("./docs.db"), collection="docs", tenant_field="tenant_id")
    hits = docs.search(tenant="acme", data=[vec], limit=10, filter='lang == "en"')
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from pymilvus import AnnSearchRequest, DataType, MilvusClient
from pymilvus.exceptions import (
    ConnectError,
    ConnectionConfigException,
    ConnectionNotExistException,
    ErrorCode,
    MilvusException,
    MilvusUnavailableException,
)

from vector_hooks.backends._calls import UNLIMITED, run_call, verify_tenant
from vector_hooks.backends._milvus_expr import (
    TENANT_PARAM,
    check_field_name,
    check_filter,
    compose,
    in_list,
    tenant_condition,
)
from vector_hooks.errors import (
    BackendError,
    BackendPermissionDenied,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    ConfigurationError,
    InvalidFilter,
    TenantOwnershipError,
    UnsafeArgument,
)
from vector_hooks.metrics import DEFAULT_METRICS, HookMetrics
from vector_hooks.pipeline import Pipeline
from vector_hooks.request import Hit, Hits, SearchRequest
from vector_hooks.selector import PipelineSelector, as_selector
from vector_hooks.tenancy import (
    TENANT_ID_MAX_LENGTH,
    TENANT_KEY_SEPARATOR,
    is_tenant_key,
    validate_tenant_id,
)

__all__ = [
    "TenantMilvus",
    "create_tenant_collection",
    "supports_filter_params",
    "translate_milvus_error",
]

T = TypeVar("T")

#: Keyword options each write forwards to MilvusClient; anything else is refused.
_WRITE_OPTIONS: dict[str, frozenset[str]] = {
    "insert": frozenset({"timeout", "partition_name"}),
    "upsert": frozenset({"timeout", "partition_name", "partial_update"}),
    "delete": frozenset({"timeout", "partition_name"}),
}
#: Primary keys per ownership look-up query.
_LOOKUP_CHUNK = 1000
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()

#: Metrics whose distance grows with similarity; for the others smaller is closer.
_HIGHER_IS_BETTER = frozenset({"COSINE", "IP", "BM25", "MHJACCARD"})
_VECTOR_TYPES = frozenset(
    name
    for name in (
        "FLOAT_VECTOR",
        "BINARY_VECTOR",
        "FLOAT16_VECTOR",
        "BFLOAT16_VECTOR",
        "SPARSE_FLOAT_VECTOR",
        "INT8_VECTOR",
    )
    if hasattr(DataType, name)
)
_TIMEOUT_CODES = {grpc.StatusCode.DEADLINE_EXCEEDED}
_DENIED_CODES = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def translate_milvus_error(exc: BaseException) -> BackendError:
    """The most specific `BackendError` for a pymilvus or gRPC exception."""
    message = f"Milvus: {exc}"
    if isinstance(
        exc,
        ConnectError
        | MilvusUnavailableException
        | ConnectionNotExistException
        | ConnectionConfigException,
    ):
        return BackendUnavailable(message)
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code in _TIMEOUT_CODES:
            return BackendTimeout(message)
        if code in _DENIED_CODES:
            return BackendPermissionDenied(message)
        if code in _UNAVAILABLE_CODES:
            return BackendUnavailable(message)
        return BackendRequestError(message)
    if isinstance(exc, MilvusException):
        code = exc.code
        if code in _TIMEOUT_CODES or "timeout" in str(exc.message).lower():
            return BackendTimeout(message)
        if code in _DENIED_CODES:
            return BackendPermissionDenied(message)
        if code in _UNAVAILABLE_CODES:
            return BackendUnavailable(message)
        # Every subclass names a client-side request or schema problem; a bare
        # MilvusException is a server answer, a request error unless it says "unexpected".
        if type(exc) is not MilvusException or code != ErrorCode.UNEXPECTED_ERROR:
            return BackendRequestError(message)
        return BackendError(message)
    return BackendError(message)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (MilvusException, grpc.RpcError) as exc:
        raise translate_milvus_error(exc) from exc


def supports_filter_params(server_version: str) -> bool:
    """Whether a server of this version accepts ``filter_params`` (Milvus >= 2.5, not Lite).

    >>> supports_filter_params("milvus_lite-3.2.2"), supports_filter_params("v2.5.4")
    (False, True)
    """
    version = server_version.strip().lower()
    if "lite" in version:
        return False
    match = re.match(r"v?(\d+)\.(\d+)", version)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= (2, 5)


@dataclass(frozen=True)
class _Schema:
    primary_field: str
    vector_fields: tuple[str, ...]
    partition_key: bool
    fields: frozenset[str]
    dynamic: bool


def create_tenant_collection(
    client: MilvusClient,
    collection: str,
    *,
    dim: int,
    tenant_field: str = "tenant_id",
    vector_field: str = "vector",
    primary_field: str = "id",
    string_ids: bool = False,
    metric: str = "COSINE",
    partition_key: bool = True,
    num_partitions: int | None = None,
    index_type: str = "AUTOINDEX",
) -> None:
    """Create a collection whose tenant field is the partition key (one call).

    The schema has the primary key, one float vector, the tenant field (VARCHAR of the tenant
    id length) and dynamic fields for everything else. With a partition-key tenant field,
    Milvus prunes the search to the tenant's partitions; the tenant filter still applies.
    """
    check_field_name(tenant_field)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=True)
    if string_ids:
        schema.add_field(primary_field, DataType.VARCHAR, is_primary=True, max_length=512)
    else:
        schema.add_field(primary_field, DataType.INT64, is_primary=True)
    schema.add_field(vector_field, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(
        tenant_field,
        DataType.VARCHAR,
        max_length=TENANT_ID_MAX_LENGTH,
        is_partition_key=partition_key,
    )
    index_params = client.prepare_index_params()
    index_params.add_index(vector_field, metric_type=metric, index_type=index_type)
    options: dict[str, Any] = {}
    if partition_key and num_partitions is not None:
        options["num_partitions"] = num_partitions
    with _translated():
        client.create_collection(collection, schema=schema, index_params=index_params, **options)


class TenantMilvus:
    """A `MilvusClient` scoped per call to one tenant; see the module docstring."""

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        *,
        tenant_field: str = "tenant_id",
        pipeline: Pipeline | PipelineSelector | None = None,
        anns_field: str | None = None,
        metric: str | None = None,
        use_filter_params: bool | None = None,
        metrics: HookMetrics | None = None,
        tenant_prefixed_ids: bool = False,
    ) -> None:
        try:
            self.tenant_field = check_field_name(tenant_field)
        except ValueError as exc:
            raise ConfigurationError(f"tenant_field: {exc}") from exc
        self._client = client
        self._tenant_prefixed_ids = tenant_prefixed_ids
        self.collection = collection
        self._selector = as_selector(pipeline)
        self._anns_field = anns_field
        self._metric = metric.upper() if metric else None
        self._use_filter_params = use_filter_params
        self._metrics = metrics or DEFAULT_METRICS
        self._schema_info: _Schema | None = None

    @classmethod
    def create(
        cls,
        client: MilvusClient,
        collection: str,
        *,
        dim: int,
        tenant_field: str = "tenant_id",
        pipeline: Pipeline | PipelineSelector | None = None,
        **options: Any,
    ) -> TenantMilvus:
        """Create a partition-key collection (`create_tenant_collection`) and wrap it."""
        create_tenant_collection(client, collection, dim=dim, tenant_field=tenant_field, **options)
        return cls(client, collection, tenant_field=tenant_field, pipeline=pipeline)

    # ----------------------------------------------------------------- reads

    def search(
        self,
        tenant: str,
        data: Sequence[Any] | None = None,
        filter: str = "",
        limit: int = 10,
        output_fields: list[str] | None = None,
        search_params: dict[str, Any] | None = None,
        timeout: float | None = None,
        partition_names: list[str] | None = None,
        anns_field: str | None = None,
        *,
        principal: str | None = None,
        **kwargs: Any,
    ) -> list[list[dict[str, Any]]]:
        """`MilvusClient.search` for one tenant: one list of hit dicts per query vector."""
        tenant = validate_tenant_id(tenant)
        self._refuse_bypass(kwargs, allow_ids=False)
        caller_params = self._caller_params(kwargs)
        check_filter(filter, templates=caller_params is not None)
        request = SearchRequest(
            tenant=tenant,
            backend="milvus",
            operation="search",
            collection=self.collection,
            limit=limit,
            fetch_limit=limit,
            params={
                "data": data,
                "filter": filter,
                "search_params": search_params,
                "timeout": timeout,
                "partition_names": partition_names,
                "anns_field": anns_field,
                **kwargs,
            },
            output_fields=list(output_fields or []),  # Milvus search returns no fields by default
            principal=principal,
        )
        request.require_fields(self.tenant_field)
        _, hits = run_call(self._selector, request, self._execute_search, self._metrics)
        return [[_search_dict(hit) for hit in group] for group in hits]

    def query(
        self,
        tenant: str,
        filter: str = "",
        output_fields: list[str] | None = None,
        timeout: float | None = None,
        ids: Sequence[int | str] | int | str | None = None,
        partition_names: list[str] | None = None,
        *,
        principal: str | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """`MilvusClient.query` for one tenant: the tenant's matching rows."""
        tenant = validate_tenant_id(tenant)
        self._refuse_bypass(kwargs, allow_ids=True)
        caller_params = self._caller_params(kwargs)
        check_filter(filter, templates=caller_params is not None)
        if ids is not None and filter:
            raise InvalidFilter("pass either ids or filter to query, not both")
        limit = kwargs.pop("limit", None)
        request = SearchRequest(
            tenant=tenant,
            backend="milvus",
            operation="query",
            collection=self.collection,
            limit=UNLIMITED if limit is None else limit,
            fetch_limit=UNLIMITED if limit is None else limit,
            params={
                "filter": filter,
                "ids": None
                if ids is None
                else (list(ids) if isinstance(ids, list | tuple) else [ids]),
                "timeout": timeout,
                "partition_names": partition_names,
                **kwargs,
            },
            output_fields=None if output_fields is None else list(output_fields),
            principal=principal,
        )
        request.require_fields(self.tenant_field)
        _, hits = run_call(self._selector, request, self._execute_query, self._metrics)
        return [dict(hit.fields) for hit in hits[0]]

    def hybrid_search(
        self,
        tenant: str,
        reqs: Sequence[AnnSearchRequest],
        ranker: Any,
        limit: int = 10,
        output_fields: list[str] | None = None,
        timeout: float | None = None,
        partition_names: list[str] | None = None,
        *,
        principal: str | None = None,
        **kwargs: Any,
    ) -> list[list[dict[str, Any]]]:
        """`MilvusClient.hybrid_search` for one tenant; the tenant is in every sub-request."""
        tenant = validate_tenant_id(tenant)
        self._refuse_bypass(kwargs, allow_ids=False)
        templates = self._filter_params_supported()
        for index, sub in enumerate(reqs):
            if not isinstance(sub, AnnSearchRequest):
                raise UnsafeArgument(f"reqs[{index}] must be an AnnSearchRequest")
            try:
                check_filter(sub.expr, templates=templates and bool(sub.expr_params))
            except InvalidFilter as exc:
                raise InvalidFilter(f"reqs[{index}]: {exc}") from exc
        request = SearchRequest(
            tenant=tenant,
            backend="milvus",
            operation="hybrid_search",
            collection=self.collection,
            limit=limit,
            fetch_limit=limit,
            params={
                "reqs": list(reqs),
                "ranker": ranker,
                "timeout": timeout,
                "partition_names": partition_names,
                **kwargs,
            },
            output_fields=list(output_fields or []),
            principal=principal,
        )
        request.require_fields(self.tenant_field)
        _, hits = run_call(self._selector, request, self._execute_hybrid, self._metrics)
        return [[_search_dict(hit) for hit in group] for group in hits]

    # ----------------------------------------------------------------- writes

    def insert(
        self, tenant: str, data: Mapping[str, Any] | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """`MilvusClient.insert` stamped with `tenant`; refuses ids another tenant owns.

        Milvus Lite replaces a row on a duplicate primary key and a Milvus server stores a
        second row under it, so an id of another tenant is refused before anything is written.
        An id the caller already owns is left to Milvus (Lite replaces, a server duplicates):
        use `upsert` to replace a row.
        """
        return self._write("insert", self._client.insert, tenant, data, kwargs)

    def upsert(
        self, tenant: str, data: Mapping[str, Any] | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """`MilvusClient.upsert` stamped with `tenant`; refuses ids another tenant owns."""
        return self._write("upsert", self._client.upsert, tenant, data, kwargs)

    def delete(
        self,
        tenant: str,
        ids: Sequence[int | str] | int | str | None = None,
        filter: str = "",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """`MilvusClient.delete` of the tenant's rows only: ``tenant == me and (ids/filter)``.

        Ids of other tenants simply match nothing. Milvus resolves a delete expression to
        primary keys and deletes those, so this relies on no primary key being shared by two
        tenants, which `insert` and `upsert` guarantee for rows written through this wrapper.
        """
        tenant = validate_tenant_id(tenant)
        _check_options("delete", kwargs)
        caller = check_filter(filter)
        if ids is not None:
            pk = in_list(self._schema().primary_field, _id_list(ids))
            caller = f"({pk}) and ({caller})" if caller else pk
        if not caller:
            raise InvalidFilter("delete needs ids or a filter (use a filter to delete all rows)")
        expr, params = self._expr(tenant, caller, None)
        with _translated():
            result = self._client.delete(self.collection, filter=expr, **params, **kwargs)
        return cast(dict[str, Any], result)

    def _write(
        self,
        operation: str,
        write: Callable[..., Any],
        tenant: str,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """Stamp, check ownership, then write, with the check and the write under one lock."""
        tenant = validate_tenant_id(tenant)
        _check_options(operation, kwargs)
        rows = self._stamped(tenant, data)
        primary = self._schema().primary_field
        ids = list(dict.fromkeys(row[primary] for row in rows if primary in row))
        if self._tenant_prefixed_ids:
            unprefixed = [pk for pk in ids if not is_tenant_key(tenant, pk)]
            if len(ids) < len(rows) or unprefixed:
                raise UnsafeArgument(
                    f"{operation}: this collection takes only tenant-prefixed primary keys "
                    f"({tenant + TENANT_KEY_SEPARATOR!r} + key, "
                    "see vector_hooks.tenancy.tenant_key); "
                    f"refused: {unprefixed[:5] or 'rows without a primary key'}"
                )
        with _write_lock(self.collection):
            foreign = self._foreign_ids(tenant, ids)
            if foreign:
                raise TenantOwnershipError(operation, tenant, foreign)
            with _translated():
                return cast(dict[str, Any], write(self.collection, rows, **kwargs))

    def _foreign_ids(self, tenant: str, ids: list[Any]) -> list[Any]:
        """Those of `ids` stored with another tenant (or none) in the tenant field.

        Deliberately unscoped: it must see other tenants' rows to refuse overwriting them.
        Only primary keys and owners are read, never returned. Strong consistency, so a
        Milvus server answers from every write acknowledged before this query.
        """
        primary = self._schema().primary_field
        foreign: set[Any] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start : start + _LOOKUP_CHUNK]
            rows = self._call(
                self._client.query,
                filter=in_list(primary, chunk),
                output_fields=[primary, self.tenant_field],
                consistency_level="Strong",
            )
            foreign.update(row[primary] for row in rows if row.get(self.tenant_field) != tenant)
        return [pk for pk in ids if pk in foreign]

    # ----------------------------------------------------------------- internals

    def _refuse_bypass(self, kwargs: dict[str, Any], *, allow_ids: bool) -> None:
        if "expr" in kwargs:
            raise UnsafeArgument("pass the caller filter as filter=, not expr=")
        if not allow_ids and "ids" in kwargs:
            raise UnsafeArgument(
                "search by primary key reads vectors of rows that may belong to other tenants; "
                "query the tenant's rows and pass their vectors as data= instead"
            )

    def _caller_params(self, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        params = kwargs.pop("filter_params", None)
        if params is None:
            return None
        if not isinstance(params, Mapping):
            raise InvalidFilter("filter_params must be a mapping")
        if TENANT_PARAM in params:
            raise UnsafeArgument(f"filter_params must not use the reserved name {TENANT_PARAM!r}")
        if not self._filter_params_supported():
            raise InvalidFilter(
                "this Milvus server does not support filter_params (Milvus Lite rejects them); "
                "write the values into the filter"
            )
        kwargs["filter_params"] = dict(params)
        return dict(params)

    def _filter_params_supported(self) -> bool:
        if self._use_filter_params is None:
            try:
                version = str(self._client.get_server_version())
            except Exception:  # an old or unreachable server: quote literals instead
                version = ""
            self._use_filter_params = supports_filter_params(version)
        return self._use_filter_params

    def _expr(
        self, tenant: str, caller_filter: str, caller_params: Mapping[str, Any] | None
    ) -> tuple[str, dict[str, Any]]:
        """The final filter and the keyword arguments carrying its parameters."""
        as_param = self._filter_params_supported()
        expr = compose(
            tenant_condition(self.tenant_field, tenant, as_param=as_param), caller_filter
        )
        if not as_param:
            return expr, {}
        return expr, {"filter_params": {**(caller_params or {}), TENANT_PARAM: tenant}}

    def _schema(self) -> _Schema:
        if self._schema_info is None:
            with _translated():
                described = self._client.describe_collection(self.collection)
            fields = described.get("fields", [])
            primary = next((f["name"] for f in fields if f.get("is_primary")), None)
            tenant = next((f for f in fields if f["name"] == self.tenant_field), None)
            if primary is None:
                raise ConfigurationError(f"collection {self.collection!r} has no primary key")
            if tenant is None:
                raise ConfigurationError(
                    f"collection {self.collection!r} has no field {self.tenant_field!r} "
                    "to isolate tenants by"
                )
            vectors = tuple(
                f["name"] for f in fields if getattr(f.get("type"), "name", "") in _VECTOR_TYPES
            )
            self._schema_info = _Schema(
                primary_field=primary,
                vector_fields=vectors,
                partition_key=bool(tenant.get("is_partition_key")),
                fields=frozenset(f["name"] for f in fields),
                dynamic=bool(described.get("enable_dynamic_field")),
            )
        return self._schema_info

    def _vector_field(self, requested: str | None) -> str:
        if requested:
            return requested
        if self._anns_field:
            return self._anns_field
        vectors = self._schema().vector_fields
        if not vectors:
            raise ConfigurationError(f"collection {self.collection!r} has no vector field")
        return vectors[0]

    def _higher_is_better(self, anns_field: str) -> bool:
        if self._metric is None:
            with _translated():
                names = self._client.list_indexes(self.collection, field_name=anns_field)
                index = self._client.describe_index(self.collection, names[0]) if names else {}
            # Without an index to ask, assume COSINE (pass metric= to the adapter to be sure).
            self._metric = str((index or {}).get("metric_type") or "COSINE").upper()
        return self._metric in _HIGHER_IS_BETTER

    def _output_fields(self, request: SearchRequest, vector_field: str | None) -> list[str] | None:
        fields = request.output_fields
        schema = self._schema()
        if fields is not None and not schema.dynamic:
            # A hook may ask for a field this collection does not have (a flag written for
            # another schema); a Milvus server would fail the whole search for it.
            fields = [
                name for name in fields if name not in request.extra_fields or name in schema.fields
            ]
        if request.want_vectors and vector_field is not None:
            fields = ["*"] if fields is None else list(fields)
            if vector_field not in fields:
                fields.append(vector_field)
                request.extra_fields.add(vector_field)
        return fields

    def _call(self, fn: Callable[..., T], **arguments: Any) -> T:
        with _translated():
            return fn(self.collection, **arguments)

    def _hits(
        self,
        result: Sequence[Sequence[Mapping[str, Any]]],
        *,
        higher_is_better: bool,
        vector_field: str | None,
        tenant: str,
    ) -> Hits:
        hits: Hits = []
        for group in result:
            converted: list[Hit] = []
            for row in group:
                entity = dict(row.get("entity") or {})
                distance = float(row["distance"])
                converted.append(
                    Hit(
                        id=row["id"],
                        score=distance if higher_is_better else -distance,
                        fields=entity,
                        distance=distance,
                        vector=entity.get(vector_field) if vector_field else None,
                    )
                )
            hits.append(converted)
        verify_tenant(hits, self.tenant_field, tenant)
        return hits

    def _execute_search(self, request: SearchRequest) -> Hits:
        params = dict(request.params)
        caller_params = params.pop("filter_params", None)
        caller = check_filter(params.pop("filter", ""), templates=caller_params is not None)
        expr, filter_kwargs = self._expr(request.tenant, caller, caller_params)
        anns_field = params.get("anns_field")
        vector_field = self._vector_field(anns_field) if request.want_vectors else None
        higher = self._higher_is_better(self._vector_field(anns_field))
        result = self._call(
            self._client.search,
            filter=expr,
            limit=request.fetch_limit,
            output_fields=self._output_fields(request, vector_field),
            **filter_kwargs,
            **params,
        )
        return self._hits(
            result, higher_is_better=higher, vector_field=vector_field, tenant=request.tenant
        )

    def _raw_query(
        self, caller: str, tenant: str, *, output_fields: list[str] | None, **params: Any
    ) -> list[dict[str, Any]]:
        expr, filter_kwargs = self._expr(tenant, caller, params.pop("filter_params", None))
        rows = self._call(
            self._client.query, filter=expr, output_fields=output_fields, **filter_kwargs, **params
        )
        return [dict(row) for row in rows]

    def _execute_query(self, request: SearchRequest) -> Hits:
        params = dict(request.params)
        caller_params = params.get("filter_params")
        caller = check_filter(params.pop("filter", ""), templates=caller_params is not None)
        ids = params.pop("ids", None)
        primary = self._schema().primary_field
        if ids is not None:
            caller = in_list(primary, ids)
        if request.fetch_limit < UNLIMITED:
            params["limit"] = request.fetch_limit
        vector_field = self._vector_field(None) if request.want_vectors else None
        rows = self._raw_query(
            caller,
            request.tenant,
            output_fields=self._output_fields(request, vector_field),
            **params,
        )
        hits: Hits = [
            [
                Hit(
                    id=row.get(primary),
                    score=0.0,
                    fields=row,
                    vector=row.get(vector_field) if vector_field else None,
                )
                for row in rows
            ]
        ]
        verify_tenant(hits, self.tenant_field, request.tenant)
        return hits

    def _execute_hybrid(self, request: SearchRequest) -> Hits:
        params = dict(request.params)
        subs: list[AnnSearchRequest] = params.pop("reqs")
        rebuilt: list[AnnSearchRequest] = []
        for sub in subs:
            caller_params = sub.expr_params or None
            caller = check_filter(sub.expr, templates=caller_params is not None)
            expr, filter_kwargs = self._expr(request.tenant, caller, caller_params)
            rebuilt.append(
                AnnSearchRequest(
                    data=sub.data,
                    anns_field=sub.anns_field,
                    param=sub.param,
                    limit=max(sub.limit, request.fetch_limit),
                    expr=expr,
                    expr_params=filter_kwargs.get("filter_params"),
                )
            )
        vector_field = subs[0].anns_field if request.want_vectors and subs else None
        result = self._call(
            self._client.hybrid_search,
            reqs=rebuilt,
            limit=request.fetch_limit,
            output_fields=self._output_fields(request, vector_field),
            **params,
        )
        # Rankers (RRF, weighted) answer a fused score: higher is better.
        return self._hits(
            result, higher_is_better=True, vector_field=vector_field, tenant=request.tenant
        )

    def _stamped(
        self, tenant: str, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        rows = [data] if isinstance(data, Mapping) else list(data)
        stamped: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise UnsafeArgument(f"row {index} must be a mapping of field -> value")
            owner = row.get(self.tenant_field, tenant)
            if owner != tenant:
                raise UnsafeArgument(
                    f"row {index} has {self.tenant_field}={owner!r} but the call is for "
                    f"tenant {tenant!r}"
                )
            stamped.append({**row, self.tenant_field: tenant})
        return stamped


def _check_options(operation: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse write options that could widen the write (``pks=``, ``expr=``, ...)."""
    unknown = sorted(set(kwargs) - _WRITE_OPTIONS[operation])
    if unknown:
        raise UnsafeArgument(
            f"{operation} does not take {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(_WRITE_OPTIONS[operation]))})"
        )


def _id_list(ids: Sequence[int | str] | int | str) -> list[int | str]:
    return [ids] if isinstance(ids, int | str) else list(ids)


@contextmanager
def _write_lock(collection: str) -> Iterator[None]:
    """Serialise check-then-write per collection within this process."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(collection, threading.Lock())
    with lock:
        yield


def _search_dict(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "distance": hit.distance, "entity": hit.fields}
