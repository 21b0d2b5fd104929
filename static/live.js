// The live notifications page: sign up or log in, open a WebSocket, show notifications as they arrive, reconnect
// with jittered backoff and resume from the last id. The access token lives in memory only; the refresh token is
// in an HttpOnly cookie this script cannot read, sent only to /api/v1/auth/page/ (docs/security.md), which is how
// a reload stays signed in. Nothing goes in localStorage or sessionStorage.
"use strict";

const RECONNECT_CODES = [1001, 1006, 1011, 1012, 1013];  // plus the whole 4000-4099 range
const PAGE_SIZE = 20;
const BEFORE_EVERYTHING = "0".repeat(24);  // an ObjectId smaller than every notification's
// Every call of the page's session endpoints carries this header, which no cross-site form can send (CSRF).
const PAGE_HEADERS = { "X-Requested-With": "tidings" };
const FIELD_NAMES = { email: "Email", username: "Username", password: "Password", full_name: "Full name" };
// shown: id -> notification of every item on the page (dedupes what the REST page, the replay and live send);
// newestId: the greatest id held, which resume starts after; nextBefore: the cursor of the "Older" button;
// syncing: from "ready" until the recount after the replay, while the counter is not moved by what arrives.
const state = { access: null, newestId: null, nextBefore: null, shown: new Map(), socket: null, attempt: 0,
                refreshTimer: null, unread: 0, syncing: false, stopped: true, session: 0 };

const $ = (id) => document.getElementById(id);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (kind || "");
}

class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || "The server answered " + status + ".");
    this.status = status;
    this.details = error && error.details;
  }
}

// fetch, with the API's one error shape turned into an ApiError; null for a 204.
async function call(path, options) {
  let response;
  try {
    response = await fetch("/api/v1" + path, options);
  } catch (err) {
    throw new ApiError(undefined, { message: "The server cannot be reached; check your connection." });
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (err) { data = null; }
  }
  if (!response.ok) throw new ApiError(response.status, data && data.error);
  return data;
}

function getJson(path) {
  return call(path, { headers: { Authorization: "Bearer " + state.access } });
}

function api(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  return call(path, { method: "POST", headers, body: JSON.stringify(body) });
}

// The page's session endpoints, which set, read and clear the refresh cookie (the page's tabs share it; a refresh
// leaves it as it is, so they never race). keepalive: a logout goes through even when the tab closes at once.
function pageAuth(action, body) {
  const headers = { ...PAGE_HEADERS };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return call("/auth/page/" + action, {
    method: "POST", headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin", keepalive: action === "logout",
  });
}

// Sentences from an API error: its message, or with validation details, one per field ("Password: ...").
function errorSentences(err) {
  if (err.status !== 422 || !err.details || typeof err.details !== "object") return [err.message];
  const sentences = [];
  const walk = (value, field) => {
    if (Array.isArray(value)) value.forEach((item) => walk(item, field));
    else if (value && typeof value === "object") {
      for (const [key, inner] of Object.entries(value)) walk(inner, field ? field + "." + key : key);
    } else {
      const name = FIELD_NAMES[field] || field;
      sentences.push(field && field !== "_schema" ? name + ": " + value : String(value));
    }
  };
  walk(err.details, "");
  return sentences.length ? sentences : [err.message];
}

// An error box: one sentence as text, several as a list; none hides it.
function showError(id, sentences) {
  const box = $(id);
  if (!sentences || !sentences.length) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  if (sentences.length === 1) {
    box.textContent = sentences[0];
  } else {
    const list = document.createElement("ul");
    for (const sentence of sentences) {
      const item = document.createElement("li");
      item.textContent = sentence;
      list.append(item);
    }
    box.replaceChildren(list);
  }
  box.hidden = false;
}

function useTokens(tokens) {
  state.access = tokens.access_token;
  clearTimeout(state.refreshTimer);
  // Refresh at 80% of the lifetime and hand the new token to the open socket, which then outlives the old one.
  state.refreshTimer = setTimeout(refreshInBand, Math.max(5, tokens.expires_in * 0.8) * 1000);
}

async function refreshTokens() {
  const tokens = await pageAuth("refresh");
  if (!tokens) throw new ApiError(401, { message: "Your session has ended." });
  useTokens(tokens);
}

async function refreshInBand() {
  try {
    await refreshTokens();
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify({ type: "auth", token: state.access }));
    }
  } catch (err) {
    stop("Session ended: " + err.message);
  }
}

function markShownRead(id) {
  const item = document.getElementById("n-" + id);
  if (!item || !item.classList.contains("unread")) return false;
  item.classList.replace("unread", "read");
  item.querySelector("button.mark-read")?.remove();
  state.shown.get(id).read = true;
  return true;
}

