// Shared pieces of the views: problem boxes, badges, cards, toasts and the confirm dialog.

import { h, replace } from "./dom.js";

/** A clear box for a failed request: status, title, the server's detail, and what to do. */
export function problemBox(error, session) {
  const status = error.status ?? 0;
  const hints = {
    401: "The token is not known or was revoked. Sign out and sign in with a valid token.",
    403: session ? `You are signed in as ${session.name} (${session.role}). Ask an admin for a token with a higher role.` : "",
    404: "",
    409: "Someone else changed this meanwhile; reload and try again.",
  };
  return h("div", { class: ["problem", status === 403 ? "problem-forbidden" : ""], role: "alert", dataset: { status } },
    h("div", { class: "problem-title" }, status ? h("span", { class: "problem-status" }, String(status)) : null, " ", error.title || "Error"),
    h("div", { class: "problem-detail" }, error.detail || error.message || String(error)),
    hints[status] ? h("div", { class: "problem-hint" }, hints[status]) : null);
}

const STATE_KIND = {
  ok: "ok", running: "ok", promoted: "info", ENABLED: "ok",
  paused: "warn", unloaded: "warn", wait: "muted",
  error: "bad", aborted: "bad", rolled_back: "bad", DISABLED: "muted", fail: "bad", pass: "ok",
};

export function badge(label, kind) {
  return h("span", { class: ["badge", `badge-${kind || STATE_KIND[label] || "muted"}`] }, String(label).replace("_", " "));
}

export function card(title, { subtitle, badges = [], actions = [], id, cls } = {}, ...body) {
  return h("section", { class: ["card", cls], id, dataset: { card: id || "" } },
    h("header", { class: "card-head" },
      h("div", { class: "card-title" }, h("h2", {}, title), ...badges),
      actions.length ? h("div", { class: "card-actions" }, ...actions) : null),
    subtitle ? h("p", { class: "card-sub" }, subtitle) : null,
    ...body);
}

/** headers: names; a name ending in "#" is a numeric (right-aligned) column. */
export function table(headers, rows, { cls } = {}) {
  return h("table", { class: ["table", cls] },
    h("thead", {}, h("tr", {}, headers.map((name) => (name.endsWith("#") ? h("th", { class: "num" }, name.slice(0, -1)) : h("th", {}, name))))),
    h("tbody", {}, rows));
}

export function stat(label, value, { title, cls } = {}) {
  return h("div", { class: ["stat", cls], title },
    h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

let toastTimer = null;

export function toast(message, kind = "ok") {
  const node = document.getElementById("toast");
  replace(node, h("div", { class: ["toast", `toast-${kind}`] }, message));
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 6000);
}

/**
 * Ask before acting. Resolves to {message} when confirmed, null when cancelled.
 * withMessage adds a "why" field that goes to the audit trail.
 */
export function confirmAction({ title, body, confirmLabel, danger = false, withMessage = true }) {
  return new Promise((resolve) => {
    const message = h("textarea", { id: "confirm-message", rows: 2, maxlength: 2000, placeholder: "Why? (kept in the audit trail)" });
    const ok = h("button", { type: "submit", class: ["button", danger ? "button-danger" : "button-primary"], id: "confirm-ok" }, confirmLabel);
    const cancel = h("button", { type: "button", class: "button", id: "confirm-cancel" }, "Cancel");
    const dialog = h("dialog", { class: "dialog", id: "confirm-dialog" },
      h("form", { method: "dialog" },
        h("h3", {}, title), h("p", {}, body),
        withMessage ? h("label", { class: "field" }, h("span", {}, "Message (optional)"), message) : null,
        h("div", { class: "dialog-actions" }, cancel, ok)));
    document.body.append(dialog);
    let result = null;
    ok.addEventListener("click", () => { result = { message: message.value.trim() }; });
    cancel.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => { dialog.remove(); resolve(result); });
    dialog.showModal();
    (withMessage ? message : ok).focus();
  });
}

/** Run an API action from a button: disable it meanwhile, toast the outcome, show errors. */
export async function act(button, work, { done, session, errorSlot }) {
  button.disabled = true;
  try {
    const result = await work();
    if (done) toast(done(result), "ok");
    return result;
  } catch (error) {
    if (errorSlot) replace(errorSlot, problemBox(error, session));
    toast(`${error.status || ""} ${error.title || "Error"}: ${error.detail || error.message}`.trim(), "bad");
    return undefined;
  } finally {
    button.disabled = false;
  }
}
