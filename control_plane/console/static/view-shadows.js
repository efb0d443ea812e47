// Shadows: per flag and shadow backend, what the candidate would have answered against what
// the primary did: copies mirrored and compared, status mismatches, the diff rate per field
// (noisy fields set apart), primary and shadow latency as a chart, the newest diff examples
// (redacted by the server), and, for operators, promotion of a shadow to a canary.

import { api, can } from "./api.js";
import { latencyChart, rateBar } from "./charts.js";
import { h, replace } from "./dom.js";
import { int, ms, pct, pValue, short, time } from "./format.js";
import { act, badge, card, empty, problemBox, stat, table } from "./ui.js";

const REFRESH_MS = 3000;
const COLOURS = { primary: "#64748b", shadow: "#f97316" };
const DIFF_COLOUR = "#dc2626";
const NOISE_COLOUR = "#9ca3af";
const EXAMPLES_SHOWN = 5;
const DEFAULT_STEPS = "5, 25, 50, 100";

/** Shadow ÷ primary latency with two decimals: 1.006 is "1.01×", not a bare "1×". */
function latencyRatio(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(2)}×`;
}

function statusText(value) {
  return value === null || value === undefined ? "no answer" : String(value);
}

function droppedTitle(row) {
  const reasons = Object.entries(row.dropped || {});
  return reasons.length ? reasons.map(([reason, count]) => `${reason}: ${count}`).join(", ") : "none dropped";
}

function statsBlock(row) {
  const mismatches = row.statusMismatches;
  return h("div", { class: "stats" },
    stat("mirrored", int(row.mirrored), { cls: "stat-mirrored" }),
    stat("compared", int(row.compared), { cls: "stat-compared" }),
    stat("dropped", int(row.droppedTotal), { cls: `stat-dropped${row.droppedTotal ? " stat-bad" : ""}`, title: droppedTitle(row) }),
    stat("shadow errors", int(row.shadowErrors), { cls: `stat-shadow-errors${row.shadowErrors ? " stat-bad" : ""}`, title: "no answer: refused or timed out" }),
    stat("status mismatches", mismatches ? `${int(mismatches)} · ${pct(row.statusMismatchRate)}` : int(mismatches), { cls: `stat-status${mismatches ? " stat-bad" : ""}` }),
    stat("diff rate", pct(row.diffRate), { cls: `stat-diff-rate${row.diffRate ? " stat-bad" : ""}`, title: "compared requests with at least one differing field that is not noise" }),
    stat("noise pairs", int(row.noise.pairs), { cls: "stat-noise", title: "requests also sent to the primary a second time, to learn which fields differ on their own" }));
}

function latencyBlock(row) {
  const latency = row.latency;
  const rows = [
    { quantile: "p50", primary: latency.primaryMs.p50, shadow: latency.shadowMs.p50, ratio: latency.p50Ratio },
    { quantile: "p99", primary: latency.primaryMs.p99, shadow: latency.shadowMs.p99, ratio: latency.p99Ratio },
  ];
  const shift = latency.mannWhitney;
  const exceed = latency.p99Exceedance;
  const tests = [];
  if (shift) tests.push(`Shadow slower (Mann-Whitney U, one-sided): p ${pValue(shift.pShadowSlower)}`);
  if (exceed) tests.push(`Above the pooled p99 of ${ms(exceed.threshold)}: shadow ${int(exceed.shadowAbove)}, primary ${int(exceed.primaryAbove)} (p ${pValue(exceed.pShadowSlower)})`);
  return h("div", { class: "chart-box shadow-latency" },
    latencyChart(rows, COLOURS, { format: ms, formatRatio: latencyRatio, title: `Time to response head, ${int(latency.samples)} pairs` }),
    h("p", { class: "hint latency-tests" }, tests.length ? `${tests.join(". ")}.` : "No latency pairs yet."));
}

function fieldRows(fields, fill) {
  return fields.map((field) => h("tr", { dataset: { field: field.field } },
    h("td", { class: "mono" }, field.field),
    h("td", { class: "num" }, int(field.diffs)),
    h("td", { class: "num rate-cell" }, rateBar(field.rate, fill), " ", h("span", { class: "field-rate" }, pct(field.rate))),
    h("td", { class: "num noise-rate" }, field.noiseRate === null ? "–" : pct(field.noiseRate))));
}

function fieldsBlock(row) {
  const headers = ["Field", "Differed#", "Diff rate#", "Between primaries#"];
  return h("div", { class: "shadow-fields" },
    h("h4", {}, "Differing fields"),
    row.fields.length
      ? table(headers, fieldRows(row.fields, DIFF_COLOUR), { cls: "table-compact fields-real" })
      : empty(row.compared ? "No field differed (other than noise)." : "Nothing compared yet."),
    h("h4", {}, "Noisy fields ", h("span", { class: "hint" }, "(differ between two primaries too: set apart, not in the diff rate)")),
    row.noisyFields.length
      ? table(headers, fieldRows(row.noisyFields, NOISE_COLOUR), { cls: "table-compact fields-noisy" })
      : h("p", { class: "hint no-noise" }, row.noise.pairs ? "None found." : "No noise calibration calls yet."));
}

function exampleFields(example) {
  const names = Object.keys(example.fields);
  if (!names.length) return h("span", { class: "hint" }, "status only");
  return h("ul", { class: "example-fields" }, names.map((name) => {
    const field = example.fields[name];
    return h("li", { class: field.noisy ? "example-noisy" : "", dataset: { field: name } },
      h("span", { class: "mono" }, name), field.noisy ? h("span", { class: "hint" }, " (noise)") : null, ": ",
      h("span", { class: "diff-remove mono" }, short(field.primary, 48)), " → ",
      h("span", { class: "diff-add mono" }, short(field.shadow, 48)));
  }));
}

function examplesBlock(row) {
  if (!row.examples.length) return null;
  const shown = row.examples.slice(0, EXAMPLES_SHOWN);
  return h("div", { class: "shadow-examples" },
    h("h4", {}, `Diff examples `, h("span", { class: "hint" }, `(newest ${shown.length} of the ${row.examples.length} kept; sensitive fields redacted by the server)`)),
    table(["Decision", "At", "Status", "Latency", "Differences"], shown.map((example) => h("tr", { dataset: { decision: example.decisionId } },
      h("td", { class: "mono nowrap" }, example.decisionId),
      h("td", { class: "nowrap", title: example.at }, time(example.at)),
      h("td", { class: ["nowrap", example.status.primary !== example.status.shadow ? "text-bad" : ""] },
        `${statusText(example.status.primary)} → ${statusText(example.status.shadow)}`),
      h("td", { class: "nowrap" }, `${ms(example.latencyMs.primary)} → ${ms(example.latencyMs.shadow)}`),
      h("td", { class: "detail" }, exampleFields(example)))), { cls: "table-compact examples" }));
}

function promoteDialog(flag, row) {
  return new Promise((resolve) => {
    const steps = h("input", { id: "promote-steps", name: "steps", value: DEFAULT_STEPS, autocomplete: "off" });
    const variant = h("input", { id: "promote-variant", name: "variant", placeholder: row.backend, autocomplete: "off" });
    const ok = h("button", { type: "submit", class: "button button-primary", id: "confirm-ok" }, "Promote to canary");
    const cancel = h("button", { type: "button", class: "button", id: "confirm-cancel" }, "Cancel");
    const dialog = h("dialog", { class: "dialog", id: "confirm-dialog" },
      h("form", { method: "dialog" },
        h("h3", {}, `Promote shadow ${row.backend} of ${flag}?`),
        h("p", {}, `One flag edit (validated, versioned, audited): ${row.backend} becomes a variant of ${flag} and stops being mirrored; then a canary starts against ${row.variant}, its first step setting the weight.`),
        h("label", { class: "field" }, h("span", {}, "Canary steps (%)"), steps),
        h("label", { class: "field" }, h("span", {}, "Variant name (optional)"), variant),
        h("div", { class: "dialog-actions" }, cancel, ok)));
    document.body.append(dialog);
    let result = null;
    ok.addEventListener("click", () => {
      const numbers = steps.value.split(",").map((part) => part.trim()).filter(Boolean).map(Number);
      result = { steps: numbers, variant: variant.value.trim() };
    });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => { dialog.remove(); resolve(result); });
    dialog.showModal();
    ok.focus();
  });
}

function shadowBlock(flag, row, ctx, refresh) {
  const { session } = ctx;
  const errorSlot = h("div");
  let action = null;
  if (row.declared && can(session, "operator")) {
    action = h("button", { type: "button", class: "button", dataset: { action: "promote", backend: row.backend } }, "Promote to canary…");
    action.addEventListener("click", async () => {
      const answer = await promoteDialog(flag, row);
      if (!answer) return;
      const body = { backend: row.backend };
      if (answer.variant) body.variant = answer.variant;
      if (answer.steps.length) body.canary = { steps: answer.steps };
      const result = await act(action, () => api(`/v1/shadows/${encodeURIComponent(flag)}/promote`, { method: "POST", body }), {
        session, errorSlot,
        done: (promoted) => `${promoted.backend} is variant ${promoted.canaryVariant} of ${flag}; canary ${promoted.canary.state} at ${promoted.canary.weight}%`,
      });
      if (result) refresh();
    });
  }
  const badges = [row.declared ? badge(`sample ${row.sample}%`, "info") : badge("no longer declared", "muted")];
  if (!row.compared) badges.push(badge("nothing compared", "muted"));
  if (row.statusMismatches) badges.push(badge(`status differs ${pct(row.statusMismatchRate)}`, "bad"));
  if (row.diffRate) badges.push(badge(`body differs ${pct(row.diffRate)}`, "bad"));
  if (row.compared && !row.statusMismatches && !row.diffRate) badges.push(badge("same answers", "ok"));
  return h("section", { class: "shadow", dataset: { backend: row.backend } },
    h("header", { class: "shadow-head" },
      h("div", { class: "card-title" },
        h("h3", {}, h("span", { class: "mono" }, row.variant), h("span", { class: "hint" }, ` (${row.primaryBackend})`), " → ", h("span", { class: "mono" }, row.backend)),
        ...badges),
      action),
    errorSlot, statsBlock(row),
    h("div", { class: "shadow-grid" }, latencyBlock(row), fieldsBlock(row)),
    examplesBlock(row));
}

function shadowCard(report, ctx, refresh) {
  const rows = report.shadows;
  return card(report.flag, {
    id: `shadow-${report.flag}`,
    badges: [badge(`${rows.length} shadow${rows.length === 1 ? "" : "s"}`, "muted")],
    subtitle: `Results in ${report.storage} · ${int(report.queued)} copies queued now`,
  }, rows.length ? rows.map((row) => shadowBlock(report.flag, row, ctx, refresh)) : empty("No shadow declared or seen."));
}

export function shadowsView(root, ctx) {
  const { session } = ctx;
  const list = h("div", { id: "shadows" }, h("p", { class: "hint" }, "Loading shadows…"));
  replace(root, h("div", { class: "toolbar" }, h("span", { class: "hint" },
    `Routing variants that mirror a share of their requests to a candidate backend (the "shadows" of a variant). Clients always get the primary's answer. Refreshes every ${REFRESH_MS / 1000} s.`)), list);
  let stopped = false;
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      let items;
      try {
        items = (await api("/v1/shadows")).items;
      } catch (error) {
        if (!stopped) replace(list, problemBox(error, session));
        return;
      }
      const reports = await Promise.allSettled(items.map((item) => api(`/v1/shadows/${encodeURIComponent(item.flag)}`)));
      if (stopped) return;
      if (!items.length) {
        replace(list, empty('No shadows. Add "shadows": [{"backend": ..., "url": ..., "sample": 10}] to a routing variant to mirror its requests.'));
        return;
      }
      replace(list, ...items.map((item, index) => {
        const result = reports[index];
        if (result.status === "fulfilled") return shadowCard(result.value, ctx, refresh);
        return card(item.flag, { id: `shadow-${item.flag}` }, problemBox(result.reason, session));
      }));
    } finally {
      busy = false;
    }
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden && !document.querySelector("dialog[open]")) refresh(); }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}
