// History & audit: every flag set version with who changed what (the diff) and, for admins, a
// rollback button; then the audit log of writes (admins only: others see the server's 403).

import { api, can } from "./api.js";
import { h, replace } from "./dom.js";
import { short, time } from "./format.js";
import { act, badge, card, confirmAction, empty, problemBox, table } from "./ui.js";

const PAGE = 15;
const MARKS = { added: "+", removed: "-", changed: "~", moved: ">" };

/** One line per change, as `control-plane history` prints them. */
export function diffLines(diff) {
  const lines = [];
  if (!diff) return lines;
  for (const [kind, entries] of [["flag", diff.flags || []], ["evaluator", diff.evaluators || []]]) {
    for (const entry of entries) {
      const label = kind === "flag" ? entry.key : `$evaluators.${entry.key}`;
      const mark = MARKS[entry.change] || "?";
      if (entry.change === "changed") {
        for (const change of entry.changes || []) {
          let what;
          if (change.op === "replace") what = `${short(change.before)} → ${short(change.after)}`;
          else if (change.op === "add") what = `added ${short(change.after)}`;
          else what = `removed ${short(change.before)}`;
          lines.push({ mark, text: `${label} ${change.path || "/"}: ${what}` });
        }
      } else if (entry.change === "moved") {
        lines.push({ mark, text: `${label} moved ${entry.previousSource} → ${entry.source}` });
      } else {
        lines.push({ mark, text: `${label} ${entry.change}${entry.source ? ` (${entry.source})` : ""}` });
      }
    }
  }
  return lines;
}

const SOURCE_KIND = { file: "muted", api: "info", canary: "warn", rollback: "bad" };

function versionItem(item, serving, ctx, reload) {
  const { session } = ctx;
  const lines = diffLines(item.diff);
  const errorSlot = h("div");
  let rollback = null;
  if (can(session, "admin") && item.version !== serving) {
    rollback = h("button", { type: "button", class: "button button-danger", dataset: { action: "rollback", version: item.version } }, `Roll back to v${item.version}`);
    rollback.addEventListener("click", async () => {
      const answer = await confirmAction({
        title: `Roll back to version ${item.version}?`,
        body: `The flag files are rewritten to version ${item.version}'s flags (from v${serving}); the result is a new version, recorded as a rollback.`,
        confirmLabel: `Roll back to v${item.version}`, danger: true,
      });
      if (!answer) return;
      const result = await act(rollback, () => api(`/v1/flags/rollback/${item.version}`, { method: "POST", body: answer.message ? { message: answer.message } : {} }), {
        session, errorSlot,
        done: (body) => (body.changed ? `Rolled back to v${body.rolledBackTo}: now serving v${body.flagSetVersion}` : `Already at v${body.rolledBackTo}'s flags`),
      });
      if (result) reload();
    });
  }
  return h("li", { class: "version", dataset: { version: item.version } },
    h("div", { class: "version-head" },
      h("span", { class: "version-number" }, `v${item.version}`),
      badge(item.source, SOURCE_KIND[item.source] || "muted"),
      item.version === serving ? badge("serving", "ok") : null,
      h("span", { class: "version-meta" }, `${time(item.createdAt)} · ${item.actor || "unknown"} · ${item.flagCount} flags`),
      rollback ? h("span", { class: "version-actions" }, rollback) : null),
    item.message ? h("p", { class: "version-message" }, item.message) : null,
    lines.length ? h("pre", { class: "diff" }, lines.map((line) => h("div", { class: `diff-${line.mark === "+" ? "add" : line.mark === "-" ? "remove" : "change"}` }, `${line.mark} ${line.text}`)))
      : h("p", { class: "hint" }, "No flag changes (first version, or content identical)."),
    errorSlot);
}

function plain(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return String(+value.toPrecision(4));
  if (Array.isArray(value)) return `[${value.map(plain).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}: ${plain(v)}`).join(", ")}}`;
  }
  return String(value);
}

/** An audit event's detail on one line: `key: value · key: value`, numbers to 4 digits. */
export function detailText(detail) {
  const blank = (value) => value === null || value === undefined || value === ""
    || (typeof value === "object" && Object.keys(value).length === 0);
  const text = Object.entries(detail || {}).filter(([, value]) => !blank(value))
    .map(([key, value]) => `${key}: ${plain(value)}`).join(" · ");
  return text.length > 400 ? `${text.slice(0, 397)}...` : text;
}

function auditTable(items) {
  if (!items.length) return empty("No audit events yet.");
  return table(["Time", "Actor", "Action", "Target", "Detail"], items.map((item) => h("tr", { dataset: { action: item.action } },
    h("td", { title: item.at, class: "nowrap" }, time(item.at)), h("td", { class: "nowrap" }, item.actor), h("td", { class: "mono nowrap" }, item.action),
    h("td", { class: "mono nowrap" }, item.target), h("td", { class: "detail" }, detailText(item.detail)))), { cls: "table-compact audit" });
}

export function historyView(root, ctx) {
  const { session } = ctx;
  const versions = h("ol", { class: "versions", id: "versions" });
  const more = h("button", { type: "button", class: "button", hidden: true }, "Older versions");
  const versionsError = h("div");
  const audit = h("div", { id: "audit" }, h("p", { class: "hint" }, "Loading the audit log…"));
  const auditMore = h("button", { type: "button", class: "button", hidden: true }, "Older events");
  replace(root,
    card("Flag set history", { id: "history", subtitle: can(session, "admin") ? "Every accepted version, newest first, with what changed. Rolling back writes the old flags as a new version." : "Every accepted version, newest first, with what changed. Admins can roll back from here." },
      versionsError, versions, more),
    card("Audit log", { id: "audit-log", subtitle: "Every write: flag edits, rollbacks, canary actions, token changes." }, audit, auditMore));
  let serving = null;
  let before = null;
  let auditBefore = null;
  let auditItems = [];

  async function loadVersions(reset) {
    if (reset) { before = null; replace(versions); }
    try {
      if (reset || serving === null) serving = (await api("/v1/flags/status")).version;
      const page = await api("/v1/flags/history", { query: { limit: PAGE, before } });
      versions.append(...page.items.map((item) => versionItem(item, serving, ctx, reloadAll)));
      if (!page.items.length && reset) versions.append(h("li", {}, empty("No versions recorded yet.")));
      before = page.nextBefore;
      more.hidden = before === null;
      replace(versionsError);
    } catch (error) {
      replace(versionsError, problemBox(error, session));
    }
  }

  async function loadAudit(reset) {
    if (reset) { auditBefore = null; auditItems = []; }
    try {
      const page = await api("/v1/audit", { query: { limit: 50, before: auditBefore } });
      auditItems = auditItems.concat(page.items);
      auditBefore = page.nextBefore;
      auditMore.hidden = auditBefore === null;
      replace(audit, auditTable(auditItems));
    } catch (error) {
      auditMore.hidden = true;
      replace(audit, problemBox(error, session));
    }
  }

  function reloadAll() {
    loadVersions(true);
    loadAudit(true);
  }

  more.addEventListener("click", () => loadVersions(false));
  auditMore.addEventListener("click", () => loadAudit(false));
  reloadAll();
  return () => {};
}
