// Experiments: for every flag marked `"experiment": true`, its results for the current phase:
// units per variant and the sample ratio check, and per metric each variant's rate (or mean)
// with its 95% interval as a chart, the lift against the control variant, the fixed-horizon,
// adjusted and always-valid p-values, CUPED when a covariate is sent, and a plain-language
// verdict per variant (from the always-valid, adjusted p-value).

import { api } from "./api.js";
import { colourFor, intervalChart, swatch } from "./charts.js";
import { h, replace } from "./dom.js";
import { int, ms, num, pValue, pct, time } from "./format.js";
import { badge, card, empty, problemBox, stat, table } from "./ui.js";

const REFRESH_MS = 10000;
const ALPHA = 0.05;

function srmBlock(report) {
  const check = report.sampleRatio;
  if (!check.checked) {
    return h("div", { class: "callout callout-muted", dataset: { srm: "unchecked" } },
      h("strong", {}, "Sample ratio not checked: "), check.note || "not enough data");
  }
  const expected = check.expectedUnits || {};
  const detail = report.variants.map((row) => `${row.variant} ${int(row.units)} (expected ${int(Math.round(expected[row.variant] ?? 0))})`).join(", ");
  if (check.mismatch) {
    return h("div", { class: "callout callout-bad", role: "alert", dataset: { srm: "mismatch" } },
      h("strong", {}, "Sample ratio mismatch. "),
      `Units per variant do not match the configured split (chi-square p = ${pValue(check.pValue)} < ${check.threshold}): ${detail}. `,
      "Do not trust these results until the cause (a changed split, bot traffic, lost exposures) is found.");
  }
  return h("div", { class: "callout callout-ok", dataset: { srm: "ok" } },
    h("strong", {}, "Sample ratio OK. "),
    `Units match the configured split (chi-square p = ${pValue(check.pValue)}, threshold ${check.threshold}): ${detail}.`);
}

function metricBlock(metric, report, colour) {
  if (metric.kind === "mixed") {
    return h("div", { class: "metric" }, h("h3", {}, metric.metric), h("div", { class: "callout callout-bad" }, metric.error));
  }
  const binary = metric.kind === "binary";
  const key = binary ? "rate" : "mean";
  const format = binary ? (value) => pct(value, 1) : (value) => num(value, 2);
  const rows = metric.variants.map((row) => ({
    label: row.variant, value: row[key], low: row.ci95 ? row.ci95[0] : null, high: row.ci95 ? row.ci95[1] : null,
    reference: row.variant === report.controlVariant,
  }));
  const chart = intervalChart(rows, colour, format, {
    title: `${binary ? "Conversion rate" : "Mean"} per variant with ${Math.round(report.confidence * 100)}% interval (dashed: control)`,
  });
  const body = metric.variants.map((row) => {
    const comparison = row.comparison;
    const always = comparison ? comparison.alwaysValid || {} : {};
    const basis = always;
    const significant = comparison && basis.pValueAdjusted !== null && basis.pValueAdjusted !== undefined && basis.pValueAdjusted < ALPHA;
    return h("tr", { dataset: { variant: row.variant } },
      h("td", {}, h("strong", {}, row.variant), row.variant === report.controlVariant ? h("span", { class: "hint" }, " control") : null),
      h("td", { class: "num" }, int(row.units)),
      binary ? h("td", { class: "num" }, int(row.conversions)) : null,
      h("td", { class: "num" }, format(row[key])),
      h("td", { class: "num" }, row.ci95 ? `${format(row.ci95[0])} – ${format(row.ci95[1])}` : "–"),
      h("td", { class: "num lift" }, comparison && comparison.lift !== null ? `${comparison.lift >= 0 ? "+" : ""}${pct(comparison.lift, 1)}` : "–"),
      h("td", { class: "num" }, comparison && comparison.differenceCi95 ? `${format(comparison.differenceCi95[0])} – ${format(comparison.differenceCi95[1])}` : "–"),
      h("td", { class: "num p-value" }, comparison ? pValue(comparison.pValue) : "–"),
      h("td", { class: "num p-adjusted" }, comparison ? pValue(comparison.pValueAdjusted) : "–"),
      h("td", { class: "num always-valid" }, comparison ? pValue(basis.pValueAdjusted) : "–",
        comparison ? " " : null, comparison ? (significant ? badge("significant", "ok") : badge("not yet", "muted")) : null),
      h("td", { class: "num sequence" }, always.confidenceSequence95 ? `${format(always.confidenceSequence95[0])} – ${format(always.confidenceSequence95[1])}` : "–"));
  });
  const headers = ["Variant", "Units#", ...(binary ? ["Converted#"] : []), binary ? "Rate#" : "Mean#", "95% CI#", "Lift vs control#", "Difference 95% CI#", "p-value#", "Adjusted p#", "Always-valid p#", "Confidence sequence#"];
  const badges = [badge(metric.kind, "muted")];
  if (metric.guardrail) badges.push(" ", badge("guardrail", "warn"));
  if (metric.covariate) badges.push(" ", badge(`CUPED: ${metric.covariate.metric}`, "info"));
  return h("div", { class: "metric", dataset: { metric: metric.metric } },
    h("h3", {}, metric.metric, " ", ...badges),
    verdicts(metric),
    h("div", { class: "chart-box interval-chart" }, chart),
    table(headers, body, { cls: "table-compact" }),
    cupedNote(metric, format),
    h("p", { class: "hint" }, `${comparisonTest(metric)}. Adjusted: ${report.correction ? report.correction.name : "Holm"}${metric.guardrail ? " (not applied to guardrails)" : ""}. Always-valid (mSPRT) p-values and confidence sequences stay valid however often you look; the verdict uses them.`,
      metric.unattributedEvents ? ` ${int(metric.unattributedEvents)} events could not be attributed to an exposed unit.` : ""));
}

