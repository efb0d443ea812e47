"""The admin API: read, edit, version, audit and roll back flags; manage tokens.

Every endpoint needs a bearer token whose role is high enough (viewer < operator < admin), and
every write is attributed to the token's name in the flag set history or the audit log.
Errors are domain exceptions; the app's problem+json handlers turn them into 401/403/404/409/422,
including PreconditionFailed as a 412 with the current ETag.

Flag edits use optimistic concurrency: `GET /v1/flags/{key}` (and `GET /v1/flags`) answer an
`ETag`; `PUT` and `DELETE /v1/flags/{key}` (and rollback, against the flag set's ETag) accept
`If-Match` / `If-None-Match` and answer 412 when the flag changed since it was read. The headers
are optional (no 428): scripts and the canary controller may still write blindly.

Include `router` after any route that shares the `/v1/flags/` prefix (such as
`/v1/flags/status`), because `/v1/flags/{key}` would otherwise capture it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from control_plane.auth import (
    Principal,
    Role,
    hash_token,
    new_token,
)
from control_plane.db import repository
from control_plane.db.models import ApiToken, AuditEvent, FlagSetVersion
from control_plane.db.repository import MAX_VERSION
from control_plane.errors import BadRequestInput, Conflict, FlagNotFound
from control_plane.flagstore.editor import WriteResult
from control_plane.flagstore.issues import format_path
from control_plane.flagstore.preconditions import (
    Precondition,
    flag_etag,
    flag_set_etag,
)
from control_plane.flagstore.text_check import find_unsafe_text, unsafe_character
from control_plane.http.bodies import read_json_body
from control_plane.http.components import Components
from control_plane.http.deps import AdminDep, ComponentsDep, OperatorDep, ViewerDep
from control_plane.http.schemas import OpenWireModel, WireModel, json_body, parse_body, problems

__all__ = ["router"]

router = APIRouter(tags=["admin"])

_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_MAX_BODY = 1024 * 1024
_MAX_MESSAGE = 2000


# -- wire models -----------------------------------------------------------------------------


class WhoAmI(BaseModel):
    name: str
    role: Literal["viewer", "operator", "admin"]
    source: str = Field(description="settings (CP_ADMIN_TOKENS) or database")


class FlagSummary(WireModel):
    key: str
    source: str | None = Field(description="The flag file that defines it")
    flag_set_version: int
    state: str | None
    default_variant: str | None
    variants: list[str]
    etag: str


class FlagList(WireModel):
    flag_set_version: int
    content_hash: str
    etag: str = Field(description="The flag set's ETag: what rollback takes as If-Match")
    flags: list[FlagSummary]


class FlagDefinition(BaseModel):
    """A flagd flag definition; the flag validator checks it (422 with the issues)."""

    model_config = ConfigDict(extra="allow")

    state: Literal["ENABLED", "DISABLED"]
    variants: dict[str, Any]
    default_variant: str | None = Field(default=None, alias="defaultVariant")
    targeting: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class FlagDocument(WireModel):
    key: str
    source: str | None
    flag_set_version: int
    content_hash: str
    etag: str = Field(description="What PUT and DELETE take as If-Match")
    flag: dict[str, Any] = Field(description="The flagd definition")


class FlagWrite(WireModel):
    key: str
    source: str | None
    flag_set_version: int
    content_hash: str
    changed: bool
    flag: dict[str, Any] | None


class FlagDeleted(FlagWrite):
    deleted: bool
    files: list[str]


class VersionSummary(WireModel):
    version: int
    content_hash: str
    created_at: str
    source: str = Field(description="file, api, rollback, ...")
    actor: str | None
    message: str | None
    bucketing: str | None = Field(description="The fractional bucketing generation")
    flag_count: int
    diff: dict[str, Any] | None


class VersionDocument(VersionSummary):
    document: dict[str, Any] = Field(description="The whole flag set as stored")


class HistoryPage(WireModel):
    items: list[VersionSummary]
    total: int
    next_before: int | None
    next: str | None = Field(description="The next page's URL, if there is one")


class RollbackRequest(BaseModel):
    message: str | None = Field(
        default=None, max_length=_MAX_MESSAGE, description="Why (kept in the history)"
    )


class RollbackResult(WireModel):
    rolled_back_to: int
    flag_set_version: int
    content_hash: str
    changed: bool
    files: list[str]


class TokenRequest(BaseModel):
    name: str = Field(
        pattern=_TOKEN_NAME.pattern,
        description="1-64 letters, digits, . _ @ - (starting with a letter or digit)",
    )
    role: Literal["viewer", "operator", "admin"] = "viewer"

    @field_validator("role", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class TokenInfo(OpenWireModel):
    """A token's name and state; never its secret (except `token`, once, when created)."""

    name: str
    role: str
    source: Literal["settings", "database"]
    created_at: str | None = None
    created_by: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None


