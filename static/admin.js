// The admin panel's only script (no inline script anywhere): confirmations and the dashboard's live figures.
"use strict";

document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const message = button && button.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

const dashboard = document.getElementById("dashboard");
if (dashboard) {
  const events = document.getElementById("events");
  const stat = (name, stats) => name.split(".").reduce((obj, key) => obj && obj[key], stats);
  const render = (data) => {
    for (const el of dashboard.querySelectorAll("[data-stat]")) {
      const value = stat(el.dataset.stat, data.stats);
      if (value !== undefined) el.textContent = String(value);
    }
    // A count's noun follows it: "1 admin", "2 admins".
    for (const el of dashboard.querySelectorAll("[data-noun]")) {
      const value = stat(el.dataset.noun, data.stats);
      if (value !== undefined) el.textContent = value === 1 ? el.dataset.one : el.dataset.other;
    }
    const estimated = data.stats.estimated || [];
    for (const el of dashboard.querySelectorAll("[data-approx]")) {
      el.textContent = estimated.includes(el.dataset.approx) ? "≈ " : "";
    }
    const items = data.events.map((event) => {
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.className = "when";
      time.textContent = event.created_at.slice(0, 16).replace("T", " ") + " UTC";
      const action = document.createElement("strong");
      action.textContent = event.action;
      const by = document.createElement("span");
      by.className = "muted";
      by.textContent = " by " + (event.actor_email || "system");
      li.append(time, " ", action, event.target_label ? " · " + event.target_label : "", " ", by);
      return li;
    });
    if (items.length) events.replaceChildren(...items);
  };
  const refresh = async () => {
    try {
      const response = await fetch(dashboard.dataset.source, { headers: { Accept: "application/json" } });
      if (response.ok) render(await response.json());
    } catch (err) { /* offline for a moment: try again on the next tick */ }
  };
  setInterval(refresh, 5000);
}