function verdicts(metric) {
  const items = metric.variants.filter((row) => row.verdict).map((row) => {
    const verdict = row.verdict;
    const tone = verdict.alarm ? "bad" : verdict.outcome === "better" ? "ok" : verdict.outcome === "worse" ? "bad" : "muted";
    return h("div", { class: `verdict callout callout-${tone === "ok" ? "ok" : tone === "bad" ? "bad" : "muted"}`, dataset: { verdict: verdict.outcome, variant: row.variant } },
      h("strong", {}, `${row.variant}: `), verdict.text);
  });
  return items.length ? h("div", { class: "verdicts" }, ...items) : null;
}

function cupedNote(metric, format) {
  const parts = metric.variants.filter((row) => row.comparison && row.comparison.cuped).map((row) => {
    const cuped = row.comparison.cuped;
    return `${row.variant}: difference ${format(cuped.difference)} (95% CI ${format(cuped.differenceCi95[0])} – ${format(cuped.differenceCi95[1])}), variance −${pct(cuped.varianceReduction, 0)}, always-valid p ${pValue(cuped.alwaysValid.pValueAdjusted)}`;
  });
  return parts.length ? h("p", { class: "hint cuped", dataset: { cuped: "shown" } }, `CUPED with ${metric.covariate.metric} (${int(metric.covariate.unitsWithCovariate)} units with a covariate): `, parts.join("; "), ".") : null;
}

function comparisonTest(metric) {
  const test = (metric.variants || []).map((row) => row.comparison && row.comparison.test).find(Boolean);
  return test ? `Test: ${test}` : "No comparison yet";
}

function callsBlock(report, colour) {
  if (!report.backendCalls.length) return null;
  return h("div", { class: "metric" }, h("h3", {}, "Backend calls (dispatch proxy)"),
    table(["Variant", "Calls#", "Errors#", "Error rate#", "p50#", "p99#"], report.backendCalls.map((row) => h("tr", {},
      h("td", {}, swatch(colour(row.variant)), h("strong", {}, row.variant)),
      h("td", { class: "num" }, int(row.calls)), h("td", { class: "num" }, int(row.errors)),
      h("td", { class: "num" }, pct(row.errorRate, 2)), h("td", { class: "num" }, ms(row.latencyMs.p50)),
      h("td", { class: "num" }, ms(row.latencyMs.p99)))), { cls: "table-compact" }));
}

