"""The experiment report of one flag: units per variant, metrics with intervals, tests, SRM.

A unit is a hashed targeting key (a decision without one is a unit of its own). A unit counts
for the variant of its first exposure; units later seen in another variant (the split changed
mid-experiment) are counted as crossovers. Binary metrics are analysed per exposed unit (a unit
converted if any of its events is true; units without events did not convert); continuous
metrics per unit that reported the metric, as the mean of its values. Each variant is compared
with the control variant (flag metadata `controlVariant`, else the default variant). Backend
calls recorded by the dispatch proxy are summarised per variant as well.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from control_plane.experiments import repository
from control_plane.experiments.stats import (
    CONFIDENCE,
    SRM_THRESHOLD,
    Comparison,
    Summary,
    compare_means,
    compare_proportions,
    nearest_rank,
    proportion_summary,
    sample_ratio_check,
    summarize,
)
from control_plane.simulate import configured_split

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


def build_report(*, session: Session, flag_key: str, flag: Mapping[str, Any] | None,
                 evaluators: Mapping[str, Any], flag_set_version: int | None,
                 now: datetime) -> dict[str, Any]:
    """The JSON-ready report (see module docstring) from what is stored right now."""
    assignment, exposures, crossovers, first_at, last_at = _assign_units(session, flag_key)
    units: dict[str, int] = defaultdict(int)
    for variant in assignment.values():
        units[variant] += 1
    declared = list((flag or {}).get("variants") or {})
    names = list(dict.fromkeys([*declared, *sorted(units)]))
    control = control_variant(flag, names)
    if control in names:
        names.remove(control)
        names.insert(0, control)

    shares, split_note = _configured_shares(flag_key, flag, evaluators)
    variants = [{
        "variant": name,
        "units": units.get(name, 0),
        "exposures": exposures.get(name, 0),
        "configuredShare": shares.get(name) if shares else None,
    } for name in names]
    return {
        "flag": flag_key,
        "flagSetVersion": flag_set_version,
        "experiment": bool((flag or {}).get("metadata", {}).get("experiment") is True),
        "controlVariant": control,
        "generatedAt": now.isoformat(),
        "confidence": CONFIDENCE,
        "firstExposureAt": first_at.isoformat() if first_at else None,
        "lastExposureAt": last_at.isoformat() if last_at else None,
        "units": sum(units.values()),
        "crossoverUnits": crossovers,
        "errorExposures": repository.count_error_exposures(session=session, flag=flag_key),
        "variants": variants,
        "sampleRatio": _srm(units, shares, split_note),
        "metrics": _metrics(session, flag_key, assignment, units, names, control),
        "unmatchedDecisionEvents": repository.unmatched_decision_events(session=session,
                                                                        flag=flag_key),
        "backendCalls": _calls(session, flag_key, names),
    }


def _assign_units(session: Session, flag_key: str
                  ) -> tuple[dict[str, str], dict[str, int], int, datetime | None,
                             datetime | None]:
    first: dict[str, tuple[datetime, str]] = {}
    seen_in: dict[str, set[str]] = defaultdict(set)
    exposures: dict[str, int] = defaultdict(int)
    first_at: datetime | None = None
    last_at: datetime | None = None
    for row in repository.unit_exposures(session=session, flag=flag_key):
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


def _configured_shares(flag_key: str, flag: Mapping[str, Any] | None,
                       evaluators: Mapping[str, Any]) -> tuple[dict[str, float], str]:
    if flag is None:
        return {}, "the flag is no longer served, so its configured split is unknown"
    # A request without attributes: the split the flag gives traffic that sets no overrides.
    split = configured_split(flag, flag_key, evaluators, [("srm-probe", {})])
    if split.kind != "fractional":
        return {}, split.note or "the flag has no fractional split"
    total = sum(split.weights.values())
    return {name: weight / total for name, weight in split.weights.items()}, ""


def _srm(units: Mapping[str, int], shares: Mapping[str, float], note: str) -> dict[str, Any]:
    check = sample_ratio_check(units, shares) if shares else None
    if check is None:
        return {"checked": False, "threshold": SRM_THRESHOLD,
                "note": note or "needs units and at least two variants with a positive weight"}
    return {"checked": True, "test": "chi-square goodness of fit", "threshold": SRM_THRESHOLD,
            "statistic": check.statistic, "dof": check.dof, "pValue": check.p_value,
            "expectedUnits": check.expected, "mismatch": check.mismatch}


def _metrics(session: Session, flag_key: str, assignment: Mapping[str, str],
             units: Mapping[str, int], names: list[str], control: str | None
             ) -> list[dict[str, Any]]:
    per_metric: dict[str, list[repository.UnitMetric]] = defaultdict(list)
    for row in repository.unit_metrics(session=session, flag=flag_key):
        per_metric[row.metric].append(row)
    report = []
    for metric in sorted(per_metric):
        rows = per_metric[metric]
        kinds = sorted({row.kind for row in rows})
        unattributed = sum(row.events for row in rows if row.unit not in assignment)
        if len(kinds) > 1:
            report.append({"metric": metric, "kind": "mixed", "unattributedEvents": unattributed,
                           "error": f"metric {metric!r} has both binary and continuous events; "
                                    "it cannot be analysed (report the kinds under two names)"})
            continue
        kind = kinds[0]
        if kind == "binary":
            variants = _binary(rows, assignment, units, names, control)
        else:
            variants = _continuous(rows, assignment, names, control)
        report.append({"metric": metric, "kind": kind, "unattributedEvents": unattributed,
                       "variants": variants})
    return report


def _binary(rows: list[repository.UnitMetric], assignment: Mapping[str, str],
            units: Mapping[str, int], names: list[str], control: str | None
            ) -> list[dict[str, Any]]:
    converted: dict[str, int] = defaultdict(int)
    for row in rows:
        variant = assignment.get(row.unit)
        if variant is not None and row.max_value >= 1.0:
            converted[variant] += 1
    out = []
    for name in names:
        summary = proportion_summary(converted[name], units.get(name, 0))
        entry = _summary_json(summary, "rate")
        entry.update(variant=name, conversions=converted[name])
        if control is not None and name != control:
            entry["comparison"] = _comparison_json(compare_proportions(
                converted[control], units.get(control, 0), converted[name],
                units.get(name, 0)))
        out.append(entry)
    return out


def _continuous(rows: list[repository.UnitMetric], assignment: Mapping[str, str],
                names: list[str], control: str | None) -> list[dict[str, Any]]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        variant = assignment.get(row.unit)
        if variant is not None:
            values[variant].append(row.mean_value)
    summaries = {name: summarize(values[name]) for name in names}
    out = []
    for name in names:
        entry = _summary_json(summaries[name], "mean")
        entry["variant"] = name
        if control is not None and name != control:
            entry["comparison"] = _comparison_json(compare_means(summaries[control],
                                                                 summaries[name]))
        out.append(entry)
    return out


def _summary_json(summary: Summary, label: str) -> dict[str, Any]:
    interval = ([summary.ci_low, summary.ci_high] if summary.ci_low is not None else None)
    return {"units": summary.n, label: summary.mean, "ci95": interval}


def _comparison_json(comparison: Comparison) -> dict[str, Any]:
    interval = ([comparison.ci_low, comparison.ci_high] if comparison.ci_low is not None
                else None)
    body: dict[str, Any] = {"test": comparison.test, "difference": comparison.difference,
                            "differenceCi95": interval, "lift": comparison.lift,
                            "statistic": comparison.statistic, "pValue": comparison.p_value}
    if comparison.dof is not None:
        body["dof"] = comparison.dof
    return body


def _calls(session: Session, flag_key: str, names: list[str]) -> list[dict[str, Any]]:
    summary = repository.call_summary(session=session, flag=flag_key)
    out = []
    for name in [*[n for n in names if n in summary], *[n for n in summary if n not in names]]:
        window = summary[name]
        errors = proportion_summary(window.errors, window.calls)
        latency = summarize(window.latencies)
        p50 = nearest_rank(window.latencies, 0.5)
        p99 = nearest_rank(window.latencies, 0.99)
        out.append({
            "variant": name, "calls": window.calls, "errors": window.errors,
            "errorRate": errors.mean,
            "errorRateCi95": [errors.ci_low, errors.ci_high] if errors.ci_low is not None
            else None,
            "latencyMs": {
                "mean": latency.mean * 1000 if latency.mean is not None else None,
                "p50": p50 * 1000 if p50 is not None else None,
                "p99": p99 * 1000 if p99 is not None else None,
                "samples": len(window.latencies),
            },
        })
    return out
