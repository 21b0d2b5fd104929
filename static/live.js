// The live notifications page: log in, open a WebSocket, show notifications as they arrive, reconnect with
// jittered backoff and resume from the last id. Tokens live in memory only (never localStorage).
"use strict";

const RECONNECT_CODES = [1001, 1006, 1011, 1012, 1013];  // plus the whole 4000-4099 range
const state = { access: null, refresh: null, expiresIn: 0, lastId: null, socket: null, attempt: 0,
                refreshTimer: null, unread: 0, stopped: true };

const $ = (id) => document.getElementById(id);

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (kind || "");
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

function render(notification) {
  const item = document.createElement("li");
  item.id = "n-" + notification.id;
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
  $("notifications").prepend(item);
  $("empty").hidden = true;
}

function setUnread(count) {
  state.unread = Math.max(0, count);
  $("unread").textContent = String(state.unread);
}

function connect() {
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
      setUnread(message.unread);
      if (state.lastId) socket.send(JSON.stringify({ type: "resume", after: state.lastId }));
    } else if (message.type === "notification") {
      const n = message.notification;
      if (document.getElementById("n-" + n.id)) return;
      if (!state.lastId || n.id > state.lastId) state.lastId = n.id;
      render(n);
      if (!n.read) setUnread(state.unread + 1);
    } else if (message.type === "read") {
      const item = document.getElementById("n-" + message.id);
      if (item && item.className === "unread") {
        item.className = "read";
        item.querySelector("button")?.remove();
        setUnread(state.unread - 1);
      }
    }
  });
  socket.addEventListener("close", async (event) => {
    if (state.stopped) return;
    const reconnect = RECONNECT_CODES.includes(event.code) || (event.code >= 4000 && event.code < 4100);
    if (!reconnect) {
      stop(event.reason || "Disconnected (" + event.code + ")");
      return;
    }
    setStatus("reconnecting…", "down");
    if (event.code === 4001) {
      try { await refreshTokens(); } catch (err) { stop("Session ended: " + err.message); return; }
    }
    // Exponential backoff with full jitter, capped at 20 s, so a restart is not met by a thundering herd.
    const delay = Math.random() * Math.min(20000, 500 * 2 ** state.attempt++);
    setTimeout(() => { if (!state.stopped) connect(); }, delay);
  });
}

function stop(reason) {
  state.stopped = true;
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
  state.lastId = null;
  $("notifications").replaceChildren();
  $("empty").hidden = false;
  $("login-section").hidden = true;
  $("live-section").hidden = false;
  connect();
});

$("logout").addEventListener("click", async () => {
  const { access, refresh } = state;
  stop();
  try { await api("/auth/logout", { refresh_token: refresh }, access); } catch (err) { /* already ended */ }
});
