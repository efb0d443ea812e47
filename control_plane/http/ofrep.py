"""OFREP endpoints: remote flag evaluation for SDKs of any language (OpenFeature's OFREP).

- `POST /ofrep/v1/evaluate/flags/{key}`: one flag. 200 evaluationSuccess; 400 evaluationFailure
  (`PARSE_ERROR` for a body that is not JSON, `INVALID_CONTEXT` for a context that is not an
  object, or the evaluator's PARSE_ERROR/GENERAL); 404 `FLAG_NOT_FOUND`; 503 before the first
  valid flag set is loaded.
- `POST /ofrep/v1/evaluate/flags`: every flag, with a strong `ETag` over the exact response
  body (so it changes with the flag set and with the context, as flagd's does) and 304 Not
  Modified when `If-None-Match` names it.

Answers are OFREP JSON, not problem+json, because OFREP clients parse `errorCode`. The
evaluation itself lives in `control_plane.distribution.ofrep_eval`. Authentication, when
wanted, is added by the app with `include_router(router, dependencies=[...])` (401/403).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from control_plane.distribution.ofrep_eval import (
    OfrepRequestError,
    parse_evaluation_request,
)
from control_plane.errors import FlagsNotLoaded, PayloadTooLarge
from control_plane.http.bodies import read_body
from control_plane.http.deps import ComponentsDep

__all__ = ["MAX_BODY_BYTES", "etag_matches", "router"]

#: Largest request body accepted (an evaluation context is small; this stops abuse).
MAX_BODY_BYTES = 1 << 20

_JSON = "application/json"

_FAILURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "errorCode"],
    "properties": {"key": {"type": "string"}, "errorCode": {"type": "string"},
                   "errorDetails": {"type": "string"}},
}
_GENERAL_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"errorDetails": {"type": "string"}},
}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": schema}}}


router = APIRouter(prefix="/ofrep/v1", tags=["OFREP"])


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _general(status: int, detail: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return _json(status, {"errorDetails": detail}, headers)


def _split_etags(field: str) -> list[str]:
    """Entity tags of one If-None-Match field; commas inside quotes belong to the tag."""
    tags: list[str] = []
    start, quoted = 0, False
    for index, char in enumerate(field):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            tags.append(field[start:index].strip())
            start = index + 1
    tags.append(field[start:].strip())
    return [tag for tag in tags if tag]


def etag_matches(if_none_match: list[str], etag: str) -> bool:
    """RFC 9110 weak comparison of If-None-Match against our (quoted) ETag; `*` matches."""
    for field in if_none_match:
        for tag in _split_etags(field):
            if tag == "*":
                return True
            tag = tag.removeprefix("W/")
            if tag in (etag, etag.strip('"')):  # lenient clients drop the quotes
                return True
    return False


@router.post(
    "/evaluate/flags/{key}",
    summary="OFREP single flag evaluation",
    responses={
        200: {"description": "evaluationSuccess"},
        400: {"description": "evaluationFailure", **_content(_FAILURE_SCHEMA)},
        404: {"description": "flagNotFound", **_content(_FAILURE_SCHEMA)},
        413: {"description": "request body too large", **_content(_GENERAL_SCHEMA)},
        503: {"description": "no flag set loaded yet", **_content(_GENERAL_SCHEMA)},
    },
)
async def evaluate_flag(key: str, request: Request, components: ComponentsDep) -> Response:
    """Evaluate one flag for the request's `context`."""
    try:
        context = parse_evaluation_request(await read_body(request, limit=MAX_BODY_BYTES))
    except PayloadTooLarge:
        return _general(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    except OfrepRequestError as exc:
        return _json(400, {"key": key, "errorCode": str(exc.error_code),
                           "errorDetails": exc.detail})
    try:
        evaluation = components.ofrep.evaluate(key, context)
    except FlagsNotLoaded as exc:
        return _general(503, exc.detail)
    status = evaluation.status
    if status >= 500:
        return _general(status, evaluation.details.error_message or str(evaluation.error_code))
    return _json(status, evaluation.body())


@router.post(
    "/evaluate/flags",
    summary="OFREP bulk evaluation",
    responses={
        200: {"description": "bulkEvaluationSuccess", "headers": {"ETag": {
            "description": "Digest of this exact answer", "schema": {"type": "string"}}}},
        304: {"description": "Not modified: If-None-Match names the current answer"},
        400: {"description": "bulkEvaluationFailure", **_content(_GENERAL_SCHEMA)},
        413: {"description": "request body too large", **_content(_GENERAL_SCHEMA)},
        503: {"description": "no flag set loaded yet", **_content(_GENERAL_SCHEMA)},
    },
)
async def evaluate_flags(request: Request, components: ComponentsDep) -> Response:
    """Evaluate every flag for the request's `context`; answers 304 when unchanged."""
    try:
        context = parse_evaluation_request(await read_body(request, limit=MAX_BODY_BYTES))
    except PayloadTooLarge:
        return _general(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    except OfrepRequestError as exc:
        return _json(400, {"errorCode": str(exc.error_code), "errorDetails": exc.detail})
    evaluator = components.ofrep
    try:
        # Off the event loop: a bulk answer evaluates every flag (about 25 us each).
        flag_set, evaluations = await run_in_threadpool(evaluator.evaluate_all, context)
    except FlagsNotLoaded as exc:
        return _general(503, exc.detail)
    for evaluation in evaluations:
        if evaluation.status >= 500:
            return _general(evaluation.status, evaluation.details.error_message
                            or str(evaluation.error_code))
    payload = _dumps({"flags": [evaluation.body() for evaluation in evaluations],
                      "metadata": flag_set.metadata})
    etag = '"' + hashlib.sha256(payload).hexdigest() + '"'
    if etag_matches(request.headers.getlist("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    return Response(payload, status_code=200, media_type=_JSON, headers={"ETag": etag})