// The absolute http(s) address in `value`, or null: javascript:, data: and the like never become links.
function httpUrl(value) {
  if (typeof value !== "string") return null;
  let url;
  try { url = new URL(value); } catch (err) { return null; }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

// A notification's data, each key and value as text; a `url` that is an http(s) address is a link.
function renderData(data) {
  if (!data || typeof data !== "object" || Array.isArray(data) || !Object.keys(data).length) return null;
  const list = document.createElement("dl");
  list.className = "data";
  for (const [key, value] of Object.entries(data)) {
    const name = document.createElement("dt");
    name.textContent = key;
    const shown = document.createElement("dd");
    const href = key === "url" ? httpUrl(value) : null;
    if (href) {
      const link = document.createElement("a");
      link.href = href;
      link.textContent = href;
      link.rel = "noopener noreferrer nofollow";
      link.target = "_blank";
      shown.append(link);
    } else {
      shown.textContent = typeof value === "string" ? value : JSON.stringify(value);
    }
    list.append(name, shown);
  }
  return list;
}

// Show a notification once, in its place by id (newest first); false when it was shown already.
function render(notification) {
  if (state.shown.has(notification.id)) {
    if (notification.read) markShownRead(notification.id);
    return false;
  }
  state.shown.set(notification.id, notification);
  if (!state.newestId || notification.id > state.newestId) state.newestId = notification.id;
  const item = document.createElement("li");
  item.id = "n-" + notification.id;
  item.dataset.id = notification.id;
  item.className = notification.read ? "read" : "unread";
  if (notification.broadcast) {
    item.classList.add("broadcast");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "Broadcast";
    badge.title = "Sent to every user";
    item.append(badge);
  }
  const title = document.createElement("h3");
  title.textContent = notification.title;  // textContent: user content is never parsed as HTML
  const body = document.createElement("p");
  body.textContent = notification.body;
  item.append(title, body);
  const data = renderData(notification.data);
  if (data) item.append(data);
  const time = document.createElement("time");
  time.dateTime = notification.created_at;
  time.textContent = new Date(notification.created_at).toLocaleString();
  item.append(time);
  if (!notification.read) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "mark-read";
    button.textContent = "Mark read";
    button.addEventListener("click", () => state.socket.send(JSON.stringify({ type: "read", id: notification.id })));
    item.append(button);
  }
  // Ids are ObjectIds: as strings they sort by creation.
  const list = $("notifications");
  const after = Array.from(list.children).find((other) => other.dataset.id < notification.id);
  list.insertBefore(item, after || null);
  $("empty").hidden = true;
  return true;
}

function showOlder(nextBefore) {
  state.nextBefore = nextBefore;
  $("older").hidden = !nextBefore;
}

// The newest page, and on a reconnect the pages back to what is shown already, so that nothing in between is
// missed. Rendering them does not touch the counter: "ready" says how many are unread.
async function loadNewest() {
  const known = state.newestId;
  let page = await getJson("/notifications?limit=" + PAGE_SIZE);
  const first = !known && state.shown.size === 0;
  if (first) showOlder(page.next_before);
  page.items.forEach(render);
  while (known && page.next_before && page.items.every((n) => n.id > known)) {
    page = await getJson("/notifications?limit=" + PAGE_SIZE + "&before=" + encodeURIComponent(page.next_before));
    page.items.forEach(render);
  }
}

function setUnread(count) {
  state.unread = Math.max(0, count);
  $("unread").textContent = String(state.unread);
}

// After the replay: the count from the server again. "ready" counted what was created between the page's load
// and the socket's start, and the replay brought those again; nothing that arrived meanwhile moved the counter.
async function recount(socket) {
  try {
    const { unread } = await getJson("/notifications/unread-count");
    if (state.socket === socket && state.syncing) setUnread(unread);
  } catch (err) {
    // ready's count stays; the next reconnect counts again
  }
  if (state.socket === socket) state.syncing = false;
}

function scheduleReconnect() {
  setStatus("reconnecting…", "down");
  // Exponential backoff with full jitter, capped at 20 s, so a restart is not met by a thundering herd.
  const delay = Math.random() * Math.min(20000, 500 * 2 ** state.attempt++);
  const session = state.session;
  setTimeout(() => { if (!state.stopped && state.session === session) connect(); }, delay);
}

// Every (re)connect: load the newest page over REST, then open the socket and resume after the newest id held.
async function connect() {
  const session = state.session;
  setStatus("connecting…");
  try {
    await loadNewest();
  } catch (err) {
    if (state.stopped || state.session !== session) return;
    if (err.status === 401) {
      try { await refreshTokens(); } catch (refreshErr) { stop("Session ended: " + refreshErr.message); return; }
    } else if (err.status !== undefined && err.status < 500 && err.status !== 429) {
      stop(err.message);
      return;
    }
    scheduleReconnect();
    return;
  }
  if (state.stopped || state.session !== session) return;
  openSocket();
}

function openSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(scheme + "//" + location.host + "/api/v1/ws");
  state.socket = socket;
  setStatus("connecting…");
  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token: state.access })));
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      state.attempt = 0;
      setStatus("live", "live");
      setUnread(message.unread);  // the truth, on every (re)connect
      state.syncing = true;
      // Everything after the newest one held (after nothing, when the page showed none); then a ping, whose
      // pong comes after the replay, since the server answers a socket's messages in order.
      socket.send(JSON.stringify({ type: "resume", after: state.newestId || BEFORE_EVERYTHING }));
      socket.send(JSON.stringify({ type: "ping" }));
    } else if (message.type === "pong") {
      if (state.syncing) recount(socket);
    } else if (message.type === "notification") {
      const n = message.notification;
      // Replayed or live: counted only when it is new to the page and unread, and not while syncing.
      if (render(n) && !n.read && !state.syncing) setUnread(state.unread + 1);
    } else if (message.type === "read") {
      if (markShownRead(message.id) && !state.syncing) setUnread(state.unread - 1);
    }
  });
  socket.addEventListener("close", async (event) => {
    if (state.stopped || state.socket !== socket) return;
    const reconnect = RECONNECT_CODES.includes(event.code) || (event.code >= 4000 && event.code < 4100);
    if (!reconnect) {
      stop(event.reason || "Disconnected (" + event.code + ")");
      return;
    }
    setStatus("reconnecting…", "down");
    if (event.code === 4001) {
      try { await refreshTokens(); } catch (err) { stop("Session ended: " + err.message); return; }
    }
    scheduleReconnect();
  });
}

function showLogin(reason) {
  $("restoring").hidden = true;
  $("live-section").hidden = true;
  $("login-section").hidden = false;
  // The password typed last time never stays in the form once its session is over, or after a failed login.
  $("login-form").elements.password.value = "";
  showError("login-error", reason ? [reason] : null);
}

function stop(reason) {
  state.stopped = true;
  state.session++;
  state.access = null;
  clearTimeout(state.refreshTimer);
  if (state.socket) state.socket.close(1000);
  state.socket = null;
  showLogin(reason);
}

// Signed in (by the form, or by the cookie on load): start from an empty list and go live.
function start(tokens) {
  useTokens(tokens);
  state.stopped = false;
  state.session++;
  state.attempt = 0;
  state.newestId = null;
  state.shown = new Map();
  showOlder(null);
  setUnread(0);
  $("notifications").replaceChildren();
  $("empty").hidden = false;
  showError("login-error", null);
  showError("register-error", null);
  $("restoring").hidden = true;
  $("login-section").hidden = true;
  $("live-section").hidden = false;
  connect();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const fields = { email: form.elements.email.value, password: form.elements.password.value };
  showError("login-error", null);
  let tokens;
  try {
    tokens = await pageAuth("login", fields);
  } catch (err) {
    showLogin(err.message);
    return;
  }
  form.elements.password.value = "";
  start(tokens);
});

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const fields = {
    email: form.elements.email.value,
    username: form.elements.username.value,
    password: form.elements.password.value,
  };
  if (form.elements.full_name.value.trim()) fields.full_name = form.elements.full_name.value;
  showError("register-error", null);
  try {
    await api("/auth/register", fields);
  } catch (err) {
    showError("register-error", errorSentences(err));
    return;
  }
  let tokens;
  try {
    tokens = await pageAuth("login", { email: fields.email, password: fields.password });
  } catch (err) {
    showError("register-error", ["Your account is ready, but logging in failed: " + err.message]);
    return;
  } finally {
    form.elements.password.value = "";
  }
  form.reset();
  start(tokens);
});

$("older").addEventListener("click", async () => {
  const session = state.session;
  $("older").disabled = true;
  try {
    const page = await getJson("/notifications?limit=" + PAGE_SIZE + "&before=" + encodeURIComponent(state.nextBefore));
    if (state.session !== session) return;
    page.items.forEach(render);  // older ones: the counter already includes them
    showOlder(page.next_before);
  } catch (err) {
    setStatus("Could not load older notifications: " + err.message, "down");
  } finally {
    $("older").disabled = false;
  }
});

$("mark-all-read").addEventListener("click", async () => {
  const session = state.session;
  try {
    await api("/notifications/read-all", {}, state.access);
  } catch (err) {
    setStatus("Could not mark all read: " + err.message, "down");
    return;
  }
  if (state.session !== session) return;
  for (const id of state.shown.keys()) markShownRead(id);
  state.syncing = false;  // a recount on its way is older than this
  setUnread(0);
});

$("logout").addEventListener("click", async () => {
  stop();
  // The session ends on the server and the cookie is cleared; other tabs of the page find out at their next
  // refresh (or at once: the server closes the session's sockets).
  try { await pageAuth("logout"); } catch (err) { /* already ended */ }
});

// On load: the cookie (if any) signs the page in again; without one, the forms.
(async () => {
  let tokens;
  try {
    tokens = await pageAuth("refresh");
  } catch (err) {
    showLogin(err.status === 401 ? "Your session has ended; log in again." : err.message);
    return;
  }
  if (tokens) start(tokens);
  else showLogin();
})();