class CreatedToken(TokenInfo):
    token: str = Field(description="The secret: shown in this answer only")


class TokenList(BaseModel):
    items: list[TokenInfo]


class AuditEventBody(BaseModel):
    id: int
    at: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditPage(WireModel):
    items: list[AuditEventBody]
    next_before: int | None


_ETAG = {
    "ETag": {"description": "The entity tag to send as If-Match", "schema": {"type": "string"}}
}
#: Every admin read: a malformed request (400), no valid token (401).
_VIEWER = problems(400, 401)
#: Writes also need the role (403).
_WRITER = problems(400, 401, 403)


# -- helpers ---------------------------------------------------------------------------------

#: A stored version number: path parameters outside this range are a 400, never a query.
VersionParam = Annotated[int, Path(ge=1, le=MAX_VERSION, description="a stored version number")]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description="ETag the edit starts from; 412 if stale")
]
IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", description="'*': create only; 412 if it exists")
]


def _checked_key(key: str) -> str:
    problem = unsafe_character(key, key=True)
    if problem is not None:
        raise BadRequestInput(f"the flag key in the path contains {problem}", source="path.key")
    return key


def _checked_definition(definition: Any) -> Any:
    """The body itself, or a 400 naming the first key or string that cannot be stored."""
    for location, problem in find_unsafe_text(definition, limit=1):
        where = "body" + format_path(location)[1:]
        raise BadRequestInput(f"{where}: {problem}", source=where)
    return definition


def _flag_write_json(key: str, result: WriteResult) -> dict[str, Any]:
    flag_set = result.flag_set
    return {
        "key": key,
        "source": flag_set.sources.get(key),
        "flagSetVersion": flag_set.version,
        "contentHash": flag_set.content_hash,
        "changed": result.changed,
        "flag": flag_set.flags.get(key),
    }


def _version_json(row: FlagSetVersion, *, document: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": row.version,
        "contentHash": row.content_hash,
        "createdAt": row.created_at.isoformat(),
        "source": row.source,
        "actor": row.actor,
        "message": row.message,
        "bucketing": row.bucketing,
        "flagCount": len(row.document.get("flags", {})),
        "diff": row.diff,
    }
    if document:
        body["document"] = row.document
    return body


def _token_json(row: ApiToken) -> dict[str, Any]:
    return {
        "name": row.name,
        "role": row.role,
        "source": "database",
        "createdAt": row.created_at.isoformat(),
        "createdBy": row.created_by,
        "revokedAt": row.revoked_at.isoformat() if row.revoked_at else None,
        "revokedBy": row.revoked_by,
    }


def _audit_json(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "detail": row.detail,
    }


def _audit(
    admin: Components, principal: Principal, action: str, target: str, detail: dict[str, Any]
) -> None:
    with admin.database.session() as session:
        repository.add_audit_event(
            session=session, actor=principal.name, action=action, target=target, detail=detail
        )


# -- endpoints: who am I ---------------------------------------------------------------------


@router.get(
    "/v1/whoami", summary="The token's name and role", response_model=WhoAmI, responses=_VIEWER
)
def whoami(principal: ViewerDep) -> dict[str, str]:
    return {"name": principal.name, "role": principal.role.label, "source": principal.source}


# -- endpoints: flags (fixed paths first: /v1/flags/{key} must not capture them) -------------


@router.get(
    "/v1/flags",
    summary="All serving flags with their source file and version",
    response_model=FlagList,
    responses={
        200: {"description": "The serving flags", "headers": _ETAG},
        **_VIEWER,
        **problems(503),
    },
)
def list_flags(principal: ViewerDep, admin: ComponentsDep) -> JSONResponse:
    flag_set = admin.store.current
    etag = flag_set_etag(flag_set.content_hash)
    return JSONResponse(
        {
            "flagSetVersion": flag_set.version,
            "contentHash": flag_set.content_hash,
            "etag": etag,
            "flags": [
                {
                    "key": key,
                    "source": flag_set.sources.get(key),
                    "flagSetVersion": flag_set.version,
                    "state": definition.get("state"),
                    "defaultVariant": definition.get("defaultVariant"),
                    "variants": sorted(definition.get("variants", {})),
                    "etag": flag_etag(definition),
                }
                for key, definition in sorted(flag_set.flags.items())
            ],
        },
        headers={"ETag": etag},
    )


