"""Per-metric results of one phase: each variant against the control, four ways, and a verdict.

For every metric and every non-control variant the report gives:
- the fixed-horizon test and 95% interval (valid when read once, at a planned sample size);
- the always-valid mSPRT p-value and 95% confidence sequence (valid however often it is read);
- with a covariate, the same two for the CUPED-adjusted difference and the variance reduction;
- p-values adjusted for the number of comparisons (Holm by default, `bh` on request), over
  every variant x metric comparison that is not a guardrail;
- a plain-language verdict from the always-valid, adjusted p-value (CUPED's when there is one).

Flag metadata (flagd allows only string, number or boolean values, so lists are
comma-separated): `"guardrails": "latency_ms,errors"` marks guardrail metrics, analysed for harm
and left out of the correction (a harm signal must not fade as metrics are added);
`"lowerIsBetter": "latency_ms"` says which direction is good (binary metrics are otherwise
higher-is-better; continuous ones are then only "higher" or "lower").
A covariate of metric M is the metric `M.pre`: each unit's mean value before exposure (units
without one count as 0).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from control_plane.experiments import repository
from control_plane.experiments.corrections import adjust
from control_plane.experiments.cuped import CupedComparison, cuped_compare
from control_plane.experiments.sequential import (
    SequentialResult,
    always_valid,
    sequential_means,
    sequential_proportions,
)
from control_plane.experiments.stats import (
    Comparison,
    Summary,
    compare_means,
    compare_proportions,
    proportion_summary,
    summarize,
)

__all__ = ["COVARIATE_SUFFIX", "analyse_metrics", "metric_list"]

COVARIATE_SUFFIX = ".pre"
ALPHA = 0.05


def metric_list(metadata: Mapping[str, Any], key: str) -> set[str]:
    """A comma-separated metadata value as a set of metric names."""
    value = metadata.get(key)
    if not isinstance(value, str):
        return set()
    return {name.strip() for name in value.split(",") if name.strip()}


def analyse_metrics(
    rows: list[repository.UnitMetric],
    assignment: Mapping[str, str],
    units: Mapping[str, int],
    names: list[str],
    control: str | None,
    metadata: Mapping[str, Any],
    correction: str,
    trustworthy: bool,
) -> list[dict[str, Any]]:
    """The metrics section of the report (see the module docstring)."""
    per_metric: dict[str, list[repository.UnitMetric]] = defaultdict(list)
    for row in rows:
        per_metric[row.metric].append(row)
    guardrails = metric_list(metadata, "guardrails")
    lower_is_better = metric_list(metadata, "lowerIsBetter")
    report = []
    for metric in sorted(per_metric):
        if metric.endswith(COVARIATE_SUFFIX) and metric[: -len(COVARIATE_SUFFIX)] in per_metric:
            continue  # a covariate: used by its metric, not a result of its own
        metric_rows = per_metric[metric]
        kinds = sorted({row.kind for row in metric_rows})
        unattributed = sum(row.events for row in metric_rows if row.unit not in assignment)
        entry: dict[str, Any] = {
            "metric": metric,
            "guardrail": metric in guardrails,
            "unattributedEvents": unattributed,
        }
        if len(kinds) > 1:
            entry.update(
                kind="mixed",
                error=f"metric {metric!r} has both binary and continuous "
                "events; it cannot be analysed (report the kinds "
                "under two names)",
            )
            report.append(entry)
            continue
        kind = kinds[0]
        direction = "lower" if metric in lower_is_better else "higher" if kind == "binary" else None
        covariate_rows = per_metric.get(metric + COVARIATE_SUFFIX, [])
        covariates = {row.unit: row.mean_value for row in covariate_rows}
        if kind == "binary":
            variants = _binary(metric_rows, assignment, units, names, control, covariates)
        else:
            variants = _continuous(metric_rows, assignment, names, control, covariates)
        entry.update(kind=kind, betterDirection=direction, variants=variants)
        if covariate_rows:
            entry["covariate"] = {
                "metric": metric + COVARIATE_SUFFIX,
                "unitsWithCovariate": sum(1 for unit in covariates if unit in assignment),
            }
        report.append(entry)
    _correct(report, correction)
    for entry in report:
        for variant in entry.get("variants", []):
            if "comparison" in variant:
                variant["verdict"] = _verdict(entry, variant, control, trustworthy)
    return report


# -- per kind --------------------------------------------------------------------------------


def _binary(
    rows: list[repository.UnitMetric],
    assignment: Mapping[str, str],
    units: Mapping[str, int],
    names: list[str],
    control: str | None,
    covariates: Mapping[str, float],
) -> list[dict[str, Any]]:
    converted: dict[str, int] = defaultdict(int)
    outcome: dict[str, float] = {}
    for row in rows:
        variant = assignment.get(row.unit)
        if variant is not None and row.max_value >= 1.0:
            converted[variant] += 1
            outcome[row.unit] = 1.0
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    if covariates:
        # Every exposed unit is an observation (0 when it did not convert).
        for unit, variant in assignment.items():
            pairs[variant].append((outcome.get(unit, 0.0), covariates.get(unit, 0.0)))
    out = []
    for name in names:
        summary = proportion_summary(converted[name], units.get(name, 0))
        entry = _summary_json(summary, "rate")
        entry.update(variant=name, conversions=converted[name])
        if control is not None and name != control:
            c_n, t_n = units.get(control, 0), units.get(name, 0)
            entry["comparison"] = _comparison_json(
                compare_proportions(converted[control], c_n, converted[name], t_n),
                sequential_proportions(converted[control], c_n, converted[name], t_n),
                _cuped(pairs, control, name, covariates, assignment),
            )
        out.append(entry)
    return out


def _continuous(
    rows: list[repository.UnitMetric],
    assignment: Mapping[str, str],
    names: list[str],
    control: str | None,
    covariates: Mapping[str, float],
) -> list[dict[str, Any]]:
    values: dict[str, list[float]] = defaultdict(list)
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        variant = assignment.get(row.unit)
        if variant is not None:
            values[variant].append(row.mean_value)
            if covariates:
                pairs[variant].append((row.mean_value, covariates.get(row.unit, 0.0)))
    summaries = {name: summarize(values[name]) for name in names}
    out = []
    for name in names:
        entry = _summary_json(summaries[name], "mean")
        entry["variant"] = name
        if control is not None and name != control:
            entry["comparison"] = _comparison_json(
                compare_means(summaries[control], summaries[name]),
                sequential_means(summaries[control], summaries[name]),
                _cuped(pairs, control, name, covariates, assignment),
            )
        out.append(entry)
    return out


def _cuped(
    pairs: Mapping[str, list[tuple[float, float]]],
    control: str,
    treatment: str,
    covariates: Mapping[str, float],
    assignment: Mapping[str, str],
) -> tuple[CupedComparison | None, int]:
    """The CUPED comparison (None without covariates) and the units it rests on."""
    if not covariates:
        return None, 0
    with_covariate = sum(
        1
        for unit, variant in assignment.items()
        if variant in (control, treatment) and unit in covariates
    )
    control_pairs, treatment_pairs = pairs.get(control, []), pairs.get(treatment, [])
    return (
        cuped_compare(control_pairs, treatment_pairs, with_covariate),
        len(control_pairs) + len(treatment_pairs),
    )


# -- JSON ------------------------------------------------------------------------------------


def _summary_json(summary: Summary, label: str) -> dict[str, Any]:
    interval = [summary.ci_low, summary.ci_high] if summary.ci_low is not None else None
    return {"units": summary.n, label: summary.mean, "ci95": interval}


def _sequential_json(result: SequentialResult) -> dict[str, Any]:
    return {
        "method": result.method,
        "pValue": result.p_value,
        "confidenceSequence95": (
            [result.ci_low, result.ci_high] if result.ci_low is not None else None
        ),
        "mixtureVariance": result.mixture_variance,
        "plannedUnits": result.planned_units,
    }


def _comparison_json(
    comparison: Comparison,
    sequential: SequentialResult,
    cuped_result: tuple[CupedComparison | None, int],
) -> dict[str, Any]:
    interval = [comparison.ci_low, comparison.ci_high] if comparison.ci_low is not None else None
    body: dict[str, Any] = {
        "test": comparison.test,
        "difference": comparison.difference,
        "differenceCi95": interval,
        "lift": comparison.lift,
        "statistic": comparison.statistic,
        "pValue": comparison.p_value,
    }
    if comparison.dof is not None:
        body["dof"] = comparison.dof
    body["alwaysValid"] = _sequential_json(sequential)
    cuped, cuped_units = cuped_result
    if cuped is not None:
        adjusted = always_valid(cuped.difference, cuped.variance, cuped_units)
        body["cuped"] = {
            "test": "CUPED (Deng et al. 2013), Welch's t-test on adjusted values",
            "difference": cuped.difference,
            "differenceCi95": [cuped.ci_low, cuped.ci_high],
            "statistic": cuped.statistic,
            "pValue": cuped.p_value,
            "dof": cuped.dof,
            "theta": cuped.theta,
            "varianceReduction": cuped.variance_reduction,
            "unitsWithCovariate": cuped.units_with_covariate,
            "alwaysValid": _sequential_json(adjusted),
        }
    return body


# -- corrections and verdicts ----------------------------------------------------------------


def _correct(report: list[dict[str, Any]], correction: str) -> None:
    """Adjusted p-values over every non-guardrail comparison; guardrails keep their own."""
    targets: dict[str, list[tuple[dict[str, Any], float]]] = defaultdict(list)
    for entry in report:
        for variant in entry.get("variants", []):
            comparison = variant.get("comparison")
            if comparison is None:
                continue
            blocks = [("fixed", comparison), ("alwaysValid", comparison["alwaysValid"])]
            if "cuped" in comparison:
                blocks += [
                    ("cupedFixed", comparison["cuped"]),
                    ("cupedAlwaysValid", comparison["cuped"]["alwaysValid"]),
                ]
            for family, block in blocks:
                p_value = block.get("pValue")
                if entry["guardrail"] or p_value is None:
                    block["pValueAdjusted"] = p_value
                else:
                    targets[family].append((block, p_value))
    for items in targets.values():
        for (block, _), adjusted in zip(
            items, adjust([p for _, p in items], correction), strict=True
        ):
            block["pValueAdjusted"] = adjusted


def _confidence(p_value: float) -> str:
    confidence = 1.0 - p_value
    if confidence >= 0.999:
        return ">99.9%"
    if confidence >= 0.99:
        return f"{math.floor(confidence * 1000) / 10:g}%"
    return f"{math.floor(confidence * 100):d}%"


def _verdict(
    metric: Mapping[str, Any], variant: Mapping[str, Any], control: str | None, trustworthy: bool
) -> dict[str, Any]:
    comparison = variant["comparison"]
    cuped = comparison.get("cuped")
    basis = cuped if cuped is not None else comparison
    p_value = basis["alwaysValid"].get("pValueAdjusted")
    difference = basis.get("difference")
    name = variant["variant"]
    guardrail = "guardrail " if metric["guardrail"] else ""
    method = "always-valid" + (", CUPED" if cuped is not None else "")
    if not trustworthy:
        return {
            "outcome": "untrusted",
            "confidence": None,
            "basis": method,
            "text": "no verdict: the sample ratio does not match the configured split",
        }
    if p_value is None or difference is None:
        return {
            "outcome": "insufficient data",
            "confidence": None,
            "basis": method,
            "text": "not enough data for a comparison yet",
        }
    if p_value >= ALPHA or difference == 0:
        text = "no detectable difference yet"
        fixed = basis.get("pValueAdjusted")
        if fixed is not None and fixed < ALPHA:
            text += (
                f" (the fixed-horizon {'CUPED ' if cuped is not None else ''}p = {fixed:.3f} "
                "is not yet significant when the report is read repeatedly)"
            )
        return {"outcome": "no difference yet", "confidence": None, "basis": method, "text": text}
    higher = difference > 0
    direction = metric.get("betterDirection")
    if direction is None:
        word = "higher" if higher else "lower"
        alarm = False
    else:
        better = higher == (direction == "higher")
        word = "better" if better else "worse"
        alarm = not better
    confidence = _confidence(p_value)
    return {
        "outcome": word,
        "confidence": 1.0 - p_value,
        "basis": method,
        "alarm": bool(alarm and metric["guardrail"]),
        "text": f"{guardrail}{name} {word} than {control}, {confidence} confidence, {method}",
    }
