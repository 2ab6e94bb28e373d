// What every dashboard page shares: the read token, fetching JSON, the connection badge,
// and the clock (durations that tick, times in the reader's own zone).
// Service data is untrusted: the scripts put it into the page through textContent and
// properties only. The one exception is service.js, which swaps in sections of its page
// that the master rendered (escaped) itself, through the one Trusted Types policy the
// page's Content-Security-Policy allows.
"use strict";

const TOKEN_KEY = "picoapi.readToken";
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
const STATUSES = ["passing", "warning", "critical", "unknown", "draining"];

const shared = {
  // How to reach the master's root from this page (pages live at different depths; all
  // URLs are relative, so the dashboard also works under a proxy's path prefix).
  root: document.body.dataset.root || "",
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  skewMs: 0, // the master's clock minus ours, from the Date of its answers
  onToken: null, // what to restart once a token is given
};

class Unauthorized extends Error {}

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function authHeaders() {
  return shared.token ? { Authorization: `Bearer ${shared.token}` } : {};
}

class NotFound extends Error {}

// `path` from the master's root (v1/services); fetchJSON takes a URL as a link has it.
async function getJSON(path) {
  return fetchJSON(shared.root + path);
}

async function fetchJSON(url) {
  const response = await fetch(url, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (response.status === 404) throw new NotFound(`${url}: HTTP 404`);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  noteClock(response);
  return response.json();
}

// The Date header has whole seconds: only a skew past that is worth correcting.
function noteClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (Number.isNaN(date)) return;
  const skew = date - Date.now();
  shared.skewMs = Math.abs(skew) > 2000 ? skew : 0;
}

function retryDelay(previous) {
  return Math.min(previous * 2, RETRY_MAX_MS);
}

async function backOff(retry) {
  await sleep(retry * (0.5 + Math.random() / 2));
}

// --- the connection badge and the token -------------------------------------------------

function setConnection(kind, text) {
  const badge = $("connection");
  if (!badge) return;
  badge.dataset.state = kind;
  badge.textContent = text;
}

function askForToken() {
  setConnection("auth", "read token needed");
  $("token-error").textContent = shared.token ? "That token was refused." : "";
  $("token-form").hidden = false;
  $("token-input").focus();
}

function useToken(event) {
  event.preventDefault();
  shared.token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, shared.token);
  $("token-input").value = "";
  $("token-form").hidden = true;
  if (shared.onToken) shared.onToken();
}

$("token-form")?.addEventListener("submit", useToken);
document.addEventListener("click", (event) => {
  const raw = event.target.closest?.("a.raw");
  if (raw) openWithToken(event, raw);
});

// A plain link cannot carry the Authorization header: with a token, fetch the document
// and show it from a blob instead.
async function openWithToken(event, link) {
  if (!shared.token) return;
  event.preventDefault();
  const tab = window.open("about:blank", "_blank");
  if (!tab) return; // a popup blocker said no
  try {
    const text = JSON.stringify(await fetchJSON(link.href), null, 2);
    tab.location = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  } catch (error) {
    tab.close();
    if (error instanceof Unauthorized) askForToken();
  }
}

// --- the clock ---------------------------------------------------------------------------

function now() {
  return Date.now() + shared.skewMs;
}

// "3 m 12 s", "45 s", "2 h 5 m", "3 d 4 h" (master/dashboard/render.py writes the same).
function elapsed(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const pad = (n) => String(n).padStart(2, "0");

// Today's times as 13:05:09, others as 2026-11-28 13:05, in the reader's time zone.
function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const clock = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  if (date.toDateString() === new Date(now()).toDateString()) return clock;
  const day = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  return `${day} ${clock.slice(0, 5)}`;
}

function timeElement(iso, prefix = "") {
  const node = el("time", "when", prefix + formatTime(iso));
  node.dateTime = iso;
  node.title = iso;
  node.dataset.prefix = prefix;
  node.dataset.local = "1";
  return node;
}

function sinceElement(iso) {
  const node = el("span", "since");
  node.dataset.since = iso;
  node.title = `since ${iso}`;
  node.textContent = `for ${elapsed(now() - Date.parse(iso))}`;
  return node;
}

// Every second: durations tick; times the master wrote in UTC are shown in local time.
function tick(root = document) {
  const at = now();
  for (const node of root.querySelectorAll(".since[data-since]")) {
    const text = `for ${elapsed(at - Date.parse(node.dataset.since))}`;
    if (node.textContent !== text) node.textContent = text;
  }
  for (const node of root.querySelectorAll("time.when:not([data-local])")) {
    node.textContent = (node.dataset.prefix || "") + formatTime(node.dateTime);
    node.dataset.local = "1";
  }
}

function startClock() {
  tick();
  setInterval(tick, 1000);
}

function statusPill(status) {
  const pill = el("span", "status", status);
  pill.dataset.status = status;
  return pill;
}

function flapping() {
  const node = el("span", "flag", "flapping");
  node.title = "its status changed more than 5 times within 10 minutes";
  return node;
}

function hostPort(service) {
  const host = service.address.includes(":") ? `[${service.address}]` : service.address;
  return `${host}:${service.port}`;
}
