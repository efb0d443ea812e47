// Flags & traffic: the serving flag set and its validation status, then per routing flag its
// variants, backends, configured weights and the observed split over the last minutes.

import { api, can } from "./api.js";
import { colourFor, seriesChart, splitChart } from "./charts.js";
import { h, replace } from "./dom.js";
import { ago, int, pct, time } from "./format.js";
import { act, badge, card, empty, problemBox, stat, table } from "./ui.js";

const REFRESH_MS = 5000;
let minutes = 5;

/** Fixed-weight fractional rules of a targeting tree: [{path, buckets: [[variant, weight]]}]. */
export function fixedSplits(node, path = "targeting") {
  const found = [];
  if (Array.isArray(node)) {
    node.forEach((item, index) => found.push(...fixedSplits(item, `${path}[${index}]`)));
  } else if (node && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      if (key === "fractional" && Array.isArray(value)) {
        const buckets = value.filter((item) => Array.isArray(item));
        const fixed = buckets.length > 0 && buckets.every((bucket) => typeof bucket[0] === "string"
          && (bucket.length === 1 || (bucket.length === 2 && typeof bucket[1] === "number")));
        if (fixed) found.push({ path: `${path}.fractional`, node: value });
      }
      found.push(...fixedSplits(value, `${path}.${key}`));
    }
  }
  return found;
}

function statusCard(status) {
  const state = badge(status.state);
  const issues = status.issues || [];
  const body = [
    h("div", { class: "stats" },
      stat("serving version", status.version === null ? "–" : `v${status.version}`, { cls: "stat-version" }),
      stat("flags", int(status.flagCount)),
      stat("files", int((status.files || []).length), { title: (status.files || []).join("\n") }),
      stat("last reload", ago(status.lastSuccessAt), { title: status.lastSuccessAt || "" }),
      stat("reloads ok / refused", `${int(status.reloads.ok)} / ${int(status.reloads.failed)}`)),
    h("p", { class: ["status-message", status.state === "error" || status.state === "partial" ? "text-bad" : ""], id: "flag-set-message" }, status.message),
  ];
  const refused = status.refused || [];
  if (refused.length) {
    // Partial acceptance: these flags were refused; the rest of the edit is live.
    body.push(h("div", { class: "refused-flags" }, table(["Refused flag", "Where", "Serving", "Why"], refused.map((item) => {
      const first = (item.issues || [])[0] || {};
      return h("tr", { "data-flag": item.flag },
        h("td", { class: "mono" }, item.flag),
        h("td", { class: "mono" }, `${first.file || item.file}${first.line ? `:${first.line}` : ""}${first.column ? `:${first.column}` : ""}`),
        h("td", {}, badge(item.serving === "absent" ? "absent" : "last good", item.serving === "absent" ? "bad" : "warn")),
        h("td", {}, first.message || item.message));
    }))));
  }
  if (issues.length) {
    body.push(table(["Severity", "Where", "JSON path", "Problem"], issues.map((issue) => h("tr", {},
      h("td", {}, badge(issue.severity, issue.severity === "error" ? "bad" : "warn")),
      h("td", { class: "mono" }, `${issue.file}${issue.line ? `:${issue.line}` : ""}${issue.column ? `:${issue.column}` : ""}`),
      h("td", { class: "mono" }, issue.path),
      h("td", {}, issue.message)))));
  }
  return card("Flag set", {
    id: "flag-set-status", badges: [state],
    subtitle: `Content hash ${(status.contentHash || "–").slice(0, 12)} · ${status.directory}`,
  }, ...body);
}

function variantTable(flag) {
  return table(["Variant", "Backend", "URL", "Configured#", "Observed#"], flag.variants.map((row) => h("tr", { dataset: { variant: row.variant } },
    h("td", {}, h("strong", {}, row.variant), row.variant === flag.defaultVariant ? h("span", { class: "hint" }, " default") : null),
    h("td", {}, row.backend || "–"),
    h("td", { class: "mono" }, row.url || "–"),
    h("td", { class: "num" }, row.configuredShare === null ? "–" : pct(row.configuredShare)),
    h("td", { class: "num observed-cell" }, row.decisions ? `${pct(row.observedShare)} (${int(row.decisions)})` : "0"))), { cls: "table-compact" });
}