@router.get(
    "/v1/flags/history",
    summary="Flag set versions, newest first, with diffs",
    response_model=HistoryPage,
    responses=_VIEWER,
)
def history(
    principal: ViewerDep,
    admin: ComponentsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION + 1, description="versions below this one")
    ] = None,
) -> dict[str, Any]:
    with admin.database.session() as session:
        rows = repository.list_versions(session=session, limit=limit + 1, before=before)
        total = repository.count_versions(session=session)
        items = [_version_json(row) for row in rows[:limit]]
    more = len(rows) > limit
    next_before = items[-1]["version"] if more else None
    return {
        "items": items,
        "total": total,
        "nextBefore": next_before,
        "next": (
            f"/v1/flags/history?limit={limit}&before={next_before}"
            if next_before is not None
            else None
        ),
    }


@router.get(
    "/v1/flags/history/{version}",
    summary="One stored version with its full document",
    response_model=VersionDocument,
    responses={**_VIEWER, **problems(404)},
)
def history_version(
    version: VersionParam, principal: ViewerDep, admin: ComponentsDep
) -> dict[str, Any]:
    with admin.database.session() as session:
        return _version_json(
            repository.get_version(session=session, version=version), document=True
        )


@router.post(
    "/v1/flags/rollback/{version}",
    summary="Rewrite the flag files to a stored version (recorded as a rollback)",
    response_model=RollbackResult,
    responses={**_WRITER, **problems(404, 412, 413, 422, 503)},
    openapi_extra=json_body(
        RollbackRequest, required=False, description='Optional: {"message": "why"}'
    ),
)
async def rollback(
    version: VersionParam,
    request: Request,
    principal: AdminDep,
    admin: ComponentsDep,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """`If-Match` takes the flag set's ETag (from `GET /v1/flags`): 412 if it changed since."""
    precondition = Precondition.parse(if_match=if_match)
    body = await read_json_body(request, required=False, limit=_MAX_BODY)
    note = parse_body(RollbackRequest, {} if body is None else body).message or ""

    def work() -> dict[str, Any]:
        with admin.database.session() as session:
            document = repository.get_version(session=session, version=version).document
        message = f"rollback to version {version}" + (f": {note}" if note else "")
        result = admin.editor.restore(
            document, actor=principal.name, message=message, precondition=precondition
        )
        _audit(
            admin,
            principal,
            "flags.rollback",
            f"version {version}",
            {
                "flagSetVersion": result.flag_set.version,
                "changed": result.changed,
                "files": list(result.files),
            },
        )
        return {
            "rolledBackTo": version,
            "flagSetVersion": result.flag_set.version,
            "contentHash": result.flag_set.content_hash,
            "changed": result.changed,
            "files": list(result.files),
        }

    return await run_in_threadpool(work)


@router.get(
    "/v1/flags/{key}",
    summary="One serving flag's definition, source file and version",
    response_model=FlagDocument,
    responses={200: {"description": "The flag", "headers": _ETAG}, **_VIEWER, **problems(404, 503)},
)
def get_flag(key: str, principal: ViewerDep, admin: ComponentsDep) -> JSONResponse:
    """The `ETag` (also in the body as `etag`) is what PUT and DELETE take as `If-Match`."""
    flag_set = admin.store.current
    definition = flag_set.flags.get(key)
    if definition is None:
        raise FlagNotFound(f"no flag named {key!r}")
    etag = flag_etag(definition)
    return JSONResponse(
        {
            "key": key,
            "source": flag_set.sources.get(key),
            "flagSetVersion": flag_set.version,
            "contentHash": flag_set.content_hash,
            "etag": etag,
            "flag": definition,
        },
        headers={"ETag": etag},
    )


MessageQuery = Annotated[
    str | None, Query(max_length=_MAX_MESSAGE, description="why (kept in the history)")
]


@router.put(
    "/v1/flags/{key}",
    summary="Create or replace a flag (validated, versioned)",
    response_model=FlagWrite,
    responses={
        200: {"description": "Replaced", "headers": _ETAG},
        201: {"description": "Created", "model": FlagWrite, "headers": _ETAG},
        **_WRITER,
        **problems(404, 412, 413, 422, 503),
    },
    openapi_extra=json_body(FlagDefinition, description="The flagd flag definition"),
)
async def put_flag(
    key: str,
    request: Request,
    principal: OperatorDep,
    admin: ComponentsDep,
    message: MessageQuery = None,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """`If-Match: <ETag>` makes a read-modify-write safe: 412 if the flag changed meanwhile."""
    _checked_key(key)
    precondition = Precondition.parse(if_match=if_match, if_none_match=if_none_match)
    definition = _checked_definition(await read_json_body(request, required=True, limit=_MAX_BODY))

    def work() -> tuple[int, dict[str, Any]]:
        existed = admin.store.loaded and key in admin.store.current.flags
        result = admin.editor.put_flag(
            key, definition, actor=principal.name, message=message or "", precondition=precondition
        )
        flag_set = result.flag_set
        _audit(
            admin,
            principal,
            "flag.put",
            key,
            {
                "flagSetVersion": flag_set.version,
                "changed": result.changed,
                "source": flag_set.sources.get(key),
            },
        )
        return (200 if existed else 201), _flag_write_json(key, result)

    status, body = await run_in_threadpool(work)
    served = body["flag"]
    headers = {"ETag": flag_etag(served)} if isinstance(served, dict) else None
    return JSONResponse(body, status_code=status, headers=headers)


@router.delete(
    "/v1/flags/{key}",
    summary="Remove a flag from its file (validated, versioned)",
    response_model=FlagDeleted,
    responses={**_WRITER, **problems(404, 412, 422, 503)},
)
async def delete_flag(
    key: str,
    principal: OperatorDep,
    admin: ComponentsDep,
    message: MessageQuery = None,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """`If-Match: <ETag>` refuses (412) to delete a flag that changed since it was read."""
    _checked_key(key)
    precondition = Precondition.parse(if_match=if_match)

    def work() -> dict[str, Any]:
        result = admin.editor.delete_flag(
            key, actor=principal.name, message=message or "", precondition=precondition
        )
        _audit(
            admin,
            principal,
            "flag.delete",
            key,
            {
                "flagSetVersion": result.flag_set.version,
                "changed": result.changed,
                "files": list(result.files),
            },
        )
        return {**_flag_write_json(key, result), "deleted": True, "files": list(result.files)}

    return await run_in_threadpool(work)


# -- endpoints: tokens and audit -------------------------------------------------------------


@router.post(
    "/v1/tokens",
    status_code=201,
    summary="Create a token; the secret is in this answer only",
    response_model=CreatedToken,
    responses={**_WRITER, **problems(409, 413)},
    openapi_extra=json_body(TokenRequest, description='{"name": "...", "role": "viewer"}'),
)
async def create_token(request: Request, principal: AdminDep, admin: ComponentsDep) -> JSONResponse:
    asked = parse_body(TokenRequest, await read_json_body(request, required=True, limit=_MAX_BODY))
    name, role = asked.name, Role.parse(asked.role)
    if any(spec.name == name for spec in admin.authenticator.settings_tokens):
        raise Conflict(f"a token named {name!r} is defined in settings (CP_ADMIN_TOKENS)")
    secret = new_token()

    def work() -> dict[str, Any]:
        with admin.database.session() as session:
            row = repository.add_token(
                session=session,
                name=name,
                role=role.label,
                token_hash=hash_token(secret),
                created_by=principal.name,
            )
            repository.add_audit_event(
                session=session,
                actor=principal.name,
                action="token.create",
                target=name,
                detail={"role": role.label},
            )
            return {**_token_json(row), "token": secret}

    return JSONResponse(await run_in_threadpool(work), status_code=201)


@router.get(
    "/v1/tokens",
    summary="Tokens (names, roles, state; never secrets)",
    response_model=TokenList,
    response_model_exclude_unset=True,
    responses=_WRITER,
)
def list_tokens(principal: AdminDep, admin: ComponentsDep) -> dict[str, Any]:
    configured = [
        {"name": spec.name, "role": spec.role, "source": "settings"}
        for spec in admin.authenticator.settings_tokens
    ]
    with admin.database.session() as session:
        stored = [_token_json(row) for row in repository.list_tokens(session=session)]
    return {"items": configured + stored}


@router.delete(
    "/v1/tokens/{name}",
    status_code=204,
    summary="Revoke a database token",
    response_class=Response,
    responses={**_WRITER, **problems(404, 409)},
)
def revoke_token(name: str, principal: AdminDep, admin: ComponentsDep) -> Response:
    if any(spec.name == name for spec in admin.authenticator.settings_tokens):
        raise Conflict(
            f"token {name!r} is defined in settings; remove it from CP_ADMIN_TOKENS "
            "and restart to revoke it"
        )
    with admin.database.session() as session:
        repository.revoke_token(session=session, name=name, actor=principal.name)
        repository.add_audit_event(
            session=session, actor=principal.name, action="token.revoke", target=name, detail={}
        )
    return Response(status_code=204)


@router.get(
    "/v1/audit",
    summary="Audit log of writes, newest first",
    response_model=AuditPage,
    responses=_WRITER,
)
def audit_log(
    principal: AdminDep,
    admin: ComponentsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    with admin.database.session() as session:
        rows = repository.list_audit_events(session=session, limit=limit + 1, before=before)
        items = [_audit_json(row) for row in rows[:limit]]
    more = len(rows) > limit
    return {"items": items, "nextBefore": items[-1]["id"] if more else None}
