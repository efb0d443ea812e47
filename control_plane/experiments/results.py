"""The experiment report of one flag: units per variant, metrics with intervals, tests, SRM.

A unit is a hashed targeting key (a decision without one is a unit of its own). The report is
of one phase (control_plane.experiments.phases): the current one unless `phase` names an
earlier one; every phase is listed. Within the phase a unit counts for the variant of its first
exposure; units later seen in another variant are counted as crossovers. Binary metrics are
analysed per exposed unit (a unit converted if any of its events is true; units without events
did not convert); continuous metrics per unit that reported the metric, as the mean of its
values. Each variant is compared with the control variant (flag metadata `controlVariant`,
else the default variant): fixed-horizon, always-valid, CUPED with a covariate, corrected for
multiple comparisons, with a verdict (control_plane.experiments.metric_results). Backend calls
recorded by the dispatch proxy are summarised per variant as well.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from control_plane.errors import BadRequestInput
from control_plane.experiments import repository
from control_plane.experiments.corrections import CORRECTIONS, DEFAULT_CORRECTION
from control_plane.experiments.metric_results import ALPHA, analyse_metrics, metric_list
from control_plane.experiments.phases import Definition, Phase, split_phases
from control_plane.experiments.stats import (
    CONFIDENCE,
    SRM_THRESHOLD,
    nearest_rank,
    proportion_summary,
    sample_ratio_check,
    summarize,
)
from control_plane.flagstore.flagset import BUCKETING_GENERATION
from control_plane.flagstore.splits import configured_split

__all__ = ["build_report", "control_variant"]


def control_variant(flag: Mapping[str, Any] | None, seen: list[str]) -> str | None:
    """The variant others are compared with: metadata controlVariant, else the default."""
    if flag is not None:
        variants = flag.get("variants") or {}
        metadata = flag.get("metadata") or {}
        wanted = metadata.get("controlVariant")
        if isinstance(wanted, str) and wanted in variants:
            return wanted
        default = flag.get("defaultVariant")
        if isinstance(default, str) and default in variants:
            return default
    return seen[0] if seen else None


def build_report(
    *,
    session: Session,
    flag_key: str,
    flag: Mapping[str, Any] | None,
    evaluators: Mapping[str, Any],
    flag_set_version: int | None,
    now: datetime,
    correction: str = DEFAULT_CORRECTION,
    phase: int | None = None,
) -> dict[str, Any]:
    """The JSON-ready report (see module docstring) from what is stored right now.

    BadRequestInput for an unknown `correction` or a `phase` the experiment does not have.
    """
    if correction not in CORRECTIONS:
        raise BadRequestInput(
            f"correction {correction!r} is unknown; use one of: {', '.join(CORRECTIONS)}",
            source="correction",
        )
    phases = _phases(session, flag_key, flag, evaluators, flag_set_version)
    if phase is None:
        selected = phases[-1]
    elif 1 <= phase <= len(phases):
        selected = phases[phase - 1]
    else:
        raise BadRequestInput(
            f"phase {phase} does not exist; the experiment has phases 1-{len(phases)}",
            source="phase",
        )
    # One phase: no filter at all, so nothing stored is left out.
    versions = selected.versions if len(phases) > 1 else None
    definition = selected.definition
    defined = definition.flag if definition is not None and definition.flag is not None else flag
    assignment, exposures, crossovers, first_at, last_at = _assign_units(
        session, flag_key, versions
    )
    units: dict[str, int] = defaultdict(int)
    for variant in assignment.values():
        units[variant] += 1
    declared = list((defined or {}).get("variants") or {})
    names = list(dict.fromkeys([*declared, *sorted(units)]))
    control = control_variant(defined, names)
    if control in names:
        names.remove(control)
        names.insert(0, control)

    shares, split_note = _configured_shares(flag_key, definition)
    variants = [
        {
            "variant": name,
            "units": units.get(name, 0),
            "exposures": exposures.get(name, 0),
            "configuredShare": shares.get(name) if shares else None,
        }
        for name in names
    ]
    sample_ratio = _srm(units, shares, split_note)
    metadata = (flag or defined or {}).get("metadata") or {}
    rows = repository.unit_metrics(
        session=session,
        flag=flag_key,
        versions=versions,
        since=selected.started_at if versions else None,
        until=selected.ended_at if versions else None,
    )
    metrics = analyse_metrics(
        rows,
        assignment,
        units,
        names,
        control,
        metadata,
        correction,
        trustworthy=not sample_ratio.get("mismatch", False),
    )
    return {
        "flag": flag_key,
        "flagSetVersion": flag_set_version,
        "experiment": bool((flag or {}).get("metadata", {}).get("experiment") is True),
        "controlVariant": control,
        "generatedAt": now.isoformat(),
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "phase": _phase_json(selected, current=selected is phases[-1]),
        "phases": [_phase_json(item, current=item is phases[-1]) for item in phases],
        "firstExposureAt": first_at.isoformat() if first_at else None,
        "lastExposureAt": last_at.isoformat() if last_at else None,
        "units": sum(units.values()),
        "crossoverUnits": crossovers,
        "errorExposures": repository.count_error_exposures(
            session=session, flag=flag_key, versions=versions
        ),
        "variants": variants,
        "sampleRatio": sample_ratio,
        "correction": {
            "method": correction,
            "name": CORRECTIONS[correction],
            "comparisons": _family_size(metrics),
            "note": "over every variant x metric comparison except guardrails, which alarm "
            "at their unadjusted p-value",
        },
        "guardrails": sorted(metric_list(metadata, "guardrails")),
        "metrics": metrics,
        "unmatchedDecisionEvents": repository.unmatched_decision_events(
            session=session, flag=flag_key
        ),
        "backendCalls": _calls(session, flag_key, names),
    }


def _phases(
    session: Session,
    flag_key: str,
    flag: Mapping[str, Any] | None,
    evaluators: Mapping[str, Any],
    serving: int | None,
) -> list[Phase]:
    spans = repository.exposure_versions(session=session, flag=flag_key)
    wanted = {span.version for span in spans}
    definitions = repository.flag_definitions(
        session=session, flag=flag_key, versions=wanted - {serving}
    )
    live = serving if flag is not None else None
    if live is not None:
        definitions[live] = Definition(flag, evaluators, BUCKETING_GENERATION)
    phases = split_phases(spans, definitions, live)
    return phases or [Phase(1, [], None, None)]


def _phase_json(phase: Phase, *, current: bool) -> dict[str, Any]:
    return {
        "number": phase.number,
        "current": current,
        "startedAt": phase.started_at.isoformat() if phase.started_at else None,
        "endedAt": phase.ended_at.isoformat() if phase.ended_at else None,
        "flagSetVersions": phase.versions,
        "exposures": phase.exposures,
        "definitionHash": phase.definition_hash[:12] if phase.definition_hash else None,
    }


def _family_size(metrics: list[dict[str, Any]]) -> int:
    return sum(
        1
        for metric in metrics
        if not metric.get("guardrail")
        for variant in metric.get("variants", [])
        if "comparison" in variant
    )


def _assign_units(
    session: Session, flag_key: str, versions: Collection[int] | None
) -> tuple[dict[str, str], dict[str, int], int, datetime | None, datetime | None]:
    first: dict[str, tuple[datetime, str]] = {}
    seen_in: dict[str, set[str]] = defaultdict(set)
    exposures: dict[str, int] = defaultdict(int)
    first_at: datetime | None = None
    last_at: datetime | None = None
    for row in repository.unit_exposures(session=session, flag=flag_key, versions=versions):
        exposures[row.variant] += row.exposures
        seen_in[row.unit].add(row.variant)
        known = first.get(row.unit)
        if known is None or row.first_at < known[0]:
            first[row.unit] = (row.first_at, row.variant)
        first_at = row.first_at if first_at is None else min(first_at, row.first_at)
        last_at = row.first_at if last_at is None else max(last_at, row.first_at)
    assignment = {unit: variant for unit, (_, variant) in first.items()}
    crossovers = sum(1 for variants in seen_in.values() if len(variants) > 1)
    return assignment, dict(exposures), crossovers, first_at, last_at


def _configured_shares(
    flag_key: str, definition: Definition | None
) -> tuple[dict[str, float], str]:
    if definition is None or definition.flag is None:
        return {}, "the flag is no longer served, so its configured split is unknown"
    # A request without attributes: the split the flag gives traffic that sets no overrides.
    split = configured_split(definition.flag, flag_key, definition.evaluators, [("srm-probe", {})])
    if split.kind != "fractional":
        return {}, split.note or "the flag has no fractional split"
    total = sum(split.weights.values())
    return {name: weight / total for name, weight in split.weights.items()}, ""


def _srm(units: Mapping[str, int], shares: Mapping[str, float], note: str) -> dict[str, Any]:
    check = sample_ratio_check(units, shares) if shares else None
    if check is None:
        return {
            "checked": False,
            "threshold": SRM_THRESHOLD,
            "note": note or "needs units and at least two variants with a positive weight",
        }
    return {
        "checked": True,
        "test": "chi-square goodness of fit",
        "threshold": SRM_THRESHOLD,
        "statistic": check.statistic,
        "dof": check.dof,
        "pValue": check.p_value,
        "expectedUnits": check.expected,
        "mismatch": check.mismatch,
    }


def _calls(session: Session, flag_key: str, names: list[str]) -> list[dict[str, Any]]:
    summary = repository.call_summary(session=session, flag=flag_key)
    out = []
    for name in [*[n for n in names if n in summary], *[n for n in summary if n not in names]]:
        window = summary[name]
        errors = proportion_summary(window.errors, window.calls)
        latency = summarize(window.latencies)
        p50 = nearest_rank(window.latencies, 0.5)
        p99 = nearest_rank(window.latencies, 0.99)
        out.append(
            {
                "variant": name,
                "calls": window.calls,
                "errors": window.errors,
                "errorRate": errors.mean,
                "errorRateCi95": [errors.ci_low, errors.ci_high]
                if errors.ci_low is not None
                else None,
                "latencyMs": {
                    "mean": latency.mean * 1000 if latency.mean is not None else None,
                    "p50": p50 * 1000 if p50 is not None else None,
                    "p99": p99 * 1000 if p99 is not None else None,
                    "samples": len(window.latencies),
                },
            }
        )
    return out
