// The list of services. The master painted it first (master/dashboard/render.py); this
// script reads v1/services, renders the same markup, and follows changes with blocking
// queries, so a change shows at once without polling fast. The filters live in the URL
// (?q=, ?tag= repeated, ?status=), so a filtered view can be linked and reloaded.
"use strict";

const WAIT = "60s";
const FILTER_STATUSES = new Set(STATUSES);

const state = {
  services: [],
  tags: {},
  entries: [], // v1/catalog/apis
  versions: new Map(), // sha256 -> [label, documents of its name]
  documentsSeen: "", // which documents the catalog was last read for
  selected: new Set(),
  search: "",
  status: "",
  rows: new Map(), // id -> {key, row}: unchanged rows are kept (and the focus in them)
  tagButtons: new Map(),
  generation: 0, // bumped to abandon the running watch loop (a new token starts a fresh one)
};

// --- the filters, in the URL -----------------------------------------------------------

function readFilters() {
  const params = new URLSearchParams(location.search);
  state.search = (params.get("q") || "").trim().toLowerCase();
  state.selected = new Set(params.getAll("tag"));
  const status = params.get("status") || "";
  state.status = FILTER_STATUSES.has(status) ? status : "";
  $("search").value = params.get("q") || "";
}

function writeFilters() {
  const params = new URLSearchParams();
  const q = $("search").value.trim();
  if (q) params.set("q", q);
  for (const tag of state.selected) params.append("tag", tag);
  if (state.status) params.set("status", state.status);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
  $("clear-filters").hidden = !(q || state.selected.size || state.status);
}

function filtersChanged() {
  writeFilters();
  renderSummary();
  renderTags();
  renderTable();
}

// --- following the registry --------------------------------------------------------------

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
      await readCatalog();
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
      await backOff(retry);
      retry = retryDelay(retry);
    }
  }
}

// The catalog is read again only when the documents the instances serve have changed.
async function readCatalog() {
  const seen = state.services
    .filter((s) => s.openapi_sha256)
    .map((s) => `${s.name} ${s.openapi_sha256}`)
    .sort()
    .join(",");
  if (seen === state.documentsSeen) return;
  const body = await getJSON("v1/catalog/apis");
  state.entries = body.apis;
  state.versions = new Map();
  for (const entry of body.apis) {
    for (const document of entry.documents) {
      state.versions.set(document.sha256, [document.label, entry.documents.length]);
    }
  }
  state.documentsSeen = seen;
}

function restart() {
  state.generation += 1;
  watch(state.generation);
}

// --- rendering -----------------------------------------------------------------------------

function render() {
  renderSummary();
  renderTags();
  renderApis();
  renderTable();
}

function renderSummary() {
  const counts = Object.fromEntries(STATUSES.map((status) => [status, 0]));
  for (const service of state.services) {
    if (Object.hasOwn(counts, service.status)) counts[service.status] += 1;
  }
  $("count-total").textContent = state.services.length;
  for (const status of STATUSES) $(`count-${status}`).textContent = counts[status];
  for (const button of document.querySelectorAll("#summary .stat")) {
    button.setAttribute("aria-pressed", String(button.dataset.status === state.status));
  }
}

function tagButton(tag, count) {
  const button = el("button", "tag", tag);
  button.type = "button";
  button.dataset.tag = tag;
  button.setAttribute("aria-pressed", String(state.selected.has(tag)));
  if (count !== undefined) button.append(el("span", "tag-count", String(count)));
  return button;
}

// The bar keeps its buttons: the one just pressed keeps the keyboard focus.
function renderTags() {
  // A selected tag stays visible after its last service left, so it can be unselected.
  const names = [...new Set([...Object.keys(state.tags), ...state.selected])].sort();
  const bar = $("tags");
  const kept = new Map();
  for (const tag of names) {
    let button = state.tagButtons.get(tag);
    if (!button) button = tagButton(tag, 0);
    button.setAttribute("aria-pressed", String(state.selected.has(tag)));
    button.lastChild.textContent = String(state.tags[tag] ?? 0);
    kept.set(tag, button);
  }
  place(bar, [...kept.values()]);
  state.tagButtons = kept;
}

// Put `nodes` in `parent` in this order, moving only those out of place.
function place(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild.remove();
}

function renderApis() {
  const moving = state.entries.filter((entry) => entry.documents.length > 1);
  const section = $("apis");
  section.hidden = moving.length === 0;
  if (!moving.length) {
    section.replaceChildren();
    return;
  }
  const list = el("ul", "api-list");
  for (const entry of moving) {
    const item = el("li");
    item.dataset.name = entry.name;
    if (entry.diffs.some((diff) => diff.breaking)) item.dataset.breaking = "";
    const link = el("a", "", entry.name);
    link.href = serviceHref(entry.documents[0].instances[0]);
    item.append(link, ": ", el("span", "api-summary", entry.summary));
    list.append(item);
  }
  section.replaceChildren(el("h2", "", "APIs in transition"), list);
}

