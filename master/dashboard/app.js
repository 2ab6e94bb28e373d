// The registry dashboard: reads v1/services and v1/tags once, then follows changes with
// blocking queries, so a change shows at once without polling fast. URLs are relative, so
// the page also works behind a proxy that mounts the master under a path prefix.
// Service data is untrusted: it reaches the page only through textContent and properties,
// never as HTML.
"use strict";

const WAIT = "60s";
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;
const TOKEN_KEY = "picoapi.readToken";
const STATUSES = ["passing", "warning", "critical", "unknown"];

const state = {
  services: [],
  tags: {},
  selected: new Set(),
  search: "",
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  // Bumped to abandon the running watch loop (a new token starts a fresh one).
  generation: 0,
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

async function getJSON(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// --- following the registry ----------------------------------------------------------

async function watch(generation) {
  let index = 0;
  let retry = RETRY_MIN_MS;
  while (generation === state.generation) {
    try {
      const query = index ? `?index=${index}&wait=${WAIT}` : "";
      const body = await getJSON(`v1/services${query}`);
      if (generation !== state.generation) return;
      // Re-rendered even when the index stands still: a wait that times out still brings
      // fresh check output, which does not move the index.
      state.services = body.services;
      if (body.index !== index) state.tags = await getJSON("v1/tags");
      index = body.index;
      retry = RETRY_MIN_MS;
      setConnection("live", `live · index ${index}`);
      render();
    } catch (error) {
      if (generation !== state.generation) return;
      if (error instanceof Unauthorized) {
        askForToken();
        return;
      }
      setConnection("down", "disconnected, retrying…");
      await sleep(retry * (0.5 + Math.random() / 2));
      retry = Math.min(retry * 2, RETRY_MAX_MS);
    }
  }
}

function restart() {
  state.generation += 1;
  watch(state.generation);
}

function setConnection(kind, text) {
  const badge = $("connection");
  badge.dataset.state = kind;
  badge.textContent = text;
}

function askForToken() {
  setConnection("auth", "read token needed");
  $("token-error").textContent = state.token ? "That token was refused." : "";
  $("token-form").hidden = false;
  $("token-input").focus();
}

function useToken(event) {
  event.preventDefault();
  state.token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token-input").value = "";
  $("token-form").hidden = true;
  restart();
}

// --- rendering -----------------------------------------------------------------------

function render() {
  renderSummary();
  renderTags();
  renderTable();
}

function renderSummary() {
  const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
  for (const service of state.services) {
    if (Object.hasOwn(counts, service.status)) counts[service.status] += 1;
  }
  $("count-total").textContent = state.services.length;
  for (const status of STATUSES) $(`count-${status}`).textContent = counts[status];
}

function toggleTag(tag) {
  if (!state.selected.delete(tag)) state.selected.add(tag);
  renderTags();
  renderTable();
}

function tagButton(tag, count) {
  const button = el("button", "tag", tag);
  button.type = "button";
  button.setAttribute("aria-pressed", String(state.selected.has(tag)));
  if (count !== undefined) button.append(el("span", "tag-count", String(count)));
  button.addEventListener("click", () => toggleTag(tag));
  return button;
}

function renderTags() {
  // A selected tag stays visible after its last service left, so it can be unselected.
  const names = new Set([...Object.keys(state.tags), ...state.selected]);
  const counts = new Map(Object.entries(state.tags));
  $("tags").replaceChildren(...[...names].sort().map((tag) => tagButton(tag, counts.get(tag) ?? 0)));
  $("clear-tags").hidden = state.selected.size === 0;
}

function matches(service) {
  for (const tag of state.selected) {
    if (!service.tags.includes(tag)) return false;
  }
  const query = state.search;
  return !query || service.name.includes(query) || service.id.toLowerCase().includes(query);
}

function byNameThenId(a, b) {
  return a.name.localeCompare(b.name) || a.id.localeCompare(b.id);
}

function renderTable() {
  const shown = state.services.filter(matches).sort(byNameThenId);
  $("services").tBodies[0].replaceChildren(...shown.map(serviceRow));
  $("shown").textContent = `${shown.length} of ${state.services.length} shown`;
  $("empty").hidden = shown.length > 0;
}

function cell(...children) {
  const td = el("td");
  td.append(...children);
  return td;
}

function serviceRow(service) {
  const row = el("tr");
  row.dataset.id = service.id;
  const status = el("span", "status", service.status);
  status.dataset.status = service.status;
  const host = service.address.includes(":") ? `[${service.address}]` : service.address;
  row.append(
    cell(status),
    cell(el("span", "name", service.name)),
    cell(el("code", "id", service.id)),
    cell(el("code", "address", `${host}:${service.port}`)),
    cell(...service.tags.map((tag) => tagButton(tag))),
    lastCheckCell(service),
    cell(openapiLink(service)),
  );
  return row;
}

function lastCheckCell(service) {
  const check = service.last_check;
  if (!check) {
    return cell(el("span", "muted", service.check ? "not checked yet" : "no check"));
  }
  const when = el("time", "when", formatTime(check.at));
  when.dateTime = check.at;
  when.title = check.at;
  const code = check.http_status ? `${check.http_status} ` : "";
  const output = el("span", "output", `${code}${check.output}`);
  output.title = check.output;
  return cell(when, output);
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const today = date.toDateString() === new Date().toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function openapiLink(service) {
  if (!service.openapi_sha256) return el("span", "muted", "–");
  const link = el("a", "openapi", "OpenAPI");
  link.href = `v1/services/${encodeURIComponent(service.id)}/openapi`;
  link.target = "_blank";
  link.rel = "noopener";
  link.addEventListener("click", (event) => openWithToken(event, link.pathname));
  return link;
}

// A plain link cannot carry the Authorization header: with a token, fetch the document
// and show it from a blob instead.
async function openWithToken(event, path) {
  if (!state.token) return;
  event.preventDefault();
  const tab = window.open("about:blank", "_blank");
  if (!tab) return; // a popup blocker said no
  try {
    const text = JSON.stringify(await getJSON(path), null, 2);
    tab.location = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  } catch (error) {
    tab.close();
    if (error instanceof Unauthorized) askForToken();
  }
}

// --- start ---------------------------------------------------------------------------

$("search").addEventListener("input", (event) => {
  state.search = event.target.value.trim().toLowerCase();
  renderTable();
});
$("clear-tags").addEventListener("click", () => {
  state.selected.clear();
  renderTags();
  renderTable();
});
$("token-form").addEventListener("submit", useToken);
restart();
