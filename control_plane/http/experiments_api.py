"""Experiment endpoints: outcome events in (`POST /v1/events`), results out
(`GET /v1/experiments/{flag}`).

Results take `?correction=holm|bh` (multiple-comparison adjustment, Holm by default) and
`?phase=N` (an earlier phase; the current one by default).

Events are validated in the request (problem+json 400 for a body that is not events, 422 with
one entry per bad item) and then queued for the experiment writer: the answer (202) never waits
for the database. Sending events needs the gateway token when one is configured (the services
that report conversions sit behind the gateway); reading results needs a viewer token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from control_plane.errors import BadRequestInput, EventQueueFull, ExperimentNotFound
from control_plane.experiments.corrections import DEFAULT_CORRECTION
from control_plane.experiments.results import build_report
from control_plane.http.bodies import read_json_body
from control_plane.http.deps import ExperimentsDep, ViewerDep, require_gateway_token
from control_plane.http.schemas import OpenWireModel, json_body, problems

__all__ = ["MAX_BODY", "ExperimentsDep", "router"]

router = APIRouter(tags=["experiments"])

#: Largest event batch body accepted (1000 events with room to spare).
MAX_BODY = 4 * 1024 * 1024


class OutcomeEvent(BaseModel):
    """One outcome; checked by control_plane.experiments.events (422 naming item and field)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    decision_id: str | None = Field(
        default=None,
        alias="decisionId",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The routing decision measured",
    )
    flag: str | None = Field(default=None, description="With targetingKey, instead of decisionId")
    targeting_key: str | None = Field(
        default=None, alias="targetingKey", min_length=1, max_length=1024
    )
    metric: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")
    value: bool | float = Field(description="true/false for a conversion, else a number")
    kind: Literal["binary", "continuous"] | None = None
    timestamp: str | None = Field(default=None, description="RFC 3339, with a time zone")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[OutcomeEvent] = Field(min_length=1, max_length=1000)


class OutcomeEvents(RootModel[OutcomeEvent | list[OutcomeEvent] | EventBatch]):
    """One event, an array of up to 1000, or {"events": [...]}; all stored or none."""


class AcceptedEvents(BaseModel):
    accepted: int
    ids: list[str]


class AnonymousDecisions(BaseModel):
    decisions: int
    note: str


class ExperimentReport(OpenWireModel):
    """The experiment report; its metrics and variants are described in the README."""

    flag: str
    flag_set_version: int | None
    experiment: bool
    units: int
    variants: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    anonymous: AnonymousDecisions


@router.post(
    "/v1/events",
    status_code=202,
    dependencies=[Depends(require_gateway_token)],
    summary="Record outcome events (one, or a batch of up to 1000)",
    response_model=AcceptedEvents,
    # 401: no gateway token; 422: bad items (one error each); 503: writer full
    responses=problems(400, 401, 413, 422, 503),
    openapi_extra=json_body(OutcomeEvents),
)
async def post_events(request: Request, experiments: ExperimentsDep) -> JSONResponse:
    body = await read_json_body(request, required=True, limit=MAX_BODY)
    parser, recorder, writer = experiments.parser, experiments.recorder, experiments.writer
    if parser is None or recorder is None or writer is None:
        raise EventQueueFull("experiments are not started yet; retry shortly")
    rows = parser.parse(body)
    if writer.buffered + len(rows) > experiments.settings.exposure_queue_size:
        raise EventQueueFull(
            f"the experiment writer holds {writer.buffered} records (the "
            "database is slow or down); nothing was stored, retry later"
        )
    for row in rows:
        recorder.record_outcome(row)
    return JSONResponse(
        {"accepted": len(rows), "ids": [row["id"] for row in rows]}, status_code=202
    )


def _phase_number(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 0 < len(value) <= 9 or int(value) < 1:
        raise BadRequestInput(
            f"phase must be a phase number (1, 2, ...), not {value[:40]!r}", source="phase"
        )
    return int(value)


@router.get(
    "/v1/experiments/{flag_key}",
    summary="Per-variant units, metrics with fixed-horizon and always-valid results, "
    "CUPED, corrected p-values, verdicts, SRM check, per phase",
    response_model=ExperimentReport,
    responses=problems(400, 401, 404),
)
async def experiment_results(
    flag_key: str,
    principal: ViewerDep,
    experiments: ExperimentsDep,
    correction: Annotated[str, Query(description="holm (default) or bh")] = DEFAULT_CORRECTION,
    phase: Annotated[
        str | None, Query(description="phase number (default: the current phase)")
    ] = None,
) -> dict[str, Any]:
    phase_number = _phase_number(phase)
    store = experiments.store
    flag_set = store.current if store.loaded else None
    flag = flag_set.flags.get(flag_key) if flag_set is not None else None
    evaluators = flag_set.evaluators if flag_set is not None else {}

    def work() -> dict[str, Any]:
        with experiments.database.session() as session:
            report = build_report(
                session=session,
                flag_key=flag_key,
                flag=flag,
                evaluators=evaluators,
                flag_set_version=flag_set.version if flag_set else None,
                now=datetime.now(UTC),
                correction=correction,
                phase=phase_number,
            )
            if flag is None and report["units"] == 0:
                raise ExperimentNotFound(
                    f"no flag named {flag_key!r} is serving and no exposures of it are stored"
                )
            is_experiment = (flag or {}).get("metadata", {}).get("experiment") is True
            if not is_experiment and report["units"] == 0 and not report["metrics"]:
                raise ExperimentNotFound(
                    f"flag {flag_key!r} is not an experiment (its metadata lacks "
                    '"experiment": true) and no exposures of it are stored'
                )
            return report

    result: dict[str, Any] = await run_in_threadpool(work)
    # Requests without a targeting key are not units (nothing to bucket); shown apart.
    recorder = experiments.recorder
    result["anonymous"] = {
        "decisions": recorder.anonymous.get(flag_key, 0) if recorder is not None else 0,
        "note": "decisions without a targeting key served by this process since it started; "
        "not counted as units or exposures",
    }
    return result
