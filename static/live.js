// The live notifications page: log in, open a WebSocket, show notifications as they arrive, reconnect with
// jittered backoff and resume from the last id. Tokens live in memory only (never localStorage).
"use strict";

const RECONNECT_CODES = [1001, 1006, 1011, 1012, 1013];  // plus the whole 4000-4099 range
const PAGE_SIZE = 20;
// shown: id -> notification of every item on the page (dedupes what the REST page, the replay and live send);
// newestId: the greatest id held, which resume starts after; nextBefore: the cursor of the "Older" button.
const state = { access: null, refresh: null, expiresIn: 0, newestId: null, nextBefore: null, shown: new Map(),
                socket: null, attempt: 0, refreshTimer: null, unread: 0, stopped: true, session: 0 };

const $ = (id) => document.getElementById(id);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (kind || "");
}

async function getJson(path) {
  const response = await fetch("/api/v1" + path, { headers: { Authorization: "Bearer " + state.access } });
  const data = await response.json();
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

async function api(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch("/api/v1" + path, { method: "POST", headers, body: JSON.stringify(body) });
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error((data && data.error && data.error.message) || response.statusText);
  return data;
}

function useTokens(tokens) {
  state.access = tokens.access_token;
  state.refresh = tokens.refresh_token;
  state.expiresIn = tokens.expires_in;
  clearTimeout(state.refreshTimer);
  // Refresh at 80% of the lifetime and hand the new token to the open socket, which then outlives the old one.
  state.refreshTimer = setTimeout(refreshInBand, Math.max(5, tokens.expires_in * 0.8) * 1000);
}

async function refreshTokens() {
  useTokens(await api("/auth/refresh", { refresh_token: state.refresh }));
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
  if (!item || item.className !== "unread") return false;
  item.className = "read";
  item.querySelector("button")?.remove();
  state.shown.get(id).read = true;
  return true;
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
  const title = document.createElement("h3");
  title.textContent = notification.title;  // textContent: user content is never parsed as HTML
  const body = document.createElement("p");
  body.textContent = notification.body;
  const time = document.createElement("time");
  time.dateTime = notification.created_at;
  time.textContent = new Date(notification.created_at).toLocaleString();
  item.append(title, body, time);
  if (!notification.read) {
    const button = document.createElement("button");
    button.type = "button";
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
      if (state.newestId) socket.send(JSON.stringify({ type: "resume", after: state.newestId }));
    } else if (message.type === "notification") {
      const n = message.notification;
      // Replayed or live: counted only when it is new to the page and unread.
      if (render(n) && !n.read) setUnread(state.unread + 1);
    } else if (message.type === "read") {
      if (markShownRead(message.id)) setUnread(state.unread - 1);
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

function stop(reason) {
  state.stopped = true;
  state.session++;
  clearTimeout(state.refreshTimer);
  if (state.socket) state.socket.close(1000);
  $("live-section").hidden = true;
  $("login-section").hidden = false;
  if (reason) {
    $("login-error").textContent = reason;
    $("login-error").hidden = false;
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  $("login-error").hidden = true;
  try {
    useTokens(await api("/auth/login", { email: form.get("email"), password: form.get("password") }));
  } catch (err) {
    $("login-error").textContent = err.message;
    $("login-error").hidden = false;
    return;
  }
  state.stopped = false;
  state.session++;
  state.attempt = 0;
  state.newestId = null;
  state.shown = new Map();
  showOlder(null);
  setUnread(0);
  $("notifications").replaceChildren();
  $("empty").hidden = false;
  $("login-section").hidden = true;
  $("live-section").hidden = false;
  connect();
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
  setUnread(0);
});

$("logout").addEventListener("click", async () => {
  const { access, refresh } = state;
  stop();
  try { await api("/auth/logout", { refresh_token: refresh }, access); } catch (err) { /* already ended */ }
});
