// The console's only way to the server: the JSON APIs, with the session's bearer token.

const KEY = "control-plane-console";

/** The signed-in session ({token, name, role}) of this tab, or null. */
export function loadSession() {
  try {
    const value = JSON.parse(sessionStorage.getItem(KEY) || "null");
    return value && typeof value.token === "string" ? value : null;
  } catch {
    return null;
  }
}

export function saveSession(session) {
  sessionStorage.setItem(KEY, JSON.stringify(session));
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
}

export const ROLES = { viewer: 1, operator: 2, admin: 3 };

export function can(session, role) {
  return Boolean(session) && (ROLES[session.role] || 0) >= ROLES[role];
}

/** An HTTP error with the server's problem document (RFC 9457), if it sent one. */
export class ApiError extends Error {
  constructor(status, problem, text) {
    const detail = problem && problem.detail ? problem.detail : (text || "").slice(0, 300);
    super(`${status} ${problem && problem.title ? problem.title : "error"}: ${detail}`);
    this.status = status;
    this.problem = problem || {};
    this.title = this.problem.title || (status === 0 ? "Network error" : `HTTP ${status}`);
    this.detail = detail;
  }
}

let onUnauthenticated = () => {};

/** Called when any request answers 401 (the token was revoked, or the session is stale). */
export function setUnauthenticatedHandler(handler) {
  onUnauthenticated = handler;
}

/** fetch() the API as `token` (the session's by default); resolves to the parsed JSON body. */
export async function api(path, { method = "GET", body, token, query } = {}) {
  const session = loadSession();
  const bearer = token || (session && session.token);
  const headers = { Accept: "application/json, application/problem+json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(name, value);
    }
    if ([...params].length) url += `?${params}`;
  }
  let response;
  try {
    response = await fetch(url, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, { title: "Network error", detail: `the control plane did not answer (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data, text);
    if (response.status === 401 && !token) onUnauthenticated(error);
    throw error;
  }
  return data;
}
