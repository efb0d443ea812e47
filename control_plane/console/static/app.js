// The console shell: sign-in with a bearer token, the top bar, and hash navigation between
// the views. Each view renders into <main> and returns a function that stops it.

import { ApiError, api, clearSession, loadSession, saveSession, setUnauthenticatedHandler } from "./api.js";
import { h, replace } from "./dom.js";
import { problemBox } from "./ui.js";
import { canariesView } from "./view-canaries.js";
import { experimentsView } from "./view-experiments.js";
import { flagsView } from "./view-flags.js";
import { historyView } from "./view-history.js";
import { shadowsView } from "./view-shadows.js";

const VIEWS = [
  { id: "flags", label: "Flags & traffic", render: flagsView },
  { id: "experiments", label: "Experiments", render: experimentsView },
  { id: "canaries", label: "Canaries", render: canariesView },
  { id: "shadows", label: "Shadows", render: shadowsView },
  { id: "history", label: "History & audit", render: historyView },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let stopView = () => {};

function signIn(notice) {
  stopView();
  stopView = () => {};
  clearSession();
  replace(nav);
  replace(who);
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true, spellcheck: "false", placeholder: "cpt_…", "aria-label": "API token" });
  const errorSlot = h("div", { id: "login-error" }, notice ? problemBox(notice) : null);
  const submit = h("button", { type: "submit", class: "button button-primary", id: "sign-in" }, "Sign in");
  const form = h("form", { class: "login-card", id: "login" },
    h("h1", {}, "Sign in to the console"),
    h("p", {}, "Paste an API token of this control plane. Viewers see flags, traffic, experiments, canaries, shadows and history; operators also edit weights, pause, resume or abort canaries and promote shadows; admins also roll back and read the audit log."),
    h("label", { class: "field" }, h("span", {}, "API token"), input),
    errorSlot, submit,
    h("p", { class: "hint" }, "The token stays in this browser tab (sessionStorage) and is sent only to this control plane, as Authorization: Bearer. Closing the tab forgets it."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    submit.disabled = true;
    try {
      const me = await api("/v1/whoami", { token });
      saveSession({ token, name: me.name, role: me.role });
      if (!location.hash) location.hash = "#flags";
      start();
    } catch (error) {
      replace(errorSlot, problemBox(error instanceof ApiError ? error : new ApiError(0, { detail: String(error) })));
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  replace(main, h("div", { class: "login-wrap" }, form));
  input.focus();
}

function route() {
  const session = loadSession();
  if (!session) return;
  const id = (location.hash || "#flags").slice(1);
  const view = VIEWS.find((item) => item.id === id) || VIEWS[0];
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("tab-on", link.dataset.view === view.id);
  stopView();
  replace(main);
  document.title = `${view.label} · Control plane console`;
  stopView = view.render(main, { session });
}

function start() {
  const session = loadSession();
  replace(nav, VIEWS.map((view) => h("a", { href: `#${view.id}`, class: "tab", dataset: { view: view.id } }, view.label)));
  const signOut = h("button", { type: "button", class: "button button-quiet", id: "sign-out" }, "Sign out");
  signOut.addEventListener("click", () => { location.hash = ""; signIn(); });
  replace(who, h("span", { class: "who-name", id: "who-name" }, session.name), h("span", { class: ["badge", "badge-role", `role-${session.role}`], id: "who-role" }, session.role), signOut);
  route();
}

// The first 401 of a view shows the sign-in page; later ones (requests already in flight)
// must not wipe what the user is typing there.
setUnauthenticatedHandler((error) => { if (!document.getElementById("login")) signIn(error); });
window.addEventListener("hashchange", route);

async function boot() {
  const session = loadSession();
  if (!session) {
    signIn();
    return;
  }
  try {
    // The token may have been revoked or its role changed since the tab signed in.
    const me = await api("/v1/whoami");
    saveSession({ ...session, name: me.name, role: me.role });
    start();
  } catch (error) {
    if (error.status !== 401) signIn(error);
  }
}

boot();
