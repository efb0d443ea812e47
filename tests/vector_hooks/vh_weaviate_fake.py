"""A protocol-level fake Weaviate for tests: REST meta/readiness, gRPC health and Search.

No Weaviate server can run on these machines, so the Weaviate adapter is tested with the real
weaviate-client talking to this fake over loopback. It speaks the real wire protocols:

- REST: ``/v1/meta`` (version 1.30.5, so the client uses its >= 1.27 gRPC API),
  ``/v1/.well-known/ready`` and ``/live``; ``/v1/.well-known/openid-configuration`` answers 404
  (no auth), as a server without OIDC does; a PyPI-shaped ``/pypi/weaviate-client/json`` lets
  the client's start-up version check stay on loopback;
- gRPC: ``grpc.health.v1.Health/Check`` (SERVING) and ``weaviate.v1.Weaviate/Search`` from the
  stubs that ship inside weaviate-client (``weaviate.proto.v1``);
- writes, with Weaviate's semantics: REST ``POST /v1/objects`` (``data.insert``; an existing
  UUID is refused with 422), ``PUT`` (``data.replace``: whole object replaced, 404 if absent),
  ``PATCH`` (``data.update``: properties merged, 404 if absent), ``DELETE`` and ``HEAD`` of
  ``/v1/objects/{class}/{id}`` (tenant in the body or ``?tenant=``); gRPC ``BatchObjects``
  (``data.insert_many``: an existing UUID is *replaced*, errors per object) and ``BatchDelete``
  (``data.delete_many``: filter, dry run, verbose).

Search really evaluates what it receives over in-memory objects: native tenants (a
multi-tenant collection refuses requests without a tenant or for an unknown one, as Weaviate
does), filters (AND/OR, comparisons, LIKE, CONTAINS_ANY), near_vector (cosine distance),
near_text/bm25/hybrid (token overlap standing in for a vectorizer and BM25), limit and offset;
filters on ``_id`` (``Filter.by_id()``) match the object's UUID. Native tenants are separate
shards: the same UUID in two tenants is two objects. Numbers sent in a batch's Struct arrive as
doubles; the fake stores integral ones as ints (a real server would follow the schema).
Every request is recorded so tests assert the tenant and filters the server actually got.
Replies set ``metadata.id_as_bytes``; without it the client reads every id as all zeros.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
import threading
import uuid
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from weaviate.proto.v1 import (
    base_pb2,
    batch_delete_pb2,
    batch_pb2,
    properties_pb2,
    search_get_pb2,
    weaviate_pb2_grpc,
)

__all__ = ["FakeObject", "FakeWeaviate"]

SERVER_VERSION = "1.30.5"
CLIENT_VERSION = "4.16.2"
_OP = base_pb2.Filters.Operator


@dataclass
class FakeObject:
    """One stored object."""

    uuid: uuid.UUID
    properties: dict[str, Any]
    vector: list[float]


@dataclass
class _Collection:
    multi_tenancy: bool
    #: tenant (None for single-tenant collections) -> objects in insertion order
    shards: dict[str | None, list[FakeObject]] = field(default_factory=dict)


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = sum(x * x for x in a) ** 0.5
    nb = sum(y * y for y in b) ** 0.5
    if na == 0 or nb == 0:
        return 1.0
    return 1.0 - dot / (na * nb)


def _floats(data: bytes) -> list[float]:
    return list(struct.unpack(f"{len(data) // 4}f", data))


def _value(value: Any) -> properties_pb2.Value:
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return properties_pb2.Value(int_value=value)
    if isinstance(value, float):
        return properties_pb2.Value(number_value=value)
    if isinstance(value, str):
        return properties_pb2.Value(text_value=value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return properties_pb2.Value(
            list_value=properties_pb2.ListValue(text_values=properties_pb2.TextValues(values=value))
        )
    raise TypeError(f"the fake cannot encode {type(value).__name__}")


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, *, http: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.http = http


def _view(obj: FakeObject) -> dict[str, Any]:
    """What a filter sees: the properties plus ``_id``."""
    return {**obj.properties, "_id": str(obj.uuid)}


def _plain(value: Any) -> Any:
    """A Struct number as an int when integral (the fake has no schema to tell it the type)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _batch_properties(props: batch_pb2.BatchObject.Properties) -> dict[str, Any]:
    out = {k: _plain(v) for k, v in json_format.MessageToDict(props.non_ref_properties).items()}
    for text in props.text_array_properties:
        out[text.prop_name] = list(text.values)
    for ints in props.int_array_properties:
        out[ints.prop_name] = list(ints.values)
    for flags in props.boolean_array_properties:
        out[flags.prop_name] = list(flags.values)
    for numbers in props.number_array_properties:
        data = numbers.values_bytes
        out[numbers.prop_name] = list(struct.unpack(f"{len(data) // 8}d", data))
    for name in props.empty_list_props:
        out[name] = []
    if props.single_target_ref_props or props.multi_target_ref_props:
        raise _Refused(grpc.StatusCode.UNIMPLEMENTED, "the fake stores no references")
    return out


