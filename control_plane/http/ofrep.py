"""OFREP endpoints: remote flag evaluation for SDKs of any language (OpenFeature's OFREP).

Answers keep to the OFREP OpenAPI document (open-feature/protocol `service/openapi.yaml`),
statuses and bodies included:

- `POST /ofrep/v1/evaluate/flags/{key}`: one flag. 200 evaluationSuccess (reason from OFREP's
  list: STATIC, TARGETING_MATCH, SPLIT, DISABLED, UNKNOWN; no `variant` key when there is
  none); 400 evaluationFailure (`PARSE_ERROR` for a body that is not JSON or too large,
  `INVALID_CONTEXT` for a context that is not an object, or the evaluator's code); 404
  `FLAG_NOT_FOUND`; 500 generalErrorResponse before the first valid flag set is loaded.
- `POST /ofrep/v1/evaluate/flags`: every flag, with a strong `ETag` over the flag set version
  and the exact body (so it changes with the flag set and with the context, as flagd's does)
  and 304 Not Modified when `If-None-Match` names it; 400 bulkEvaluationFailure.
- 401 (generalErrorResponse) without a valid gateway token, which may come as
  `Authorization: Bearer <token>` or as the spec's `X-API-Key: <token>`; 429 with
  `Retry-After` (seconds) over the per-client rate (setting `ofrep_rate_limit`, off by default).

The project's own facts travel in headers, never in evaluation metadata: `X-Flag-Set-Version`,
`X-Flag-Set-Hash`, `X-Bucketing`. Answers are OFREP JSON, not problem+json, because OFREP
clients parse `errorCode`. The evaluation itself lives in `control_plane.distribution.ofrep_eval`.
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
from control_plane.distribution.rate_limit import TokenBucketLimiter
from control_plane.errors import FlagsNotLoaded, PayloadTooLarge, Unauthenticated
from control_plane.flagstore import FlagSet
from control_plane.http.bodies import read_body
from control_plane.http.deps import ComponentsDep
from control_plane.http.schemas import (
    PROBLEM_CONTENT,
    OfrepBulkEvaluation,
    OfrepEvaluation,
    OfrepRequest,
    json_body,
)

__all__ = ["MAX_BODY_BYTES", "etag_matches", "router"]

#: Largest request body accepted (an evaluation context is small; this stops abuse).
MAX_BODY_BYTES = 1 << 20

_JSON = "application/json"

_FAILURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["key", "errorCode"],
    "properties": {
        "key": {"type": "string"},
        "errorCode": {"type": "string"},
        "errorDetails": {"type": "string"},
    },
}
_GENERAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"errorDetails": {"type": "string"}},
}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {_JSON: {"schema": schema}}}


router = APIRouter(prefix="/ofrep/v1", tags=["OFREP"])


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _general(status: int, detail: str) -> Response:
    headers = {"Retry-After": "1"} if status == 500 else None
    return _json(status, {"errorDetails": detail}, headers)


def _facts(flag_set: FlagSet) -> dict[str, str]:
    return {
        "X-Flag-Set-Version": str(flag_set.version),
        "X-Flag-Set-Hash": flag_set.content_hash[:12],
        "X-Bucketing": str(flag_set.facts["bucketing"]),
    }


def _credential(request: Request) -> str | None:
    """`Authorization: Bearer <token>`, or the spec's `X-API-Key: <token>` as a Bearer header."""
    header = request.headers.get("authorization")
    if header is None and (api_key := request.headers.get("x-api-key")) is not None:
        header = f"Bearer {api_key.strip()}"
    return header


