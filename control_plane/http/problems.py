"""Map domain errors to RFC 9457 problem+json answers; the only place that knows HTTP statuses.

Core code raises ControlPlaneError subclasses; the handlers registered here turn each into a
problem document, so no endpoint builds an error response by hand and no bad input becomes a 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Send

from control_plane import errors

__all__ = [
    "PROBLEM_JSON",
    "install_problem_handlers",
    "problem_body",
    "problem_response",
    "send_problem",
    "status_for",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_STATUS: list[tuple[type[errors.ControlPlaneError], int]] = [
    (errors.BadRequestInput, 400),
    (errors.PayloadTooLarge, 413),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.FlagNotFound, 404),
    (errors.VersionNotFound, 404),
    (errors.TokenNotFound, 404),
    (errors.Conflict, 409),
    (errors.PreconditionFailed, 412),
    (errors.ExperimentNotFound, 404),
    (errors.CanaryNotFound, 404),
    (errors.InvalidEvents, 422),
    (errors.InvalidCanary, 422),
    (errors.EventQueueFull, 503),
    (errors.NotARoutingFlag, 422),
    (errors.FlagValidationError, 422),
    (errors.FlagsNotLoaded, 503),
    (errors.UpstreamError, 502),
]


def status_for(exc: errors.ControlPlaneError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def _type_slug(title: str) -> str:
    return "urn:control-plane:problem:" + title.lower().replace(" ", "-")


def problem_body(status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": _type_slug(title),
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def problem_response(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = problem_body(status, title, detail, **extra)
    return Response(
        json.dumps(body, default=_jsonable),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _jsonable(value: Any) -> Any:
    for method in ("as_dict", "to_dict"):  # ValidationIssue has to_dict()
        as_dict = getattr(value, method, None)
        if callable(as_dict):
            return as_dict()
    return str(value)


async def send_problem(send: Send, exc: errors.ControlPlaneError) -> None:
    """Answer `exc` as problem+json straight over ASGI (for code in front of FastAPI)."""
    status = status_for(exc)
    body = json.dumps(
        problem_body(status, exc.title, exc.detail, **dict(exc.extra)), default=_jsonable
    ).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def domain_problem(exc: errors.ControlPlaneError) -> Response:
    status = status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 412 and exc.extra.get("etag"):
        headers = {"ETag": str(exc.extra["etag"])}  # what the client should edit from now
    extra = dict(exc.extra)
    if isinstance(exc, errors.FlagValidationError):
        extra["issues"] = exc.issues
    return problem_response(status, exc.title, exc.detail, headers=headers, **extra)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves the app as problem+json: domain errors, validation, 404/405, crashes."""

    async def on_domain(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, errors.ControlPlaneError):  # registered for that class only
            return await on_crash(request, exc)
        return domain_problem(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):  # registered for that class only
            return await on_crash(request, exc)
        problems = [
            {
                "location": ".".join(str(part) for part in err.get("loc", ())),
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        first = problems[0] if problems else {"location": "request", "message": "invalid"}
        return problem_response(
            400,
            "Malformed request",
            f"{first['location']}: {first['message']}",
            errors=problems,
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # registered for that class only
            return await on_crash(request, exc)
        title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        return problem_response(
            exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {})
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500, "Internal error", "the control plane failed; the error is logged"
        )

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client left before its request body was in: nobody is there to answer, and it
        # is nobody's error. Logged quietly, never as a crash (499 is nginx's name for it).
        log.debug("client left mid-request on %s %s", request.method, request.url.path)
        return Response(status_code=499)

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(errors.ControlPlaneError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_crash)