def _batch_vector(obj: batch_pb2.BatchObject) -> list[float]:
    if obj.vector_bytes:
        return _floats(obj.vector_bytes)
    if obj.vectors:
        return _floats(obj.vectors[0].vector_bytes)
    return list(obj.vector)


def _rest_vector(body: Mapping[str, Any]) -> list[float] | None:
    if body.get("vector") is not None:
        return [float(x) for x in body["vector"]]
    vectors = body.get("vectors") or {}
    if vectors:
        return [float(x) for x in next(iter(vectors.values()))]
    return None


def _filter_value(f: base_pb2.Filters) -> Any:
    which = f.WhichOneof("test_value")
    if which is None:
        return None
    value = getattr(f, which)
    if which.endswith("_array"):
        return list(value.values)
    return value


def _matches(f: base_pb2.Filters, props: Mapping[str, Any]) -> bool:
    if f.operator == _OP.OPERATOR_AND:
        return all(_matches(child, props) for child in f.filters)
    if f.operator == _OP.OPERATOR_OR:
        return any(_matches(child, props) for child in f.filters)
    if f.HasField("target") and f.target.property:
        name = f.target.property
    elif f.on:
        name = f.on[-1]
    else:
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "filter without a property target")
    actual = props.get(name)
    expected = _filter_value(f)
    op = f.operator
    if op == _OP.OPERATOR_IS_NULL:
        return (actual is None) == bool(expected)
    if actual is None:
        return op == _OP.OPERATOR_NOT_EQUAL
    if op == _OP.OPERATOR_EQUAL:
        return bool(actual == expected)
    if op == _OP.OPERATOR_NOT_EQUAL:
        return bool(actual != expected)
    if op == _OP.OPERATOR_GREATER_THAN:
        return bool(actual > expected)
    if op == _OP.OPERATOR_GREATER_THAN_EQUAL:
        return bool(actual >= expected)
    if op == _OP.OPERATOR_LESS_THAN:
        return bool(actual < expected)
    if op == _OP.OPERATOR_LESS_THAN_EQUAL:
        return bool(actual <= expected)
    if op == _OP.OPERATOR_LIKE:
        return fnmatch.fnmatchcase(str(actual), str(expected))
    if op == _OP.OPERATOR_CONTAINS_ANY:
        values = actual if isinstance(actual, list) else [actual]
        return any(v in values for v in expected)
    raise _Refused(grpc.StatusCode.UNIMPLEMENTED, f"the fake does not evaluate operator {op}")


