"""`POST /v1/tester-tokens`: operators issue tester tokens, which let a tester pin a version.

The token is returned once and not stored (it is signed, see control_plane.routing.tester_tokens);
the issue is written to the audit log with the subject, flags and expiry, never the token.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from control_plane.db import repository
from control_plane.errors import BadRequestInput, Conflict
from control_plane.http.bodies import read_json_body
from control_plane.http.deps import ComponentsDep, OperatorDep
from control_plane.http.schemas import json_body, parse_body, problems
from control_plane.routing.context import TESTER_TOKEN_HEADER
from control_plane.routing.tester_tokens import MAX_TTL_SECONDS

__all__ = ["IssuedTesterToken", "TesterTokenRequest", "router"]

router = APIRouter(tags=["testers"])

_MAX_BODY = 16 * 1024


class TesterTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    subject: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$",
        description="Who the token is for (a tester's name or e-mail)",
    )
    ttl_seconds: int = Field(default=3600, alias="ttlSeconds", ge=1, le=MAX_TTL_SECONDS)
    flags: list[str] = Field(
        default_factory=list, max_length=100, description="Flags the token may pin; empty: any flag"
    )


class IssuedTesterToken(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    token: str
    subject: str
    expires_at: datetime = Field(serialization_alias="expiresAt")
    flags: list[str]
    header: str = Field(description="The request header to send the token in")


@router.post(
    "/v1/tester-tokens",
    status_code=201,
    response_model_by_alias=True,
    summary="Issue a tester token (lets its holder pin versions through the gateway)",
    # 409: tester tokens are not enabled (no CP_TESTER_TOKEN_KEY)
    responses=problems(400, 401, 403, 409, 413),
    openapi_extra=json_body(TesterTokenRequest),
)
async def issue_tester_token(
    request: Request, principal: OperatorDep, components: ComponentsDep
) -> IssuedTesterToken:
    tokens = components.tester_tokens
    if tokens is None:
        raise Conflict(
            "tester tokens are not enabled: set CP_TESTER_TOKEN_KEY "
            "(32+ characters) on the control plane"
        )
    asked = parse_body(
        TesterTokenRequest, await read_json_body(request, required=True, limit=_MAX_BODY)
    )
    store = components.store
    unknown = [key for key in asked.flags if not store.loaded or key not in store.current.flags]
    if unknown:
        raise BadRequestInput(
            f"body.flags: no flag named {unknown[0]!r} is serving", source="body.flags"
        )
    token, expires_at = tokens.issue(
        asked.subject, ttl_seconds=asked.ttl_seconds, flags=asked.flags
    )
    expires = datetime.fromtimestamp(expires_at, UTC)

    def audit() -> None:
        with components.database.session() as session:
            repository.add_audit_event(
                session=session,
                actor=principal.name,
                action="tester-token.issue",
                target=asked.subject,
                detail={"flags": sorted(asked.flags), "expiresAt": expires.isoformat()},
            )

    await run_in_threadpool(audit)
    return IssuedTesterToken(
        token=token,
        subject=asked.subject,
        expires_at=expires,
        flags=sorted(set(asked.flags)),
        header=TESTER_TOKEN_HEADER,
    )