function trafficBody(flag) {
  const names = flag.variants.map((row) => row.variant);
  const colour = colourFor(names);
  const configured = flag.configured;
  const note = configured.kind === "fractional"
    ? `Configured: the fractional weights ${configured.context} reaches.`
    : `Configured for ${configured.context}: ${configured.note}.`;
  const windowNote = flag.window.decisions
    ? `${int(flag.window.decisions)} decisions in the last ${minutes} min.`
    : `No decisions in the last ${minutes} min.`;
  return h("div", { class: "traffic" },
    variantTable(flag),
    h("p", { class: "hint" }, note, " ", h("span", { class: "window-note" }, windowNote)),
    h("div", { class: "traffic-grid" },
      h("div", { class: "chart-box split-chart", dataset: { flag: flag.flag, decisions: flag.window.decisions } },
        splitChart(flag.variants, colour, { minutes })),
      h("div", { class: "chart-box series-chart" },
        seriesChart(flag.series, names, colour, { bucketSeconds: flag.window.bucketSeconds, windowSeconds: flag.window.seconds }))));
}

async function openEditor(slot, flag, ctx, refresh) {
  const { session } = ctx;
  replace(slot, h("p", { class: "hint" }, "Loading the flag definition…"));
  let body;
  try {
    body = await api(`/v1/flags/${encodeURIComponent(flag.flag)}`);
  } catch (error) {
    replace(slot, problemBox(error, session));
    return;
  }
  const definition = body.flag;
  const splits = fixedSplits(definition.targeting || {});
  if (!splits.length) {
    replace(slot, h("div", { class: "editor" },
      h("p", {}, "This flag's targeting has no fractional split with fixed weights to edit here; edit its flag file or PUT it through the admin API."),
      h("button", { class: "button", type: "button", onclick: () => replace(slot) }, "Close")));
    return;
  }
  const inputs = [];
  const groups = splits.map((split, index) => h("fieldset", { class: "editor-group" },
    h("legend", { class: "mono" }, split.path),
    split.node.filter((item) => Array.isArray(item)).map((bucket) => {
      const input = h("input", {
        type: "number", min: 0, step: 1, value: bucket.length === 2 ? bucket[1] : 1, required: true,
        name: `weight-${index}-${bucket[0]}`, "aria-label": `weight of ${bucket[0]}`, dataset: { variant: bucket[0] },
      });
      inputs.push({ input, bucket });
      return h("label", { class: "field field-inline" }, h("span", {}, bucket[0]), input);
    })));
  const message = h("input", { type: "text", name: "message", maxlength: 2000, placeholder: "Why? (kept in the history)" });
  const errorSlot = h("div");
  const save = h("button", { class: "button button-primary", type: "submit" }, "Save weights");
  const form = h("form", { class: "editor", dataset: { editor: flag.flag } },
    h("h3", {}, "Edit weights"),
    h("p", { class: "hint" }, `Saved as a new flag set version (validated, versioned, audited as ${session.name}).`),
    ...groups,
    h("label", { class: "field" }, h("span", {}, "Message"), message),
    errorSlot,
    h("div", { class: "editor-actions" },
      h("button", { class: "button", type: "button", onclick: () => replace(slot) }, "Cancel"), save));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const updated = structuredClone(definition);
    const targetSplits = fixedSplits(updated.targeting || {});
    let cursor = 0;
    for (const split of targetSplits) {
      for (const bucket of split.node.filter((item) => Array.isArray(item))) {
        const value = Number(inputs[cursor].input.value);
        cursor += 1;
        bucket.length = 2;
        bucket[1] = value;
      }
    }
    replace(errorSlot);
    const result = await act(save, () => api(`/v1/flags/${encodeURIComponent(flag.flag)}`, {
      method: "PUT", body: updated, query: { message: message.value.trim() || "weights edited in the console" },
    }), {
      session, errorSlot,
      done: (answer) => (answer.changed ? `Saved ${flag.flag}: flag set version ${answer.flagSetVersion}` : `${flag.flag} unchanged`),
    });
    if (result) {
      replace(slot);
      refresh();
    }
  });
  replace(slot, form);
}