class _SearchServicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, fake: FakeWeaviate) -> None:
        self._fake = fake

    def Search(
        self, request: search_get_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> search_get_pb2.SearchReply:
        copy = search_get_pb2.SearchRequest()
        copy.CopyFrom(request)
        with self._fake.lock:
            self._fake.search_requests.append(copy)
        try:
            return self._fake.search(request)
        except _Refused as exc:
            context.abort(exc.code, str(exc))
            raise  # abort raises; this keeps type checkers satisfied

    def BatchObjects(
        self, request: batch_pb2.BatchObjectsRequest, context: grpc.ServicerContext
    ) -> batch_pb2.BatchObjectsReply:
        copy = batch_pb2.BatchObjectsRequest()
        copy.CopyFrom(request)
        with self._fake.lock:
            self._fake.write_requests.append(("BatchObjects", copy))
            return self._fake.batch_objects(request)

    def BatchDelete(
        self, request: batch_delete_pb2.BatchDeleteRequest, context: grpc.ServicerContext
    ) -> batch_delete_pb2.BatchDeleteReply:
        copy = batch_delete_pb2.BatchDeleteRequest()
        copy.CopyFrom(request)
        with self._fake.lock:
            self._fake.write_requests.append(("BatchDelete", copy))
            try:
                return self._fake.batch_delete(request)
            except _Refused as exc:
                context.abort(exc.code, str(exc))
                raise


class _CountingHealth(health.HealthServicer):
    def __init__(self, fake: FakeWeaviate) -> None:
        super().__init__()
        self._fake = fake

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        with self._fake.lock:
            self._fake.health_checks += 1
        return super().Check(request, context)


class _RestHandler(BaseHTTPRequestHandler):
    fake: FakeWeaviate

    def do_GET(self) -> None:
        self.fake.rest_paths.append(self.path)
        if self.path == "/v1/meta":
            self._json(200, {"version": SERVER_VERSION, "hostname": "http://fake", "modules": {}})
        elif self.path in ("/v1/.well-known/ready", "/v1/.well-known/live"):
            self._json(200, {})
        elif self.path == "/pypi/weaviate-client/json":
            self._json(200, {"info": {"version": CLIENT_VERSION}})
        else:
            self._json(404, {"error": [{"message": f"{self.path} is not served by the fake"}]})

    def do_POST(self) -> None:
        self._write("POST")

    def do_PUT(self) -> None:
        self._write("PUT")

    def do_PATCH(self) -> None:
        self._write("PATCH")

    def do_DELETE(self) -> None:
        self._write("DELETE")

    def do_HEAD(self) -> None:
        self._write("HEAD")

    def _write(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        with self.fake.lock:
            self.fake.rest_paths.append(self.path)
            self.fake.write_requests.append((f"{method} {url.path}", {**body, **query}))
            try:
                status, answer = self.fake.rest_write(method, url.path, body, query)
            except _Refused as exc:
                status, answer = exc.http, {"error": [{"message": str(exc)}]}
        if status == 204 or method == "HEAD":
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._json(status, answer)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class FakeWeaviate:
    """Start with `start()`, stop with `stop()`; see the module docstring."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.collections: dict[str, _Collection] = {}
        self.search_requests: list[search_get_pb2.SearchRequest] = []
        #: (what, request): "BatchObjects"/"BatchDelete" with the proto, or "METHOD /path" with
        #: the JSON body merged with the query parameters.
        self.write_requests: list[tuple[str, Any]] = []
        self.rest_paths: list[str] = []
        self.health_checks = 0
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = 0
        self.grpc_port = 0

    # ------------------------------------------------------------------ data

    def add_collection(self, name: str, *, multi_tenancy: bool) -> None:
        self.collections[name] = _Collection(multi_tenancy=multi_tenancy)

    def add_tenant(self, collection: str, tenant: str) -> None:
        """Create an (empty) tenant shard, as ``collection.tenants.create`` would."""
        self.collections[collection].shards.setdefault(tenant, [])

    def add_object(
        self,
        collection: str,
        properties: dict[str, Any],
        vector: list[float],
        *,
        tenant: str | None = None,
        object_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        target = self.collections[collection]
        if target.multi_tenancy != (tenant is not None):
            raise ValueError("multi-tenant collections need a tenant, others must not get one")
        obj = FakeObject(object_id or uuid.uuid4(), dict(properties), list(vector))
        target.shards.setdefault(tenant, []).append(obj)
        return obj.uuid

    def objects(self, collection: str, tenant: str | None = None) -> dict[uuid.UUID, FakeObject]:
        """The stored objects of one shard, by UUID (what is really there)."""
        with self.lock:
            return {o.uuid: o for o in self.collections[collection].shards.get(tenant, [])}

    # ---------------------------------------------------------------- servers

    def start(self) -> None:
        handler = type("Handler", (_RestHandler,), {"fake": self})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_SearchServicer(self), server)
        health_servicer = _CountingHealth(self)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    @property
    def pypi_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/pypi/weaviate-client/json"

    # ----------------------------------------------------------------- search

    def _shard(self, request: search_get_pb2.SearchRequest) -> list[FakeObject]:
        return list(self._stored(request.collection, request.tenant or None))

    def _stored(self, name: str, tenant: str | None) -> list[FakeObject]:
        """The live list of one shard, refused as Weaviate refuses a wrong tenant."""
        collection = self.collections.get(name)
        if collection is None:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"class {name} not found", http=404)
        if collection.multi_tenancy and tenant is None:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"class {name} has multi-tenancy enabled, but request was without tenant",
            )
        if not collection.multi_tenancy and tenant is not None:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"class {name} has multi-tenancy disabled, but request was with tenant {tenant!r}",
            )
        if tenant is not None and tenant not in collection.shards:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"tenant not found: {tenant!r}")
        return collection.shards.setdefault(tenant, [])

    # ----------------------------------------------------------------- writes

    def rest_write(
        self, method: str, path: str, body: dict[str, Any], query: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """One REST object call; the caller holds the lock."""
        tenant = body.get("tenant") or query.get("tenant") or None
        if method == "POST" and path == "/v1/objects":
            shard = self._stored(body["class"], tenant)
            object_id = uuid.UUID(body["id"])
            if any(o.uuid == object_id for o in shard):
                raise _Refused(grpc.StatusCode.ALREADY_EXISTS, f"id '{object_id}' already exists")
            shard.append(
                FakeObject(object_id, dict(body.get("properties") or {}), _rest_vector(body) or [])
            )
            return 200, {**body, "id": str(object_id)}
        match = re.fullmatch(r"/v1/objects/([^/]+)/([0-9a-fA-F-]{36})", path)
        if match is None:
            return 404, {"error": [{"message": f"{method} {path} is not served by the fake"}]}
        shard = self._stored(match.group(1), tenant)
        object_id = uuid.UUID(match.group(2))
        found = next((o for o in shard if o.uuid == object_id), None)
        if found is None:
            return 404, {}
        if method == "HEAD":
            return 204, {}
        if method == "DELETE":
            shard.remove(found)
            return 204, {}
        vector = _rest_vector(body)
        if method == "PUT":
            found.properties = dict(body.get("properties") or {})
        elif method == "PATCH":
            found.properties.update(body.get("properties") or {})
        else:
            return 405, {}
        if vector is not None:
            found.vector = vector
        return (200 if method == "PUT" else 204), {**body, "id": str(object_id)}

    def batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        """Batch import: an existing UUID in the shard is replaced, as Weaviate's batch does."""
        errors = []
        for index, sent in enumerate(request.objects):
            try:
                shard = self._stored(sent.collection, sent.tenant or None)
                obj = FakeObject(
                    uuid.UUID(sent.uuid), _batch_properties(sent.properties), _batch_vector(sent)
                )
            except _Refused as exc:
                errors.append(batch_pb2.BatchObjectsReply.BatchError(index=index, error=str(exc)))
                continue
            shard[:] = [o for o in shard if o.uuid != obj.uuid]
            shard.append(obj)
        return batch_pb2.BatchObjectsReply(took=0.001, errors=errors)

    def batch_delete(
        self, request: batch_delete_pb2.BatchDeleteRequest
    ) -> batch_delete_pb2.BatchDeleteReply:
        shard = self._stored(request.collection, request.tenant or None)
        matched = [o for o in shard if _matches(request.filters, _view(o))]
        if not request.dry_run:
            shard[:] = [o for o in shard if o not in matched]
        objects = (
            [
                batch_delete_pb2.BatchDeleteObject(uuid=o.uuid.bytes, successful=True)
                for o in matched
            ]
            if request.verbose
            else []
        )
        return batch_delete_pb2.BatchDeleteReply(
            took=0.001,
            failed=0,
            matches=len(matched),
            successful=0 if request.dry_run else len(matched),
            objects=objects,
        )

    @staticmethod
    def _query_vector(request: search_get_pb2.SearchRequest) -> list[float] | None:
        if request.HasField("near_vector"):
            near = request.near_vector
            if near.vectors:
                return _floats(near.vectors[0].vector_bytes)
            if near.vector_bytes:
                return _floats(near.vector_bytes)
            return list(near.vector)
        if request.HasField("hybrid_search"):
            hybrid = request.hybrid_search
            if hybrid.vectors:
                return _floats(hybrid.vectors[0].vector_bytes)
            if hybrid.vector_bytes:
                return _floats(hybrid.vector_bytes)
            if hybrid.HasField("near_vector") and hybrid.near_vector.vectors:
                return _floats(hybrid.near_vector.vectors[0].vector_bytes)
        return None

    @staticmethod
    def _text_score(obj: FakeObject, query: set[str]) -> float:
        words: set[str] = set()
        for value in obj.properties.values():
            if isinstance(value, str):
                words |= _tokens(value)
        return float(len(words & query))

    def _ranked(
        self, request: search_get_pb2.SearchRequest, objects: list[FakeObject]
    ) -> Iterator[tuple[FakeObject, float | None, float | None]]:
        """(object, distance, score) in answer order."""
        vector = self._query_vector(request)
        if request.HasField("near_vector"):
            assert vector is not None
            rows = sorted(
                ((o, _cosine_distance(vector, o.vector)) for o in objects), key=lambda r: r[1]
            )
            yield from ((o, d, None) for o, d in rows)
        elif request.HasField("near_text"):
            query = _tokens(" ".join(request.near_text.query))
            scored = [(o, 1.0 - self._text_score(o, query) / max(len(query), 1)) for o in objects]
            yield from ((o, d, None) for o, d in sorted(scored, key=lambda r: r[1]))
        elif request.HasField("bm25_search"):
            query = _tokens(request.bm25_search.query)
            scored = [(o, self._text_score(o, query)) for o in objects]
            yield from ((o, None, s) for o, s in sorted(scored, key=lambda r: -r[1]) if s > 0)
        elif request.HasField("hybrid_search"):
            hybrid = request.hybrid_search
            query = _tokens(hybrid.query)
            alpha = hybrid.alpha
            scored = []
            for o in objects:
                text = self._text_score(o, query) / max(len(query), 1)
                near = 1.0 - _cosine_distance(vector, o.vector) if vector is not None else 0.0
                scored.append((o, alpha * near + (1.0 - alpha) * text))
            yield from ((o, None, s) for o, s in sorted(scored, key=lambda r: -r[1]))
        else:
            yield from ((o, None, None) for o in objects)

    def search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        objects = self._shard(request)
        if request.HasField("filters"):
            objects = [o for o in objects if _matches(request.filters, _view(o))]
        ranked = list(self._ranked(request, objects))
        offset = request.offset or 0
        limit = request.limit or 10
        page = ranked[offset : offset + limit]
        wanted: set[str] | None = None
        if request.HasField("properties") and not request.properties.return_all_nonref_properties:
            wanted = set(request.properties.non_ref_properties)
        results = []
        for obj, distance, score in page:
            props = {
                k: _value(v) for k, v in obj.properties.items() if wanted is None or k in wanted
            }
            metadata = search_get_pb2.MetadataResult(id_as_bytes=obj.uuid.bytes)
            if distance is not None:
                metadata.distance = distance
                metadata.distance_present = True
            if score is not None:
                metadata.score = score
                metadata.score_present = True
            if request.metadata.vector:
                metadata.vectors.append(
                    base_pb2.Vectors(
                        name="default",
                        vector_bytes=struct.pack(f"{len(obj.vector)}f", *obj.vector),
                        type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32,
                    )
                )
            results.append(
                search_get_pb2.SearchResult(
                    properties=search_get_pb2.PropertiesResult(
                        non_ref_props=properties_pb2.Properties(fields=props),
                        target_collection=request.collection,
                    ),
                    metadata=metadata,
                )
            )
        return search_get_pb2.SearchReply(took=0.001, results=results)
