// Canaries: each flag's active (else latest) canary run: its steps and current weight, the
// canary's numbers against the thresholds over time, the events, and pause/resume/abort for
// operators. Below, every run as a table.

import { api, can } from "./api.js";
import { lineChart } from "./charts.js";
import { h, replace } from "./dom.js";
import { duration, int, ms, pct, ratio, time } from "./format.js";
import { act, badge, card, confirmAction, empty, problemBox, stat, table } from "./ui.js";

const REFRESH_MS = 3000;
const ACTIVE = new Set(["running", "paused"]);
const ERROR_COLOUR = "#dc2626";
const LATENCY_COLOUR = "#9333ea";
const WEIGHT_COLOUR = "#2563eb";

function stepTrack(run) {
  const finished = !ACTIVE.has(run.state);
  return h("ol", { class: "steps", "aria-label": "canary steps" }, run.steps.map((weight, index) => {
    const number = index + 1;
    let state = "pending";
    if (run.state === "promoted" || number < run.step) state = "done";
    else if (number === run.step) state = finished ? (run.state === "promoted" ? "done" : "failed") : "current";
    return h("li", { class: ["step", `step-${state}`], dataset: { step: number } },
      h("span", { class: "step-weight" }, `${weight}%`), h("span", { class: "step-label" }, `step ${number}`));
  }));
}

function charts(timeline) {
  if (!timeline) return null;
  const thresholds = timeline.thresholds;
  const at = (bucket) => bucket.endOffsetSeconds;
  const formatX = (seconds) => (seconds ? `+${duration(seconds)}` : "start");
  const xMax = timeline.spanSeconds;
  return h("div", { class: "chart-grid" },
    h("div", { class: "chart-box canary-error-chart" }, lineChart([{
      name: "canary error rate", colour: ERROR_COLOUR, points: timeline.buckets.map((b) => [at(b), b.canaryErrorRate]),
    }], { title: `Canary error rate per ${duration(timeline.bucketSeconds)} (5xx or no answer)`, format: (v) => pct(v, 1), threshold: thresholds.maxErrorRate, thresholdLabel: `max ${pct(thresholds.maxErrorRate, 1)}`, xMax, formatX })),
    h("div", { class: "chart-box canary-latency-chart" }, lineChart([{
      name: "p99 ratio", colour: LATENCY_COLOUR, points: timeline.buckets.map((b) => [at(b), b.p99LatencyRatio]),
    }], { title: "Canary p99 latency ÷ stable p99", format: ratio, threshold: thresholds.maxP99LatencyRatio, thresholdLabel: `max ${ratio(thresholds.maxP99LatencyRatio)}`, xMax, formatX })),
    h("div", { class: "chart-box canary-weight-chart" }, lineChart([{
      name: "canary weight", colour: WEIGHT_COLOUR, step: true,
      points: [[0, timeline.buckets.length ? timeline.buckets[0].weight : null], ...timeline.buckets.map((b) => [at(b), b.weight])],
    }], { title: "Canary weight", format: (v) => `${Math.round(v)}%`, yMax: 100, xMax, formatX })),
    h("div", { class: "chart-box canary-calls-chart" }, lineChart([
      { name: "canary calls", colour: WEIGHT_COLOUR, points: timeline.buckets.map((b) => [at(b), b.canaryCalls]) },
      { name: "stable calls", colour: "#9ca3af", points: timeline.buckets.map((b) => [at(b), b.stableCalls]) },
    ], { title: `Backend calls per ${duration(timeline.bucketSeconds)} (blue: canary, grey: stable)`, format: (v) => int(Math.round(v)), xMax, formatX })));
}

function eventDetail(event) {
  const detail = event.detail || {};
  if (detail.reason) return detail.reason;
  if (detail.message) return detail.message;
  if (event.action === "started" && detail.spec) return `steps ${detail.spec.steps.join(" → ")}%`;
  if (detail.from !== undefined) return `${detail.from}% → ${detail.to}%`;
  return "";
}