function matches(service) {
  if (state.status && service.status !== state.status) return false;
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
  const rows = new Map();
  for (const service of shown) {
    const key = rowKey(service);
    const old = state.rows.get(service.id);
    rows.set(service.id, old && old.key === key ? old : { key, row: serviceRow(service) });
  }
  place($("services").tBodies[0], [...rows.values()].map((entry) => entry.row));
  state.rows = rows;
  tick($("services"));
  $("shown").textContent = `${shown.length} of ${state.services.length} shown`;
  $("empty").hidden = shown.length > 0;
}

function rowKey(service) {
  return JSON.stringify([
    service,
    state.versions.get(service.openapi_sha256) || null,
    service.tags.map((tag) => state.selected.has(tag)),
  ]);
}

function cell(label, ...children) {
  const td = el("td");
  td.dataset.label = label;
  td.append(...children);
  return td;
}

function serviceHref(id) {
  return `dashboard/services/${encodeURIComponent(id)}`;
}

function serviceRow(service) {
  const row = el("tr");
  row.dataset.id = service.id;
  const status = [statusPill(service.status)];
  if (service.status_changed_at && Date.parse(service.status_changed_at) > 0) {
    status.push(" ", sinceElement(service.status_changed_at));
  }
  if (service.flapping) status.push(" ", flapping());
  const name = el("a", "name", service.name);
  name.href = serviceHref(service.id);
  row.append(
    cell("Status", ...status),
    cell("Service", name, " ", el("code", "id", service.id)),
    cell("Address", el("code", "address", hostPort(service))),
    cell("Tags", ...service.tags.map((tag) => tagButton(tag))),
    cell("Why", ...why(service)),
    cell("API", ...apiCell(service)),
  );
  return row;
}

const OUTPUT_SHOWN = 300;

function why(service) {
  const parts = [];
  const reason = service.status_reason;
  if (reason) parts.push(el("span", "reason", reason));
  const check = service.last_check;
  if (check) {
    const code = check.http_status ? `${check.http_status} ` : "";
    const output = `${code}${check.output}`;
    if (check.output && check.output !== reason) {
      const shown = output.length <= OUTPUT_SHOWN ? output : `${output.slice(0, OUTPUT_SHOWN - 1)}…`;
      const node = el("span", "output", shown);
      node.title = output;
      parts.push(node);
    }
    parts.push(
      timeElement(check.at, "checked "),
      el("span", "duration", ` · ${Math.round(check.duration_ms)} ms`),
    );
  } else if (!reason) {
    parts.push(el("span", "muted", service.check ? "not checked yet" : "no check"));
  }
  return parts;
}

function apiCell(service) {
  if (!service.openapi_sha256) return [el("span", "muted", "–")];
  const [label, documents] = state.versions.get(service.openapi_sha256) || ["", 1];
  const id = encodeURIComponent(service.id);
  const docs = el("a", "openapi", label || "API docs");
  docs.href = `dashboard/services/${id}/api`;
  const raw = el("a", "raw", "raw");
  raw.href = `v1/services/${id}/openapi`;
  const parts = [docs];
  if (documents > 1) {
    const differs = el("span", "differs", `1 of ${documents}`);
    differs.title = `its instances serve ${documents} different documents`;
    parts.push(" ", differs);
  }
  parts.push(" ", raw);
  return parts;
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener("click", (event) => {
  const tag = event.target.closest("button.tag[data-tag]");
  if (tag) {
    const name = tag.dataset.tag;
    if (!state.selected.delete(name)) state.selected.add(name);
    filtersChanged();
    return;
  }
  const stat = event.target.closest("#summary .stat");
  if (stat) {
    state.status = stat.dataset.status === state.status ? "" : stat.dataset.status;
    filtersChanged();
  }
});
$("search").addEventListener("input", (event) => {
  state.search = event.target.value.trim().toLowerCase();
  writeFilters();
  renderTable();
});
$("filters").addEventListener("submit", (event) => event.preventDefault());
$("clear-filters").addEventListener("click", () => {
  state.selected.clear();
  state.status = "";
  $("search").value = "";
  state.search = "";
  filtersChanged();
  $("search").focus();
});
// "/" jumps to the search box, as on many sites.
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing && !event.ctrlKey && !event.metaKey && !event.altKey) {
    event.preventDefault();
    $("search").focus();
  }
});
for (const button of document.querySelectorAll("#tags .tag")) {
  state.tagButtons.set(button.dataset.tag, button); // the server's, adopted
}
shared.onToken = restart;
readFilters();
startClock();
restart();