export function flagsView(root, ctx) {
  const { session } = ctx;
  const cards = new Map();
  const statusSlot = h("div", { id: "status-slot" });
  const flagsSlot = h("div", { id: "routing-flags" });
  const othersSlot = h("div", { id: "other-flags" });
  const errorSlot = h("div");
  const updated = h("span", { class: "hint", id: "updated-at" }, "");
  const windowButtons = [1, 5, 15].map((value) => h("button", {
    type: "button", class: ["segment", value === minutes ? "segment-on" : ""], dataset: { minutes: value },
    onclick: () => { minutes = value; windowButtons.forEach((b) => b.classList.toggle("segment-on", Number(b.dataset.minutes) === value)); refresh(); },
  }, `${value} min`));
  replace(root,
    h("div", { class: "toolbar" },
      h("div", { class: "segmented", role: "group", "aria-label": "observed window" }, h("span", { class: "hint" }, "Observed over "), ...windowButtons),
      updated),
    errorSlot, statusSlot, h("h2", { class: "section-title" }, "Routing flags"), flagsSlot,
    h("h2", { class: "section-title" }, "Other flags"), othersSlot);

  let stopped = false;
  let activeCanaries = new Set();
  async function refresh() {
    const [status, traffic, flags, canaries] = await Promise.allSettled([
      api("/v1/flags/status"), api("/v1/traffic", { query: { minutes } }), api("/v1/flags"),
      api("/v1/canaries", { query: { active: "true" } }),
    ]);
    if (stopped) return;
    const failed = [status, traffic, flags].find((result) => result.status === "rejected");
    if (failed) replace(errorSlot, problemBox(failed.reason, session));
    else replace(errorSlot);
    if (status.status === "fulfilled") replace(statusSlot, statusCard(status.value));
    activeCanaries = new Set(canaries.status === "fulfilled" ? canaries.value.items.map((run) => run.flag) : []);
    const active = activeCanaries;
    if (traffic.status === "fulfilled") {
      const seen = new Set();
      for (const flag of traffic.value.flags) {
        seen.add(flag.flag);
        let entry = cards.get(flag.flag);
        if (!entry) {
          const dynamic = h("div");
          const editorSlot = h("div", { class: "editor-slot" });
          const badgeSlot = h("span", { class: "badge-slot" });
          const actions = [];
          const editButton = h("button", { type: "button", class: "button", dataset: { action: "edit-weights" } }, "Edit weights");
          if (can(session, "operator")) actions.push(editButton);
          const node = card(flag.flag, { id: `flag-${flag.flag}`, badges: [badgeSlot], actions, subtitle: flag.description || "" }, dynamic, editorSlot);
          entry = { node, dynamic, editorSlot, badgeSlot, editButton, flag };
          editButton.addEventListener("click", () => {
            if (activeCanaries.has(entry.flag.flag)) {
              replace(entry.editorSlot, h("p", { class: "hint" }, "A canary controls this flag's weights now; pause or abort it on the Canaries tab first."));
            } else {
              openEditor(entry.editorSlot, entry.flag, ctx, refresh);
            }
          });
          cards.set(flag.flag, entry);
        }
        entry.flag = flag;
        replace(entry.badgeSlot, badge(flag.state), flag.experiment ? badge("experiment", "info") : null,
          active.has(flag.flag) ? badge("canary running", "warn") : null,
          h("span", { class: "hint" }, ` ${flag.source || ""} · v${flag.flagSetVersion}`));
        replace(entry.dynamic, trafficBody(flag));
      }
      for (const [key, entry] of cards) {
        if (!seen.has(key)) { entry.node.remove(); cards.delete(key); }
      }
      const nodes = traffic.value.flags.map((flag) => cards.get(flag.flag).node);
      if (!nodes.length) replace(flagsSlot, empty("No routing flags are serving."));
      else if (nodes.some((node, index) => flagsSlot.children[index] !== node) || flagsSlot.children.length !== nodes.length) replace(flagsSlot, ...nodes);
      if (flags.status === "fulfilled") {
        const routing = new Set(traffic.value.flags.map((flag) => flag.flag));
        const others = flags.value.flags.filter((flag) => !routing.has(flag.key));
        replace(othersSlot, others.length ? card("Non-routing flags", { id: "non-routing" }, table(["Flag", "State", "Default", "Variants", "File"], others.map((flag) => h("tr", {},
          h("td", { class: "mono" }, flag.key), h("td", {}, badge(flag.state || "–")), h("td", {}, flag.defaultVariant ?? "–"),
          h("td", {}, flag.variants.join(", ")), h("td", { class: "mono" }, flag.source || "–"))), { cls: "table-compact" })) : empty("Every serving flag is a routing flag."));
      }
    }
    updated.textContent = `Updated ${time(new Date().toISOString())} · refreshes every ${REFRESH_MS / 1000} s`;
  }

  refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}