function canaryCard(status, timeline, ctx, refresh) {
  const { session } = ctx;
  const spec = status.spec;
  const current = status.current || {};
  const active = ACTIVE.has(status.state);
  const errorSlot = h("div");
  const actions = [];
  const flag = encodeURIComponent(status.flag);
  function button(label, action, { danger = false, prompt }) {
    const node = h("button", { type: "button", class: ["button", danger ? "button-danger" : ""], dataset: { action } }, label);
    node.addEventListener("click", async () => {
      const answer = await confirmAction(prompt);
      if (!answer) return;
      const result = await act(node, () => api(`/v1/canaries/${flag}/${action}`, { method: "POST", body: answer.message ? { message: answer.message } : {} }), {
        session, errorSlot, done: (body) => `Canary of ${status.flag} ${body.state.replace("_", " ")} at ${body.weight}%`,
      });
      if (result) refresh();
    });
    return node;
  }
  if (active && can(session, "operator")) {
    if (status.state === "running") {
      actions.push(button("Pause", "pause", { prompt: { title: `Pause the canary of ${status.flag}?`, body: `It stays at ${status.weight}% until resumed; calls made while paused do not count towards the step.`, confirmLabel: "Pause" } }));
    } else {
      actions.push(button("Resume", "resume", { prompt: { title: `Resume the canary of ${status.flag}?`, body: `Step ${status.step} starts over at ${status.weight}%.`, confirmLabel: "Resume" } }));
    }
    actions.push(button("Abort", "abort", { danger: true, prompt: { title: `Abort the canary of ${status.flag}?`, body: `The ${spec.canaryVariant} weight goes to 0% at once and the run ends.`, confirmLabel: "Abort canary", danger: true } }));
  }
  const verdict = current.verdict ? badge(current.verdict, current.verdict === "fail" ? "bad" : current.verdict === "pass" ? "ok" : "muted") : null;
  const stats = h("div", { class: "stats" },
    stat("canary weight", `${status.weight}%`, { cls: "stat-weight" }),
    stat("step", `${status.step} of ${status.steps.length}`),
    active ? stat("canary calls in step", `${int(current.canaryCalls)} / ${int(spec.minRequests)}`) : null,
    active ? stat("canary error rate", pct(current.canaryErrorRate, 1), { cls: current.canaryErrorRate > errorCeiling(spec) ? "stat-bad" : "" }) : null,
    active ? stat("canary p99", ms(current.canaryP99Ms)) : null,
    active ? stat("stable p99", ms(current.stableP99Ms)) : null,
    active ? stat("p99 ratio", ratio(current.p99LatencyRatio)) : null);
  const thresholds = h("p", { class: "hint thresholds" },
    gateText(spec));
  const verdictLine = active && current.reason ? h("p", { class: "verdict" }, verdict, " ", current.reason, current.latencyNote ? ` (${current.latencyNote})` : "") : null;
  const reason = !active && status.reason ? h("div", { class: ["callout", status.state === "promoted" ? "callout-ok" : "callout-bad"], dataset: { reason: status.state } }, h("strong", {}, `${status.state.replace("_", " ")}: `), status.reason) : null;
  const events = table(["Time", "Action", "By", "Weight#", "Flag set#", "Detail"], [...status.events].reverse().map((event) => h("tr", { dataset: { action: event.action } },
    h("td", { title: event.at }, time(event.at)), h("td", {}, badge(event.action, event.action === "aborted" || event.action === "rolled_back" ? "bad" : "muted")),
    h("td", {}, event.actor), h("td", { class: "num" }, event.weight === null ? "–" : `${event.weight}%`),
    h("td", { class: "num" }, event.flagSetVersion ? `v${event.flagSetVersion}` : "–"), h("td", {}, eventDetail(event)))), { cls: "table-compact events" });
  return card(`${status.flag}`, {
    id: `canary-${status.flag}`, badges: [badge(status.state), h("span", { class: "hint" }, ` run #${status.id}`)], actions,
    subtitle: `${spec.stableVariant} → ${spec.canaryVariant} · started ${time(status.startedAt)} by ${status.createdBy}${status.finishedAt ? ` · ended ${time(status.finishedAt)}` : ""}`,
  }, errorSlot, stepTrack(status), stats, thresholds, verdictLine, reason, charts(timeline),
  h("h3", {}, "Events"), events);
}