function experimentCard(key, report) {
  const colour = colourFor(report.variants.map((row) => row.variant));
  const srm = report.sampleRatio;
  const badges = [badge(`control: ${report.controlVariant || "–"}`, "info")];
  if (srm.checked) badges.push(srm.mismatch ? badge("SRM", "bad") : badge("SRM ok", "ok"));
  const units = table(["Variant", "Configured share#", "Units#", "Exposures#"], report.variants.map((row) => h("tr", {},
    h("td", {}, h("strong", {}, row.variant)), h("td", { class: "num" }, row.configuredShare === null ? "–" : pct(row.configuredShare)),
    h("td", { class: "num" }, int(row.units)), h("td", { class: "num" }, int(row.exposures)))), { cls: "table-compact" });
  const phase = report.phase || { number: 1 };
  const phases = report.phases || [phase];
  badges.push(badge(`phase ${phase.number} of ${phases.length}`, phases.length > 1 ? "warn" : "muted"));
  return card(key, {
    id: `experiment-${key}`, badges,
    subtitle: `Flag set v${report.flagSetVersion ?? "–"} · exposures from ${time(report.firstExposureAt)} to ${time(report.lastExposureAt)} · computed ${time(report.generatedAt)}`,
  },
  phases.length > 1 ? h("p", { class: "hint", dataset: { phases: phases.length } },
    `The split or targeting changed ${phases.length - 1} time(s); units, the sample ratio and results below are of phase ${phase.number} (since ${time(phase.startedAt)}). Earlier phases: `,
    phases.filter((item) => item.number !== phase.number).map((item) => `phase ${item.number} (${int(item.exposures)} exposures, flag set v${item.flagSetVersions.join(", v")})`).join("; "), ".") : null,
  h("div", { class: "stats" }, stat("units", int(report.units)), stat("crossover units", int(report.crossoverUnits)),
    stat("error exposures", int(report.errorExposures)), stat("unmatched events", int(report.unmatchedDecisionEvents))),
  srmBlock(report), units,
  report.metrics.length ? report.metrics.map((metric) => metricBlock(metric, report, colour))
    : empty("No outcome events yet: POST them to /v1/events with the decision id."),
  callsBlock(report, colour));
}

export function experimentsView(root, ctx) {
  const { session } = ctx;
  const list = h("div", { id: "experiments" }, h("p", { class: "hint" }, "Loading experiments…"));
  replace(root, h("div", { class: "toolbar" }, h("span", { class: "hint" }, `Flags whose metadata says "experiment": true. Refreshes every ${REFRESH_MS / 1000} s.`)), list);
  let stopped = false;

  async function refresh() {
    let keys;
    try {
      const flags = await api("/v1/flags");
      const definitions = await Promise.all(flags.flags.map((flag) => api(`/v1/flags/${encodeURIComponent(flag.key)}`)));
      keys = definitions.filter((body) => body.flag.metadata && body.flag.metadata.experiment === true).map((body) => body.key);
    } catch (error) {
      if (!stopped) replace(list, problemBox(error, session));
      return;
    }
    const reports = await Promise.allSettled(keys.map((key) => api(`/v1/experiments/${encodeURIComponent(key)}`)));
    if (stopped) return;
    if (!keys.length) {
      replace(list, empty('No experiments. Mark a flag with "metadata": {"experiment": true} to analyse it here.'));
      return;
    }
    replace(list, ...keys.map((key, index) => {
      const result = reports[index];
      if (result.status === "fulfilled") return experimentCard(key, result.value);
      const error = result.reason;
      return card(key, { id: `experiment-${key}` }, error.status === 404 ? empty(error.detail) : problemBox(error, session));
    }));
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}
