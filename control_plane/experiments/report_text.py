"""The experiment report and canary status as text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["canary_event_line", "canary_lines", "report_lines"]


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<1e-6" if value < 1e-6 else f"{value:.4f}"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [
        max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
        for i in range(len(header))
    ]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(width) for cell, width in zip(cells, widths, strict=True)
        ).rstrip()

    return [render(header), *(render(row) for row in rows)]


def report_lines(report: dict[str, Any]) -> list[str]:
    confidence = f"{report['confidence'] * 100:g}%"
    lines = [
        f"Experiment {report['flag']} (flag set version {report['flagSetVersion']}), control "
        f"variant {report['controlVariant']}, {confidence} intervals",
        *_phase_lines(report),
        f"units: {report['units']}  crossovers: {report['crossoverUnits']}  "
        f"error exposures (not analysed): {report['errorExposures']}",
    ]
    correction = report.get("correction")
    if correction:
        lines.append(
            f"p-values adjusted by {correction['name']} over "
            f"{correction['comparisons']} comparisons; guardrails "
            f"({', '.join(report.get('guardrails') or []) or 'none'}) unadjusted"
        )
    lines.append("")
    rows = [
        (
            v["variant"],
            str(v["units"]),
            str(v["exposures"]),
            _pct(v["configuredShare"], 1) if v["configuredShare"] is not None else "-",
        )
        for v in report["variants"]
    ]
    lines += _table(("variant", "units", "exposures", "configured"), rows)
    srm = report["sampleRatio"]
    if srm["checked"]:
        verdict = (
            f"SAMPLE RATIO MISMATCH (p < {srm['threshold']:g}): check the assignment "
            "before trusting any result"
            if srm["mismatch"]
            else "ok"
        )
        lines.append(
            f"sample ratio: chi-square {srm['statistic']:.3f} ({srm['dof']} dof), "
            f"p = {_p(srm['pValue'])}: {verdict}"
        )
    else:
        lines.append(f"sample ratio: not checked ({srm['note']})")
    for metric in report["metrics"]:
        guardrail = ", guardrail" if metric.get("guardrail") else ""
        lines += ["", f"metric {metric['metric']} ({metric['kind']}){guardrail}"]
        if "error" in metric:
            lines.append(f"  {metric['error']}")
            continue
        label = "rate" if metric["kind"] == "binary" else "mean"
        fmt = _pct if metric["kind"] == "binary" else _num
        rows = []
        for entry in metric["variants"]:
            interval = entry["ci95"]
            cells = [
                entry["variant"],
                str(entry["units"]),
                fmt(entry[label]),
                f"[{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "-",
            ]
            comparison = entry.get("comparison")
            if comparison is None:
                cells += ["control", "", "", "", ""]
            else:
                diff = comparison["differenceCi95"]
                always = comparison.get("alwaysValid") or {}
                cells += [
                    _pct(comparison["lift"], 1) if comparison["lift"] is not None else "-",
                    f"{fmt(comparison['difference'])} [{fmt(diff[0])}, {fmt(diff[1])}]"
                    if diff
                    else fmt(comparison["difference"]),
                    _p(comparison["pValue"]),
                    _p(comparison.get("pValueAdjusted")),
                    _p(always.get("pValueAdjusted")),
                ]
            rows.append(tuple(cells))
        lines += _table(
            (
                "variant",
                "units",
                label,
                f"{confidence} CI",
                "lift",
                f"difference [{confidence} CI]",
                "p-value",
                "adjusted",
                "always-valid adj.",
            ),
            rows,
        )
        lines += _sequential_lines(metric, fmt)
        if metric["unattributedEvents"]:
            lines.append(f"  ({metric['unattributedEvents']} events from units never exposed)")
    if report.get("unmatchedDecisionEvents"):
        lines.append(
            f"\n{report['unmatchedDecisionEvents']} events name decisions with no "
            "stored exposure (yet)"
        )
    calls = report["backendCalls"]
    if calls:
        lines += ["", "backend calls (dispatch proxy)"]
        lines += _table(
            ("variant", "calls", "errors", "error rate", "p50 ms", "p99 ms"),
            [
                (
                    c["variant"],
                    str(c["calls"]),
                    str(c["errors"]),
                    _pct(c["errorRate"]),
                    _num(c["latencyMs"]["p50"]),
                    _num(c["latencyMs"]["p99"]),
                )
                for c in calls
            ],
        )
    return lines


def _phase_lines(report: dict[str, Any]) -> list[str]:
    phase = report.get("phase")
    if not phase:
        return []
    phases = report.get("phases") or []
    text = (
        f"phase {phase['number']}{' (current)' if phase['current'] else ''} of "
        f"{len(phases)}: flag set versions "
        f"{', '.join(map(str, phase['flagSetVersions'])) or '-'}, since "
        f"{phase['startedAt'] or '-'}"
    )
    if len(phases) > 1:
        text += (
            "; the split or targeting changed, so units and the sample ratio are per "
            "phase (--phase N for another)"
        )
    return [text]


def _sequential_lines(metric: dict[str, Any], fmt: Any) -> list[str]:
    """Per treatment: confidence sequence, CUPED, and the verdict, one indented line each."""
    lines = []
    for entry in metric["variants"]:
        comparison = entry.get("comparison")
        if comparison is None:
            continue
        name = entry["variant"]
        always = comparison.get("alwaysValid") or {}
        sequence = always.get("confidenceSequence95")
        if sequence:
            lines.append(
                f"  {name}: always-valid 95% confidence sequence of the difference "
                f"[{fmt(sequence[0])}, {fmt(sequence[1])}], p = {_p(always['pValue'])}"
            )
        cuped = comparison.get("cuped")
        if cuped:
            interval = cuped["differenceCi95"]
            lines.append(
                f"  {name}: CUPED ({metric['covariate']['metric']}) difference "
                f"{fmt(cuped['difference'])} [{fmt(interval[0])}, {fmt(interval[1])}]"
                f", variance -{_pct(cuped['varianceReduction'], 0)}, p = "
                f"{_p(cuped['pValue'])}, always-valid adj. p = "
                f"{_p(cuped['alwaysValid'].get('pValueAdjusted'))}"
            )
        verdict = entry.get("verdict")
        if verdict:
            lines.append(f"  {name} verdict: {verdict['text']}")
    return lines


def canary_event_line(event: dict[str, Any]) -> str:
    detail = event.get("detail") or {}
    why = detail.get("reason") or detail.get("message") or ""
    version = (
        f" (flag set version {event['flagSetVersion']})"
        if event.get("flagSetVersion") is not None
        else ""
    )
    weight = f" weight {event['weight']}%" if event.get("weight") is not None else ""
    return f"{event['at']}  {event['action']:<11} by {event['actor']}{weight}{version}" + (
        f": {why}" if why else ""
    )


def _checks_text(spec: dict[str, Any]) -> str:
    """The built-in checks of a spec in one phrase (specs stored before `checks` had the two
    old thresholds instead)."""
    checks = spec.get("checks")
    if not spec.get("builtinChecks", True):
        return "built-in checks off"
    if not checks:
        return (
            f"max error rate {spec.get('maxErrorRate', 0.05):.1%}, max p99 latency "
            f"{spec.get('maxP99LatencyRatio', 1.5):g}x"
        )
    errors, latency = checks["errorRate"], checks["latency"]
    ceiling = f", at most {errors['max']:.1%}" if errors.get("max") is not None else ""
    return (
        f"error rate vs stable (alpha {errors['alpha']:g}, floor {errors['floor']:.1%}"
        f"{ceiling}), p{latency['quantile'] * 100:g} latency vs stable x{latency['maxRatio']:g}"
        f" (alpha {latency['alpha']:g}, floor {latency['floorMs']:g} ms)"
    )


def canary_lines(status: dict[str, Any]) -> list[str]:
    spec = status["spec"]
    lines = [
        f"canary run {status['id']} of {status['flag']}: {status['state']}, step "
        f"{status['step']} of {len(status['steps'])} ({' -> '.join(map(str, status['steps']))}"
        f"), canary weight {status['weight']}%",
        f"  {spec['canaryVariant']} against {spec['stableVariant']}, every "
        f"{spec['intervalSeconds']:g}s with at least {spec['minRequests']} requests; "
        + _checks_text(spec),
    ]
    if status.get("reason"):
        lines.append(f"  reason: {status['reason']}")
    current = status.get("current")
    if current:
        lines.append(
            f"  this step: {current['reason']} (canary {current['canaryCalls']} calls, "
            f"{current['canaryErrors']} errors, p99 {_num(current['canaryP99Ms'])} ms; "
            f"stable p99 {_num(current['stableP99Ms'])} ms)"
        )
    return lines
