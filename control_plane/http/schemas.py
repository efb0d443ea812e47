"""The typed HTTP edge: shared wire models and the helpers that document every answer.

    ProblemDetails                 the RFC 9457 body of every error (application/problem+json)
    problems(400, 404, ...)        `responses=` entries for the error statuses an operation answers
    json_body(Model)               `openapi_extra=` declaring the JSON request body `Model` reads
    parse_body(Model, body)        a body from `read_json_body`, validated; 400 naming the field
    complete_openapi(doc)          the finishing pass `ControlPlaneApp.openapi()` runs

Bodies are read by `control_plane.http.bodies.read_json_body` (streamed, bounded, every string
checked) and only then validated by a model, so FastAPI never parses a body itself and its
generated 422 "Validation Error" never happens: the app answers request validation with a 400
problem. `complete_openapi` removes those 422s, adds the schemas `json_body` and `problems`
refer to, and gives each method of a multi-method route its own operationId.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.json_schema import models_json_schema

from control_plane.errors import BadRequestInput
from control_plane.http.problems import PROBLEM_JSON

__all__ = [
    "PROBLEM_CONTENT",
    "DecisionBody",
    "OfrepBulkEvaluation",
    "OfrepEvaluation",
    "OfrepRequest",
    "OpenWireModel",
    "ProblemDetails",
    "RouteRequest",
    "WireModel",
    "complete_openapi",
    "json_body",
    "parse_body",
    "problems",
]

_REF = "#/components/schemas/{model}"
#: Where json_body carries its schemas until complete_openapi moves them into components.
_CARRIED = "x-components"
_Model = TypeVar("_Model", bound=BaseModel)


class WireModel(BaseModel):
    """A JSON document with camelCase members (`flag_set_version` is `flagSetVersion`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class OpenWireModel(WireModel):
    """A document whose members past the modelled ones are kept (large reports)."""

    model_config = ConfigDict(extra="allow")


class ProblemDetails(BaseModel):
    """An RFC 9457 problem: `type`, `title`, `status`, `detail`, and members naming the cause."""

    model_config = ConfigDict(extra="allow", title="ProblemDetails")

    type: str = Field(description="urn:control-plane:problem:<title slug>")
    title: str
    status: int
    detail: str
    source: str | None = Field(
        default=None,
        description="What was malformed: a header, path, query or body field (body.<field>)",
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="One entry per bad field or item (location/field, message)"
    )
    issues: list[dict[str, Any]] | None = Field(
        default=None, description="Validation issues of a refused flag edit"
    )
    etag: str | None = Field(default=None, description="The current ETag (412)")
    limit: int | None = Field(default=None, description="The body limit in bytes (413)")


class DecisionBody(WireModel):
    """A routing decision, as `/v1/route`, `/v1/decide` and the fast path answer it."""

    flag_key: str
    variant: str
    backend: str
    url: str
    reason: str
    flag_set_version: int
    decision_id: str
    error_code: str | None = Field(default=None, description="Present when reason is ERROR")
    ignored: list[str] | None = Field(
        default=None, description="Request attributes that were not used, and why"
    )
    tester: str | None = Field(default=None, description="The tester token's subject")


class RouteRequest(BaseModel):
    """`POST /v1/route/{flag}`'s optional body: attributes added to the headers' context."""

    context: dict[str, Any] = Field(
        default_factory=dict,
        max_length=64,
        description="Evaluation context attributes (string, number, boolean, or a list/object "
        "of those); header values win on conflict",
    )


class OfrepRequest(BaseModel):
    """An OFREP evaluation request: `{"context": {...}}` (targetingKey and attributes)."""

    model_config = ConfigDict(extra="allow")

    context: dict[str, Any] | None = Field(default=None, description="The evaluation context")


class OfrepEvaluation(BaseModel):
    """OFREP evaluationSuccess: the value, the reason, the variant when there is one."""

    model_config = ConfigDict(extra="allow")

    key: str
    value: Any = Field(description="boolean, string, number or object")
    reason: str = Field(description="STATIC, TARGETING_MATCH, SPLIT, DISABLED or UNKNOWN")
    variant: str | None = None
    metadata: dict[str, Any] | None = None


class OfrepBulkEvaluation(BaseModel):
    """OFREP bulkEvaluationSuccess: one evaluation (or evaluationFailure) per flag."""

    model_config = ConfigDict(extra="allow")

    flags: list[dict[str, Any]]
    metadata: dict[str, Any] | None = None


_STATUS_TEXT = {
    400: "Malformed request: a header, path, query or body field (named in `source`)",
    401: "No valid token (WWW-Authenticate: Bearer)",
    403: "The token's role may not do this",
    404: "Not found",
    409: "Conflicts with the current state",
    412: "If-Match / If-None-Match does not hold (the current ETag is in the body and header)",
    413: "The request body is over the limit",
    422: "Well-formed but refused (the problem names why)",
    502: "The backend refused, timed out or failed",
    503: "Not ready yet, or overloaded: retry later",
}


#: The `content` entry of a problem+json answer, for responses that may also be something else.
PROBLEM_CONTENT: dict[str, Any] = {
    PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="ProblemDetails")}}
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: each status answered as an application/problem+json document."""
    return {
        status: {"description": _STATUS_TEXT[status], "content": PROBLEM_CONTENT}
        for status in statuses
    }


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """Component schemas of `models` and every model they use, validation side."""
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template=_REF
    )
    found: dict[str, Any] = definitions.get("$defs", {})
    return found


def json_body(
    model: type[BaseModel], *, required: bool = True, description: str = "A JSON object"
) -> dict[str, Any]:
    """`openapi_extra=` declaring the request body that the endpoint validates with `model`.

    The model's schemas ride along under `x-components`; complete_openapi moves them into
    the document's components.
    """
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}
            },
        },
        _CARRIED: _schemas(model),
    }


def parse_body(model: type[_Model], body: Any) -> _Model:
    """`body` (from read_json_body) as `model`; BadRequestInput naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "body." + ".".join(str(part) for part in first["loc"]) if first["loc"] else "body"
        raise BadRequestInput(f"{where}: {first['msg']}", source=where) from None


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Finish FastAPI's document in place (see the module docstring); returns it."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    carried = _schemas(ProblemDetails)
    operations = [
        (method, operation)
        for path_item in document.get("paths", {}).values()
        for method, operation in path_item.items()
    ]
    ids = Counter(operation.get("operationId") for _, operation in operations)
    for method, operation in operations:
        carried.update(operation.pop(_CARRIED, {}))
        if ids[operation.get("operationId")] > 1:  # one route serving several methods
            operation["operationId"] = f"{operation['operationId']}_{method}"
        generated = operation.get("responses", {}).get("422", {})
        schema = generated.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("$ref", "").endswith("/HTTPValidationError"):
            del operation["responses"]["422"]  # answered as a 400 problem instead
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for name, schema in carried.items():
        components.setdefault(name, schema)
    return document
