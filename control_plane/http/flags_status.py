"""`GET /v1/flags/status`: which flag set serves, and why the last edit was refused, if it was.

Ops look here after editing a flag file: `state` is "ok" when the last reload went live (or
changed nothing), "partial" when it went live without some invalid flags (listed under
`refused`, each keeping its last good definition or absent), "error" when it was refused
(strict mode, or nothing valid at all: its issues are listed with file, JSON path and line;
the previous version keeps serving), "unloaded" before the first load. A flag file that
vanished is listed under `pendingDeletions` until its settle window (setting `deletion_settle`)
has passed; its flags keep serving meanwhile, and a file that comes back cancels the deletion.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from control_plane.http.deps import ComponentsDep
from control_plane.http.schemas import problems

__all__ = ["FlagStatus", "router"]

router = APIRouter(tags=["flags"])


class IssueBody(BaseModel):
    file: str
    path: str = Field(description="JSON path into the file, e.g. $.flags.my-flag.defaultVariant")
    line: int | None
    column: int | None
    message: str
    severity: Literal["error", "warning"]


class ReloadCounts(BaseModel):
    ok: int
    failed: int


class RefusedBody(BaseModel):
    file: str
    flag: str | None = Field(description="The refused flag; null when the whole file was")
    flagSetId: str
    serving: Literal["previous", "absent"] = Field(
        description="previous: its last good definition keeps serving; absent: nothing does"
    )
    message: str
    issues: list[IssueBody]


class PendingDeletionBody(BaseModel):
    file: str
    since: str = Field(description="When the watcher saw the file gone")
    effectiveAt: str = Field(description="When its flags are unpublished unless it comes back")


class FlagStatus(BaseModel):
    """The status document; camelCase member names, like the rest of the API."""

    state: Literal["ok", "partial", "error", "unloaded"]
    message: str
    version: int | None = Field(description="Version of the serving flag set")
    contentHash: str | None
    files: list[str] = Field(description="Flag files the serving flag set was read from")
    flagCount: int
    directory: str
    lastAttemptAt: str | None
    lastSuccessAt: str | None
    reloads: ReloadCounts
    issues: list[IssueBody] = Field(
        description="Errors of the refused edit (state error), else warnings about the "
        "serving flag set"
    )
    pendingDeletions: list[PendingDeletionBody] = Field(
        default_factory=list,
        description="Deleted flag files still served until their settle window passes",
    )
    strict: bool = Field(default=False, description="All-or-nothing reloads (flags_strict)")
    refused: list[RefusedBody] = Field(
        default_factory=list,
        description="Flags (or files) of the last edit refused while the rest went live",
    )


@router.get(
    "/v1/flags/status",
    summary="Serving flag set and the outcome of the last reload",
    response_model=FlagStatus,
    responses=problems(400, 401),
)
async def flags_status(components: ComponentsDep) -> FlagStatus:
    return FlagStatus.model_validate(components.store.status())