def _guard(request: Request, components: ComponentsDep) -> Response | None:
    """401 without a valid token (when tokens are set), 429 over the rate; else None."""
    checker = components.gateway
    header = _credential(request)
    try:
        checker(header)
    except Unauthenticated as exc:
        # The spec's body; the challenge header HTTP requires of every 401.
        return _json(401, {"errorDetails": exc.detail}, {"WWW-Authenticate": "Bearer"})
    limiter = components.ofrep_limiter
    if not limiter.enabled:
        return None
    if checker.enabled and header is not None:
        client = "token:" + hashlib.sha256(header.encode("utf-8", "replace")).hexdigest()[:16]
    else:
        client = "addr:" + (request.client.host if request.client else "unknown")
    wait = limiter.acquire(client)
    if wait > 0:
        return _json(
            429,
            {"errorDetails": "rate limit reached; retry later"},
            {"Retry-After": TokenBucketLimiter.retry_after(wait)},
        )
    return None


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
        200: {"description": "evaluationSuccess", "model": OfrepEvaluation},
        400: {
            "description": "evaluationFailure (problem+json when the request target holds a "
            "control character: refused before routing)",
            "content": {**_content(_FAILURE_SCHEMA)["content"], **PROBLEM_CONTENT},
        },
        404: {"description": "flagNotFound", **_content(_FAILURE_SCHEMA)},
        401: {"description": "no valid token", **_content(_GENERAL_SCHEMA)},
        429: {"description": "rate limit reached (Retry-After)", **_content(_GENERAL_SCHEMA)},
        500: {"description": "no flag set loaded yet", **_content(_GENERAL_SCHEMA)},
    },
    openapi_extra=json_body(
        OfrepRequest, required=False, description='{"context": {"targetingKey": "...", ...}}'
    ),
)
async def evaluate_flag(key: str, request: Request, components: ComponentsDep) -> Response:
    """Evaluate one flag for the request's `context`."""
    refused = _guard(request, components)
    if refused is not None:
        return refused
    try:
        context = parse_evaluation_request(await read_body(request, limit=MAX_BODY_BYTES))
    except PayloadTooLarge:
        return _json(
            400,
            {
                "key": key,
                "errorCode": "PARSE_ERROR",
                "errorDetails": f"request body larger than {MAX_BODY_BYTES} bytes",
            },
        )
    except OfrepRequestError as exc:
        return _json(
            400, {"key": key, "errorCode": str(exc.error_code), "errorDetails": exc.detail}
        )
    try:
        flag_set, evaluation = components.ofrep.evaluate_at(key, context)
    except FlagsNotLoaded as exc:
        return _general(500, exc.detail)
    status = evaluation.status
    if status >= 500:
        return _general(status, evaluation.details.error_message or str(evaluation.error_code))
    return _json(status, evaluation.body(), _facts(flag_set))


@router.post(
    "/evaluate/flags",
    summary="OFREP bulk evaluation",
    responses={
        200: {
            "description": "bulkEvaluationSuccess",
            "model": OfrepBulkEvaluation,
            "headers": {
                "ETag": {"description": "Digest of this exact answer", "schema": {"type": "string"}}
            },
        },
        304: {"description": "Not modified: If-None-Match names the current answer"},
        400: {
            "description": "bulkEvaluationFailure (problem+json when the request target holds "
            "a control character: refused before routing)",
            "content": {**_content(_GENERAL_SCHEMA)["content"], **PROBLEM_CONTENT},
        },
        401: {"description": "no valid token", **_content(_GENERAL_SCHEMA)},
        429: {"description": "rate limit reached (Retry-After)", **_content(_GENERAL_SCHEMA)},
        500: {"description": "no flag set loaded yet", **_content(_GENERAL_SCHEMA)},
    },
    openapi_extra=json_body(
        OfrepRequest, required=False, description='{"context": {"targetingKey": "...", ...}}'
    ),
)
async def evaluate_flags(request: Request, components: ComponentsDep) -> Response:
    """Evaluate every flag for the request's `context`; answers 304 when unchanged."""
    refused = _guard(request, components)
    if refused is not None:
        return refused
    try:
        context = parse_evaluation_request(await read_body(request, limit=MAX_BODY_BYTES))
    except PayloadTooLarge:
        return _json(
            400,
            {
                "errorCode": "PARSE_ERROR",
                "errorDetails": f"request body larger than {MAX_BODY_BYTES} bytes",
            },
        )
    except OfrepRequestError as exc:
        return _json(400, {"errorCode": str(exc.error_code), "errorDetails": exc.detail})
    evaluator = components.ofrep
    try:
        # Off the event loop: a bulk answer evaluates every flag (about 25 us each).
        flag_set, evaluations = await run_in_threadpool(evaluator.evaluate_all, context)
    except FlagsNotLoaded as exc:
        return _general(500, exc.detail)
    for evaluation in evaluations:
        if evaluation.status >= 500:
            return _general(
                evaluation.status, evaluation.details.error_message or str(evaluation.error_code)
            )
    payload = _dumps({"flags": [evaluation.body() for evaluation in evaluations]})
    digest = hashlib.sha256(f"{flag_set.version}\0".encode() + payload).hexdigest()
    etag = f'"{digest}"'
    headers = {"ETag": etag, **_facts(flag_set)}
    if etag_matches(request.headers.getlist("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(payload, status_code=200, media_type=_JSON, headers=headers)