export function canariesView(root, ctx) {
  const { session } = ctx;
  const cardsSlot = h("div", { id: "canaries" }, h("p", { class: "hint" }, "Loading canaries…"));
  const runsSlot = h("div", { id: "canary-runs" });
  replace(root, h("div", { class: "toolbar" }, h("span", { class: "hint" }, `Each flag's active (else latest) canary run. Refreshes every ${REFRESH_MS / 1000} s. Start one with POST /v1/canaries/{flag}.`)),
    cardsSlot, h("h2", { class: "section-title" }, "All runs"), runsSlot);
  let stopped = false;
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      let runs;
      try {
        runs = (await api("/v1/canaries", { query: { limit: 100 } })).items;
      } catch (error) {
        if (!stopped) replace(cardsSlot, problemBox(error, session));
        return;
      }
      const flags = [...new Set(runs.map((run) => run.flag))].slice(0, 8);
      const details = await Promise.all(flags.map((flag) => Promise.allSettled([
        api(`/v1/canaries/${encodeURIComponent(flag)}`), api(`/v1/canaries/${encodeURIComponent(flag)}/timeline`),
      ])));
      if (stopped) return;
      if (!flags.length) replace(cardsSlot, empty("No canary has run yet."));
      else {
        const ordered = flags.map((flag, index) => ({ flag, result: details[index] }))
          .sort((a, b) => Number(ACTIVE.has(b.result[0].value?.state)) - Number(ACTIVE.has(a.result[0].value?.state)));
        replace(cardsSlot, ...ordered.map(({ flag, result }) => {
          const [status, timeline] = result;
          if (status.status === "rejected") return card(flag, { id: `canary-${flag}` }, problemBox(status.reason, session));
          return canaryCard(status.value, timeline.status === "fulfilled" ? timeline.value : null, ctx, refresh);
        }));
      }
      replace(runsSlot, runs.length ? table(["Run#", "Flag", "State", "Weight#", "Step#", "Started", "Ended", "By", "Reason"], runs.map((run) => h("tr", { dataset: { run: run.id } },
        h("td", { class: "num" }, `#${run.id}`), h("td", { class: "mono" }, run.flag), h("td", {}, badge(run.state)),
        h("td", { class: "num" }, `${run.weight}%`), h("td", { class: "num" }, `${run.step} / ${run.steps.length}`),
        h("td", { title: run.startedAt }, time(run.startedAt)), h("td", { title: run.finishedAt || "" }, time(run.finishedAt)),
        h("td", {}, run.createdBy), h("td", {}, run.reason || ""))), { cls: "table-compact" }) : empty("No runs."));
    } finally {
      busy = false;
    }
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden && !document.querySelector("dialog[open]")) refresh(); }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}

// The canary gates (spec.checks): a statistical comparison with stable over the same windows.
function errorCeiling(spec) {
  return (spec.checks && spec.checks.errorRate && spec.checks.errorRate.max) ?? spec.maxErrorRate;
}

function gateText(spec) {
  const checks = spec.checks || {};
  const errors = checks.errorRate || {};
  const latency = checks.latency || {};
  return `A step passes after ${duration(spec.intervalSeconds)} with at least ${int(spec.minRequests)} canary requests ` +
    `unless the canary is worse than stable: errors by an always-valid test (α ${errors.alpha ?? "–"}, ` +
    `ceiling ${pct(errors.max, 1)}, never below ${pct(errors.floor, 1)}), latency by its p${Math.round((latency.quantile ?? 0.9) * 100)} ` +
    `within ${ratio(latency.maxRatio)} of stable's (α ${latency.alpha ?? "–"}, never below ${latency.floorMs ?? "–"} ms); ` +
    `${int(spec.failureThreshold ?? 1)} failed checks roll it back.`;
}
